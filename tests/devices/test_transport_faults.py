"""Fault tests: every fault ends in a typed record (or a typed DeviceError for a handshake), never
a hang. Each runs the real agent behind a real server."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest

from harness.core.model import resolve_model_path
from harness.devices.config import DeviceConfig
from harness.devices.connect import connect
from harness.devices.transport import DeviceError, MeasureRecord, MeasureSettings
from tests.sshd import OpenSshServer, have_sshd, make_keys, ssh_device, write_known_hosts

MODEL = resolve_model_path("builtin:digits-vit")[0]
FAST = MeasureSettings(runs=5, min_seconds=0.05, warmup_seconds=0.01, timeout_s=60)
LONG = MeasureSettings(runs=5, min_seconds=60, warmup_seconds=0.01, timeout_s=120)


def measure_in_thread(t: Any, settings: MeasureSettings) -> tuple[threading.Thread, list[MeasureRecord]]:
    out: list[MeasureRecord] = []
    th = threading.Thread(target=lambda: out.append(t.measure(MODEL, settings)), daemon=True)
    th.start()
    return th, out


def wait_for_child(agent_pid: int, timeout: float = 20) -> int:
    """PID of the agent's measurement child once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == agent_pid:
                        return int(d.name)
                except (OSError, IndexError, ValueError):
                    continue
        time.sleep(0.05)
    raise AssertionError("the measurement child never started")


def pid_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_agent_killed_mid_measurement(kind: str, tmp_path: Path, paramiko_server: Any) -> None:
    dev = (DeviceConfig(name="local", transport="local", cache_dir=str(tmp_path / "c"), sensor="none")
           if kind == "local" else paramiko_server[1])
    t = connect(dev)
    agent_pid = t.handshake()["pid"]
    th, out = measure_in_thread(t, LONG)
    child = wait_for_child(agent_pid)
    os.kill(agent_pid, signal.SIGKILL)
    th.join(30)
    assert not th.is_alive()
    assert out[0].error_kind == "AGENT_CRASHED" and not out[0].ok
    assert pid_gone(child), "the measurement child outlived its agent"
    rec = t.measure(MODEL, FAST)  # the next call starts a fresh agent
    assert rec.ok, rec.message
    t.close()


def test_paramiko_server_stopped_mid_run(paramiko_server: Any) -> None:
    server, dev = paramiko_server
    t = connect(dev)
    assert t.measure(MODEL, FAST).ok
    th, out = measure_in_thread(t, LONG)
    time.sleep(1.0)
    server.stop()
    th.join(30)
    assert not th.is_alive()
    assert out[0].error_kind == "CONNECT", out[0].message
    assert t.measure(MODEL, FAST).error_kind == "CONNECT"  # and it stays a record while the server is down
    t.close()


@pytest.mark.sshd
def test_sshd_stopped_mid_run(tmp_path: Path) -> None:
    if not have_sshd():
        pytest.skip("OpenSSH sshd is not installed (.ci/run installs openssh-server)")
    keys = make_keys(tmp_path / "keys")
    server = OpenSshServer(tmp_path / "sshd", keys)
    kh = write_known_hosts(tmp_path / "known_hosts", server.port, keys.host_key)
    t = connect(ssh_device(server.port, keys, kh, tmp_path / "cache"))
    try:
        th, out = measure_in_thread(t, LONG)
        time.sleep(1.5)
        server.stop(sessions=True)
        th.join(30)
        assert not th.is_alive()
        assert out[0].error_kind in ("CONNECT", "AGENT_CRASHED"), out[0].message
        again = t.measure(MODEL, FAST)
        assert again.error_kind == "CONNECT", again.message
    finally:
        t.close()
        server.stop()


def test_unknown_host_key(paramiko_server: Any, tmp_path: Path) -> None:
    _, dev = paramiko_server
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    t = connect(DeviceConfig(**{**dev.to_dict(), "known_hosts": str(empty), "providers": tuple(dev.providers)}))
    rec = t.measure(MODEL, FAST)
    assert rec.error_kind == "HOSTKEY" and "ssh-keyscan" in rec.message and str(empty) in rec.message
    with pytest.raises(DeviceError) as err:
        t.handshake()
    assert err.value.kind == "HOSTKEY"
    assert empty.read_text() == ""  # never trusted silently
    t.close()


def test_changed_host_key(paramiko_server: Any, tmp_path: Path) -> None:
    server, dev = paramiko_server
    other = paramiko.ECDSAKey.generate()
    kh = write_known_hosts(tmp_path / "kh_changed", server.port, other)
    t = connect(DeviceConfig(**{**dev.to_dict(), "known_hosts": str(kh), "providers": tuple(dev.providers)}))
    rec = t.measure(MODEL, FAST)
    assert rec.error_kind == "HOSTKEY" and "CHANGED" in rec.message and "ssh-keygen -R" in rec.message
    t.close()


def test_wrong_user_key(paramiko_server: Any, tmp_path: Path) -> None:
    _, dev = paramiko_server
    wrong = tmp_path / "wrong_key"
    paramiko.ECDSAKey.generate().write_private_key_file(str(wrong))
    t = connect(DeviceConfig(**{**dev.to_dict(), "key_file": str(wrong), "providers": tuple(dev.providers)}))
    rec = t.measure(MODEL, FAST)
    assert rec.error_kind == "AUTH", rec.message
    t.close()


def test_connection_refused(tmp_path: Path) -> None:
    from tests.sshd import free_port

    keys = make_keys(tmp_path / "keys")
    port = free_port()
    dev = ssh_device(port, keys, write_known_hosts(tmp_path / "kh", port, keys.host_key), tmp_path / "c",
                     connect_timeout_s=3.0)
    rec = connect(dev).measure(MODEL, FAST)
    assert rec.error_kind == "CONNECT"


GARBAGE = "#!/bin/sh\necho 'Welcome to the board! Last login: yesterday'\nexec cat >/dev/null\n"


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_agent_printing_garbage(kind: str, tmp_path: Path, paramiko_server: Any) -> None:
    fake = tmp_path / "fake_python"
    fake.write_text(GARBAGE)
    fake.chmod(0o755)
    base = (DeviceConfig(name="local", transport="local", cache_dir=str(tmp_path / "c"), sensor="none")
            if kind == "local" else paramiko_server[1])
    dev = DeviceConfig(**{**base.to_dict(), "python": str(fake), "providers": tuple(base.providers)})
    t = connect(dev)
    rec = t.measure(MODEL, FAST)
    assert rec.error_kind == "PROTOCOL" and "Welcome" in rec.message
    t.close()


def test_garbage_mid_session(tmp_path: Path) -> None:
    """An agent that greets correctly and then prints junk breaks the protocol, not the host."""
    fake = tmp_path / "fake_agent"
    fake.write_text('#!/bin/sh\necho \'{"type": "hello", "protocol": 1}\'\nread line\necho "Segfault!!"\n'
                    "exec cat >/dev/null\n")
    fake.chmod(0o755)
    t = connect(DeviceConfig(name="g", transport="local", python=str(fake), sensor="none"))
    rec = t.measure(MODEL, FAST)
    assert rec.error_kind == "PROTOCOL" and "Segfault" in rec.message
    t.close()


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_measurement_past_timeout(kind: str, tmp_path: Path, paramiko_server: Any) -> None:
    dev = (DeviceConfig(name="local", transport="local", cache_dir=str(tmp_path / "c"), sensor="none")
           if kind == "local" else paramiko_server[1])
    t = connect(dev)
    rec = t.measure(MODEL, MeasureSettings(runs=5, min_seconds=60, warmup_seconds=0.0, timeout_s=1.5))
    assert rec.error_kind == "RUN_TIMEOUT" and "timeout" in rec.message
    assert t.measure(MODEL, FAST).ok  # the agent survived its child's timeout
    t.close()


def test_missing_runtime(tmp_path: Path) -> None:
    t = connect(DeviceConfig(name="local", transport="local", cache_dir=str(tmp_path / "c"), sensor="none",
                             providers=("NoSuchExecutionProvider",)))
    rec = t.measure(MODEL, FAST)
    assert rec.error_kind == "RUNTIME_MISSING" and "NoSuchExecutionProvider" in rec.message
    t.close()


def test_missing_interpreter(tmp_path: Path) -> None:
    t = connect(DeviceConfig(name="local", transport="local", python=str(tmp_path / "no-python"), sensor="none"))
    rec = t.measure(MODEL, FAST)
    assert not rec.ok and rec.error_kind == "RUNTIME_MISSING"
    assert sys.executable  # the host interpreter itself is fine
