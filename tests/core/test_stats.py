"""Intervals that cover what they claim, paired comparisons that call noise noise, and per-sample
statistics whose score is exactly the metric's."""

from __future__ import annotations

import numpy as np
import pytest

from harness.core.stats import BINOMIAL, SampleStats, interval, paired_difference, verdict
from harness.quant import metrics


def _outcomes(rng: np.random.Generator, p: float, n: int) -> SampleStats:
    return SampleStats("mean", {"logits": (rng.random((n, 1)) < p).astype(float)})


def test_binomial_interval_covers_the_true_accuracy_in_90_to_99_percent_of_draws() -> None:
    rng = np.random.default_rng(1)
    p, n = 0.93, 270
    cover = 0
    for _ in range(200):
        ci = interval(_outcomes(rng, p, n))
        assert ci.method == BINOMIAL and ci.lo <= ci.value <= ci.hi
        cover += ci.lo <= p <= ci.hi
    assert 180 <= cover <= 198, cover


def test_bootstrap_interval_covers_a_continuous_score_in_90_to_99_percent_of_draws() -> None:
    """Per-sample cosines (a score that is not 0/1) from a Beta distribution of known mean."""
    rng = np.random.default_rng(2)
    a, b, n = 20.0, 2.0, 200
    true = a / (a + b)
    cover = 0
    for _ in range(200):
        ci = interval(SampleStats("mean", {"y": rng.beta(a, b, size=(n, 1))}))
        assert ci.method.startswith("percentile bootstrap")
        cover += ci.lo <= true <= ci.hi
    assert 180 <= cover <= 198, cover


def test_the_best_of_many_noisy_candidates_on_validation_is_within_noise_on_test() -> None:
    """The selection effect the splits exist for: 20 candidates that each flip a few FP32 outcomes
    at random (no real change); the one best on validation beats FP32 there, yet its paired test
    difference with FP32 includes 0."""
    rng = np.random.default_rng(3)
    n = 270

    def fp32_and_candidates() -> tuple[np.ndarray, list[np.ndarray]]:
        fp32 = (rng.random(n) < 0.97).astype(float)
        wrong = 1.0 - fp32.mean()
        cands = []
        for _ in range(20):
            # as many samples gained as lost, on average: half the misses fixed, as many hits broken
            flip = rng.random(n) < np.where(fp32 == 0, 0.5, 0.5 * wrong / (1.0 - wrong))
            cands.append(np.where(flip, 1.0 - fp32, fp32))
        return fp32, cands

    val_fp32, val_cands = fp32_and_candidates()
    best = int(np.argmax([c.mean() for c in val_cands]))
    assert val_cands[best].mean() > val_fp32.mean()  # it "beats FP32" on the split it was chosen on
    test_fp32, test_cands = fp32_and_candidates()  # the same candidates' noise on other samples
    diff = paired_difference(SampleStats("mean", {"o": test_cands[best][:, None]}),
                             SampleStats("mean", {"o": test_fp32[:, None]}))
    assert diff.lo <= 0.0 <= diff.hi
    assert verdict(diff) == "within noise"


def test_a_real_difference_is_called_and_a_shared_one_cancels() -> None:
    rng = np.random.default_rng(4)
    n = 400
    base = (rng.random(n) < 0.9).astype(float)
    worse = base.copy()
    worse[np.flatnonzero(base)[:40]] = 0.0  # 40 samples lost: 10 points
    d = paired_difference(SampleStats("mean", {"o": worse[:, None]}), SampleStats("mean", {"o": base[:, None]}))
    assert verdict(d) == "worse" and d.value == pytest.approx(-0.1)
    same = SampleStats("mean", {"o": base[:, None]})
    d0 = paired_difference(same, same)
    assert (d0.lo, d0.hi, verdict(d0)) == (0.0, 0.0, "within noise")


def _outputs(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    ref = {"cls": rng.normal(size=(64, 10)).astype(np.float32), "box": rng.normal(size=(64, 4)).astype(np.float32)}
    out = {k: v + rng.normal(scale=0.3, size=v.shape).astype(np.float32) for k, v in ref.items()}
    return out, ref


@pytest.mark.parametrize("metric", ["agreement", "sqnr", "cosine", "mse", "max_abs"])
def test_sample_stats_score_is_the_metric_including_the_worst_output(metric: str) -> None:
    rng = np.random.default_rng(5)
    out, ref = _outputs(rng)
    names = ("cls",) if metric == "agreement" else ("cls", "box")
    plan = metrics.Plan(metric, names, "")
    stats = metrics.sample_stats(plan, out, ref, None)
    assert stats is not None and stats.n == 64
    assert stats.value() == pytest.approx(metrics.score(plan, out, ref, None).accuracy, rel=1e-9, abs=1e-12)
    ci = interval(stats)
    assert ci.lo <= ci.value <= ci.hi


def test_sample_stats_of_top1_and_embedding_match_their_scores() -> None:
    rng = np.random.default_rng(6)
    out, ref = _outputs(rng)
    labels = rng.integers(0, 10, size=64)
    plan = metrics.Plan("top1", ("cls",), "")
    stats = metrics.sample_stats(plan, out, ref, labels)
    assert stats is not None and stats.binary
    assert stats.value() == pytest.approx(metrics.score(plan, out, ref, labels).accuracy)
    tokens = {"h": rng.normal(size=(30, 8, 16))}
    noisy = {"h": tokens["h"] + rng.normal(scale=0.5, size=(30, 8, 16))}
    mask = (rng.random((30, 8)) < 0.8).astype(np.int64)
    plan = metrics.Plan("embedding", ("h",), "")
    stats = metrics.sample_stats(plan, noisy, tokens, None, mask)
    assert stats is not None
    assert stats.value() == pytest.approx(metrics.score(plan, noisy, tokens, None, mask).accuracy)


def test_no_statistics_for_a_user_metric_or_a_non_finite_output() -> None:
    rng = np.random.default_rng(7)
    out, ref = _outputs(rng)
    assert metrics.sample_stats(metrics.Plan("tests.mod:fn", ("cls",), ""), out, ref, None) is None
    out["cls"][0, 0] = np.nan
    assert metrics.sample_stats(metrics.Plan("sqnr", ("cls",), ""), out, ref, None) is None


def test_stored_statistics_are_validated() -> None:
    good = SampleStats("ratio_db", {"o": np.array([[1.0, 0.1], [2.0, 0.3]])})
    assert SampleStats.from_dict(good.to_dict()).value() == pytest.approx(good.value())
    for bad in ({"kind": "mean", "outputs": {"o": [[1.0, 2.0]]}}, {"kind": "median", "outputs": {"o": [[1.0]]}},
                {"kind": "mean", "outputs": {"o": [["x"]]}}, {"kind": "mean", "outputs": {}}, [1, 2],
                {"kind": "mean", "outputs": {"o": [[float("nan")]]}}):
        with pytest.raises(ValueError):
            SampleStats.from_dict(bad)
