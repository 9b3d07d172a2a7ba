"""Issue 13: nothing that crosses the device boundary is trusted. Real processes throughout: a fake
agent executable answering well-formed garbage, the real agent, OpenSSH sshd and the paramiko server."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.core.errors import InputError
from harness.devices.config import DeviceConfig, load_devices
from harness.devices.connect import connect
from harness.devices.local import TAIL_LINE_BYTES, drain_tail
from harness.devices.pool import DevicePool, HealthStore, measure_with_retries
from harness.devices.transport import TRANSIENT_KINDS, DeviceError, InferSettings, MeasureSettings
from tests.devices.fake_agent import measure_reply, write_fake_agent
from tests.sshd import OpenSshServer, have_sshd, make_keys, ssh_device, write_known_hosts

MODEL = Path(__file__).resolve().parents[2] / "harness/builtin/digits_vit/model.onnx"
FAST = MeasureSettings(runs=5, min_seconds=0.05, warmup_seconds=0.01, timeout_s=60)


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QAE_CACHE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("QAE_DEVICES", raising=False)


def fake_device(tmp_path: Path, name: str = "fake", **kw: Any) -> DeviceConfig:
    agent = write_fake_agent(tmp_path / f"{name}_agent", **kw)
    return DeviceConfig(name=name, transport="local", python=str(agent), sensor="none",
                        cache_dir=str(tmp_path / "cache"), upload_timeout_s=5.0)


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


# ---- finding 2: replies are validated ---------------------------------------------------------------

GARBAGE = {
    "wrong types": measure_reply(latency_ms="fast", peak_memory_bytes=-5),
    "NaN p50": measure_reply({"p50": float("nan")}),
    "Infinity max": measure_reply({"max": float("inf")}),
    "overflowing float": measure_reply().replace('"load_ms": 3.0', '"load_ms": 1e999'),
    "missing latency_ms": measure_reply(latency_ms=None),
    "negative load": measure_reply(load_ms=-1.0),
    "zero runs": measure_reply({"n": 0}),
    "huge string": measure_reply(energy={"per_inference_j": 1.0, "method": "x" * 100_000}),
    "foreign error kind": '!ERROR {"kind": "CONNECT", "message": "please retry me forever"}',
    "error without kind": '!ERROR {"message": "?"}',
}


def test_a_good_fake_reply_is_accepted(tmp_path: Path) -> None:
    """The control: the fake agent's well-formed, sane reply is a measurement."""
    with connect(fake_device(tmp_path, replies={"measure": measure_reply()})) as t:
        rec = t.measure(MODEL, FAST)
    assert rec.ok and rec.latency_ms is not None and rec.latency_ms["p50"] == 1.0, rec.message


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_measure_reply_is_a_protocol_record(tmp_path: Path, case: str) -> None:
    dev = fake_device(tmp_path, replies={"measure": GARBAGE[case]})
    health = HealthStore(max_failures=2)
    with DevicePool([dev], health=health, retries=3, backoff_s=0.0) as pool:
        recs = [pool.submit(MODEL, FAST, device="fake").result(60) for _ in range(3)]
    assert recs[0].error_kind == "PROTOCOL" and not recs[0].ok, (recs[0].error_kind, recs[0].message)
    assert recs[0].latency_ms is None
    assert recs[0].method["host_attempts"] == 1  # not transient: never retried
    assert "PROTOCOL" not in TRANSIENT_KINDS
    assert [r.error_kind for r in recs[1:]] == ["PROTOCOL", "QUARANTINED"]  # counted against the device
    assert health.get(dev)["last_error_kind"] == "PROTOCOL"


@pytest.mark.parametrize("hello, words", [
    ('{"agent_version": "x", "protocol": 2, "cpu_count": -3}', "cpu_count"),
    ('{"agent_version": 7, "protocol": 2}', "agent_version"),
])
def test_garbage_handshake_is_protocol(tmp_path: Path, hello: str, words: str) -> None:
    with connect(fake_device(tmp_path, replies={"hello": hello})) as t, pytest.raises(DeviceError) as err:
        t.handshake()
    assert err.value.kind == "PROTOCOL" and words in str(err.value)


@pytest.mark.parametrize("greeting", [
    '{"type": "hello", "protocol": 2, "pid": -1}',  # kill -1 would signal every process of the user
    '{"type": "hello", "protocol": 2, "pid": "1; rm -rf ~"}',
    '{"type": "hello", "protocol": 2, "pid": 5, "pgid": 0}',
])
def test_greeting_with_a_bad_pid_is_refused(tmp_path: Path, greeting: str) -> None:
    with connect(fake_device(tmp_path, greeting=greeting)) as t:
        rec = t.measure(MODEL, FAST)
    assert rec.error_kind == "PROTOCOL" and "greeting" in rec.message and "id" in rec.message


ZERO_SHA = "0" * 64


@pytest.mark.parametrize("reply, fetch", [
    ('{"shape": [-1, 4], "nbytes": 16, "sha256": "%s", "n": 1, "seconds": 0.1, "data": ""}', None),
    ('{"shape": [1], "nbytes": 4, "sha256": "%s", "n": 1, "seconds": NaN, "data": "AAAAAA=="}', None),
    ('{"shape": [1], "nbytes": 4, "sha256": "%s", "n": 1, "seconds": 0.1, "result_id": "' + "a" * 32 + '"}',
     '{"data": 12, "last": "yes"}'),
])
def test_garbage_infer_and_fetch_replies_are_protocol(tmp_path: Path, reply: str, fetch: str | None) -> None:
    import numpy as np

    data = tmp_path / "x.npz"
    np.savez(data, x=np.zeros((1, 4), np.float32))
    replies = {"infer": reply.replace("%s", ZERO_SHA)} | ({"fetch": fetch} if fetch else {})
    with connect(fake_device(tmp_path, replies=replies)) as t:
        rec = t.infer(MODEL, data, InferSettings())
    assert rec.error_kind == "PROTOCOL" and not rec.ok, rec.message


# ---- finding 11: a missing interpreter is RUNTIME_MISSING on every transport ------------------------

@pytest.fixture
def openssh(tmp_path: Path) -> Iterator[tuple[OpenSshServer, Any]]:
    if not have_sshd():
        pytest.skip("OpenSSH sshd is not installed (.ci/run installs openssh-server)")
    keys = make_keys(tmp_path / "keys")
    server = OpenSshServer(tmp_path / "sshd", keys)
    kh = write_known_hosts(tmp_path / "known_hosts", server.port, keys.host_key)
    yield server, ssh_device(server.port, keys, kh, tmp_path / "cache")
    server.stop()


@pytest.mark.parametrize("kind", ["local", "paramiko", "openssh"])
def test_missing_interpreter_is_runtime_missing(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "local":
        base = DeviceConfig(name="m", transport="local", sensor="none")
    else:
        base = request.getfixturevalue("paramiko_server" if kind == "paramiko" else "openssh")[1]
    dev = DeviceConfig(**{**base.to_dict(), "python": "/nonexistent/python3", "providers": tuple(base.providers)})
    t = connect(dev)
    rec = measure_with_retries(t, MODEL, FAST, retries=2, backoff_s=0.0)
    t.close()
    assert rec.error_kind == "RUNTIME_MISSING", (rec.error_kind, rec.message)
    assert "RUNTIME_MISSING" not in TRANSIENT_KINDS and rec.method["host_attempts"] == 1
    assert "python:" in rec.message


# ---- finding 12: a hung agent is ended, not left running --------------------------------------------

@pytest.mark.parametrize("kind", ["local", "openssh", "paramiko"])
def test_hung_agent_is_killed(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pidfile = tmp_path / "pids"
    agent = write_fake_agent(tmp_path / "hung_agent", hang="has_model", pidfile=pidfile)
    if kind == "local":
        base = DeviceConfig(name="h", transport="local", sensor="none")
    else:
        base = request.getfixturevalue("openssh" if kind == "openssh" else "paramiko_server")[1]
    dev = DeviceConfig(**{**base.to_dict(), "python": str(agent), "upload_timeout_s": 2.0,
                          "providers": tuple(base.providers)})
    t = connect(dev)
    try:
        rec = t.measure(MODEL, FAST)
        assert rec.error_kind == "UPLOAD" and "no reply" in rec.message, rec.message
        pids = [int(p) for p in pidfile.read_text().split()]
        assert len(pids) == 2
        assert gone(pids), f"processes of the hung agent still run after qae gave up: {[p for p in pids if alive(p)]}"
    finally:
        t.close()


def test_sshd_stopped_mid_measurement_leaves_no_agent(openssh: Any) -> None:
    """sshd killed with its sessions: the agent sees EOF while its child measures, and ends both."""
    import threading

    server, dev = openssh
    t = connect(dev)
    agent_pid = int(t.handshake()["pid"])
    out: list[Any] = []
    th = threading.Thread(target=lambda: out.append(t.measure(MODEL, MeasureSettings(
        runs=5, min_seconds=60, warmup_seconds=0.01, timeout_s=120))), daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    kids: list[int] = []
    while not kids and time.monotonic() < deadline:
        kids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _parent(d) == agent_pid]
        time.sleep(0.05)
    assert kids, "the measurement child never started"
    server.stop(sessions=True)
    th.join(60)
    t.close()
    assert out and out[0].error_kind in ("CONNECT", "AGENT_CRASHED"), out
    assert gone([agent_pid, *kids]), "the agent or its measurement child outlived the SSH session"


def _parent(d: Path) -> int:
    try:
        return int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


# ---- finding 14: devices.yaml ranges, hostile files, health keys, stderr cap -----------------------

@pytest.mark.parametrize("entry, words", [
    ({"name": "a", "host": "h", "connect_timeout_s": -5}, "'connect_timeout_s' is -5, out of range: it must be > 0"),
    ({"name": "a", "host": "h", "affinity": ["a", "b"]}, "'affinity[0]' must be int, not str"),
    ({"name": "a", "host": "h", "port": 70000}, "'port' is 70000, out of range"),
    ({"name": "a", "host": "h", "threads": 0}, "'threads' is 0, out of range"),
    ({"name": "a", "host": "h", "keepalive_s": True}, "'keepalive_s' must be number, not bool"),
    ({"name": "a", "transport": "simulated", "simulation": {"failure_rate": 2}}, "simulation.failure_rate"),
    ({"name": "a", "host": "h", "providers": [""]}, "providers[0]"),
])
def test_devices_file_ranges(tmp_path: Path, entry: dict[str, Any], words: str) -> None:
    f = tmp_path / "d.yaml"
    f.write_text(yaml.safe_dump({"devices": [entry]}))
    with pytest.raises(InputError) as err:
        load_devices(f)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content, words", [
    (b"devices:\n  - name: caf\xe9\n", "not UTF-8"),
    (b"devices: " + b"[" * 5000 + b"]" * 5000 + b"\n", "devices"),
    (b"x" * (2 << 20), "over"),
])
def test_hostile_devices_file_is_a_clean_cli_error(tmp_path: Path, content: bytes, words: str) -> None:
    f = tmp_path / "d.yaml"
    f.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "harness.cli.main", "devices", "list", "--devices", str(f)],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("qae: error:") and words in proc.stderr, proc.stderr


def test_health_is_keyed_by_device_not_name(tmp_path: Path) -> None:
    """Two devices files that both say ``pi`` for different machines keep separate health."""
    store = HealthStore(max_failures=1)
    a = DeviceConfig(name="pi", host="10.0.0.1")
    b = DeviceConfig(name="pi", host="10.0.0.2")
    store.record(a, False, "CONNECT", "down")
    assert store.quarantined(a) and not store.quarantined(b)
    store.register([b])
    assert not store.quarantined("pi")  # a registered name means that device


def test_stderr_tail_caps_line_length(tmp_path: Path) -> None:
    """A process writing 20 MB to stderr without a newline leaves at most the tail's lines x cap."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('x' * (20 << 20))"],
                            stderr=subprocess.PIPE)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    drain_tail(proc.stderr, tail)
    proc.wait()
    assert len(tail) == 20 and max(len(x) for x in tail) <= TAIL_LINE_BYTES
