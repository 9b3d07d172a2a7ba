"""Calibration: the fit recovers known coefficients, and the real pipeline (local transport) runs
end to end, writes a valid calibrated profile, and resumes from its stored measurements."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from harness.cli.main import main
from harness.core.model import LayerSpec
from profiles import load_profile
from profiles.costmodel import GraphStats
from profiles.fit import Sample, errors, fit, predict_ms


def _layer(k: int, n: int, tokens: int) -> LayerSpec:
    return LayerSpec(f"l{k}x{n}", f"/l{k}x{n}/MatMul", "MatMul", "w", (k, n), k * n, tokens * k * n, "x", "y", 1)


def _samples(truth_name: str = "host-cpu") -> list[Sample]:
    truth = load_profile(truth_name)
    classes = [("fp32", "fp32", "channel"), ("int8", "int8", "channel"), ("int4", "int8", "channel"),
               ("int8", "dynamic", "channel"), ("int16", "int16", "channel"), ("int8", "fp32", "channel")]
    out = []
    for i, (k, n, t) in enumerate([(64, 64, 8), (256, 256, 16), (512, 512, 16), (384, 1536, 64), (1024, 1024, 4)]):
        for c in classes:
            out.append(Sample(f"m{i}{c}", f"micro{i}", "fit", [_layer(k, n, t)], [c], GraphStats(), 1.0))
    for w, g in (("a", GraphStats(80, 20000)), ("b", GraphStats(60, 400000))):
        layers = [_layer(128, 128, 16), _layer(128, 512, 16), _layer(512, 128, 16)]
        for j, mix in enumerate([[classes[0]] * 3, [classes[1]] * 3, [classes[1], classes[2], classes[3]],
                                 [classes[3], classes[1], classes[0]], [classes[4], classes[1], classes[5]]]):
            out.append(Sample(f"{w}{j}", w, "heldout" if j >= 3 else "fit", layers, mix, g, 1.0))
    measured = predict_ms(out, truth)
    return [replace(s, measured_ms=float(m)) for s, m in zip(out, measured)]


def test_fit_recovers_a_known_profile_from_a_perturbed_start() -> None:
    samples = _samples()
    start = load_profile("host-cpu").copy()
    for key in ("fp32", "int8"):
        start.data["throughput_gmacs"][key]["value"] *= 3.0
    start.data["overhead"]["other_op_us"]["value"] = 10.0
    start.data["dequantize_ns_per_element"]["int4"]["value"] = 0.1
    assert errors(samples, start)["heldout"]["within_10pct"] < 0.5
    fitted, report = fit(samples, start)
    errs = errors(samples, fitted)
    assert errs["heldout"]["within_10pct"] == 1.0
    assert errs["heldout"]["mape"] < 0.02
    for dotted in report["fitted"]:
        node = fitted.data
        for k in dotted.split("."):
            node = node[k]
        assert node["value"] >= 0, dotted  # physical coefficients


def test_fit_needs_measurements() -> None:
    from profiles.errors import ProfileError

    with pytest.raises(ProfileError, match="at least 3"):
        fit(_samples()[:2], load_profile("host-cpu"))


@pytest.mark.slow
def test_calibrate_local_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cal" / "host-cpu-test.yaml"
    argv = ["calibrate", "--device", "local", "--profile", "host-cpu", "-o", str(out), "--quick",
            "--runs", "5", "--min-seconds", "0.05", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["models"] == 7 and first["passes"] == 2
    assert first["measured"] == 14 and first["reused"] == 0 and not first["failed"]
    profile = load_profile(out)
    assert profile.name == "host-cpu-test"
    cal = profile.calibration
    assert cal is not None and cal["device"] == "local" and cal["models"] == 7
    assert profile.data["throughput_gmacs"]["int8"]["source"].startswith("calibrated on local at ")
    assert profile.data["uncertainty"]["source"].startswith("calibrated on local at ")
    store = out.with_name("host-cpu-test.measurements.jsonl")
    lines = store.read_text().splitlines()
    assert len(lines) == 14 and all(json.loads(line)["ok"] for line in lines)

    # Interrupted mid-write: a torn last line is ignored and everything measured is reused.
    with open(store, "a") as f:
        f.write('{"key": "torn", "ok": tru')
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["measured"] == 0 and second["reused"] == 14
    again = yaml.safe_load(out.read_text())
    assert again["calibration"]["fit"]["n"] == 7


def test_calibrate_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--runs", "0", "-o", "x.yaml"]) == 2
    assert "--runs" in capsys.readouterr().err
    assert main(["calibrate", "-o", "x.txt"]) == 2
    assert main(["calibrate", "--profile", "nope", "-o", "/tmp/qae-never/x.yaml", "--quick"]) == 2
