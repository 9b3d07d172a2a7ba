"""Dispatch overhead of a measurement: host-observed wall time / the agent's own durations.

Warm connection, model already on the device: what the host adds on top of the device's work. Runs
the local transport and ssh through an in-process paramiko server on 127.0.0.1 (tests/sshd.py), and
shows that a second measurement of the same model uploads nothing. Writes
results/bench/dispatch.json. Run: ``python -m benchmarks.bench_dispatch``.
"""

from __future__ import annotations

import getpass
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.core.model import resolve_model_path  # noqa: E402
from harness.devices.config import DeviceConfig  # noqa: E402
from harness.devices.connect import connect  # noqa: E402
from harness.devices.transport import MeasureSettings, Transport  # noqa: E402

SETTINGS = MeasureSettings(runs=50, min_seconds=3.0, warmup_runs=1, warmup_seconds=0.2, timeout_s=60)
REPEATS = 3


def bench(t: Transport, model: Path) -> dict[str, Any]:
    first = t.measure(model, SETTINGS)  # connects, starts the agent, uploads: not timed
    assert first.ok, first.message
    rows = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        rec = t.measure(model, SETTINGS)
        wall = time.perf_counter() - t0
        assert rec.ok, rec.message
        rows.append({"host_wall_s": wall, "agent_seconds": rec.method["agent_seconds"],
                     "timed_seconds": rec.method["timed_seconds"], "uploaded_bytes": rec.uploaded_bytes})
    return {
        "first_uploaded_bytes": first.uploaded_bytes,
        "repeat_uploaded_bytes": [r["uploaded_bytes"] for r in rows],
        "ratio_wall_over_agent": statistics.median(r["host_wall_s"] / r["agent_seconds"] for r in rows),
        "ratio_wall_over_timed_runs": statistics.median(r["host_wall_s"] / r["timed_seconds"] for r in rows),
        "runs": rows,
    }


def main() -> int:
    from tests.sshd import ParamikoServer, make_keys, ssh_device, write_known_hosts

    model = resolve_model_path("builtin:digits-vit")[0]
    out: dict[str, Any] = {"settings": {k: v for k, v in vars(SETTINGS).items() if k != "genome"},
                           "model": "builtin:digits-vit", "transports": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with connect(DeviceConfig(name="local", transport="local", cache_dir=str(root / "lc"), sensor="none")) as t:
            out["transports"]["local"] = bench(t, model)
        keys = make_keys(root / "keys")
        server = ParamikoServer(keys, user=getpass.getuser(), env={"HOME": tmp})
        try:
            kh = write_known_hosts(root / "kh", server.port, keys.host_key)
            with connect(ssh_device(server.port, keys, kh, root / "sc")) as t:
                out["transports"]["ssh-paramiko"] = bench(t, model)
        finally:
            server.stop()
    dest = ROOT / "results" / "bench" / "dispatch.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1))
    print(f"dispatch overhead, digits-vit, warm connection, model on device ({REPEATS} repeats, "
          f"min_seconds={SETTINGS.min_seconds}):")
    for name, r in out["transports"].items():
        print(f"  {name:13s} host wall / agent measurement time = {r['ratio_wall_over_agent']:.3f}   "
              f"host wall / timed runs = {r['ratio_wall_over_timed_runs']:.3f}   "
              f"upload: first {r['first_uploaded_bytes']:,} B, then {r['repeat_uploaded_bytes']} B")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
