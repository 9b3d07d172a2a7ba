"""Energy sensors against simulated sysfs trees: the energy is what the written values imply."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from device_agents import agent
from harness.core.model import resolve_model_path
from harness.devices.config import DeviceConfig
from harness.devices.connect import connect
from harness.devices.transport import MeasureSettings

MODEL = resolve_model_path("builtin:digits-vit")[0]


def put(path: Path, value: object) -> None:
    """Atomic write, as the kernel presents a whole value to every read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def rapl_tree(root: Path, energy_uj: int, max_uj: int) -> Path:
    d = root / "sys/class/powercap/intel-rapl:0"
    put(d / "name", "package-0")
    put(d / "max_energy_range_uj", max_uj)
    put(d / "energy_uj", energy_uj)
    put(d / "intel-rapl:0:0" / "energy_uj", 5)  # a sub-domain: inside the package, never added
    return d / "energy_uj"


def test_rapl_counter_with_wrap(tmp_path: Path) -> None:
    counter = rapl_tree(tmp_path, 999_000, 1_000_000)
    s = agent.RaplSensor(str(tmp_path))
    before = s.read()
    put(counter, 4_000)  # wrapped: 1000 uJ to the top, then 4000 uJ
    assert s.delta(before, s.read()) == pytest.approx(0.005)
    assert "RAPL" in s.method and "package-0" in s.method and len(s.domains) == 1


def test_ina3221_hwmon_vdd_in_is_the_total(tmp_path: Path) -> None:
    d = tmp_path / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for i, (label, mv, ma) in enumerate([("VDD_CPU_GPU_CV", 5000, 3000), ("VDD_IN", 5000, 2000),
                                         ("VDD_SOC", 5000, 1000)], start=1):
        put(d / f"in{i}_label", label)
        put(d / f"in{i}_input", mv)
        put(d / f"curr{i}_input", ma)
    s = agent.Ina3221Sensor(str(tmp_path))
    assert s.read() == pytest.approx(10.0) and "VDD_IN" in s.method


def test_ina3221_iio_layout(tmp_path: Path) -> None:
    d = tmp_path / "sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0"
    put(d / "rail_name_0", "VDD_IN")
    put(d / "in_power0_input", 7500)
    put(d / "rail_name_1", "VDD_GPU")
    put(d / "in_power1_input", 9000)
    s = agent.Ina3221Sensor(str(tmp_path))
    assert s.read() == pytest.approx(7.5) and "iio" in s.method


@pytest.mark.parametrize("current", [-500_000, 500_000])
def test_power_supply_sign(tmp_path: Path, current: int) -> None:
    d = tmp_path / "sys/class/power_supply/battery"
    put(d / "current_now", current)
    put(d / "voltage_now", 4_000_000)
    put(d / "status", "Discharging")
    s = agent.PowerSupplySensor(str(tmp_path))
    assert s.read() == pytest.approx(2.0) and "Discharging" in s.method


def test_command_sensor(tmp_path: Path) -> None:
    script = tmp_path / "meter.sh"
    script.write_text("#!/bin/sh\necho 'meter v1'\necho '3.25 W'\n")
    script.chmod(0o755)
    s = agent.make_sensor({"kind": "command", "argv": [str(script)], "unit": "W"}, "/")
    assert s is not None and s.kind == "power" and s.read() == 3.25


def test_no_sensor(tmp_path: Path) -> None:
    assert agent.make_sensor("auto", str(tmp_path)) is None
    assert agent.make_sensor("none", str(tmp_path)) is None
    with pytest.raises(LookupError):
        agent.make_sensor("rapl", str(tmp_path))


def test_meter_integrates_power(tmp_path: Path) -> None:
    d = tmp_path / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon0"
    put(d / "in1_label", "VDD_IN")
    put(d / "in1_input", 5000)
    put(d / "curr1_input", 1000)
    meter = agent.EnergyMeter(agent.Ina3221Sensor(str(tmp_path)), interval=0.01)
    meter.start()
    time.sleep(0.2)
    joules, window = meter.stop()
    assert joules == pytest.approx(5.0 * window, rel=0.02)


def test_measurement_with_ina3221(tmp_path: Path) -> None:
    d = tmp_path / "sysfs/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon0"
    put(d / "in1_label", "VDD_IN")
    put(d / "in1_input", 5000)
    put(d / "curr1_input", 2000)
    dev = DeviceConfig(name="jetson-sim", transport="local", sensor="ina3221", sysfs_root=str(tmp_path / "sysfs"),
                       cache_dir=str(tmp_path / "cache"))
    with connect(dev) as t:
        rec = t.measure(MODEL, MeasureSettings(runs=5, min_seconds=0.2, warmup_seconds=0.0, idle_seconds=0.1))
    assert rec.ok, rec.message
    assert rec.energy and rec.energy_j is not None
    assert rec.energy["joules"] == pytest.approx(10.0 * rec.energy["window_s"], rel=0.02)
    assert rec.energy_j == pytest.approx(rec.energy["joules"] / rec.latency_ms["n"])  # type: ignore[index]
    assert rec.idle_power_w == pytest.approx(10.0, rel=0.02)
    assert rec.energy_method and "VDD_IN" in rec.energy_method
    assert rec.energy["net_per_inference_j"] == pytest.approx(0.0, abs=1e-4)


def test_measurement_with_rapl_wrapping(tmp_path: Path) -> None:
    """A writer thread plays a 5 W package whose counter wraps every 0.4 s.

    The counter is only as fresh as the writer's last write: on a loaded machine the thread can be
    starved, and each end of a window then reads a value up to the longest gap between writes old.
    So the expected energy is 5 W over the window, give or take 5 W over two such gaps (what the
    written values imply), not a fixed share that starvation can exceed.
    """
    root = tmp_path / "sysfs"
    max_uj = 2_000_000
    counter = rapl_tree(root, 0, max_uj)
    stop = threading.Event()
    t0 = time.monotonic()
    gaps = [0.0]

    def tick() -> None:
        last = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            put(counter, int((now - t0) * 5e6) % max_uj)
            gaps.append(now - last)
            last = now
            time.sleep(0.002)

    writer = threading.Thread(target=tick, daemon=True)
    writer.start()
    try:
        dev = DeviceConfig(name="rapl-sim", transport="local", sensor="rapl", sysfs_root=str(root),
                           cache_dir=str(tmp_path / "cache"))
        with connect(dev) as t:
            rec = t.measure(MODEL, MeasureSettings(runs=5, min_seconds=1.0, warmup_seconds=0.0, idle_seconds=0.5))
    finally:
        stop.set()
        writer.join()
    assert rec.ok, rec.message
    assert rec.energy is not None
    stale = max(gaps)
    assert stale < 0.2, f"the writer thread stalled {stale:.3f} s, half a wrap: the test cannot tell a wrap"
    window = rec.energy["window_s"]
    assert rec.energy["joules"] == pytest.approx(5.0 * window, rel=0.05, abs=5.0 * 2 * stale)
    assert rec.idle_power_w == pytest.approx(5.0, rel=0.05, abs=5.0 * 2 * stale / 0.5)
    assert rec.energy_method and rec.energy_method.startswith("RAPL")


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
     "stepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n",
     "AMD EPYC (family 26 model 2 stepping 1)"),
    ("processor\t: 0\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n\nHardware\t: BCM2712\n",
     "BCM2712 (implementer 0x41 part 0xd0b)"),
])
def test_the_agent_names_the_cpu_generation_not_only_its_brand(tmp_path: Path, cpuinfo: str, expected: str) -> None:
    # a cloud host calls Zen 4 and Zen 5 "AMD EPYC" alike; measurements must say which one they ran on
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(cpuinfo)
    assert agent.cpu_model(str(tmp_path)) == expected
    assert agent.cpu_model(str(tmp_path / "absent")) == (agent.platform.processor() or agent.platform.machine())
