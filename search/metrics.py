"""Front quality and choice: hypervolume (moocore), normalisation, the weighted recommendation.

All objectives are minimised. Hypervolume is moocore's exact algorithm, never re-implemented here;
these helpers only shape inputs (normalisation, reference points, dropping points outside the
box) so numbers from different objective scales are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np


def _matrix(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim == 1:
        p = p[None, :] if p.size else p.reshape(0, 0)
    return p


def hypervolume(points: np.ndarray | Sequence[Sequence[float]], ref: Sequence[float] | np.ndarray) -> float:
    """Hypervolume dominated by ``points`` and bounded by ``ref`` (minimisation).

    Points that do not strictly dominate ``ref`` contribute nothing and are dropped first (moocore
    already ignores them; dropping keeps empty and degenerate inputs well-defined: 0.0).
    """
    p = _matrix(points)
    r = np.asarray(ref, dtype=float).ravel()
    if p.size == 0:
        return 0.0
    if p.shape[1] != r.size:
        raise ValueError(f"reference point has {r.size} values for {p.shape[1]} objectives")
    inside = np.all(p < r, axis=1)
    if not inside.any():
        return 0.0
    return float(moocore.hypervolume(p[inside], ref=r))


def bounds(points: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(ideal, nadir): per-objective minimum and maximum of ``points``."""
    p = _matrix(points)
    if p.size == 0:
        raise ValueError("bounds of an empty point set")
    return p.min(axis=0), p.max(axis=0)


def normalise(
    points: np.ndarray | Sequence[Sequence[float]],
    ideal: Sequence[float] | np.ndarray,
    nadir: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Map ``ideal`` -> 0 and ``nadir`` -> 1 per objective; a zero-width objective maps to 0."""
    p = _matrix(points)
    lo = np.asarray(ideal, dtype=float)
    hi = np.asarray(nadir, dtype=float)
    span = hi - lo
    # A constant objective cannot distinguish points: give it no weight rather than divide by 0.
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (p - lo) / safe, 0.0)


def normalised_hypervolume(
    points: np.ndarray | Sequence[Sequence[float]],
    ideal: Sequence[float] | np.ndarray,
    nadir: Sequence[float] | np.ndarray,
    margin: float = 0.1,
) -> float:
    """Hypervolume after ``normalise`` with the reference point at ``1 + margin`` everywhere.

    The margin lets the extreme points of the front (which sit at 1 in their worst objective)
    contribute; comparisons are only meaningful with the same ideal, nadir and margin.
    """
    p = normalise(points, ideal, nadir)
    if p.size == 0:
        return 0.0
    return hypervolume(p, np.full(p.shape[1], 1.0 + margin))


def weighted_fitness(
    points: np.ndarray | Sequence[Sequence[float]],
    weights: Sequence[float] | np.ndarray,
    ideal: Sequence[float] | np.ndarray | None = None,
    nadir: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """``sum_i w_i * normalised_i`` per point (lower is better); bounds default to the points'."""
    p = _matrix(points)
    w = np.asarray(weights, dtype=float).ravel()
    if p.size == 0:
        return np.zeros(0)
    if w.size != p.shape[1]:
        raise ValueError(f"{w.size} weights for {p.shape[1]} objectives")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative (every objective is minimised)")
    lo, hi = bounds(p)
    lo = lo if ideal is None else np.asarray(ideal, dtype=float)
    hi = hi if nadir is None else np.asarray(nadir, dtype=float)
    return np.asarray(normalise(p, lo, hi) @ w, dtype=float)


def recommend(
    points: np.ndarray | Sequence[Sequence[float]],
    weights: Sequence[float] | np.ndarray,
    ideal: Sequence[float] | np.ndarray | None = None,
    nadir: Sequence[float] | np.ndarray | None = None,
) -> int:
    """Index of the point with the lowest weighted fitness (first one on ties).

    Meant for a front (the front itself is always kept; this only picks one point to suggest).
    Normalising by ideal/nadir makes the weights mean "relative importance" rather than "units".
    """
    scores = weighted_fitness(points, weights, ideal, nadir)
    if scores.size == 0:
        raise ValueError("recommend: no points to choose from")
    return int(np.argmin(scores))
