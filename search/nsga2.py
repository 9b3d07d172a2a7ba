"""NSGA-II building blocks: constraint-domination, non-dominated sorting, crowding, survival.

Pure functions on arrays; all objectives are minimised. Constraint handling is Deb's
constraint-domination on the *total violation* ``cv >= 0`` (0 = feasible):
- a feasible point dominates every infeasible one;
- between two infeasible points the one with the smaller total violation dominates;
- between two feasible points Pareto dominance decides.
Equal points (including duplicates) never dominate each other, so they share a front.

Ties are broken by position everywhere (stable sorts), so results depend only on the input order.
The O(n^2) dominance matrix is fine for NSGA-II's parents + offspring (hundreds); for the first
front of a large archive use ``first_front`` (moocore's O(n log n) sweep).
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np


def total_violation(violations: np.ndarray) -> np.ndarray:
    """Sum of the positive parts of each row of a (n, c) violation matrix (<= 0 means satisfied)."""
    v = np.asarray(violations, dtype=float)
    if v.ndim == 1:
        v = v[:, None]
    if v.shape[1] == 0:
        return np.zeros(v.shape[0])
    return np.clip(v, 0.0, None).sum(axis=1)


def budget_violation(value: float, budget: float) -> float:
    """Normalised violation of ``value <= budget``: ``value / budget - 1`` clipped at 0."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    return max(value / budget - 1.0, 0.0)


def pareto_dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` is no worse than ``b`` everywhere and better somewhere."""
    return bool(np.all(a <= b) and np.any(a < b))


def constrained_dominates(fa: np.ndarray, cva: float, fb: np.ndarray, cvb: float) -> bool:
    """Deb's constraint-domination of point a over point b (see the module docstring)."""
    if cva <= 0 and cvb > 0:
        return True
    if cva > 0 and cvb > 0:
        return cva < cvb
    if cva > 0:
        return False
    return pareto_dominates(fa, fb)


def dominance_matrix(objectives: np.ndarray, cv: np.ndarray | None = None) -> np.ndarray:
    """``D[i, j]`` is True when point i constraint-dominates point j."""
    f = np.asarray(objectives, dtype=float)
    n = f.shape[0]
    le = np.all(f[:, None, :] <= f[None, :, :], axis=2)
    lt = np.any(f[:, None, :] < f[None, :, :], axis=2)
    pareto = le & lt
    if cv is None:
        return pareto
    c = np.asarray(cv, dtype=float).reshape(n)
    feas = c <= 0
    both_feasible = feas[:, None] & feas[None, :]
    both_infeasible = ~feas[:, None] & ~feas[None, :]
    return (both_feasible & pareto) | (feas[:, None] & ~feas[None, :]) | (both_infeasible & (c[:, None] < c[None, :]))


def non_dominated_sort(objectives: np.ndarray, cv: np.ndarray | None = None) -> list[np.ndarray]:
    """Fronts under constraint-domination, best first; each an ascending array of row indices.

    Deb's fast non-dominated sort: peel off the points nobody remaining dominates.
    """
    f = np.asarray(objectives, dtype=float)
    n = f.shape[0]
    if n == 0:
        return []
    dom = dominance_matrix(f, cv)
    dominated_by = dom.sum(axis=0).astype(np.int64)
    remaining = np.ones(n, dtype=bool)
    fronts: list[np.ndarray] = []
    while remaining.any():
        front = np.flatnonzero(remaining & (dominated_by == 0))
        fronts.append(front)
        remaining[front] = False
        dominated_by -= dom[front].sum(axis=0)
    return fronts


def ranks(objectives: np.ndarray, cv: np.ndarray | None = None) -> np.ndarray:
    """Front index of each point (0 = first front)."""
    out = np.empty(np.asarray(objectives).shape[0], dtype=np.int64)
    for r, front in enumerate(non_dominated_sort(objectives, cv)):
        out[front] = r
    return out


def crowding_distance(objectives: np.ndarray) -> np.ndarray:
    """Crowding distance of each point of one front (Deb et al. 2002).

    Per objective, points are ordered by value (stable: ties keep input order); the first and last
    get infinity, the others add the gap between their neighbours divided by the objective's range.
    An objective with zero range adds nothing. Fronts of one or two points are all infinite.
    """
    f = np.asarray(objectives, dtype=float)
    n, m = f.shape
    distance = np.zeros(n)
    if n <= 2:
        distance[:] = np.inf
        return distance
    for j in range(m):
        order = np.argsort(f[:, j], kind="stable")
        values = f[order, j]
        span = values[-1] - values[0]
        distance[order[0]] = np.inf
        distance[order[-1]] = np.inf
        if span > 0 and np.isfinite(span):
            distance[order[1:-1]] += (values[2:] - values[:-2]) / span
    return distance


def rank_and_crowding(objectives: np.ndarray, cv: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rank and within-front crowding distance of every point."""
    f = np.asarray(objectives, dtype=float)
    rank = np.empty(f.shape[0], dtype=np.int64)
    crowd = np.empty(f.shape[0])
    for r, front in enumerate(non_dominated_sort(f, cv)):
        rank[front] = r
        crowd[front] = crowding_distance(f[front])
    return rank, crowd


def survive(objectives: np.ndarray, cv: np.ndarray | None, n: int) -> np.ndarray:
    """Indices of the ``n`` survivors: whole fronts in order, the last one cut by crowding.

    Within the cut front larger crowding distance wins, ties by position. The result lists the
    survivors front by front (and by descending crowding inside the cut front), which makes
    the next population's order a deterministic function of the input order.
    """
    f = np.asarray(objectives, dtype=float)
    chosen: list[int] = []
    for front in non_dominated_sort(f, cv):
        if len(chosen) + len(front) <= n:
            chosen.extend(front.tolist())
            if len(chosen) == n:
                break
            continue
        crowd = crowding_distance(f[front])
        order = np.lexsort((front, -crowd))  # primary: -crowding; secondary: position
        chosen.extend(front[order[: n - len(chosen)]].tolist())
        break
    return np.array(chosen, dtype=np.int64)


def first_front(objectives: np.ndarray, cv: np.ndarray | None = None) -> np.ndarray:
    """Indices of the first front under constraint-domination, for any number of points.

    Feasible points exist -> their Pareto-non-dominated ones (duplicates all kept); otherwise the
    points of minimum total violation (which, by constraint-domination, tie with each other).
    """
    f = np.asarray(objectives, dtype=float)
    n = f.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    c = np.zeros(n) if cv is None else np.asarray(cv, dtype=float).reshape(n)
    feasible = np.flatnonzero(c <= 0)
    if feasible.size == 0:
        return np.flatnonzero(c == c.min())
    keep = moocore.is_nondominated(f[feasible], keep_weakly=True)
    return feasible[np.asarray(keep, dtype=bool)]


def as_matrix(rows: Sequence[Sequence[float]], width: int) -> np.ndarray:
    """Rows -> float (n, width) matrix, also for n = 0."""
    if len(rows) == 0:
        return np.zeros((0, width))
    return np.asarray(rows, dtype=float).reshape(len(rows), width)
