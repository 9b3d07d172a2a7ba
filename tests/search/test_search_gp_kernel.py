"""The per-layer Matern kernel and the length-scale prior: what they reduce to, the gradient, what a fit learns."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.gaussian_process.kernels import Matern

from search.gp_kernel import LayerMatern
from search.space import SearchSpace
from search.surrogate import GaussianProcessModel, one_hot

SPACE = SearchSpace(["a", "b", "c", "d"], [[0, 1], [0, 1, 2, 3, 4], [0, 1, 2], [0, 1, 2, 3]])


def _inputs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return one_hot([SPACE.random(rng) for _ in range(n)], SPACE)


def test_equal_layer_scales_are_the_shared_scale_matern() -> None:
    x, y = _inputs(20, 0), _inputs(7, 1)
    kernel = LayerMatern(tuple(SPACE.sizes), np.full(4, 1.7))
    assert np.allclose(kernel(x, y), Matern(1.7, nu=2.5)(x, y), atol=1e-12)
    assert np.allclose(kernel.diag(x), 1.0)


def test_gradient_matches_finite_differences_in_log_scale() -> None:
    x = _inputs(15, 2)
    kernel = LayerMatern(tuple(SPACE.sizes), np.array([0.5, 1.0, 3.0, 8.0]))
    k, grad = kernel(x, eval_gradient=True)
    assert grad.shape == (15, 15, 4)
    for layer in range(4):
        theta = kernel.theta.copy()
        theta[layer] += 1e-6
        assert np.allclose((kernel.clone_with_theta(theta)(x) - k) / 1e-6, grad[:, :, layer], atol=1e-5)


def test_sizes_that_do_not_cover_the_input_are_an_error() -> None:
    with pytest.raises(ValueError):
        LayerMatern((2, 5), np.ones(2))(_inputs(3, 0))


def test_layer_scales_learn_which_layers_matter() -> None:
    # the target depends on layers a and b only (with an interaction), not on c or d
    rng = np.random.default_rng(3)
    genomes = list(dict.fromkeys(SPACE.random(rng) for _ in range(80)))
    y = np.array([[float(g[0] * g[1] + np.sin(g[1]))] for g in genomes])
    model = GaussianProcessModel.fit(one_hot(genomes, SPACE), y, "layer", SPACE.sizes)
    scales = model.models[0].kernel_.k1.k1.k2.length_scale  # type: ignore[attr-defined]
    assert max(scales[:2]) < min(scales[2:])


def test_the_prior_lengthens_the_scale_of_a_layer_the_data_never_varies() -> None:
    # layer d is always at choice 0: the likelihood says nothing about its scale, the prior pulls it
    # from the start (2) towards its mode exp(sqrt(2) + log(width) / 2)
    rng = np.random.default_rng(4)
    genomes = list(dict.fromkeys((*SPACE.random(rng)[:3], 0) for _ in range(60)))
    y = np.array([[float(g[0] + g[1] * g[2])] for g in genomes])
    x = one_hot(genomes, SPACE)
    scales = {}
    for prior in (False, True):
        model = GaussianProcessModel.fit(x, y, "layer", SPACE.sizes, length_scale_prior=prior)
        scales[prior] = model.models[0].kernel_.k1.k1.k2.length_scale  # type: ignore[attr-defined]
    assert scales[False][3] == pytest.approx(2.0)
    assert scales[True][3] > 5.0
