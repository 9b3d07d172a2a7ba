"""NSGA-II primitives against brute-force references written independently here (plain Python)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from search import nsga2


# -- plain-Python references ----------------------------------------------------------------------
def ref_dominates(fa: list[float], cva: float, fb: list[float], cvb: float) -> bool:
    if cva == 0 and cvb > 0:
        return True
    if cva > 0 and cvb == 0:
        return False
    if cva > 0 and cvb > 0:
        return cva < cvb
    return all(x <= y for x, y in zip(fa, fb)) and any(x < y for x, y in zip(fa, fb))


def ref_fronts(f: list[list[float]], cv: list[float]) -> list[list[int]]:
    remaining = set(range(len(f)))
    fronts = []
    while remaining:
        front = sorted(
            i for i in remaining if not any(ref_dominates(f[j], cv[j], f[i], cv[i]) for j in remaining if j != i)
        )
        fronts.append(front)
        remaining -= set(front)
    return fronts


def ref_crowding(f: list[list[float]]) -> list[float]:
    n = len(f)
    if n <= 2:
        return [math.inf] * n
    d = [0.0] * n
    for j in range(len(f[0])):
        order = sorted(range(n), key=lambda i: (f[i][j], i))
        lo, hi = f[order[0]][j], f[order[-1]][j]
        d[order[0]] = d[order[-1]] = math.inf
        for pos in range(1, n - 1):
            if hi > lo:
                d[order[pos]] += (f[order[pos + 1]][j] - f[order[pos - 1]][j]) / (hi - lo)
    return d


# Small integer grids force ties and exact duplicates, the cases that break naive sorts.
def point_sets(max_n: int = 40) -> st.SearchStrategy[tuple[list[list[float]], list[float]]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[list[list[float]], list[float]]:
        m = draw(st.integers(1, 4))
        n = draw(st.integers(0, max_n))
        values = st.one_of(st.integers(0, 4).map(float), st.floats(0, 10, allow_nan=False))
        f = [[draw(values) for _ in range(m)] for _ in range(n)]
        cv = [draw(st.sampled_from([0.0, 0.0, 0.0, 0.5, 1.0, 2.5])) for _ in range(n)]
        return f, cv

    return build()


@settings(max_examples=200, deadline=None)
@given(point_sets())
def test_non_dominated_sort_matches_brute_force(data: tuple[list[list[float]], list[float]]) -> None:
    f, cv = data
    m = len(f[0]) if f else 1
    fronts = nsga2.non_dominated_sort(nsga2.as_matrix(f, m), np.array(cv))
    assert [fr.tolist() for fr in fronts] == ref_fronts(f, cv)


@settings(max_examples=100, deadline=None)
@given(point_sets())
def test_unconstrained_sort_is_pareto_sort(data: tuple[list[list[float]], list[float]]) -> None:
    f, _ = data
    m = len(f[0]) if f else 1
    fronts = nsga2.non_dominated_sort(nsga2.as_matrix(f, m))
    assert [fr.tolist() for fr in fronts] == ref_fronts(f, [0.0] * len(f))


@settings(max_examples=200, deadline=None)
@given(point_sets())
def test_crowding_distance_matches_brute_force(data: tuple[list[list[float]], list[float]]) -> None:
    f, _ = data
    if not f:
        return
    got = nsga2.crowding_distance(np.array(f)).tolist()
    want = ref_crowding(f)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (math.isinf(g) and math.isinf(w)) or math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(point_sets())
def test_feasible_always_ranks_above_infeasible(data: tuple[list[list[float]], list[float]]) -> None:
    f, cv = data
    if not f:
        return
    rank = nsga2.ranks(np.array(f), np.array(cv))
    feasible = [r for r, c in zip(rank, cv) if c == 0]
    infeasible = [r for r, c in zip(rank, cv) if c > 0]
    if feasible and infeasible:
        assert max(feasible) < min(infeasible)
    # among infeasible points, less violation never ranks worse
    for i, ci in enumerate(cv):
        for j, cj in enumerate(cv):
            if 0 < ci < cj:
                assert rank[i] < rank[j]


@settings(max_examples=100, deadline=None)
@given(point_sets(), st.integers(1, 40))
def test_survival_keeps_whole_better_fronts(data: tuple[list[list[float]], list[float]], n: int) -> None:
    f, cv = data
    if not f:
        return
    survivors = nsga2.survive(np.array(f), np.array(cv), n).tolist()
    assert len(survivors) == min(n, len(f)) == len(set(survivors))
    rank = nsga2.ranks(np.array(f), np.array(cv))
    worst_kept = max(rank[survivors])
    # elitism: everything strictly better than the worst kept front survives
    assert all(i in survivors for i in range(len(f)) if rank[i] < worst_kept)


@settings(max_examples=100, deadline=None)
@given(point_sets(60))
def test_first_front_matches_sort(data: tuple[list[list[float]], list[float]]) -> None:
    f, cv = data
    if not f:
        return
    first = nsga2.first_front(np.array(f), np.array(cv)).tolist()
    assert sorted(first) == ref_fronts(f, cv)[0]


def test_constraint_domination_rules() -> None:
    good, bad = np.array([0.0, 0.0]), np.array([9.0, 9.0])
    assert nsga2.constrained_dominates(bad, 0.0, good, 0.1)  # feasible beats infeasible
    assert nsga2.constrained_dominates(bad, 0.1, good, 0.2)  # less violation wins
    assert not nsga2.constrained_dominates(good, 0.2, good, 0.2)
    assert nsga2.constrained_dominates(good, 0.0, bad, 0.0)


def test_budget_violation_and_total() -> None:
    assert nsga2.budget_violation(50.0, 100.0) == 0.0
    assert nsga2.budget_violation(150.0, 100.0) == 0.5
    assert nsga2.total_violation(np.array([[-1.0, 0.5, 0.25], [0.0, -2.0, 0.0]])).tolist() == [0.75, 0.0]
    assert nsga2.total_violation(np.zeros((3, 0))).tolist() == [0.0, 0.0, 0.0]
