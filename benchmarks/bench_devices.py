"""Devices: measurement throughput and dispatch overhead with 1, 2, 4 and 8 loopback SSH devices.

Every device is a separate SSH connection to 127.0.0.1 (OpenSSH ``sshd`` when installed, else the
in-process paramiko server of tests/sshd.py), with its own agent process and model store; the
``harness.devices.pool.DevicePool`` keeps them all busy. Each device first measures the model once (connect,
agent start, upload: not timed); then the same number of measurements per device is submitted at
once and timed. Reported per device count: measurements per second (host wall), the dispatch overhead
ratio (per measurement: host wall of the job / the agent's own measurement time, median) and the
speed-up over one device. All devices share this host's cores; a measurement lasts at least
``min_seconds`` of wall time, so co-located devices overlap their windows and the speed-up says that
the pool keeps them busy, not what independent boards would deliver.

    python -m benchmarks.bench_devices [--quick] [--counts 1,2,4,8] [--per-device N]
"""

from __future__ import annotations

import argparse
import getpass
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from harness.devices.transport import MeasureSettings  # noqa: E402

SETTINGS = MeasureSettings(runs=20, min_seconds=0.3, warmup_runs=1, warmup_seconds=0.05, timeout_s=60, threads=1)


def run_count(n: int, server_port: int, keys: Any, known_hosts: Path, root: Path, model: Path,
              per_device: int) -> dict[str, Any]:
    from harness.devices.pool import DevicePool, HealthStore
    from tests.sshd import ssh_device

    devices = [ssh_device(server_port, keys, known_hosts, root / f"dev{n}-{i}", name=f"loop{i}") for i in range(n)]
    health = HealthStore(root / f"health{n}.json")
    with DevicePool(devices, health=health, retries=0) as pool:
        warm = [pool.submit(model, SETTINGS, device=d.name) for d in devices]
        first = [f.result() for f in warm]
        bad = [r for r in first if not r.ok]
        if bad:
            raise RuntimeError(f"{bad[0].device}: {bad[0].error_kind}: {bad[0].message}")
        t0 = time.perf_counter()
        jobs = []
        for _ in range(per_device):
            for d in devices:
                submitted = time.perf_counter()
                jobs.append((submitted, pool.submit(model, SETTINGS, device=d.name)))
        records = []
        ratios = []
        for _submitted, fut in jobs:
            rec = fut.result()
            records.append(rec)
        wall = time.perf_counter() - t0
    failed = [r for r in records if not r.ok]
    for rec in records:
        if rec.ok and rec.phases_s and rec.method.get("agent_seconds"):
            ratios.append(sum(rec.phases_s.values()) / rec.method["agent_seconds"])
    ok = [r for r in records if r.ok]
    return {
        "devices": n,
        "measurements": len(records),
        "failed": len(failed),
        "wall_s": wall,
        "measurements_per_s": len(ok) / wall,
        "dispatch_overhead_ratio": statistics.median(ratios) if ratios else None,
        "agent_seconds_median": statistics.median(r.method["agent_seconds"] for r in ok) if ok else None,
        "latency_p50_ms_median": statistics.median(r.latency_ms["p50"] for r in ok if r.latency_ms) if ok else None,
        "upload_bytes_after_first": sum(r.uploaded_bytes for r in records),
    }


def main(argv: list[str] | None = None) -> int:
    from harness.core.model import resolve_model_path
    from tests.sshd import OpenSshServer, ParamikoServer, have_sshd, make_keys, write_known_hosts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,2,4,8")
    ap.add_argument("--per-device", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="1 and 2 devices, 2 measurements each")
    ap.add_argument("--paramiko", action="store_true", help="use the in-process paramiko server even with sshd")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    per_device = args.per_device
    if args.quick:
        counts, per_device = [1, 2], 2
    model = resolve_model_path("builtin:digits-vit")[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="qae-bench-dev-") as tmp:
        root = Path(tmp)
        keys = make_keys(root / "keys")
        server: Any
        if have_sshd() and not args.paramiko:
            server, kind = OpenSshServer(root / "sshd", keys), "openssh"
        else:
            server, kind = ParamikoServer(keys, user=getpass.getuser(), env={"HOME": tmp}), "paramiko"
        try:
            kh = write_known_hosts(root / "known_hosts", server.port, keys.host_key)
            for n in counts:
                rows.append(run_count(n, server.port, keys, kh, root, model, per_device))
        finally:
            server.stop()
    base = rows[0]["measurements_per_s"] if rows else 0.0
    for r in rows:
        r["speedup_vs_first"] = r["measurements_per_s"] / base if base else None
    settings = {k: v for k, v in vars(SETTINGS).items() if k != "genome"}
    path = common.write_result("devices", {"benchmark": "devices", "server": kind, "model": "builtin:digits-vit",
                                           "settings": settings, "per_device": per_device, "rows": rows})
    print(f"loopback SSH devices ({kind} on 127.0.0.1), digits-vit, {per_device} measurements per device:")
    print("  devices  measurements/s  speed-up  dispatch overhead (host wall / agent time)")
    for r in rows:
        ratio = r["dispatch_overhead_ratio"]
        print(f"  {r['devices']:7d}  {r['measurements_per_s']:14.2f}  {r['speedup_vs_first']:8.2f}  "
              f"{ratio:.3f}" if ratio is not None else "  n/a")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
