"""The front re-scored on test, as the report shows it (issue 14): front.json carries each point's test
value with its 95 % interval and provenance beside the validation value it was chosen on; a point
whose paired difference with FP32 has an interval that includes 0 reads "within noise" even when
its test value is above FP32's; the validation-vs-test plot is embedded; an older archive without
test scores still builds, with a note; ``qae report`` and ``qae export`` say the test values too."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.cli.search import cmd_export, cmd_report
from harness.core.stats import SampleStats, interval, paired_difference, verdict
from harness.report.html import VALIDATION_TEST_PNG, build_report
from harness.run.archive import Archive, Value

N_TEST = 540
VALIDATION = {"fp": 0.970, "noise": 0.960, "worse": 0.930}


def _correct(flip_wrong: range = range(0), flip_right: range = range(0)) -> np.ndarray:
    """FP32's outcomes on the test samples (the first 500 right), with some flipped each way."""
    out = np.zeros(N_TEST)
    out[:500] = 1.0
    out[list(flip_wrong)] = 0.0
    out[list(flip_right)] = 1.0
    return out


def _stats(correct: np.ndarray) -> SampleStats:
    return SampleStats("mean", {"logits": correct.reshape(-1, 1)})


def _row(h: str, roles: list[str], correct: np.ndarray, validation: float, fp32: np.ndarray | None) -> dict[str, Any]:
    """A test row as harness.run.testsplit writes it, from real statistics and the real verdict."""
    mine = _stats(correct)
    ci = interval(mine)
    row: dict[str, Any] = {
        "hash": h, "genome": None, "roles": roles, "split": "test", "source": "computed", "metric": "top1",
        "unit": "fraction", "n": N_TEST, "value": ci.value, "ci95": [ci.lo, ci.hi], "ci_method": ci.method,
        "validation": {"value": validation, "n": 270}, "vs": {}, "stats": mine.to_dict(),
    }
    if fp32 is not None:
        d = paired_difference(mine, _stats(fp32))
        row["vs"]["fp32"] = {"difference": d.value, "ci95": [d.lo, d.hi], "method": d.method, "verdict": verdict(d)}
    return row


def _archive(run: Path, with_test: bool = True, splits: str = "holdout") -> dict[str, dict[str, Any]]:
    """Three front points on one target: the FP32 genome, one a few samples above FP32 on test (noise),
    one clearly below; FP32 and the rows stored with set_test_scores (unless ``with_test`` is False).
    ``splits``: "holdout" (a test split held out of the data), "none" (no test split given) or "old"
    (a run configuration from before splits were recorded)."""
    archive = Archive(run / "archive.sqlite")
    holdout = {"fraction": 0.5, "seed": 0, "validation_indices": list(range(270)),
               "test_indices": list(range(270, 270 + N_TEST))}
    config: dict[str, Any] = {"model": "m.onnx", "objectives": ["accuracy", "size"], "seed": 0, "population": 4,
                              "generations": 1, "layers": ["fc"]}
    if splits != "old":
        config["splits"] = {"calibration": {"path": "c.npz", "sha256": "c", "n": 64},
                            "validation": {"path": "d.npz", "sha256": "d", "n": 270}, "holdout": None}
    if splits == "holdout":
        config["splits"].update(holdout=holdout, test={"path": "d.npz", "sha256": "d", "n": N_TEST, "from": "holdout"})
    archive.start(config)
    detail = {"on": "host", "runtime": "onnxruntime", "n": 270, "metric": "top1", "split": "validation"}
    bits = {"fp": ("fp", "fp", 4000.0), "noise": (8, 8, 1000.0), "worse": (4, 8, 500.0)}
    for h, (w, a, size) in bits.items():
        latency = Value(1.0, "measured", {"device": "phone", "unit": "ms", "p50_ci95": [0.9, 1.1]}) if h == "noise" \
            else Value(2.0, "predicted", {"profile": "host-cpu", "unit": "ms"})
        values = {"accuracy": Value(VALIDATION[h], "computed", detail),
                  "size": Value(size, "computed", {"unit": "bytes", "nominal": True}), "latency": latency}
        archive.record("host-cpu", h, {"layers": {"fc": {"weight_bits": w, "activation_bits": a}}}, 1, False, True,
                       0.0, values, [], {}, 1)
    fp32 = _correct()
    rows = {
        "fp32": _row("fp32", ["fp32"], fp32, VALIDATION["fp"], None),
        "fp": _row("fp", ["front:host-cpu"], fp32, VALIDATION["fp"], fp32),
        # right on 4 samples FP32 gets wrong, wrong on 2 it gets right: +2 samples, inside the noise
        "noise": _row("noise", ["front:host-cpu", "baseline:w8a8"], _correct(range(0, 2), range(500, 504)),
                      VALIDATION["noise"], fp32),
        "worse": _row("worse", ["front:host-cpu", "baseline:w4a8"], _correct(range(0, 40)), VALIDATION["worse"], fp32),
    }
    if with_test:
        archive.set_test_scores(list(rows.values()))
    archive.close()
    return rows


def _page_row(page: str, h: str) -> str:
    match = re.search(rf"<tr[^>]*><td class='l'><code>{h}</code>.*?</tr>", page)
    assert match, h
    return match.group(0)


def test_front_json_carries_test_values_with_intervals_and_provenance(tmp_path: Path) -> None:
    rows = _archive(tmp_path)
    build_report(tmp_path)
    data = json.loads((tmp_path / "front.json").read_text())
    assert data["test_scored"] is True
    holdout = data["splits"]["holdout"]  # the index lists stay in the archive; front.json keeps counts
    assert holdout["validation_indices_count"] == 270 and holdout["test_indices_count"] == N_TEST
    assert "test_indices" not in holdout and data["splits"]["test"]["from"] == "holdout"
    front = data["targets"]["host-cpu"]
    assert {p["id"] for p in front["points"]} == {"fp", "noise", "worse"}
    for point in front["points"]:
        assert point["objectives"]["accuracy"]["split"] == "validation"
        test = point["test"]
        acc = test["accuracy"]
        assert acc["source"] == "computed" and acc["split"] == "test" and acc["n"] == N_TEST
        assert acc["metric"] == "top1" and acc["unit"] == "fraction"
        assert acc["ci_method"] == "exact binomial (Clopper-Pearson)"
        assert acc["ci95"][0] <= acc["value"] <= acc["ci95"][1] and acc["ci95"][0] < acc["ci95"][1]
        assert acc["value"] == rows[point["id"]]["value"]
        assert test["validation_accuracy"] == VALIDATION[point["id"]]
        assert "stats" not in test and test["vs"]["fp32"]["verdict"] == rows[point["id"]]["vs"]["fp32"]["verdict"]
    assert front["fp32_test"]["value"] == rows["fp32"]["value"] and front["fp32_test"]["n"] == N_TEST
    assert set(front["baselines_test"]) == {"w8a8", "w4a8"}
    gap = front["optimism_gap"]
    expected = np.mean([VALIDATION[h] - rows[h]["value"] for h in ("fp", "noise", "worse")])
    assert gap["n_points"] == 3 and gap["mean"] == pytest.approx(expected)
    assert f"{expected * 100:.1f} points above its test accuracy" in gap["words"]


def test_a_point_above_fp32_inside_the_noise_is_not_called_better(tmp_path: Path, capsys: Any) -> None:
    rows = _archive(tmp_path)
    noise, fp32 = rows["noise"], rows["fp32"]
    # the case as built: above FP32 on test, but the paired interval of the difference includes 0
    assert noise["value"] > fp32["value"] and noise["vs"]["fp32"]["ci95"][0] < 0 < noise["vs"]["fp32"]["ci95"][1]
    assert noise["vs"]["fp32"]["verdict"] == "within noise" and rows["worse"]["vs"]["fp32"]["verdict"] == "worse"
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "better than FP32" not in page
    row = _page_row(page, "noise")
    assert "within noise of FP32" in row and f"<b>{noise['value'] * 100:.2f} [" in row  # test value, interval
    assert f">{VALIDATION['noise'] * 100:.2f}<br>" in row  # the validation value beside it
    assert "1.000 [0.900, 1.100]" in row  # a measured p50 with its interval
    assert "worse than FP32" in _page_row(page, "worse") and "is FP32" in _page_row(page, "fp")
    assert "Three disjoint splits" in page and "within noise" in page
    cmd_report(argparse.Namespace(run=str(tmp_path), weights=None))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("report.html")
    rec = json.loads((tmp_path / "front.json").read_text())["targets"]["host-cpu"]["recommended"]
    assert lines[1].startswith(f"host-cpu: recommended {rec}: test ") and "validation" in lines[1]
    assert "better than FP32" not in lines[1]


def test_validation_vs_test_plot_is_embedded_in_a_self_contained_page(tmp_path: Path) -> None:
    _archive(tmp_path)
    build_report(tmp_path)
    assert (tmp_path / VALIDATION_TEST_PNG).stat().st_size > 1000
    page = (tmp_path / "report.html").read_text()
    assert f'alt="{VALIDATION_TEST_PNG}" src="data:image/png;base64,' in page
    # self-contained: images inline, scripts inline (plotly.js too), nothing loaded from elsewhere
    # (the browser tests, test_report_browser.py, check that opening it makes no request)
    assert not re.findall(r"<(?:img|script|iframe|link)[^>]*\s(?:src|href)=[\"'](?!data:)", page)
    assert "points above its test accuracy: the optimism of choosing on validation" in page


@pytest.mark.parametrize(("splits", "note"), [
    ("old", "no test split was scored for this run (older run): values are validation; "),
    ("none", "no test split was given for this run (--test FILE.npz or --holdout FRACTION)"),
    ("holdout", "the test split was not scored yet (the search did not finish): values are validation; "),
])
def test_a_run_without_test_scores_builds_with_a_note(tmp_path: Path, capsys: Any, splits: str, note: str) -> None:
    _archive(tmp_path, with_test=False, splits=splits)
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert note in page and "on validation</th>" in page
    assert (f"<code>qae search --resume {tmp_path}</code>" in page) == (splits != "none")
    assert "within noise" not in page and not (tmp_path / VALIDATION_TEST_PNG).exists()
    data = json.loads((tmp_path / "front.json").read_text())
    assert data["test_scored"] is False
    front = data["targets"]["host-cpu"]
    assert front["fp32_test"] is None and front["optimism_gap"] is None
    assert all(p["test"] is None for p in front["points"])
    cmd_report(argparse.Namespace(run=str(tmp_path), weights=None))
    assert note in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real search, as small as it goes: the test split is scored by the run itself."""
    from harness.run.config import SearchConfig
    from harness.run.search import run_search

    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg = SearchConfig(model="builtin:digits-vit", profiles=["hexagon-htp"], generations=1, population=4, seed=0)
    run_search(cfg, out, say=lambda _m: None).close()
    build_report(out)
    return out


def test_a_real_run_reports_and_exports_its_test_scores(tiny_run: Path, tmp_path: Path) -> None:
    front = json.loads((tiny_run / "front.json").read_text())["targets"]["hexagon-htp"]
    assert front["fp32_test"]["n"] > 0 and front["optimism_gap"]["n_points"] == len(front["points"])
    for point in front["points"]:
        assert point["test"]["accuracy"]["split"] == "test" and len(point["test"]["accuracy"]["ci95"]) == 2
    assert (tiny_run / VALIDATION_TEST_PNG).is_file()
    cmd_export(argparse.Namespace(run=str(tiny_run), pick=None, best=True, target=None, output=str(tmp_path / "x")))
    objectives = json.loads((tmp_path / "x" / "objectives.json").read_text())
    assert objectives["accuracy"]["split"] == "validation"
    test = objectives["test"]
    assert test["accuracy"]["split"] == "test" and test["accuracy"]["source"] == "computed"
    assert "ci95" in test["accuracy"] and "vs" in test
