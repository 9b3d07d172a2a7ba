"""``qae calibrate --runtime litert`` (issue 21): the LiteRT suite builds .tflite models (a FULLY_CONNECTED
converted with litert-torch at the precisions LiteRT builds), the real agent measures them over the
local transport, and the fit writes a calibrated profile that loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("litert_torch", reason="the litert extra: pip install 'qae[litert]'")


def test_litert_micro_suite_measures_and_fits(tmp_path: Path) -> None:
    from harness.devices.transport import MeasureSettings
    from harness.run.calibrate import run
    from harness.run.calibrate_litert import litert_suite
    from profiles import load_profile

    suite = litert_suite(quick=True)
    suite.items = [it for it in suite.items if it.workload.startswith("litert-micro:")]  # the digits part is slow
    assert {it.genome["default"]["activation_bits"] for it in suite.items} == {"fp", 8, "dynamic"}
    settings = MeasureSettings(runs=5, min_seconds=0.02, warmup_seconds=0.0, threads=1, profile_ops=False)
    out = tmp_path / "lite-local.yaml"
    report = run("local", "litert-xnnpack", out, suite=suite, settings=settings, progress=False, plot=False,
                 passes=1, max_passes=1)
    assert report["failed"] == [] and report["measured"] == len(suite.items)
    models = list(Path(report["measurements"]).read_text().splitlines())
    assert len(models) == len(suite.items) and all('"litert"' in line for line in models)
    data = yaml.safe_load(out.read_text())
    assert data["name"] == "lite-local" and "calibrated on local" in data["throughput_gmacs"]["int8"]["source"]
    assert load_profile(str(out)).name == "lite-local"
