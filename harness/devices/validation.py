"""The shipped validation suite for a real phone or board (run by ``pytest --qae-devices FILE``).

Per device: the agent deploys and hands shake; the runtime loads and runs a model; a measurement
replicates within 5 % over 5 tries (MLPerf Mobile's rule, on p90); sensor readings are sane when a
sensor exists; the clock offset is small.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.core.model import resolve_model_path
from harness.devices.connect import connect
from harness.devices.transport import MeasureSettings, Transport

MODEL = resolve_model_path("builtin:digits-vit")[0]


@pytest.fixture(scope="module")
def transport(qae_device: Any) -> Iterator[Transport]:
    t = connect(qae_device)
    yield t
    t.close()


def test_agent_deploys(transport: Transport) -> None:
    facts = transport.handshake()
    assert facts["agent_version"] and facts["protocol"] in (1, 2)
    assert facts["cpu_count"] is None or facts["cpu_count"] >= 1


def test_runtime_loads_a_model(transport: Transport) -> None:
    rec = transport.measure(MODEL, MeasureSettings(runs=10, min_seconds=0.2))
    assert rec.ok, f"{rec.error_kind}: {rec.message}"
    assert rec.latency_ms and rec.latency_ms["p50"] > 0 and rec.peak_memory_bytes


def test_measurements_replicate(transport: Transport) -> None:
    p90 = []
    for _ in range(5):
        rec = transport.measure(MODEL, MeasureSettings(runs=200, min_seconds=1.0))
        assert rec.ok, f"{rec.error_kind}: {rec.message}"
        assert rec.latency_ms is not None
        p90.append(rec.latency_ms["p90"])
    spread = (max(p90) - min(p90)) / sorted(p90)[2]
    assert spread <= 0.05, f"p90 over 5 tries {p90} spreads {spread:.1%} (> 5 %): check governor and load"


def test_sensor_readings_are_sane(transport: Transport) -> None:
    rec = transport.measure(MODEL, MeasureSettings(runs=50, min_seconds=1.0, idle_seconds=1.0))
    assert rec.ok, f"{rec.error_kind}: {rec.message}"
    if rec.energy_j is None:
        assert rec.energy_method is None
        pytest.skip("this device has no energy sensor: energy is absent, as it must be")
    assert rec.energy_method
    assert 0 < rec.energy_j < 100, "energy per inference outside (0, 100) J"
    if rec.idle_power_w is not None:
        assert 0 < rec.idle_power_w < 1000, f"idle power {rec.idle_power_w} W is not plausible"


def test_clock_offset(transport: Transport, request: pytest.FixtureRequest) -> None:
    limit = request.config.getoption("--qae-max-clock-offset")
    facts = transport.handshake()
    assert abs(facts["clock_offset_s"]) <= limit, (
        f"device clock is {facts['clock_offset_s']:+.3f} s off the host's (rtt {facts['rtt_s']:.3f} s): enable NTP")
