"""devices.yaml, health and quarantine, the pool, and the devices/measure CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli.main import main
from harness.core.errors import InputError
from harness.devices.config import get_device, load_devices
from harness.devices.pool import QUARANTINED, DevicePool, HealthStore
from harness.devices.transport import MeasureSettings
from tests.sshd import free_port

MODEL = Path(__file__).resolve().parents[2] / "harness/builtin/digits_vit/model.onnx"


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QAE_CACHE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("QAE_DEVICES", raising=False)
    monkeypatch.chdir(tmp_path)


def write(path: Path, devices: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"devices": devices}))
    return path


def test_local_exists_without_a_file() -> None:
    devices = load_devices()
    assert list(devices) == ["local"] and devices["local"].transport == "local"


def test_file_env_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "d.yaml", [{"name": "pi5", "host": "pi.lan", "user": "pi", "key_file": "k",
                                     "tags": ["arm"], "profile": "arm-neon-a76", "threads": 4}])
    dev = get_device("pi5", f)
    assert dev.transport == "ssh" and dev.port == 22 and dev.tags == ("arm",) and dev.threads == 4
    assert dev.key_file == str(tmp_path / "k")
    monkeypatch.setenv("QAE_DEVICES", str(f))
    assert "pi5" in load_devices()
    monkeypatch.delenv("QAE_DEVICES")
    write(tmp_path / "devices.yaml", [{"name": "cwd-dev", "transport": "simulated"}])
    assert set(load_devices()) == {"local", "cwd-dev"}


@pytest.mark.parametrize("entry, words", [
    ({"name": "a", "hots": "x"}, "unknown field 'hots'"),
    ({"name": "a", "transport": "telnet"}, "transport 'telnet'"),
    ({"name": "a"}, "needs 'host'"),
    ({"name": "a", "host": "h", "port": "22"}, "'port' must be int"),
    ({"name": "a", "host": "h", "sensor": "thermometer"}, "sensor 'thermometer'"),
    ({"name": "a", "host": "h", "sensor": {"kind": "command", "argv": ["x"]}}, "unit: J"),
    ({"host": "h"}, "needs a 'name'"),
])
def test_validation_messages(tmp_path: Path, entry: dict[str, Any], words: str) -> None:
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_devices(write(tmp_path / "d.yaml", [entry]))


def test_unknown_device_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="known devices: local"):
        get_device("nope")
    with pytest.raises(InputError, match="appears twice"):
        load_devices(write(tmp_path / "d.yaml", [{"name": "x", "host": "h"}, {"name": "x", "host": "h"}]))
    with pytest.raises(InputError, match="does not exist"):
        load_devices(tmp_path / "missing.yaml")


def test_devices_list_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path / "d.yaml", [{"name": "sim", "transport": "simulated", "simulation": {"latency_ms": 2}}])
    assert main(["devices", "list", "--devices", str(f), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {"local", "sim"} and rows[0]["health"]["state"] == "GOOD"


def test_quarantine_reported_by_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens here
    f = write(tmp_path / "d.yaml", [
        {"name": "dead", "host": "127.0.0.1", "port": port, "connect_timeout_s": 2},
        {"name": "sim", "transport": "simulated", "simulation": {"latency_ms": 2}},
    ])
    devices = load_devices(f)
    health = HealthStore(max_failures=3)
    with DevicePool([devices["dead"]], health=health, retries=1, backoff_s=0.01) as pool:
        recs = [pool.submit(MODEL, MeasureSettings(runs=1), device="dead").result(60) for _ in range(4)]
    assert [r.error_kind for r in recs] == ["CONNECT", "CONNECT", "CONNECT", "QUARANTINED"]
    assert recs[0].method["host_attempts"] == 2  # CONNECT is transient: retried once
    assert health.quarantined("dead")
    code = main(["devices", "check", "--devices", str(f), "--json"])
    rows = {r["device"]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 1
    assert rows["dead"]["health"]["state"] == QUARANTINED and rows["dead"]["error_kind"] == "CONNECT"
    assert rows["sim"]["ok"] and rows["sim"]["facts"]["simulated"]
    main(["devices", "check", "dead", "--devices", str(f)])
    assert "QUARANTINED" in capsys.readouterr().out


def test_pool_keeps_every_device_busy() -> None:
    from harness.devices.config import DeviceConfig

    devs = [DeviceConfig(name=f"s{i}", transport="simulated", simulation={"latency_ms": 1, "delay_s": 0.05})
            for i in range(3)]
    with DevicePool(devs, health=HealthStore()) as pool:
        futs = [pool.submit(MODEL, MeasureSettings(runs=3)) for _ in range(9)]
        recs = [f.result(30) for f in futs]
    assert all(r.ok and r.source == "simulated" for r in recs)
    assert {r.device for r in recs} == {"s0", "s1", "s2"}


def test_pool_retries_transient_only() -> None:
    from harness.devices.config import DeviceConfig

    flaky = DeviceConfig(name="flaky", transport="simulated",
                         simulation={"latency_ms": 1, "failure_rate": 0.5, "seed": 3, "failure_kind": "CONNECT"})
    broken = DeviceConfig(name="broken", transport="simulated",
                          simulation={"latency_ms": 1, "failure_rate": 1.0, "failure_kind": "RUN_TIMEOUT"})
    with DevicePool([flaky, broken], health=HealthStore(max_failures=100), retries=3, backoff_s=0.0) as pool:
        ok = [pool.submit(MODEL, MeasureSettings(runs=2), device="flaky").result(30) for _ in range(6)]
        timeout = pool.submit(MODEL, MeasureSettings(runs=2), device="broken").result(30)
    assert any(r.method["host_attempts"] > 1 for r in ok if r.ok)
    assert timeout.error_kind == "RUN_TIMEOUT" and timeout.method["host_attempts"] == 1


def run_qae(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=240)


def test_measure_cli_json(tmp_path: Path) -> None:
    genome = tmp_path / "w8a8.yaml"
    genome.write_text(yaml.safe_dump({"default": {"weight_bits": 8, "activation_bits": 8}}))
    for extra in ([], ["--genome", str(genome)]):
        p = run_qae("measure", "builtin:digits-vit", "--device", "local", "--json", "--runs", "5",
                    "--min-seconds", "0.05", "--warmup-seconds", "0", *extra)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["source"] == "measured" and out["device"] == "local"
        assert set(out["latency_ms"]) >= {"p50", "p90", "mean", "std", "min", "max", "n"}
        assert out["load_ms"] > 0 and out["peak_memory_bytes"] > 0
        assert out["energy_j"] is None and "energy_method" in out
        assert out["method"]["runs_min"] == 5 and out["environment"]["runtime"]["version"]
    assert out["genome_hash"]


def test_measure_cli_failure_record(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    p = run_qae("measure", str(bad), "--device", "local", "--json", "--runs", "1")
    assert p.returncode != 0
    out = json.loads(p.stdout)
    assert out["ok"] is False and out["error_kind"] == "MODEL_LOAD" and out["message"]
    p = run_qae("measure", str(bad), "--device", "nowhere")
    assert p.returncode == 2 and "unknown device 'nowhere'" in p.stderr and "Traceback" not in p.stderr


def test_simulated_with_profile() -> None:
    pytest.importorskip("profiles.costmodel")
    from harness.devices.config import DeviceConfig
    from harness.devices.connect import connect

    dev = DeviceConfig(name="sim-a76", transport="simulated", profile="arm-neon-a76", simulation={"noise": 0.02})
    rec = connect(dev).measure(MODEL, MeasureSettings(runs=10))
    assert rec.ok, rec.message
    assert rec.source == "simulated" and rec.method["mode"] == "profile"
    assert rec.latency_ms and rec.latency_ms["p50"] > 0 and rec.latency_ms["n"] == 10
    assert rec.energy_method and "simulated" in rec.energy_method
