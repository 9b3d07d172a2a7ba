"""Device-boundary fault scenarios for benchmarks/bench_faults.py (issue 13).

Each scenario runs end to end with real processes: a fake agent executable answering well-formed
garbage or hanging, the real agent behind OpenSSH sshd (the in-process paramiko server where sshd is
not installed), jobs submitted to a ``DevicePool`` as a search submits them. It returns
{"outcome": "survived" | "clean error" | "FAILED", "detail", "archive", "lost", "duplicated",
"orphans"}: "clean error" is a typed failure record (never an exception, never ok), "lost" a job
with no record, "duplicated" a non-transient failure that was retried, "orphans" processes of the
device session still running after qae gave up on it.
"""

from __future__ import annotations

import getpass
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.devices.config import DeviceConfig
from harness.devices.connect import connect
from harness.devices.pool import DevicePool, HealthStore
from harness.devices.transport import MeasureRecord, MeasureSettings
from tests.devices.fake_agent import measure_reply, write_fake_agent
from tests.sshd import OpenSshServer, ParamikoServer, have_sshd, make_keys, ssh_device, write_known_hosts

MODEL = Path(__file__).resolve().parents[1] / "harness" / "builtin" / "digits_vit" / "model.onnx"
FAST = MeasureSettings(runs=5, min_seconds=0.05, warmup_seconds=0.01, timeout_s=60)
LONG = MeasureSettings(runs=5, min_seconds=60, warmup_seconds=0.01, timeout_s=120)


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _orphans(pids: list[int], wait_s: float = 10.0) -> int:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return sum(_alive(p) for p in pids)


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def _result(rec: MeasureRecord | None, want: tuple[str, ...], orphans: int = 0, attempts_max: int = 1,
            extra: str = "") -> dict[str, Any]:
    if rec is None:
        return {"outcome": "FAILED", "detail": "no record: the job was lost", "archive": "-", "lost": True,
                "duplicated": False, "orphans": orphans}
    attempts = int(rec.method.get("host_attempts", 1))
    ok = not rec.ok and rec.error_kind in want and orphans == 0 and attempts <= attempts_max
    return {"outcome": "clean error" if ok else "FAILED",
            "detail": f"{rec.error_kind} after {attempts} attempt(s): {rec.message[:160]}{extra}",
            "archive": f"1 failure record ({rec.error_kind})" if not rec.ok else "1 measurement (ok)",
            "lost": False, "duplicated": attempts > attempts_max, "orphans": orphans}


def _pool_measure(dev: DeviceConfig, workdir: Path, settings: MeasureSettings = FAST) -> MeasureRecord | None:
    health = HealthStore(workdir / "health.json")
    with DevicePool([dev], health=health, retries=2, backoff_s=0.0) as pool:
        try:
            return pool.submit(MODEL, settings, device=dev.name).result(300)
        except Exception:
            return None


def _fake(workdir: Path, **kw: Any) -> DeviceConfig:
    agent = write_fake_agent(workdir / "fake_agent", **kw)
    return DeviceConfig(name="fake", transport="local", python=str(agent), sensor="none",
                        cache_dir=str(workdir / "cache"), upload_timeout_s=3.0)


def garbage_replies(workdir: Path) -> dict[str, Any]:
    dev = _fake(workdir, replies={"measure": measure_reply(latency_ms="fast", peak_memory_bytes=-5)})
    return _result(_pool_measure(dev, workdir), ("PROTOCOL",))


def nan_latency(workdir: Path) -> dict[str, Any]:
    dev = _fake(workdir, replies={"measure": measure_reply({"p50": float("nan")})})
    return _result(_pool_measure(dev, workdir), ("PROTOCOL",))


def missing_field(workdir: Path) -> dict[str, Any]:
    dev = _fake(workdir, replies={"measure": measure_reply(latency_ms=None)})
    return _result(_pool_measure(dev, workdir), ("PROTOCOL",))


class _Ssh:
    """OpenSSH sshd when installed, else the in-process paramiko server."""

    def __init__(self, workdir: Path) -> None:
        keys = make_keys(workdir / "keys")
        self.server: Any = (OpenSshServer(workdir / "sshd", keys) if have_sshd()
                            else ParamikoServer(keys, user=getpass.getuser(), env={"HOME": str(workdir)}))
        kh = write_known_hosts(workdir / "known_hosts", self.server.port, keys.host_key)
        self.device = ssh_device(self.server.port, keys, kh, workdir / "cache")
        self.keys = keys
        self.name = "sshd" if have_sshd() else "paramiko server"

    def __enter__(self) -> _Ssh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def hung_agent_killed(workdir: Path) -> dict[str, Any]:
    pidfile = workdir / "pids"
    agent = write_fake_agent(workdir / "hung_agent", hang="has_model", pidfile=pidfile)
    with _Ssh(workdir) as ssh:
        dev = DeviceConfig(**{**ssh.device.to_dict(), "python": str(agent), "upload_timeout_s": 2.0,
                              "providers": tuple(ssh.device.providers)})
        t = connect(dev)
        try:
            rec: MeasureRecord | None = t.measure(MODEL, FAST)
        except Exception:
            rec = None
        pids = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
        left = _orphans(pids)
        t.close()
    return _result(rec, ("UPLOAD",), orphans=left, extra=f" (over {ssh.name}; {len(pids)} processes checked)")


def missing_interpreter(workdir: Path) -> dict[str, Any]:
    with _Ssh(workdir) as ssh:
        dev = DeviceConfig(**{**ssh.device.to_dict(), "python": "/nonexistent/python3",
                              "providers": tuple(ssh.device.providers)})
        return _result(_pool_measure(dev, workdir), ("RUNTIME_MISSING",), extra=f" (over {ssh.name})")


def sshd_stopped_mid_measurement(workdir: Path) -> dict[str, Any]:
    with _Ssh(workdir) as ssh:
        t = connect(ssh.device)
        agent_pid = int(t.handshake()["pid"])
        out: list[MeasureRecord] = []
        th = threading.Thread(target=lambda: out.append(t.measure(MODEL, LONG)), daemon=True)
        th.start()
        deadline = time.monotonic() + 30
        while not _children(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = _children(agent_pid)
        time.sleep(0.5)
        if isinstance(ssh.server, OpenSshServer):
            ssh.server.stop(sessions=True)
        else:
            ssh.server.stop()
        th.join(60)
        t.close()
        left = _orphans([agent_pid, *child])
    return _result(out[0] if out else None, ("CONNECT", "AGENT_CRASHED"), orphans=left,
                   extra=f" (over {ssh.name})")


def wrong_host_key(workdir: Path) -> dict[str, Any]:
    import paramiko

    with _Ssh(workdir) as ssh:
        kh = write_known_hosts(workdir / "other_known_hosts", ssh.server.port, paramiko.ECDSAKey.generate())
        before = kh.read_text()
        dev = DeviceConfig(**{**ssh.device.to_dict(), "known_hosts": str(kh), "providers": tuple(ssh.device.providers)})
        res = _result(_pool_measure(dev, workdir), ("HOSTKEY",))
        if kh.read_text() != before:
            res.update(outcome="FAILED", detail="known_hosts was changed: " + res["detail"])
        return res


SCENARIOS: list[tuple[str, Callable[[Path], dict[str, Any]]]] = [
    ("device: well-formed garbage reply", garbage_replies),
    ("device: NaN latency", nan_latency),
    ("device: reply missing latency_ms", missing_field),
    ("device: hung agent killed", hung_agent_killed),
    ("device: missing interpreter", missing_interpreter),
    ("device: sshd stopped mid-measurement", sshd_stopped_mid_measurement),
    ("device: wrong host key", wrong_host_key),
]


def main() -> int:
    import tempfile

    failed = 0
    for name, fn in SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="qae-fault-") as tmp:
            os.environ["QAE_CACHE_DIR"] = str(Path(tmp) / "state")
            res = fn(Path(tmp))
        failed += res["outcome"] == "FAILED"
        print(f"{name:40s} {res['outcome']:12s} orphans={res['orphans']} {res['detail'][:100]}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
