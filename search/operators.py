"""Variation operators, injected into the engine as objects (optuna NSGA-II style).

Each operator is a small class whose method signature declares what it needs. Contract for all:
- Randomness comes only from the ``rng`` argument (a ``numpy.random.Generator`` owned by the
  engine); an operator must not keep its own RNG or any other state between calls, because the
  engine serialises only its own state for resume. Adaptive parameters (the mutation rate) live in
  a JSON-able ``state`` dict that the engine owns, stores and passes back in.
- Operators never modify their inputs (genomes are tuples anyway) and return genomes of the right
  length; ``Repair`` is applied after variation, so crossover and mutation need only keep indices
  in range for the layer they came from.
- The number and order of draws from ``rng`` must depend only on the inputs, so a seed gives one run.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.space import Genome, SearchSpace

MutationState = dict[str, float]


@dataclass(frozen=True)
class Ranked:
    """What selection may look at: the current population with its NSGA-II rank and crowding.

    ``rank[i]`` is the front index (0 = best) of ``genomes[i]`` under constraint-domination and
    ``crowding[i]`` its crowding distance within that front (inf at the boundary). Derived by the
    engine from the told evaluations each time it is needed; never stored.
    """

    genomes: Sequence[Genome]
    rank: np.ndarray
    crowding: np.ndarray


# -- selection ------------------------------------------------------------------------------------
class Selection(abc.ABC):
    """Picks parents from the ranked population."""

    @abc.abstractmethod
    def select(self, rng: np.random.Generator, population: Ranked, n: int) -> list[int]:
        """Return ``n`` indices into ``population.genomes`` (repeats allowed)."""


class TournamentSelection(Selection):
    """k-way tournament on (rank, then larger crowding distance); k=2 is binary tournament.

    Contestants are drawn without replacement (when the population has at least k members); a tie
    on both keys goes to the contestant drawn first, so no index position is favoured.
    """

    def __init__(self, k: int = 2) -> None:
        if k < 1:
            raise ValueError(f"tournament size must be >= 1, got {k}")
        self.k = k

    def select(self, rng: np.random.Generator, population: Ranked, n: int) -> list[int]:
        size = len(population.genomes)
        if size == 0:
            raise ValueError("cannot select from an empty population")
        k = min(self.k, size)
        winners: list[int] = []
        for _ in range(n):
            contestants = rng.choice(size, size=k, replace=False)
            best = int(contestants[0])
            for c in contestants[1:]:
                c = int(c)
                if (population.rank[c], -population.crowding[c]) < (population.rank[best], -population.crowding[best]):
                    best = c
            winners.append(best)
        return winners


# -- crossover ------------------------------------------------------------------------------------
class Crossover(abc.ABC):
    """Recombines two parents layer-wise into two children."""

    @abc.abstractmethod
    def cross(self, rng: np.random.Generator, a: Genome, b: Genome, space: SearchSpace) -> tuple[Genome, Genome]:
        """Children of ``a`` and ``b``: each layer's index comes from one of the parents."""


class UniformCrossover(Crossover):
    """Each layer is swapped between the parents with probability ``swap_prob``."""

    def __init__(self, swap_prob: float = 0.5) -> None:
        if not 0.0 <= swap_prob <= 1.0:
            raise ValueError(f"swap_prob must be in [0, 1], got {swap_prob}")
        self.swap_prob = swap_prob

    def cross(self, rng: np.random.Generator, a: Genome, b: Genome, space: SearchSpace) -> tuple[Genome, Genome]:
        mask = rng.random(len(a)) < self.swap_prob
        c1 = tuple(y if m else x for x, y, m in zip(a, b, mask.tolist()))
        c2 = tuple(x if m else y for x, y, m in zip(a, b, mask.tolist()))
        return c1, c2


class NPointCrossover(Crossover):
    """Cut both parents at ``n_points`` distinct layer boundaries and alternate the segments.

    Layers are in model order, so neighbouring layers (which tend to interact) stay together more
    often than under uniform crossover. With fewer boundaries than ``n_points`` all are used.
    """

    def __init__(self, n_points: int = 2) -> None:
        if n_points < 1:
            raise ValueError(f"n_points must be >= 1, got {n_points}")
        self.n_points = n_points

    def cross(self, rng: np.random.Generator, a: Genome, b: Genome, space: SearchSpace) -> tuple[Genome, Genome]:
        length = len(a)
        if length < 2:
            return tuple(a), tuple(b)
        n = min(self.n_points, length - 1)
        cuts = np.sort(rng.choice(np.arange(1, length), size=n, replace=False))
        # segment parity: the number of cuts at or before each position says which parent it takes.
        take_b = (np.searchsorted(cuts, np.arange(length), side="right") % 2).astype(bool)
        c1 = tuple(y if t else x for x, y, t in zip(a, b, take_b.tolist()))
        c2 = tuple(x if t else y for x, y, t in zip(a, b, take_b.tolist()))
        return c1, c2


# -- mutation -------------------------------------------------------------------------------------
class Mutation(abc.ABC):
    """Perturbs one genome; may adapt through a JSON-able state the engine owns and stores."""

    def initial_state(self, space: SearchSpace) -> MutationState:
        """State at the start of a run (stored in the engine's state_dict)."""
        return {}

    def update(self, state: MutationState, improved: bool, space: SearchSpace) -> MutationState:
        """New state after a generation; ``improved`` says whether the front gained a point."""
        return dict(state)

    @abc.abstractmethod
    def mutate(self, rng: np.random.Generator, genome: Genome, space: SearchSpace, state: MutationState) -> Genome:
        """A mutant of ``genome``; must not modify ``state``."""


def _resample_layers(rng: np.random.Generator, genome: Genome, space: SearchSpace, rate: float) -> Genome:
    mask = rng.random(len(genome)) < rate
    out = list(genome)
    for layer in np.flatnonzero(mask).tolist():
        n = int(space.sizes[layer])
        if n < 2:
            continue
        # draw among the *other* choices so a selected layer always changes.
        r = int(rng.integers(0, n - 1))
        out[layer] = r if r < out[layer] else r + 1
    return tuple(out)


class AdaptiveMutation(Mutation):
    """Per-layer resampling whose rate adapts to progress (a 1/5th-rule in spirit).

    Each layer is moved to a different allowed choice with probability ``rate``. The rate starts at
    ``initial / L``; after a generation without front improvement it is multiplied by ``grow``
    (capped at ``max_rate``) to escape stagnation, after one with improvement by ``shrink``
    (floored at ``min_factor / L``) to refine around what works.
    """

    def __init__(
        self,
        initial: float = 1.0,
        grow: float = 1.5,
        shrink: float = 0.8,
        min_factor: float = 0.5,
        max_rate: float = 0.5,
    ) -> None:
        if grow < 1.0 or not 0.0 < shrink <= 1.0:
            raise ValueError("grow must be >= 1 and shrink in (0, 1]")
        self.initial = initial
        self.grow = grow
        self.shrink = shrink
        self.min_factor = min_factor
        self.max_rate = max_rate

    def _bounds(self, space: SearchSpace) -> tuple[float, float]:
        low = min(self.min_factor / space.n_layers, self.max_rate)
        return low, self.max_rate

    def initial_state(self, space: SearchSpace) -> MutationState:
        low, high = self._bounds(space)
        return {"rate": float(min(max(self.initial / space.n_layers, low), high))}

    def update(self, state: MutationState, improved: bool, space: SearchSpace) -> MutationState:
        low, high = self._bounds(space)
        rate = state["rate"] * (self.shrink if improved else self.grow)
        return {"rate": float(min(max(rate, low), high))}

    def mutate(self, rng: np.random.Generator, genome: Genome, space: SearchSpace, state: MutationState) -> Genome:
        return _resample_layers(rng, genome, space, state["rate"])


class FixedMutation(Mutation):
    """Per-layer resampling at a constant ``rate`` (default 1/L); no adaptation."""

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate

    def initial_state(self, space: SearchSpace) -> MutationState:
        return {"rate": float(self.rate if self.rate is not None else 1.0 / space.n_layers)}

    def mutate(self, rng: np.random.Generator, genome: Genome, space: SearchSpace, state: MutationState) -> Genome:
        return _resample_layers(rng, genome, space, state["rate"])


# -- repair ---------------------------------------------------------------------------------------
class Repair(abc.ABC):
    """Maps any genome-shaped sequence to a valid genome of the space. Deterministic, no RNG."""

    @abc.abstractmethod
    def repair(self, genome: Sequence[int], space: SearchSpace) -> Genome:
        """A valid genome close to ``genome``."""


class ClipRepair(Repair):
    """Clips each index into its layer's range (and fixes the length)."""

    def repair(self, genome: Sequence[int], space: SearchSpace) -> Genome:
        return space.clip(genome)


class FunctionRepair(Repair):
    """Clip, then a user hook (e.g. "a dynamic-activation layer needs <= 8 weight bits"), then clip.

    The hook sees a valid genome and may return any genome-shaped sequence; the final clip keeps
    the result valid even if the hook is careless. It must be deterministic for resume to be exact.
    """

    def __init__(self, hook: Callable[[Genome, SearchSpace], Sequence[int]]) -> None:
        self.hook = hook

    def repair(self, genome: Sequence[int], space: SearchSpace) -> Genome:
        return space.clip(self.hook(space.clip(genome), space))


def describe(operator: Any) -> str:
    """A short stable label of an operator and its parameters (recorded with a run's config)."""
    params = {k: v for k, v in sorted(vars(operator).items()) if isinstance(v, (int, float, str, bool))}
    inner = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return f"{type(operator).__name__}({inner})"
