"""The MiniLM headline's judge: verdicts decided on test with intervals, latency with significance.

Synthetic per-sentence statistics and timed runs stand in for the models (the full benchmark takes
minutes); the statistics, the judge, the verdict lines and the summary are the real code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import bench_headline as bh
from benchmarks import common, summary
from harness.core.stats import SampleStats
from harness.quant import metrics

N = 400


def _stats(cos: np.ndarray, hits: np.ndarray) -> dict[str, SampleStats]:
    return {"mean_cosine": SampleStats("mean", {"cos": cos[:, None]}),
            "top1_agreement": SampleStats("mean", {"last_hidden_state": hits.astype(np.float64)[:, None]})}


def _runs(rng: np.random.Generator, median: float, n: int = 120) -> list[dict[str, Any]]:
    """Three passes of timed runs around ``median`` ms."""
    return [{"pass": k, "p50_ms": median, "runs_ms": list(median * (1 + 0.02 * rng.standard_normal(n)))}
            for k in range(bh.PASSES)]


def _row(passes: list[dict[str, Any]], size: float, stats: dict[str, SampleStats], fp32: bool = False,
         **extra: Any) -> dict[str, Any]:
    row = {"weight_bytes": size, "file_bytes": size, "validation": {m: stats[m].value() for m in bh.METRICS},
           "test": bh.scored(stats, "test", reference=fp32), **extra}
    row.update(bh.latency_of(passes, []))
    return row


def _body(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, dict[str, SampleStats]]]:
    """Baselines fp32 and dynamic int8 and three front points: ``same`` (dynamic's size, a cosine
    differing from it by pure noise), ``small`` (smaller, same noise-level cosine, 1.05x latency),
    ``bad`` (smaller but clearly worse cosine)."""
    base_cos = 0.99 + 0.004 * rng.standard_normal(N)
    hits = rng.random(N) < 0.88

    def noise() -> np.ndarray:  # per-sentence noise that cancels over the test set: a difference of 0
        e = 0.0002 * rng.standard_normal(N)
        return np.asarray(e - e.mean())

    stats = {
        "fp32": _stats(np.ones(N), np.ones(N, dtype=bool)),
        bh.DYN: _stats(base_cos, hits),
        "front:same00000000": _stats(base_cos + noise(), hits ^ (rng.random(N) < 0.02)),
        "front:small0000000": _stats(base_cos + noise(), hits),
        "front:bad000000000": _stats(base_cos - 0.05, rng.random(N) < 0.6),
        "front:copy00000000": _stats(base_cos.copy(), hits.copy()),  # computes what dynamic int8 computes
    }
    baselines = {"fp32": _row(_runs(rng, 16.0), 90e6, stats["fp32"], fp32=True),
                 bh.DYN: _row(_runs(rng, 7.0), 22.7e6, stats[bh.DYN])}
    front = [
        _row(_runs(rng, 7.0), 22.7e6, stats["front:same00000000"], hash="same00000000" + "0" * 4,
             predicted_latency_ms=7.0),
        _row(_runs(rng, 7.35), 20e6, stats["front:small0000000"], hash="small0000000" + "0" * 4,
             predicted_latency_ms=7.2),
        _row(_runs(rng, 5.0), 11e6, stats["front:bad000000000"], hash="bad000000000" + "0" * 4,
             predicted_latency_ms=5.0),
        _row(_runs(rng, 7.1), 22.7e6, stats["front:copy00000000"], hash="copy00000000" + "0" * 4,
             predicted_latency_ms=7.0),
    ]
    bh.versus(front, baselines, stats)
    verdict = bh.judge(baselines, front)
    body: dict[str, Any] = {
        "benchmark": "headline", "workload": bh.WORKLOAD, "profile": bh.PROFILE, "seed": 0, "quick": True,
        "splits": {"validation": {"file": "eval.npz", "n": N}, "test": {"file": "test.npz", "n": N}},
        "rules": bh.RULES, "search": {"population": 6, "generations": 2, "workers": 1, "evaluated": 12,
                                     "history": []},
        "measure_settings": {"threads": 1, "runs": 30, "min_seconds": 1.0, "passes": bh.PASSES},
        "input_shape": [1, bh.TOKENS], "baselines": baselines, "front": front, "front_size": 4,
        "verdict": verdict, "minilm_costmodel_fidelity": {"n": 0}, "timings": {},
    }
    return body, stats


def test_sentence_cosines_are_the_terms_of_the_reported_mean_cosine() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((12, 6, 8)).astype(np.float32)
    out = ref + 0.3 * rng.standard_normal(ref.shape).astype(np.float32)
    mask = (rng.random((12, 6)) < 0.7).astype(np.int64)
    mask[:, 0] = 1
    cos = bh.sentence_cosines(out, ref, mask)
    _, mean_cos = metrics.embedding_agreement(out, ref, mask)
    assert cos.shape == (12,)
    assert float(np.mean(cos)) == pytest.approx(mean_cos, abs=1e-12)


def test_within_factor_fails_only_when_significantly_slower_than_the_limit() -> None:
    rng = np.random.default_rng(1)
    dyn = list(7.0 * (1 + 0.02 * rng.standard_normal(300)))
    same = list(7.0 * (1 + 0.02 * rng.standard_normal(300)))
    at_limit = list(7.7 * (1 + 0.02 * rng.standard_normal(300)))
    slow = list(8.4 * (1 + 0.02 * rng.standard_normal(300)))
    ok = bh.within_factor(same, dyn)
    assert ok["holds"] and ok["clearly_within"] and ok["ratio"] == pytest.approx(1.0, abs=0.01)
    edge = bh.within_factor(at_limit, dyn)  # at 1.1x: neither clearly within nor significantly slower, mostly
    assert edge["ratio"] == pytest.approx(1.1, abs=0.01)
    bad = bh.within_factor(slow, dyn)
    assert not bad["holds"] and bad["p_slower"] < bh.ALPHA and "fails" in bad["words"]


def test_judge_decides_on_test_with_paired_verdicts() -> None:
    body, _ = _body(np.random.default_rng(2))
    front = {p["hash"][:12]: p for p in body["front"]}
    # a cosine that differs from dynamic int8's by noise alone is "within noise", never "better"
    assert front["same00000000"]["vs"][bh.DYN]["mean_cosine"]["verdict"] == "within noise"
    assert front["bad000000000"]["vs"][bh.DYN]["mean_cosine"]["verdict"] == "worse"
    # everything is measurably worse than FP32's exact cosine of 1
    assert front["same00000000"]["vs"]["fp32"]["mean_cosine"]["verdict"] == "worse"
    v = body["verdict"]
    assert v["decided_on"] == "test"
    dyn = v["covers_each_baseline"][bh.DYN]
    assert dyn["covered"] and set(dyn["covering"]) == {"same00000000", "small0000000", "copy00000000"}
    assert not dyn["better_in_cosine"]
    assert not v["covers_each_baseline"]["fp32"]["covered"]
    assert "mean_cosine" in v["baseline_ahead_on"]["fp32"]
    # strictly better: the smaller point, within 1.1x latency; the same-size point has no gain
    assert v["beats_dynamic_int8_within_1.1x_latency"] == ["small0000000"]
    why = {c["hash"]: c["why_not"] for c in v["dynamic_int8_candidates"]}
    assert why["same00000000"] == why["copy00000000"] == "neither smaller nor better in cosine"
    # the copy of dynamic int8 is the control for between-process latency noise
    assert [(c["hash"], c["baseline"]) for c in v["same_model_controls"]] == [("copy00000000", bh.DYN)]
    lat = front["small0000000"]["vs"][bh.DYN]["latency"]
    assert lat["ratio"] == pytest.approx(1.05, abs=0.02) and "Mann-Whitney U" in lat["words"]
    assert len(lat["repeats"]["words"]) > 0
    for row in (*body["baselines"].values(), *body["front"]):
        lo, hi = row["p50_ci95"]
        assert lo <= row["latency_ms"] <= hi and row["replicability"]["n"] == bh.PASSES
        for m in bh.METRICS:
            lo, hi = row["test"][m]["ci95"]
            assert lo <= row["test"][m]["value"] <= hi


def test_verdict_lines_state_intervals_and_summary_renders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    body, _ = _body(np.random.default_rng(3))
    old = {"environment": {"date": "2026-11-27"}, "baselines": {bh.DYN: {"latency_ms": 6.7}},
           "verdict": {"covers_each_baseline": {"fp32": {"covered": True, "by": "66a0c6e05481"},
                                                bh.DYN: {"covered": True, "by": "452d9ea49c4c"}},
                       "baseline_ahead_on": {"fp32": ["latency"]}, "all_covered": True,
                       "dynamic_int8_condition": True, "beats_dynamic_int8_within_1.1x_latency": ["564fd7f8fa55"]}}
    prev = bh.previous_verdicts(old)
    assert prev is not None and prev["decided_on"] == "validation"
    assert any("564fd7f8fa55" in line for line in prev["lines"])
    body["previous_verdicts"] = prev
    body["verdict_changes"] = bh.verdict_changes(prev, body["verdict"])
    assert body["verdict_changes"]["changed"] == 1  # fp32 covered: yes -> no; dynamic int8's condition holds
    body["verdict_lines"] = bh.verdict_lines(body)
    dyn_line = next(line for line in body["verdict_lines"] if line.startswith(f"{bh.DYN}:"))
    assert "within noise" in dyn_line and "[" in dyn_line and "Mann-Whitney U" in dyn_line
    assert any("strictly better than dynamic int8" in line and "**yes**" in line for line in body["verdict_lines"])
    path = common.write_result("headline", body)
    again = bh.previous_verdicts(json.loads(path.read_text()))  # a new-format headline is a previous one too
    assert again is not None and again["decided_on"] == "test" and again["lines"] == body["verdict_lines"]
    text = summary.write_summary(tmp_path).read_text()
    assert "unreadable" not in text
    assert "decided on the test split" in text and "Quick run" in text
    assert "decided on validation): 1 of 3 changed" in text
    assert "| dynamic_int8 (ORT) |" in text and "| qae small0000000 |" in text
    assert "- control: qae copy00000000 computes what dynamic_int8 computes" in text


def test_legacy_headline_still_renders(tmp_path: Path) -> None:
    # the headline of 2026-11-27 (before issue 14), trimmed: a results folder of that age still renders
    old = json.loads((Path(__file__).resolve().parent / "legacy_headline.json").read_text())
    lines = summary.headline_section(old)
    assert any("front point at least as good in size and mean cosine" in line for line in lines)


def test_the_size_conditions_judge_size_cosine_and_latency_together() -> None:
    """Issue 15's conditions: ``bad`` is 2.06x smaller and fast but worse in cosine; ``small`` is only
    1.14x smaller: neither meets 1.35x. A point 1.4x smaller with a noise-level cosine and dynamic
    int8's latency meets it; made 1.3x slower it fails on latency."""
    rng = np.random.default_rng(11)
    body, _ = _body(rng)
    v = body["verdict"]["smaller_than_dynamic_int8"]
    first = v["1.35x smaller"]
    assert not first["met"]
    assert {r["hash"]: r["fails_on"] for r in first["points"]} == {"bad000000000": "mean cosine"}
    base_cos = 0.99 + 0.004 * rng.standard_normal(N)
    hits = rng.random(N) < 0.9
    dyn_stats = _stats(base_cos, hits)
    dyn = _row(_runs(rng, 7.0), 22.7e6, dyn_stats)
    for median, met in ((7.0, True), (9.1, False)):
        e = 0.0002 * rng.standard_normal(N)
        mine = _stats(base_cos + e - e.mean(), hits)
        p = _row(_runs(rng, median), 22.7e6 / 1.4, mine, hash="tiny" + "0" * 12, predicted_latency_ms=median)
        bh.versus([p], {bh.DYN: dyn}, {bh.DYN: dyn_stats, f"front:{p['hash'][:12]}": mine})
        got = bh.smaller_than([p], dyn, 1.35, "not worse than dynamic int8", 1.1)
        assert got["met"] is met, got["points"][0]
        assert got["points"][0]["fails_on"] == (None if met else "latency")
    lines = bh.verdict_lines(body)
    assert any(line.startswith("1.35x smaller than dynamic int8") and "**no**" in line for line in lines)
