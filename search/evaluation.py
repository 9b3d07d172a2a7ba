"""What the harness tells the engine about a candidate, and what the engine keeps of it.

``Evaluation`` is a value object: the objective vector (all minimised; the harness turns accuracy
into accuracy loss), the constraint-violation vector (<= 0 satisfied; for a budget use
``search.nsga2.budget_violation``) or a failure with an error kind. A failure never stops a run:
the engine ranks it below every evaluated candidate and keeps it off the front. A result whose
numbers are not finite is stored as a failure with error ``non_finite`` for the same reason.

``Record`` pairs a genome with its evaluation, the generation (batch) that asked for it and its
lineage: how it was made (``origin``) and from which parents.
Both serialise to JSON-able dicts for the engine's state_dict and the harness archive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from search.space import Genome, genome_key


@dataclass(frozen=True)
class Evaluation:
    """One candidate's result. ``objectives is None`` exactly when ``error`` is set (a failure)."""

    objectives: tuple[float, ...] | None
    violations: tuple[float, ...] = ()
    error: str | None = None

    @classmethod
    def ok(cls, objectives: Sequence[float], violations: Sequence[float] = ()) -> Evaluation:
        """A successful evaluation; non-finite numbers turn it into a ``non_finite`` failure."""
        objs = tuple(float(x) for x in objectives)
        viols = tuple(float(x) for x in violations)
        if not all(math.isfinite(x) for x in objs + viols):
            return cls.failure("non_finite")
        return cls(objs, viols, None)

    @classmethod
    def failure(cls, error: str = "failed") -> Evaluation:
        """A candidate that could not be evaluated (error kind from the harness's result record)."""
        return cls(None, (), error or "failed")

    @property
    def failed(self) -> bool:
        return self.objectives is None

    @property
    def total_violation(self) -> float:
        """Sum of positive violations; infinite for a failure (ranks below any evaluated point)."""
        if self.failed:
            return math.inf
        return float(sum(max(v, 0.0) for v in self.violations))

    @property
    def feasible(self) -> bool:
        return not self.failed and self.total_violation <= 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "objectives": None if self.objectives is None else list(self.objectives),
            "violations": list(self.violations),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        objectives = data.get("objectives")
        if objectives is None:
            return cls.failure(str(data.get("error") or "failed"))
        return cls.ok(objectives, data.get("violations") or ())


#: How a genome was made: a uniform baseline, a sensitivity-guided seed, a random genome (initial
#: fill, or fallback when operators only reproduce known genomes), by the variation operators, or
#: proposed by the surrogate screening (an optimum of its model).
ORIGINS = ("baseline", "sensitivity", "random", "crossover", "mutation", "surrogate", "extreme")


@dataclass(frozen=True)
class Record:
    """A told evaluation: the genome, its result, the generation that asked for it, its lineage.

    ``generation`` numbers the batch that asked for it as ``Engine.generation`` will read once
    that batch completes: 1 for the initial population, 2 for the first offspring, and so on.
    ``parents`` are the two selected parents for ``crossover`` and ``mutation`` offspring (for
    ``mutation`` no crossover happened and the child is a mutant of one of them); empty otherwise.
    """

    genome: Genome
    evaluation: Evaluation
    generation: int = field(default=1)
    origin: str = "random"
    parents: tuple[Genome, ...] = ()

    @property
    def key(self) -> str:
        """The genome's canonical key (``search.space.genome_key``); derived, never stored."""
        return genome_key(self.genome)

    def to_dict(self) -> dict[str, Any]:
        return {
            "genome": list(self.genome),
            "generation": self.generation,
            "origin": self.origin,
            "parents": [list(p) for p in self.parents],
            **self.evaluation.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        return cls(
            tuple(int(g) for g in data["genome"]),
            Evaluation.from_dict(data),
            int(data.get("generation", 1)),
            str(data.get("origin", "random")),
            tuple(tuple(int(g) for g in p) for p in data.get("parents", ())),
        )
