"""Surrogate-assisted offspring screening: breed many children, evaluate the most promising few.

Evaluations are the expensive part of a run (a quantized model built and scored, or a device
measured); proposing children is nearly free. A ``Screening`` object, injected into the engine like
the variation operators, sees a pool of unseen candidate children (bred by the usual selection,
crossover and mutation, plus some random genomes) and the told records, and picks which ``n`` of
them the engine asks for.

``SurrogateScreening`` fits one Bayesian linear regression (scikit-learn's ``BayesianRidge``) per
objective (and one for the total constraint violation, once some told candidate violates a
constraint) on a one-hot encoding of the genome: one weight per (layer, choice), with weight and
noise precisions estimated from the data. Objectives that are sums over layers (weight bytes) are
fitted exactly, nearly additive ones (latency, accuracy loss) approximately; the residual spread and
the weights' uncertainty give each prediction a standard deviation. Children are then picked greedily
by expected hypervolume improvement over the told feasible front (objectives normalised by the
told range, reference point 1.1), estimated from draws of the predictive distribution; a draw
predicted infeasible improves nothing. Each pick joins the front at its mean prediction before the
next ("believer" batches), so one batch spreads along the front instead of piling into one gap.
Children with no expected improvement follow, by predicted violation, then by distance to the
front. Before any told candidate is feasible the least predicted violation goes first. A share
``explore`` of each batch can be left to the operators unscreened.

Contract (as for the operators): no state between calls and randomness only from the engine's
``rng``, so a seed still gives one run and resume stays exact. The screening never looks inside a
choice value; it only uses the genome indices and the told objective vectors.
"""

from __future__ import annotations

import abc
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import moocore
import numpy as np

from search import nsga2
from search.evaluation import Record
from search.space import Genome, SearchSpace

if TYPE_CHECKING:  # scikit-learn costs ~0.9 s to import: only a screening run pays it
    from sklearn.linear_model import BayesianRidge


class Screening(abc.ABC):
    """Chooses which candidate children to evaluate."""

    #: pool size as a multiple of the wanted number of children
    pool_factor: int = 1
    #: share of the wanted children taken straight from the bred pool, unscreened
    explore: float = 0.0
    #: share of the pool made of uniformly random genomes (the rest the operators breed)
    random_share: float = 0.0

    def active(self, records: Sequence[Record]) -> bool:
        """Whether to screen at all given the told records (else the engine breeds as usual)."""
        return True

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


class SurrogateScreening(Screening):
    """Linear-surrogate screening by expected hypervolume improvement (see the module docstring).

    ``pool_factor``: candidates per wanted child; ``random_share``: share of the pool made of
    uniformly random genomes (the rest the operators breed); ``explore``: share of each batch taken
    unscreened from the operators' children; ``samples``: draws from the predictive distribution
    per candidate for the expected improvement; ``min_records``: told, non-failed records needed
    before screening starts.
    """

    def __init__(
        self,
        pool_factor: int = 20,
        random_share: float = 0.25,
        explore: float = 0.0,
        samples: int = 16,
        min_records: int = 8,
    ) -> None:
        if pool_factor < 1 or samples < 1:
            raise ValueError("pool_factor and samples must be >= 1")
        if not 0.0 <= random_share <= 1.0 or not 0.0 <= explore <= 1.0:
            raise ValueError("random_share and explore must be in [0, 1]")
        self.pool_factor = pool_factor
        self.random_share = random_share
        self.explore = explore
        self.samples = samples
        self.min_records = min_records

    def active(self, records: Sequence[Record]) -> bool:
        return sum(not r.evaluation.failed for r in records) >= self.min_records

    def choose(
        self, rng: np.random.Generator, pool: Sequence[Genome], records: Sequence[Record], n: int, space: SearchSpace
    ) -> list[int]:
        if len(pool) <= n:
            return list(range(len(pool)))
        told = [r for r in records if not r.evaluation.failed]
        f = np.array([r.evaluation.objectives for r in told], dtype=float)
        cv = np.array([r.evaluation.total_violation for r in told], dtype=float)
        m = f.shape[1]
        # normalise by the told range so the hypervolume weighs objectives alike
        lo, hi = f.min(axis=0), f.max(axis=0)
        y = (f - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
        constrained = bool(np.any(cv > 0))
        if constrained:  # the total violation is one more target; feasible means <= 0
            y = np.column_stack([y, cv / float(cv.max())])
        model = LinearModel.fit(one_hot([r.genome for r in told], space), y)
        mean, std = model.predict(one_hot(pool, space))
        z = rng.standard_normal((self.samples, y.shape[1]))
        feasible = cv <= 0
        if not feasible.any():  # nothing to improve on yet: least predicted violation first
            order = np.lexsort((np.arange(len(pool)), mean[:, m]))
            return order[:n].tolist()
        front = y[feasible, :m][nsga2.first_front(y[feasible, :m])]
        return _greedy_ehvi(mean, std, z, m, front, np.full(m, 1.1), n)


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
