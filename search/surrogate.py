"""Surrogate-assisted offspring screening: breed many children, evaluate the most promising few.

Evaluations are the expensive part of a run (a quantized model built and scored, or a device
measured); proposing children is nearly free. A ``Screening`` object, injected into the engine like
the variation operators, sees a pool of unseen candidate children (bred by the usual selection,
crossover and mutation, plus some random genomes) and the told records, and picks which ``n`` of
them the engine asks for.

``SurrogateScreening`` fits, by default, one Gaussian process per objective (scikit-learn's
``GaussianProcessRegressor``; and one for the total constraint violation, once some told candidate
violates a constraint) on a one-hot encoding of the genome: a Matern 5/2 kernel with one length
scale per layer (ARD, as the Bayesian optimisers' GPs: its distance counts the layers whose choice
differs, each weighed by its own scale, so it sees interactions between layers and which layers
matter), plus a linear (dot-product) part and white noise, hyperparameters by maximum a posteriori
under BoTorch's dimension-scaled length-scale prior on at most ``tune_on`` records.
``length_scales="shared"`` (one scale in all, without the prior: the default until issue 17) and
``"choice"`` (one per one-hot column) remain. On digits-vit-groups' 40 development seeds the default
beat the shared scale at 200 and 400 evaluations (paired Wilcoxon p = 0.005 and < 0.001) and tied
at 100. ``model="linear"`` uses a Bayesian linear regression
instead (``BayesianRidge``: one weight per (layer, choice), weight and noise precisions from the
data), which also screens a batch whose GP kernel does not factorise. Either gives each prediction a
mean and a standard deviation. The linear model also proposes genomes of its own (``propose``): the
exact minimisers of weighted sums of its predicted objectives, on the posterior mean and on Thompson
draws, which breeding alone may take generations to reach; they join the pool with origin
``surrogate``. Children are then picked greedily by expected hypervolume improvement over the told
feasible front (objectives normalised by the told range, reference point 1.1), estimated from draws
of the predictive distribution; a draw predicted infeasible improves nothing. Each pick joins the
front at its mean prediction before the next ("believer" batches), so one batch spreads along the
front instead of piling into one gap. Children with no expected improvement follow, by predicted
violation, then by distance to the front. Before any told candidate is feasible the least predicted
violation goes first. A share ``explore`` of each batch can be left to the operators unscreened.

Contract (as for the operators): no state between calls and randomness only from the engine's
``rng``, so a seed still gives one run and resume stays exact. The screening never looks inside a
choice value; it only uses the genome indices and the told objective vectors.
"""

from __future__ import annotations

import abc
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import moocore
import numpy as np

from search import nsga2
from search.evaluation import Record
from search.space import Genome, SearchSpace

if TYPE_CHECKING:  # scikit-learn costs ~0.9 s to import: only a screening run pays it
    from sklearn.linear_model import BayesianRidge


class Screening(abc.ABC):
    """Chooses which candidate children to evaluate (and may add candidates of its own to the pool)."""

    #: pool size as a multiple of the wanted number of children
    pool_factor: int = 1
    #: share of the wanted children taken straight from the bred pool, unscreened
    explore: float = 0.0
    #: share of the pool made of uniformly random genomes (the rest the operators breed)
    random_share: float = 0.0

    def active(self, records: Sequence[Record]) -> bool:
        """Whether to screen at all given the told records (else the engine breeds as usual)."""
        return True

    def propose(
        self, rng: np.random.Generator, records: Sequence[Record], n: int, space: SearchSpace
    ) -> list[Genome]:
        """Up to ``n`` genomes of the screening's own to add to the pool (the engine drops seen ones)."""
        return []

    @abc.abstractmethod
    def choose(
        self, rng: np.random.Generator, pool: Sequence[Genome], records: Sequence[Record], n: int, space: SearchSpace
    ) -> list[int]:
        """``n`` distinct indices into ``pool`` (all of it when shorter), best first."""


def one_hot(genomes: Sequence[Genome], space: SearchSpace) -> np.ndarray:
    """(len(genomes), sum of layer sizes) 0/1 matrix: column offset[layer] + index is set."""
    offsets = np.concatenate([[0], np.cumsum(space.sizes)[:-1]]).astype(np.int64)
    g = np.asarray(genomes, dtype=np.int64).reshape(len(genomes), space.n_layers)
    x = np.zeros((len(genomes), int(space.sizes.sum())))
    x[np.arange(len(genomes))[:, None], g + offsets[None, :]] = 1.0
    return x


@dataclass(frozen=True)
class LinearModel:
    """Bayesian linear regression on one-hot features, one scikit-learn ``BayesianRidge`` per target
    column (weight and noise precisions estimated from the data by evidence maximisation).

    ``predict`` returns the mean and the predictive standard deviation (noise plus the weights'
    uncertainty, so choices the data never saw are less certain).
    """

    models: tuple[BayesianRidge, ...]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> LinearModel:
        from sklearn.linear_model import BayesianRidge

        return cls(tuple(BayesianRidge().fit(x, y[:, j]) for j in range(y.shape[1])))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = [m.predict(x, return_std=True) for m in self.models]
        return np.column_stack([p[0] for p in pairs]), np.column_stack([p[1] for p in pairs])

    def weights(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """(targets, features): the posterior mean of each target's weights, or with ``rng`` one draw
        from each weight posterior (Thompson sampling)."""
        if rng is None:
            return np.array([m.coef_ for m in self.models])
        # eigh: the posterior covariance can be singular to rounding (Cholesky then fails)
        return np.array([rng.multivariate_normal(m.coef_, (m.sigma_ + m.sigma_.T) / 2, method="eigh")
                         for m in self.models])


@dataclass(frozen=True)
class GaussianProcessModel:
    """One scikit-learn Gaussian process per target on the one-hot genome: a Matern-5/2 kernel (on
    one-hot vectors the distance counts the layers whose choice differs, so it sees interactions the
    linear model cannot) plus an additive linear part (a dot-product kernel) and white noise, with
    hyperparameters by marginal likelihood from one deterministic start."""

    models: tuple[object, ...]
    #: records the hyperparameters are fitted on at most (the posterior then uses all of them)
    tune_on: ClassVar[int] = 120

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        length_scales: str = "shared",
        sizes: Sequence[int] | np.ndarray | None = None,
        length_scale_prior: bool = False,
    ) -> GaussianProcessModel:
        """``length_scales``: ``"shared"`` (one Matern length scale), ``"layer"`` (one per layer: the
        one-hot blocks of ``sizes``, via ``search.gp_kernel.LayerMatern``) or ``"choice"`` (one per
        one-hot column: scikit-learn's anisotropic Matern). Every form starts from length scale 2.
        ``length_scale_prior``: fit the length scales by maximum a posteriori under BoTorch's
        dimension-scaled prior (``_log_scale_prior``) instead of by marginal likelihood alone."""
        import functools
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, DotProduct, WhiteKernel
        from threadpoolctl import threadpool_limits

        out = []
        for j in range(y.shape[1]):
            kernel = (ConstantKernel(1.0) * _matern(length_scales, x.shape[1], sizes)
                      + ConstantKernel(0.1) * DotProduct(sigma_0=1.0, sigma_0_bounds=(1e-3, 1e3))
                      + WhiteKernel(1e-3, (1e-6, 1.0)))
            optimizer = _short_lbfgs
            if length_scale_prior:
                optimizer = functools.partial(_short_lbfgs, prior=_log_scale_prior(kernel, x.shape[1]))
            # alpha: jitter on the diagonal, so a near-singular kernel still factorises
            gp = GaussianProcessRegressor(kernel, alpha=1e-6, normalize_y=True, n_restarts_optimizer=0,
                                          optimizer=optimizer)
            with threadpool_limits(1), warnings.catch_warnings():  # small matrices: threads only contend
                warnings.simplefilter("ignore", ConvergenceWarning)
                if len(x) > cls.tune_on:
                    # hyperparameters from an evenly spaced subset (their fit is the costly part),
                    # then the posterior on every record with them held fixed
                    subset = np.linspace(0, len(x) - 1, cls.tune_on).round().astype(int)
                    kernel = gp.fit(x[subset], y[subset, j]).kernel_
                    gp = GaussianProcessRegressor(kernel, alpha=1e-6, normalize_y=True, optimizer=None)
                out.append(gp.fit(x, y[:, j]))
        return cls(tuple(out))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            pairs = [m.predict(x, return_std=True) for m in self.models]  # type: ignore[attr-defined]
        return np.column_stack([p[0] for p in pairs]), np.column_stack([p[1] for p in pairs])


LENGTH_SCALES = ("shared", "layer", "choice")


def _matern(length_scales: str, width: int, sizes: Sequence[int] | np.ndarray | None) -> Any:
    """The Matern-5/2 part of the GP kernel with ``length_scales`` (see ``GaussianProcessModel.fit``)."""
    from sklearn.gaussian_process.kernels import Matern

    bounds = (0.1, 100.0)
    if length_scales == "shared":
        return Matern(length_scale=2.0, length_scale_bounds=bounds, nu=2.5)
    if length_scales == "choice":
        return Matern(length_scale=np.full(width, 2.0), length_scale_bounds=bounds, nu=2.5)
    if length_scales == "layer":
        if sizes is None:
            raise ValueError("layer length scales need the layer sizes")
        from search.gp_kernel import LayerMatern

        return LayerMatern(tuple(int(v) for v in sizes), np.full(len(sizes), 2.0), bounds)
    raise ValueError(f"length_scales must be one of {LENGTH_SCALES}")


@dataclass(frozen=True)
class _Prior:
    """Independent Normal priors on some entries of a kernel's ``theta`` (log hyperparameters)."""

    index: np.ndarray
    mean: float
    var: float


def _log_scale_prior(kernel: Any, width: int) -> _Prior:
    """BoTorch's default length-scale prior (SingleTaskGP since 0.12, Hvarfner et al. 2024), a
    log-normal with location sqrt(2) + log(width) / 2 and scale sqrt(3) for a ``width``-column input,
    on every Matern length scale of ``kernel``: a Normal on the log length scale, whose mode is the
    median (BoTorch's MAP in the length scale itself puts the mode lower, at exp(loc - 3)). It pulls
    length scales the data says little about towards long ones, so a few records cannot make a
    layer look decisive."""
    index: list[int] = []
    at = 0
    for h in kernel.hyperparameters:  # theta is the free hyperparameters' log values, in this order
        if h.fixed:
            continue
        if h.name.endswith("length_scale"):
            index += range(at, at + h.n_elements)
        at += h.n_elements
    return _Prior(np.array(index, dtype=int), float(np.sqrt(2.0) + 0.5 * np.log(width)), 3.0)


def _short_lbfgs(
    obj_func: Any, initial_theta: np.ndarray, bounds: np.ndarray, prior: _Prior | None = None
) -> tuple[np.ndarray, float]:
    """scikit-learn's default hyperparameter optimiser (L-BFGS-B on the negative log marginal
    likelihood, plus the negative log ``prior`` if any), stopped after 25 iterations: the screening
    ranks candidates, it needs no exact optimum."""
    from scipy.optimize import minimize

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = obj_func(theta)
        if prior is None:
            return value, grad
        z = theta[prior.index] - prior.mean
        grad = np.array(grad, dtype=float)
        grad[prior.index] += z / prior.var
        return float(value) + float((z * z).sum() / (2.0 * prior.var)), grad

    res = minimize(objective, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds, options={"maxiter": 25})
    return res.x, float(res.fun)


def separable_argmin(scores: np.ndarray, space: SearchSpace) -> Genome:
    """The genome minimising a sum of per-(layer, choice) ``scores`` (one-hot order): per layer, its
    cheapest choice (ties: the lower index). Exact, because an additive model is separable."""
    offsets = np.concatenate([[0], np.cumsum(space.sizes)]).astype(np.int64)
    return tuple(int(np.argmin(scores[offsets[i]:offsets[i + 1]])) for i in range(space.n_layers))


class SurrogateScreening(Screening):
    """Linear-surrogate screening by expected hypervolume improvement (see the module docstring).

    ``pool_factor``: candidates per wanted child; ``random_share``: share of the pool made of
    uniformly random genomes (the rest the operators breed); ``explore``: share of each batch taken
    unscreened from the operators' children; ``samples``: draws from the predictive distribution
    per candidate for the expected improvement; ``min_records``: told, non-failed records needed
    before screening starts; ``proposals``: the model's own optima added to the pool, as a multiple of
    the wanted children (0: none); ``model``: ``"gp"`` or ``"linear"``; ``length_scales``: the GP's
    Matern length scales, ``"shared"``, one per ``"layer"`` or one per ``"choice"``, and
    ``length_scale_prior`` whether they have BoTorch's prior (see ``GaussianProcessModel.fit``;
    by default one per layer, with the prior).
    """

    def __init__(
        self,
        pool_factor: int = 20,
        random_share: float = 0.25,
        explore: float = 0.0,
        samples: int = 16,
        min_records: int = 8,
        proposals: float = 1.0,
        model: str = "gp",
        length_scales: str = "layer",
        length_scale_prior: bool = True,
    ) -> None:
        if pool_factor < 1 or samples < 1:
            raise ValueError("pool_factor and samples must be >= 1")
        if proposals < 0:
            raise ValueError("proposals must be >= 0")
        if not 0.0 <= random_share <= 1.0 or not 0.0 <= explore <= 1.0:
            raise ValueError("random_share and explore must be in [0, 1]")
        self.pool_factor = pool_factor
        self.random_share = random_share
        self.explore = explore
        self.samples = samples
        self.min_records = min_records
        self.proposals = proposals
        if model not in ("linear", "gp"):
            raise ValueError("model must be 'linear' or 'gp'")
        self.model = model
        if length_scales not in LENGTH_SCALES:
            raise ValueError(f"length_scales must be one of {LENGTH_SCALES}")
        self.length_scales = length_scales
        self.length_scale_prior = length_scale_prior

    def active(self, records: Sequence[Record]) -> bool:
        return sum(not r.evaluation.failed for r in records) >= self.min_records

    def propose(
        self, rng: np.random.Generator, records: Sequence[Record], n: int, space: SearchSpace
    ) -> list[Genome]:
        """The surrogate's own optima, which breeding may take generations to reach: the exact
        minimiser of a random weighted sum of the (normalised) objectives, for ``n`` weightings drawn
        uniformly from the simplex (the single objectives first), half of them on the posterior mean
        and half on one Thompson draw of the weights (BOCS-style, Baptista & Poloczek 2018). An
        additive model makes each one a per-layer argmin. With constraints, the predicted violation
        is added with a weight that dominates."""
        if self.proposals <= 0 or not self.active(records):
            return []
        told = [r for r in records if not r.evaluation.failed]
        y, m = _targets(told)
        model = LinearModel.fit(one_hot([r.genome for r in told], space), y)
        count = max(1, round(self.proposals * n))
        out: list[Genome] = []
        for k in range(count):
            w = np.eye(m)[k] if k < m else rng.dirichlet(np.ones(m))
            coef = model.weights(rng if k % 2 else None)
            scores = w @ coef[:m]
            if coef.shape[0] > m:
                scores = scores + 10.0 * coef[m]
            genome = separable_argmin(scores, space)
            if genome not in out:
                out.append(genome)
        return out

    def choose(
        self, rng: np.random.Generator, pool: Sequence[Genome], records: Sequence[Record], n: int, space: SearchSpace
    ) -> list[int]:
        if len(pool) <= n:
            return list(range(len(pool)))
        told = [r for r in records if not r.evaluation.failed]
        cv = np.array([r.evaluation.total_violation for r in told], dtype=float)
        y, m = _targets(told)
        x = one_hot([r.genome for r in told], space)
        model: LinearModel | GaussianProcessModel | None = None
        if self.model == "gp":
            try:
                model = GaussianProcessModel.fit(x, y, self.length_scales, space.sizes, self.length_scale_prior)
            except (np.linalg.LinAlgError, ValueError):
                pass  # a kernel that does not factorise even with jitter: the linear model screens this batch
        if model is None:
            model = LinearModel.fit(x, y)
        mean, std = model.predict(one_hot(pool, space))
        z = rng.standard_normal((self.samples, y.shape[1]))
        feasible = cv <= 0
        if not feasible.any():  # nothing to improve on yet: least predicted violation first
            order = np.lexsort((np.arange(len(pool)), mean[:, m]))
            return order[:n].tolist()
        front = y[feasible, :m][nsga2.first_front(y[feasible, :m])]
        return _greedy_ehvi(mean, std, z, m, front, np.full(m, 1.1), n)


def _targets(told: Sequence[Record]) -> tuple[np.ndarray, int]:
    """The regression targets of the told records and the number of objectives: the objectives
    normalised by the told range (so the hypervolume weighs them alike), then the total violation
    (normalised by its largest value) once some told record violates a constraint."""
    f = np.array([r.evaluation.objectives for r in told], dtype=float)
    cv = np.array([r.evaluation.total_violation for r in told], dtype=float)
    lo, hi = f.min(axis=0), f.max(axis=0)
    y = (f - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    if np.any(cv > 0):  # feasible means <= 0
        y = np.column_stack([y, cv / float(cv.max())])
    return y, f.shape[1]


def _dominated(points: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Which ``points`` some ``front`` point weakly dominates."""
    if front.size == 0:
        return np.zeros(len(points), dtype=bool)
    return np.all(front[None, :, :] <= points[:, None, :], axis=2).any(axis=1)


def _gap(points: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Additive epsilon each point needs to stop being weakly dominated by ``front`` (0 if not)."""
    if front.size == 0:
        return np.zeros(len(points))
    worst = (points[:, None, :] - front[None, :, :]).min(axis=2)  # >= 0 where front point dominates
    return np.clip(worst.max(axis=1), 0.0, None)




def _greedy_ehvi(
    mean: np.ndarray, std: np.ndarray, z: np.ndarray, m: int, front: np.ndarray, ref: np.ndarray, n: int
) -> list[int]:
    """``n`` candidates by lazy greedy maximisation of the expected hypervolume improvement.

    ``mean``/``std`` (candidates x targets) are predictions: ``m`` objectives, then optionally the
    total violation. The expectation averages the improvement over ``mean + std * z`` per row of
    ``z``; a draw with a positive violation improves nothing. Each pick joins the front at its
    mean prediction. The improvement only shrinks as the front grows (submodularity), so stale
    gains are upper bounds and the lazy heap is exact. Candidates without expected improvement
    follow, feasible-predicted first, then by how far their mean is from the front.
    """
    draws = mean[:, None, :] + std[:, None, :] * z[None, :, :]  # (candidates, samples, targets)
    alive = np.all(draws[:, :, :m] < ref, axis=2)
    if mean.shape[1] > m:
        alive &= draws[:, :, m] <= 0
    alive &= ~_dominated(draws[:, :, :m].reshape(-1, m), front).reshape(alive.shape)
    # moocore directly: every point here is inside the reference box (search.metrics.hypervolume
    # adds input checks that cost more than the computation for a few dozen points)
    volume = moocore.Hypervolume(ref=ref)
    current = front
    base = float(volume(current))
    trial = np.vstack([current, current[:1]])  # the front plus one slot for the point under test

    def gain(i: int) -> float:
        points = draws[i, alive[i], :m]
        total = 0.0
        for p in points[~_dominated(points, current)]:
            trial[-1] = p
            total += float(volume(trial)) - base
        return total / len(z)

    chosen: list[int] = []
    heap = [(-np.inf, int(i)) for i in np.flatnonzero(alive.any(axis=1))]  # (-gain bound, index)
    heapq.heapify(heap)
    while heap and len(chosen) < n:
        _, i = heapq.heappop(heap)
        g = gain(i)
        if g <= 0:
            continue
        if heap and g < -heap[0][0]:
            heapq.heappush(heap, (-g, i))
            continue
        chosen.append(i)
        current = np.vstack([current, mean[i, :m]])
        base = float(volume(current))
        trial = np.vstack([current, current[:1]])
    if len(chosen) < n:
        rest = np.setdiff1d(np.arange(len(mean)), chosen)
        violation = np.clip(mean[rest, m], 0.0, None) if mean.shape[1] > m else np.zeros(len(rest))
        order = np.lexsort((rest, _gap(mean[rest, :m], current), violation))
        chosen += rest[order[: n - len(chosen)]].tolist()
    return chosen
