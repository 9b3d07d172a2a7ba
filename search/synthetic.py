"""A synthetic quantization-like problem for tests and benchmarks (no model, no device).

Each layer has a table of choices; a lower-precision choice costs less (bytes, latency) and adds
more error. Objectives are sums over layers, so the problem is separable and small instances can
be enumerated exhaustively to get the true front. Everything is a pure function of the seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from search.evaluation import Evaluation
from search.nsga2 import budget_violation
from search.space import SearchSpace


class SeparableProblem:
    """``n_layers`` x ``n_choices`` tables of (error, bytes, latency); the first ``n_objectives``
    of those are the objectives. ``budget`` (a fraction of the all-highest-precision bytes) adds
    one constraint on bytes. ``fail_every`` makes every genome whose index sum is a multiple of it
    fail, to exercise failure handling deterministically."""

    def __init__(
        self,
        n_layers: int,
        n_choices: int,
        n_objectives: int = 2,
        seed: int = 0,
        budget: float | None = None,
        fail_every: int | None = None,
    ) -> None:
        if not 1 <= n_objectives <= 3:
            raise ValueError("n_objectives must be 1, 2 or 3")
        rng = np.random.default_rng(seed)
        size = rng.uniform(1.0, 10.0, n_layers)[:, None]  # layer parameter count, arbitrary units
        sensitivity = rng.uniform(0.1, 2.0, n_layers)[:, None]
        # choice k: precision falls with k; bytes fall roughly linearly, error grows convexly.
        level = np.linspace(1.0, 0.1, n_choices)[None, :] * rng.uniform(0.9, 1.1, (n_layers, n_choices))
        self.bytes = size * level
        self.error = sensitivity * (1.0 - level) ** 2 * rng.uniform(0.8, 1.2, (n_layers, n_choices))
        self.latency = size * np.sqrt(level) + rng.uniform(0.0, 0.2, (n_layers, n_choices))
        self.n_objectives = n_objectives
        self.names = ("accuracy_loss", "bytes", "latency")[:n_objectives]
        self.budget = None if budget is None else budget * float(self.bytes[:, 0].sum())
        self.fail_every = fail_every
        self.space = SearchSpace(
            [f"layer{i}" for i in range(n_layers)],
            [[f"c{k}" for k in range(n_choices)] for _ in range(n_layers)],
        )
        self.sensitivity = tuple(float(s) for s in sensitivity[:, 0])

    @property
    def n_constraints(self) -> int:
        return 0 if self.budget is None else 1

    def objectives(self, genome: Sequence[int]) -> np.ndarray:
        idx = np.asarray(genome, dtype=np.int64)
        rows = np.arange(idx.size)
        values = (self.error[rows, idx].sum(), self.bytes[rows, idx].sum(), self.latency[rows, idx].sum())
        return np.array(values[: self.n_objectives])

    def evaluate(self, genome: Sequence[int]) -> Evaluation:
        if self.fail_every is not None and sum(genome) % self.fail_every == 0:
            return Evaluation.failure("RUNTIME")
        f = self.objectives(genome)
        violations: tuple[float, ...] = ()
        if self.budget is not None:
            total_bytes = float(self.bytes[np.arange(len(genome)), list(genome)].sum())
            violations = (budget_violation(total_bytes, self.budget),)
        return Evaluation.ok(f.tolist(), violations)

    def all_objectives(self) -> np.ndarray:
        """Objectives of every genome (exhaustive: only for small spaces)."""
        n_layers, n_choices = self.error.shape
        return np.array([self.objectives(g) for g in itertools.product(range(n_choices), repeat=n_layers)])
