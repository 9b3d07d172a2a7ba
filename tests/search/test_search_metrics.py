"""Hypervolume (moocore) against pymoo's independent implementation; normalisation; recommend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymoo.indicators.hv import HV

from search import metrics


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4), st.integers(1, 30), st.integers(0, 2**32 - 1), st.booleans())
def test_hypervolume_matches_pymoo(m: int, n: int, seed: int, grid: bool) -> None:
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 5, (n, m)).astype(float) if grid else rng.random((n, m))
    ref = np.full(m, 5.5 if grid else 1.1)
    ours = metrics.hypervolume(points, ref)
    theirs = float(HV(ref_point=ref)(points))
    assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12)


def test_hypervolume_edge_cases() -> None:
    assert metrics.hypervolume(np.zeros((0, 2)), [1.0, 1.0]) == 0.0
    assert metrics.hypervolume([[2.0, 2.0]], [1.0, 1.0]) == 0.0  # outside the box
    assert metrics.hypervolume([[0.5, 0.5], [0.5, 0.5]], [1.0, 1.0]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        metrics.hypervolume([[0.0, 0.0]], [1.0, 1.0, 1.0])


def test_normalise_and_normalised_hypervolume() -> None:
    pts = np.array([[0.0, 10.0], [5.0, 0.0], [5.0, 5.0]])
    ideal, nadir = metrics.bounds(pts)
    assert metrics.normalise(pts, ideal, nadir).tolist() == [[0.0, 1.0], [1.0, 0.0], [1.0, 0.5]]
    # a constant objective maps to 0 instead of dividing by zero
    assert metrics.normalise([[3.0, 1.0]], [3.0, 0.0], [3.0, 2.0]).tolist() == [[0.0, 0.5]]
    hv = metrics.normalised_hypervolume(pts, ideal, nadir, margin=0.1)
    # (0, 1) and (1, 0) each own a 1.1 x 0.1 strip, overlapping in a 0.1 x 0.1 corner
    assert hv == pytest.approx(0.11 + 0.11 - 0.01, abs=1e-12)


def test_recommend_follows_weights() -> None:
    front = np.array([[0.0, 10.0], [1.0, 4.0], [10.0, 0.0]])
    assert metrics.recommend(front, [1.0, 0.0]) == 0
    assert metrics.recommend(front, [0.0, 1.0]) == 2
    assert metrics.recommend(front, [1.0, 1.0]) == 1
    with pytest.raises(ValueError):
        metrics.recommend(front, [1.0])
    with pytest.raises(ValueError):
        metrics.recommend(np.zeros((0, 2)), [1.0, 1.0])
