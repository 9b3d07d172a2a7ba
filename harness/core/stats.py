"""Confidence intervals for accuracy scores, and paired comparisons that say when a difference is noise.

A score on N samples is one draw: selecting on it and reporting it again overstates it, and two
models a few samples apart are not different. This module turns a model's **per-sample sufficient
statistics** (``SampleStats``, made by ``harness.quant.metrics.sample_stats``) into

- ``interval``: a 95 % interval of the score. A score that is a mean of 0/1 outcomes (top-1,
  agreement, retrieval agreement) gets the exact binomial (Clopper-Pearson) interval of
  ``scipy.stats.binomtest``; any other score a percentile bootstrap over samples
  (``scipy.stats.bootstrap``, 2000 resamples, a fixed seed so a report is reproducible).
- ``paired_difference``: the interval of score(A) - score(B) from a paired bootstrap: the same
  resampled sample indices for both models, so the noise they share cancels.
- ``verdict``: "better" or "worse" only when that interval excludes 0, else "within noise".

Kinds of statistics (each row is one sample, the score is the minimum over the scored outputs):

=========  ===========================  ==========================================
kind       columns per sample           score over a set of samples
=========  ===========================  ==========================================
mean       the sample's score           mean
ratio_db   signal energy, error energy  10*log10(sum signal / sum error), +-100 dB cap
cosine     dot, |out|^2, |ref|^2        sum dot / sqrt(sum |out|^2 * sum |ref|^2)
neg_ratio  error sum, element count     -(sum error / sum count)  (minus the MSE)
neg_max    largest abs error            -max
=========  ===========================  ==========================================

Retrieval agreement resamples the queries with the gallery held fixed (each query's nearest
neighbour is found among all evaluation sentences): the interval covers the query noise, not the
choice of gallery.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 20261201
CAP_DB = 100.0
KINDS = {"mean": 1, "ratio_db": 2, "cosine": 3, "neg_ratio": 2, "neg_max": 1}
BINOMIAL = "exact binomial (Clopper-Pearson)"
BOOTSTRAP = f"percentile bootstrap over samples ({RESAMPLES} resamples)"
PAIRED = f"paired bootstrap over the same samples ({RESAMPLES} resamples)"


@dataclass(frozen=True)
class Interval:
    """A value with its ``level`` confidence interval [lo, hi] and how it was made."""

    value: float
    lo: float
    hi: float
    level: float = LEVEL
    method: str = BOOTSTRAP

    def excludes(self, x: float = 0.0) -> bool:
        return self.lo > x or self.hi < x

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.lo, self.hi], "level": self.level, "method": self.method}


@dataclass(frozen=True)
class SampleStats:
    """Per-sample sufficient statistics of one model's score on one data set (see the module table)."""

    kind: str
    outputs: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown statistics kind {self.kind!r}: one of {', '.join(KINDS)}")
        if not self.outputs:
            raise ValueError("sample statistics need at least one output")
        n = None
        for name, arr in self.outputs.items():
            if arr.ndim != 2 or arr.shape[1] != KINDS[self.kind] or not np.all(np.isfinite(arr)):
                raise ValueError(f"statistics of {name!r} must be finite, shape (n, {KINDS[self.kind]})")
            if n is not None and arr.shape[0] != n:
                raise ValueError("every output's statistics must hold the same samples")
            n = arr.shape[0]
        if not n:
            raise ValueError("sample statistics need at least one sample")

    @property
    def n(self) -> int:
        return int(next(iter(self.outputs.values())).shape[0])

    @property
    def binary(self) -> bool:
        """A mean of 0/1 outcomes over one output: the exact binomial interval applies."""
        if self.kind != "mean" or len(self.outputs) != 1:
            return False
        col = next(iter(self.outputs.values()))[:, 0]
        return bool(np.all((col == 0) | (col == 1)))

    def columns(self) -> list[np.ndarray]:
        return [arr[:, j] for arr in self.outputs.values() for j in range(arr.shape[1])]

    def value(self) -> float:
        return float(_reduce(self.kind, len(self.outputs), self.columns(), axis=-1))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "outputs": {k: v.tolist() for k, v in self.outputs.items()}}

    @classmethod
    def from_dict(cls, d: Any) -> SampleStats:
        """From ``to_dict``'s form (as stored in an archive); ValueError when it is malformed."""
        if not isinstance(d, dict) or not isinstance(d.get("outputs"), dict):
            raise ValueError("sample statistics must be {'kind': ..., 'outputs': {name: rows}}")
        try:
            outputs = {str(k): np.asarray(v, dtype=np.float64).reshape(len(v), -1) for k, v in d["outputs"].items()}
        except (TypeError, ValueError):
            raise ValueError("sample statistics rows must be lists of numbers") from None
        return cls(str(d.get("kind")), outputs)


def _reduce(kind: str, n_outputs: int, cols: Sequence[np.ndarray], axis: int = -1) -> Any:
    """The score of each output from its (resampled) columns, then the minimum over outputs."""
    width = KINDS[kind]
    per = []
    for i in range(n_outputs):
        c = [np.sum(x, axis=axis) for x in cols[i * width:(i + 1) * width]]
        if kind == "mean":
            count = cols[i * width].shape[axis]
            per.append(c[0] / count)
        elif kind == "ratio_db":
            with np.errstate(divide="ignore", invalid="ignore"):
                db = 10.0 * np.log10(c[0] / c[1])
            db = np.where(c[1] == 0, CAP_DB, np.where(c[0] == 0, -CAP_DB, db))
            per.append(np.clip(db, -CAP_DB, CAP_DB))
        elif kind == "cosine":
            denom = np.sqrt(c[1] * c[2])
            with np.errstate(divide="ignore", invalid="ignore"):
                cos = np.where(denom > 0, c[0] / np.where(denom > 0, denom, 1.0), np.where(c[1] == c[2], 1.0, 0.0))
            per.append(np.clip(cos, -1.0, 1.0))
        elif kind == "neg_ratio":
            per.append(-c[0] / c[1])
        else:  # neg_max
            per.append(-np.max(cols[i], axis=axis))
    return np.minimum.reduce(per) if len(per) > 1 else per[0]


def _bootstrap(cols: list[np.ndarray], statistic: Any, level: float) -> tuple[float, float]:
    from scipy import stats

    if len(cols[0]) < 2:
        value = float(statistic(*cols, axis=-1))
        return value, value
    res = stats.bootstrap(tuple(cols), statistic, paired=True, vectorized=True, n_resamples=RESAMPLES,
                          confidence_level=level, method="percentile", rng=np.random.default_rng(SEED))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # every resample the same value
        value = float(statistic(*cols, axis=-1))
        return value, value
    return lo, hi


def interval(stats: SampleStats, level: float = LEVEL) -> Interval:
    """The score with its confidence interval (exact binomial for a 0/1 mean, else bootstrap)."""
    value = stats.value()
    if stats.binary:
        from scipy.stats import binomtest

        k = round(value * stats.n)
        ci = binomtest(k, stats.n).proportion_ci(confidence_level=level, method="exact")
        return Interval(value, float(ci.low), float(ci.high), level, BINOMIAL)
    n_out = len(stats.outputs)
    lo, hi = _bootstrap(stats.columns(), lambda *c, axis=-1: _reduce(stats.kind, n_out, c, axis), level)
    return Interval(value, min(lo, value), max(hi, value), level, BOOTSTRAP)


def paired_difference(a: SampleStats, b: SampleStats, level: float = LEVEL) -> Interval:
    """score(a) - score(b) with the interval of a paired bootstrap over their common samples."""
    if a.n != b.n:
        raise ValueError(f"paired statistics need the same samples: {a.n} and {b.n}")
    ca, cb = a.columns(), b.columns()
    na, nb = len(a.outputs), len(b.outputs)

    def diff(*cols: np.ndarray, axis: int = -1) -> Any:
        return _reduce(a.kind, na, cols[:len(ca)], axis) - _reduce(b.kind, nb, cols[len(ca):], axis)

    value = a.value() - b.value()
    lo, hi = _bootstrap([*ca, *cb], diff, level)
    return Interval(value, min(lo, value), max(hi, value), level, PAIRED)


def verdict(diff: Interval) -> str:
    """"better" / "worse" when the difference's interval excludes 0, else "within noise"."""
    if diff.lo > 0:
        return "better"
    if diff.hi < 0:
        return "worse"
    return "within noise"
