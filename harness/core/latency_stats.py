"""Latency with its uncertainty: an interval for a p50, a significance test for "A is slower than B",
and the spread across repeated processes.

A measurement is a set of timed runs from one process. Three questions, three tools (all scipy):

- ``median_ci``: a distribution-free confidence interval of the median (the p50). It uses the
  binomial order statistics: with ``n`` runs the number of runs below the true median is
  Binomial(n, 1/2), so the interval between the ``j``-th and the ``(n - j + 1)``-th smallest run
  covers the median with probability ``1 - 2 * binom.cdf(j - 1, n, 1/2)``; ``j`` is the largest index
  that keeps that at least ``level`` (``scipy.stats.binom``; the same interval as
  ``scipy.stats.quantile_test(...).confidence_interval``, which needs scipy >= 1.12). The interval is
  conservative (its coverage is at least ``level``), and with too few runs for the level (fewer
  than 6 at 95 %) it is [min, max], whose coverage is only ``1 - 2 ** (1 - n)``.
- ``compare``: is A's latency different from B's? The Mann-Whitney U test, two-sided
  (``scipy.stats.mannwhitneyu``), on the two run sets, and the ratio of their medians. The test sees
  only the noise within one process; runs within a process are autocorrelated and two fresh processes
  of the SAME model differ by a few percent (memory layout, clocks, a neighbour's load), which on a
  thousand runs the test calls highly significant. So a single-process comparison is called
  significant only when p < alpha AND the medians differ by at least ``min_effect`` (default 5 %, the
  between-process spread MLPerf Mobile's replicability rule tolerates); below that the words say the
  difference is within the spread of separate processes. When there are several processes per side,
  ``compare_repeats`` is the better test and needs no such floor.
- ``compare_repeats``: the same test on the per-process medians (one number per fresh process), so
  the unit of replication is the process. With few processes the test cannot reach ``alpha``
  (3 against 3 cannot go below p = 0.1) and the words say so.
- ``replicability``: the spread of repeated p50s, ``(max - min) / median``, against MLPerf Mobile's
  rule that repeated runs of a benchmark agree within 5 %.

Pure numpy/scipy; nothing here knows devices or archives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

LEVEL = 0.95
ALPHA = 0.05
#: MLPerf Mobile's replicability rule: repeated runs agree within this fraction
REPLICABILITY = 0.05
MEDIAN_CI_METHOD = "binomial order statistics (distribution-free)"
TEST = "Mann-Whitney U"
TEST_REPEATS = "Mann-Whitney U on per-process medians"


def _runs(runs: ArrayLike, what: str = "runs") -> np.ndarray:
    a = np.asarray(runs, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"no {what}: a latency statistic needs at least one timed run")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} hold a non-finite number")
    return a


def median_ci(runs: ArrayLike, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` confidence interval (lo, hi) of the median of the distribution ``runs`` came
    from, by binomial order statistics (see the module docstring); ValueError for no runs."""
    from scipy.stats import binom

    if not 0 < level < 1:
        raise ValueError(f"level {level} is not between 0 and 1")
    x = np.sort(_runs(runs))
    n = x.size
    tail = (1 - level) / 2
    # i = j - 1: the largest i with P(Bin(n, 1/2) <= i) <= tail (-1 when even i = 0 is too much)
    i = int(binom.ppf(tail, n, 0.5))
    if binom.cdf(i, n, 0.5) > tail:
        i -= 1
    i = max(i, 0)
    return float(x[i]), float(x[n - 1 - i])


@dataclass(frozen=True)
class Comparison:
    """A against B: ``ratio`` = median(A) / median(B); ``p_value`` of the two-sided ``test``;
    ``significant`` when ``p_value < alpha``; ``words`` says it in one phrase."""

    ratio: float
    p_value: float
    significant: bool
    test: str
    words: str
    n_a: int
    n_b: int
    alpha: float = ALPHA

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "p_value": self.p_value, "significant": self.significant, "test": self.test,
                "words": self.words, "n_a": self.n_a, "n_b": self.n_b, "alpha": self.alpha}


def _words(ratio: float, p: float, significant: bool, test: str, b_name: str, note: str = "") -> str:
    verdict = "significant" if significant else "not significant"
    shown = "p<0.001" if p < 0.001 else f"p={p:.2g}"
    return f"{ratio:.2f}x the latency of {b_name} ({test}, {shown}: {verdict}{note})"


def _test(a: np.ndarray, b: np.ndarray, alpha: float, test: str, b_name: str, min_effect: float = 0.0) -> Comparison:
    from scipy.stats import mannwhitneyu

    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha} is not between 0 and 1")
    mb = float(np.median(b))
    if mb <= 0:
        raise ValueError("B's median latency is not positive: no ratio")
    ratio = float(np.median(a)) / mb
    # every run the same number: no evidence of a difference (scipy's normal approximation divides by 0)
    constant = np.ptp(np.concatenate([a, b])) == 0
    p = 1.0 if constant else float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    p = min(1.0, p) if math.isfinite(p) else 1.0
    significant = p < alpha
    note = ""
    if significant and max(ratio, 1 / ratio) - 1 < min_effect:
        significant = False
        note = f"; under the {min_effect * 100:g} % by which two processes of one model may differ"
    # the smallest two-sided p any ordering of n_a against n_b values can give (no ties)
    floor = 2.0 / math.comb(a.size + b.size, a.size) if a.size + b.size <= 30 else 0.0
    if not significant and floor >= alpha:
        note = f"; {a.size} against {b.size} cannot reach p<{alpha:g}, measure more"
    return Comparison(ratio, p, significant, test, _words(ratio, p, significant, test, b_name, note),
                      int(a.size), int(b.size), alpha)


def compare(a_runs: ArrayLike, b_runs: ArrayLike, alpha: float = ALPHA, b_name: str = "B",
            min_effect: float = REPLICABILITY) -> Comparison:
    """A's runs against B's runs (one process each): ratio of medians and a two-sided Mann-Whitney U
    test (``scipy.stats.mannwhitneyu``); significant when p < ``alpha`` and the medians differ by at
    least ``min_effect`` (see the module docstring; 0 turns the floor off). ``b_name`` names B in the
    words."""
    if min_effect < 0:
        raise ValueError(f"min_effect {min_effect} is negative")
    return _test(_runs(a_runs, "A's runs"), _runs(b_runs, "B's runs"), alpha, TEST, b_name, min_effect)


def compare_repeats(a: Sequence[ArrayLike], b: Sequence[ArrayLike], alpha: float = ALPHA,
                    b_name: str = "B") -> Comparison:
    """Several processes per side (each a list of runs): the Mann-Whitney U test on the per-process
    medians, ratio of the medians of those medians; ``n_a``/``n_b`` count processes."""
    if not a or not b:
        raise ValueError("compare_repeats needs at least one repeat on each side")
    ma = np.array([float(np.median(_runs(r, "A's runs"))) for r in a])
    mb = np.array([float(np.median(_runs(r, "B's runs"))) for r in b])
    return _test(ma, mb, alpha, TEST_REPEATS, b_name)


@dataclass(frozen=True)
class Spread:
    """Repeated p50s: their ``median``, ``spread_pct`` = 100 * (max - min) / median, and ``ok`` when
    the spread is at most 5 % (MLPerf Mobile's replicability rule)."""

    median: float
    spread_pct: float
    ok: bool
    n: int
    limit_pct: float = REPLICABILITY * 100

    @property
    def ok_5pct(self) -> bool:
        return self.ok

    @property
    def words(self) -> str:
        verdict = "meets" if self.ok else "fails"
        return (f"{self.n} repeats: median p50 {self.median:.4g} ms, spread {self.spread_pct:.1f} % "
                f"((max-min)/median; {verdict} the {self.limit_pct:g} % replicability rule)")

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "spread_pct": self.spread_pct, "ok": self.ok, "n": self.n,
                "limit_pct": self.limit_pct, "definition": "(max - min) / median of the repeats' p50s"}


def replicability(p50s: ArrayLike, limit: float = REPLICABILITY) -> Spread:
    """The spread of repeated p50s, (max - min) / median, and whether it is within ``limit``
    (5 %, MLPerf Mobile's rule). One repeat has spread 0 (nothing to disagree with)."""
    a = _runs(p50s, "p50s")
    med = float(np.median(a))
    if med <= 0:
        raise ValueError("the median p50 is not positive: no relative spread")
    spread = float(a.max() - a.min()) / med
    return Spread(med, 100.0 * spread, spread <= limit, int(a.size), 100.0 * limit)
