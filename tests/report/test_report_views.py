"""What the report derives beyond the front: the hypervolume on one [0, 1] scale, the decision
points and their words, and the Markdown summary of `qae report RUN --format md`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.report.decisions import compare, decide, presets
from harness.report.labels import Accuracy
from harness.report.scores import SplitScores
from harness.report.views import hypervolume_series
from harness.run.archive import Archive, Candidate, Value

TOP1 = Accuracy("top1")


def _cand(h: str, gen: int, acc: float, size: float, latency: float, source: str = "predicted",
          feasible: bool = True) -> Candidate:
    values = {"accuracy": Value(acc, "computed", {"split": "validation"}),
              "size": Value(size, "computed", {"unit": "bytes"}),
              "latency": Value(latency, source, {"unit": "ms"})}
    return Candidate("t", h, 0, {}, gen, False, feasible, 0.0, values)


def test_hypervolume_stays_within_zero_and_one_when_later_generations_beat_the_first() -> None:
    objectives = ["accuracy", "size", "latency"]
    # generation 1 spans a narrow range; generation 3 is far better on every objective: normalised by
    # generation 1's range (what the search's progress line does) its hypervolume would exceed 1
    cands = [_cand("a", 1, 0.90, 1000, 2.0), _cand("b", 1, 0.91, 1100, 2.1), _cand("c", 2, 0.92, 900, 1.9),
             _cand("d", 3, 0.99, 100, 0.2), _cand("x", 3, 1.0, 10, 0.1, feasible=False)]
    series = hypervolume_series(cands, objectives)
    assert [r["generation"] for r in series] == [1, 2, 3]
    hv = [r["hypervolume"] for r in series]
    assert all(0.0 <= v <= 1.0 for v in hv) and hv == sorted(hv)
    assert hv[-1] == pytest.approx(1.0)  # one candidate best on every objective: the whole box
    assert hypervolume_series([], objectives) == []


def test_decision_points_compare_with_fp32_and_the_best_uniform_baseline() -> None:
    fp32 = _cand("fp", 1, 0.98, 4000, 1.0)
    w8 = _cand("w8", 1, 0.975, 1000, 0.5)
    small = _cand("s", 2, 0.972, 800, 0.5, source="measured")
    front = [fp32, w8, small]
    chosen = presets("p", {"latency_ms": 0.8}, {"size_bytes": 900.0}, TOP1)
    assert [p.name for p in chosen][:3] == ["Most accurate (server: no budget)", "Within p's budgets (device)",
                                           "Within your --budget"]
    decided = decide(front, front, chosen, {"fp32": "fp", "w8a8": "w8"}, SplitScores(), TOP1)
    best, device, user, iot = decided
    assert best.point is fp32 and device.point is w8 and user.point is small and iot.point is small
    assert device.words[0] == "4.0x smaller than FP32, 2.0x faster (predicted latency), -0.5 points (validation)"
    assert device.words[1] == "it is the uniform baseline w8a8"
    assert user.baseline is None and "no uniform baseline meets this preset" in user.words
    assert iot.baseline == "w8a8" and iot.words[1].startswith(
        "1.2x smaller than w8a8, about as fast (latency measured here, predicted for w8a8), -0.3 points")
    assert compare(w8, w8, "w8a8", SplitScores(), TOP1).startswith("about as small as w8a8, about as fast")
    assert compare(small, fp32, "FP32", SplitScores(), Accuracy("sqnr")).endswith("-0.0 dB (validation)")
    # on test, the stored paired verdict follows the difference
    scored = SplitScores({"s": {"value": 0.97, "vs": {"fp32": {"verdict": "within noise"}}}, "fp": {"value": 0.975}})
    assert compare(small, fp32, "FP32", scored, TOP1, "fp32").endswith("-0.5 points (test, within noise)")


def test_on_an_sqnr_metric_the_iot_preset_is_a_floor_in_db_not_a_loss_against_fp32s_cap() -> None:
    """FP32 scores SQNR's cap (100 dB) against itself: "within 1 dB of FP32" would only ever pick FP32, and a
    difference from it means nothing. The IoT preset is the smallest point at >= 40 dB, and a comparison
    with FP32 states the point's own dB (which already compare with FP32's output)."""
    from harness.report.decisions import SQNR_PRESET_DB
    from harness.report.scores import recommended_line

    sqnr = Accuracy("sqnr")
    fp32 = _cand("fp", 1, 100.0, 4000, 1.0)
    w8 = _cand("w8", 1, 43.5, 1000, 0.5)
    w4 = _cand("w4", 1, 31.0, 600, 0.5)
    mix = _cand("mix", 2, 45.0, 800, 0.5)
    front = [fp32, w8, w4, mix]
    *_, iot = presets("p", {}, {}, sqnr)
    assert iot.name == "Smallest at >= 40 dB (IoT: smallest weights)" and iot.budgets == {"accuracy_floor": 40.0}
    assert SQNR_PRESET_DB == 40.0 and "1 % RMS error" in iot.why
    (_, decided) = decide(front, front, presets("p", {}, {}, sqnr), {"fp32": "fp", "w8a8": "w8"}, SplitScores(), sqnr)
    assert decided.point is mix  # w4 is smaller but under the floor
    assert decided.words[0] == ("5.0x smaller than FP32, 2.0x faster (predicted latency), 45.0 dB against FP32's "
                                "output (validation)")
    assert decided.words[1].endswith("+1.5 dB (validation)")  # against a baseline the difference means something
    front_json = {"accuracy_metric": "sqnr", "recommended": "mix", "points": [
        {"id": "mix", "objectives": {"accuracy": {"value": 45.0}},
         "test": {"accuracy": {"value": 44.8, "ci95": [44.5, 45.1], "n": 20}, "validation_accuracy": 45.0,
                  "vs": {"fp32": {"verdict": "worse", "difference": -55.2}}}}]}
    line = recommended_line("t", front_json, Path("."))
    assert line.endswith("validation 45.00 dB; SQNR against FP32's output") and "worse" not in line


def test_format_md_prints_and_writes_a_summary_with_provenance(finished_run: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(finished_run), "--format", "md"]) == 0
    text = capsys.readouterr().out
    assert text == (finished_run / "report.md").read_text()
    assert text.startswith("# qae report: builtin:digits-vit")
    hexagon, local = text.split("## hexagon-htp")[1].split("## local")
    assert "(p) |" in hexagon and "(m) |" not in hexagon  # a profile's latency is predicted ...
    assert "(m) |" in local  # ... this host's is measured
    archive = Archive.open_existing(finished_run / "archive.sqlite", readonly=True)
    try:
        n = archive.count("hexagon-htp")
        cfg = archive.config()
    finally:
        archive.close()
    # the probes the search ran are kept with the run, a value per layer, for the report's bar chart
    assert sorted(cfg["sensitivity"]) == sorted(cfg["layers"]) and all(0 <= v <= 1 for v in cfg["sensitivity"].values())
    assert f"{n} candidates, 0 failed" in hexagon and "Hypervolume (0 to 1" in hexagon
    assert "| Most accurate (server: no budget) | `" in hexagon and "smaller than FP32" in hexagon
    assert f"`qae export {finished_run} --target hexagon-htp --pick " in hexagon


def test_the_page_data_is_safe_inside_a_script_element() -> None:
    from harness.report.interactive import script_json

    text = script_json({"name": "</script><script>alert(1)</script>", "v": [1.0, float("nan"), float("inf")]})
    assert "</script>" not in text and "<!--" not in script_json("<!--")
    assert json.loads(text) == {"name": "</script><script>alert(1)</script>", "v": [1.0, None, None]}


def test_the_recommended_line_says_when_no_candidate_met_the_budgets() -> None:
    from harness.report.scores import recommended_line

    front = {"accuracy_metric": "top1", "recommended": "p", "feasible": False,
             "points": [{"id": "p", "objectives": {"accuracy": {"value": 0.9}}}]}
    assert recommended_line("t", front, Path(".")).startswith(
        "t (no candidate met the budgets: the closest): recommended p: validation 90.00 %")
    assert recommended_line("t", {**front, "feasible": True}, Path(".")).startswith("t: recommended p: validation")
