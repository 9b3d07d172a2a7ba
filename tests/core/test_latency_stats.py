"""Latency statistics: the p50's interval covers the true median as often as it says, the
Mann-Whitney comparison separates shifted samples from samples of one distribution, and the
replicability spread follows the 5 % rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.core.latency_stats import compare, compare_repeats, median_ci, replicability


def _latencies(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    # log-normal with a long right tail, like timed runs; its median is exactly `scale`
    return scale * np.exp(rng.normal(0.0, 0.3, n))


@pytest.mark.parametrize("n", [15, 60, 400])
def test_median_ci_covers_the_true_median_as_often_as_it_says(n: int) -> None:
    rng = np.random.default_rng(n)
    covered = 0
    for _ in range(200):
        lo, hi = median_ci(_latencies(rng, n, 2.0))
        assert lo <= hi
        covered += lo <= 2.0 <= hi
    assert 0.90 * 200 <= covered <= 0.99 * 200, covered


def test_median_ci_shape() -> None:
    assert median_ci(list(range(1, 11))) == (2.0, 9.0)  # the order statistics scipy's quantile_test gives
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few runs for 95 %: [min, max]
    assert median_ci([5.0]) == (5.0, 5.0)
    x = np.random.default_rng(0).normal(10, 1, 2000)
    lo, hi = median_ci(x)
    assert lo < float(np.median(x)) < hi and hi - lo < 0.2
    lo99, hi99 = median_ci(x, level=0.99)
    assert lo99 <= lo and hi <= hi99
    with pytest.raises(ValueError):
        median_ci([])
    with pytest.raises(ValueError):
        median_ci([1.0, math.nan])


def test_compare_calls_a_shift_significant_and_one_distribution_not() -> None:
    rng = np.random.default_rng(1)
    slower = compare(_latencies(rng, 300, 1.2), _latencies(rng, 300), b_name="dynamic int8")
    assert slower.significant and slower.p_value < 0.001 and 1.1 < slower.ratio < 1.3
    assert slower.words.startswith("1.") and "x the latency of dynamic int8 (Mann-Whitney U" in slower.words
    assert slower.words.endswith(": significant)")
    faster = compare(_latencies(rng, 300, 0.8), _latencies(rng, 300))
    assert faster.significant and faster.ratio < 1
    called = sum(compare(_latencies(rng, 300), _latencies(rng, 300)).significant for _ in range(100))
    assert called <= 12  # about alpha = 5 % false alarms
    same = compare(_latencies(rng, 300), _latencies(rng, 300), alpha=1e-9)
    assert not same.significant and "not significant" in same.words


def test_a_difference_under_the_process_spread_is_not_claimed_from_one_process_each() -> None:
    rng = np.random.default_rng(2)
    a, b = _latencies(rng, 10000, 1.03), _latencies(rng, 10000)
    small = compare(a, b)
    assert small.p_value < 0.05 and not small.significant and "under the 5 %" in small.words
    assert compare(a, b, min_effect=0.0).significant


def test_compare_repeats_tests_per_process_medians() -> None:
    rng = np.random.default_rng(3)
    # each process has its own offset: pooled runs would call two identical models different
    def processes(scale: float, k: int) -> list[list[float]]:
        return [list(_latencies(rng, 500, scale * math.exp(rng.normal(0, 0.03)))) for _ in range(k)]

    slower = compare_repeats(processes(1.5, 5), processes(1.0, 5))
    assert slower.significant and slower.n_a == slower.n_b == 5 and "per-process medians" in slower.test
    called = sum(compare_repeats(processes(1.0, 5), processes(1.0, 5)).significant for _ in range(40))
    assert called <= 8
    few = compare_repeats(processes(1.5, 3), processes(1.0, 3))
    assert not few.significant and "cannot reach" in few.words  # 3 against 3: p >= 0.1 whatever the data


def test_replicability_follows_the_5_percent_rule() -> None:
    ok = replicability([10.0, 10.2, 10.4])
    assert ok.ok and ok.ok_5pct and ok.median == 10.2 and ok.n == 3
    assert ok.spread_pct == pytest.approx(100 * 0.4 / 10.2)
    bad = replicability([10.0, 10.2, 11.0])
    assert not bad.ok and bad.spread_pct == pytest.approx(100 / 10.2)
    assert "fails the 5 % replicability rule" in bad.words
    assert replicability([7.0]).spread_pct == 0.0 and replicability([7.0]).ok
    d = bad.to_dict()
    assert d["ok"] is False and "median" in d["definition"]
