"""Contract suite: every transport (local, ssh via the in-process paramiko server, ssh via OpenSSH
sshd, simulated) answers the same calls with the same record shape."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.devices.config import DeviceConfig
from harness.devices.connect import connect
from harness.devices.transport import MeasureRecord, MeasureSettings, Transport
from tests.sshd import OpenSshServer, ParamikoServer, have_sshd, make_keys, ssh_device, write_known_hosts

FAST = MeasureSettings(runs=5, min_seconds=0.05, warmup_runs=1, warmup_seconds=0.01, timeout_s=60)
LAT_KEYS = {"p50", "p90", "mean", "std", "min", "max", "n"}


def sim_fn(model_path: Path, settings: MeasureSettings) -> dict[str, Any]:
    return {"latency_ms": 1.0 + model_path.stat().st_size / 1e6, "peak_memory_bytes": 1 << 20, "energy_j": None}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, digits_workload: Any) -> dict[str, Path]:
    from harness.quant.quantize import save_model

    root = tmp_path_factory.mktemp("models")
    w8a8 = root / "w8a8.onnx"
    save_model(digits_workload.build(digits_workload.uniform(weight_bits=8, activation_bits=8)), w8a8)
    return {"fp32": digits_workload.model.path, "w8a8": w8a8}


@pytest.fixture(params=["local", "ssh-paramiko", "ssh-openssh", "simulated"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Transport]:
    kind = request.param
    server: Any = None
    if kind == "local":
        t: Transport = connect(DeviceConfig(name="local", transport="local", cache_dir=str(tmp_path / "cache"),
                                            sensor="none"))
    elif kind == "simulated":
        t = connect(DeviceConfig(name="sim", transport="simulated", simulation={"noise": 0.05, "seed": 1}),
                    fn=sim_fn)
    else:
        keys = make_keys(tmp_path / "keys")
        if kind == "ssh-paramiko":
            server = ParamikoServer(keys, user=getpass.getuser(), env={"HOME": str(tmp_path)})
        else:
            if not have_sshd():
                pytest.skip("OpenSSH sshd is not installed (.ci/run installs openssh-server)")
            server = OpenSshServer(tmp_path / "sshd", keys)
        kh = write_known_hosts(tmp_path / "known_hosts", server.port, keys.host_key)
        t = connect(ssh_device(server.port, keys, kh, tmp_path / "cache"))
    yield t
    t.close()
    if server is not None:
        server.stop()


def check_ok(rec: MeasureRecord, transport: Transport) -> None:
    assert rec.ok, (rec.error_kind, rec.message)
    assert rec.error_kind is None
    assert rec.source == ("simulated" if transport.device.transport == "simulated" else "measured")
    assert rec.device == transport.device.name
    assert rec.latency_ms is not None and set(rec.latency_ms) >= LAT_KEYS
    assert rec.latency_ms["n"] >= FAST.runs
    assert 0 < rec.latency_ms["min"] <= rec.latency_ms["p50"] <= rec.latency_ms["p90"] <= rec.latency_ms["max"]
    assert rec.peak_memory_bytes and rec.peak_memory_bytes > 0
    assert rec.load_ms is not None and rec.load_ms >= 0
    assert rec.method and rec.environment
    assert rec.energy_j is None and rec.energy_method is None  # no sensor: absent, never invented
    d = rec.to_dict()
    assert d["source"] == rec.source and "error_kind" in d


def test_handshake(transport: Transport) -> None:
    facts = transport.handshake()
    for key in ("agent_version", "protocol", "python", "os", "cpu_model", "runtimes", "sensors", "governor",
                "clock_offset_s", "rtt_s"):
        assert key in facts
    if transport.device.transport != "simulated":
        assert facts["runtimes"]["onnxruntime"]["version"]
        assert facts["cpu_count"] >= 1
        assert abs(facts["clock_offset_s"]) < 5  # same host: the clocks agree up to the round trip


@pytest.mark.parametrize("variant", ["fp32", "w8a8"])
def test_measure_builtin(transport: Transport, models: dict[str, Path], variant: str) -> None:
    rec = transport.measure(models[variant], FAST)
    check_ok(rec, transport)
    if rec.source == "measured":
        assert rec.memory_growth_bytes is not None and rec.memory_growth_bytes > 0
        assert rec.method["runs_min"] == FAST.runs and rec.method["min_seconds"] == FAST.min_seconds
        assert rec.method["timed_seconds"] >= FAST.min_seconds
        assert rec.environment["runtime"]["name"] == "onnxruntime"
        assert rec.environment["runtime"]["version"]
        assert "governor" in rec.environment
        assert rec.first_run_ms and rec.first_run_ms > 0


def test_second_measurement_uploads_nothing(transport: Transport, models: dict[str, Path]) -> None:
    first = transport.measure(models["fp32"], FAST)
    second = transport.measure(models["fp32"], FAST)
    check_ok(second, transport)
    assert second.uploaded_bytes == 0
    assert second.model_sha256 == first.model_sha256
    if first.source == "measured":
        assert first.uploaded_bytes == models["fp32"].stat().st_size


def test_profile_ops(transport: Transport, models: dict[str, Path]) -> None:
    if transport.device.transport == "simulated":
        pytest.skip("a simulated device has no runtime to profile")
    rec = transport.measure(models["w8a8"], MeasureSettings(runs=5, min_seconds=0.02, warmup_seconds=0.0,
                                                            profile_ops=True))
    assert rec.ok, rec.message
    assert rec.op_times_ms and all(v >= 0 for v in rec.op_times_ms.values())
    prof = rec.op_profile
    assert prof is not None and prof["runs"] >= 5 and prof["nodes"]
    assert {n["provider"] for n in prof["nodes"]} == {"CPUExecutionProvider"}
    assert all(n["op_type"] for n in prof["nodes"])
    assert {n["name"]: n["ms"] for n in prof["nodes"]} == rec.op_times_ms  # the old key, same medians
    # per-node times account for a good share of the profiled runs and never more than all of them
    total = sum(n["ms"] for n in prof["nodes"])
    assert 0.2 * prof["run_ms"] <= total <= 1.01 * prof["run_ms"], (total, prof["run_ms"])


def test_unloadable_model(transport: Transport, tmp_path: Path) -> None:
    if transport.device.transport == "simulated":
        pytest.skip("a simulated device with a function does not load models")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    rec = transport.measure(bad, FAST)
    assert not rec.ok and rec.error_kind == "MODEL_LOAD" and "load" in rec.message
    assert transport.measure(tmp_path / "missing.onnx", FAST).error_kind == "MODEL_LOAD"
