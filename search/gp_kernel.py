"""A Matern-5/2 kernel with one length scale per layer of a one-hot genome, for scikit-learn's GP.

scikit-learn's ``Matern`` takes either one length scale or one per input column; on a one-hot genome
the per-column form gives each (layer, choice) its own scale, and there is no form in between. This
kernel ties the columns of each layer: its squared distance is ``sum over layers of d_l / l_l**2``,
``d_l`` the squared Euclidean distance between the two inputs' columns of layer ``l`` (2 where the
layers' choices differ, 0 where they agree). With every ``l_l`` equal it is ``Matern(nu=2.5)`` with
that length scale, so a fit can start from where the shared-scale kernel starts.

Imported only by ``search.surrogate`` when a layer-scaled GP is fitted (scikit-learn costs ~0.9 s to
import, and this module subclasses its kernel base class).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel, NormalizedKernelMixin, StationaryKernelMixin


class LayerMatern(StationaryKernelMixin, NormalizedKernelMixin, Kernel):  # type: ignore[misc]
    """Matern 5/2 over per-layer distances: ``sizes`` are the layers' column counts (in one-hot
    order, summing to the input width), ``length_scale`` one value per layer (or one for all)."""

    def __init__(
        self,
        sizes: tuple[int, ...],
        length_scale: float | np.ndarray = 1.0,
        length_scale_bounds: tuple[float, float] = (1e-5, 1e5),
    ) -> None:
        self.sizes = sizes
        self.length_scale = length_scale
        self.length_scale_bounds = length_scale_bounds

    @property
    def hyperparameter_length_scale(self) -> Hyperparameter:
        return Hyperparameter("length_scale", "numeric", self.length_scale_bounds, len(self.sizes))

    def _scales(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.length_scale, dtype=float), (len(self.sizes),))

    def _layer_distances(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(layers, len(x), len(y)) squared distances between the two inputs' columns of each layer."""
        edges = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        if edges[-1] != x.shape[1]:
            raise ValueError(f"LayerMatern: layer sizes sum to {edges[-1]}, inputs have {x.shape[1]} columns")
        out = np.empty((len(self.sizes), len(x), len(y)))
        for layer in range(len(self.sizes)):
            a, b = x[:, edges[layer]:edges[layer + 1]], y[:, edges[layer]:edges[layer + 1]]
            d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
            out[layer] = np.clip(d, 0.0, None)
        return out

    def __call__(self, x: Any, y: Any = None, eval_gradient: bool = False) -> Any:
        # scikit-learn passes both inputs positionally
        if eval_gradient and y is not None:
            raise ValueError("Gradient can only be evaluated when y is None.")
        x = np.atleast_2d(x)
        y = x if y is None else np.atleast_2d(y)
        scales = self._scales()
        per_layer = self._layer_distances(x, y) / (scales**2)[:, None, None]
        s = np.sqrt(5.0 * per_layer.sum(axis=0))
        decay = np.exp(-s)
        k = (1.0 + s + s * s / 3.0) * decay
        if not eval_gradient:
            return k
        if self.hyperparameter_length_scale.fixed:
            return k, np.empty((len(x), len(x), 0))
        # d k / d log l_l = 5/3 (1 + s) exp(-s) d_l / l_l**2 (as scikit-learn's anisotropic Matern)
        grad = (5.0 / 3.0) * ((1.0 + s) * decay)[:, :, None] * np.moveaxis(per_layer, 0, -1)
        return k, grad

    def __repr__(self) -> str:
        return f"LayerMatern(length_scale=[{', '.join(f'{v:.3g}' for v in self._scales())}], nu=2.5)"
