"""The shipped device validation suite: skipped with a reason unless ``--qae-devices`` is given
(then the plugin collects it from the package itself, so it is not re-run from here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from harness.devices.validation import (  # noqa: F401  (collected here so a plain run reports the skips)
    test_agent_deploys,
    test_clock_offset,
    test_measurements_replicate,
    test_runtime_loads_a_model,
    test_sensor_readings_are_sane,
    transport,
)


def test_plugin_runs_suite_against_a_device_file(tmp_path: Path) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"devices": [
        {"name": "sim", "transport": "simulated", "simulation": {"latency_ms": 3.0, "memory_bytes": 1000}}]}))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--qae-devices",
                        str(devices), "--rootdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert "4 passed, 1 skipped" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]  # no sensor: skipped
