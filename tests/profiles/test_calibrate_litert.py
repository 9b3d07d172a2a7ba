"""``qae calibrate --runtime litert`` (issue 21): the LiteRT suite builds .tflite models (a FULLY_CONNECTED
converted with litert-torch at the precisions LiteRT builds), the real agent measures them over the
local transport, and the fit writes a calibrated profile that loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.extras import require_litert

require_litert()  # litert-torch is not imported: qae converts in a child process


def test_litert_suite_measures_and_fits(tmp_path: Path, lite: dict[str, Any]) -> None:
    from harness.devices.transport import MeasureSettings
    from harness.run.calibrate import Item, run
    from harness.run.calibrate_litert import LITE_GENES, litert_suite
    from profiles import load_profile

    suite = litert_suite(quick=True)
    assert {it.workload for it in suite.items} == {"litert-micro:mm8x64x64", "litert:builtin:digits-vit"}
    # the session's converted module stands in for the suite's models (their conversions take a while)
    name = f"litert:{lite['model']}"
    suite.items = [Item(f"tiny-{g}", name, {"default": LITE_GENES[g]}, "fit") for g in ("fp", "w8a8", "w8dyn")]
    suite.items.append(Item("tiny-mix", name, {"mix_seed": 7}, "heldout"))
    suite.model_calib[str(lite["model"])] = str(lite["calib"])
    settings = MeasureSettings(runs=5, min_seconds=0.02, warmup_seconds=0.0, threads=1, profile_ops=False)
    out = tmp_path / "lite-local.yaml"
    report = run("local", "litert-xnnpack", out, suite=suite, settings=settings, progress=False, plot=False,
                 passes=1, max_passes=1)
    assert report["failed"] == [] and report["measured"] == len(suite.items)
    records = [json.loads(line) for line in Path(report["measurements"]).read_text().splitlines()]
    assert len(records) == 4 and all(r["environment"]["runtime"]["name"] == "litert" for r in records)
    data = yaml.safe_load(out.read_text())
    assert data["name"] == "lite-local" and "calibrated on local" in data["throughput_gmacs"]["int8"]["source"]
    assert load_profile(str(out)).name == "lite-local"
