"""The NSGA-II engine with an ask/tell interface and exact resume.

Lifecycle (pymoo style: thin public methods over protected steps):

    engine = Engine(space, config)              # or Engine.from_state(space, config, stored)
    while not engine.done:
        genomes = engine.ask()                  # initial population first, then offspring batches
        engine.tell(genomes, [evaluate(g) for g in genomes])
        archive.save(engine.state_dict())       # JSON-able; resume from any point, even mid-batch
    front = engine.front()                      # derived from the told evaluations, never stored

- ``ask()`` proposes a batch; until every genome of it has been told, further calls return the
  genomes still awaiting a result (so a resumed run re-asks exactly what was pending).
  It returns ``[]`` when the run is done (generation/evaluation budget, or space exhausted).
- ``tell()`` accepts results for any subset of the pending genomes, in any order, over several
  calls. When the batch is complete the engine runs survival (NSGA-II with constraint-domination
  over parents + offspring, elitist), adapts the mutation and counts a generation. Survival uses
  the asked order, not the told order, so asynchronous evaluation does not change the run.
- Offspring are never genomes already asked in this run (all generations): the budget buys only
  new evaluations. With a ``surrogate`` screening (the default) the operators breed a pool many
  times the batch and the screening picks the children worth evaluating (``search.surrogate``);
  it is refitted from the told records each time, so it adds no state. If no new genome can be
  found the space counts as exhausted and the run stops.
- Everything a resume needs is in ``state_dict()``: population, pending batch and partial results,
  all told records, generation, RNG bit-generator state, mutation state. The engine keeps nothing
  else between calls. Configuration (operators included) is not state: pass the same config back.

Not thread-safe: one engine belongs to one driver loop.

One module (~500 lines) because the engine's ask/tell steps share its state and its resume format;
the operators, survival and surrogate live in their own modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from search import nsga2
from search.errors import SearchError
from search.evaluation import Evaluation, Record
from search.initial import baseline_genomes, initial_population, sensitivity_genomes
from search.metrics import recommend as _recommend
from search.operators import (
    AdaptiveMutation,
    ClipRepair,
    Crossover,
    Mutation,
    MutationState,
    Ranked,
    Repair,
    Selection,
    TournamentSelection,
    UniformCrossover,
    describe,
)
from search.rng import encode_rng_state, restore_rng
from search.space import Genome, SearchSpace
from search.surrogate import Screening, SurrogateScreening

STATE_FORMAT = 1
#: A proposed genome with its origin and parents (see ``search.evaluation.ORIGINS``).
Made = tuple[Genome, str, tuple[Genome, ...]]


@dataclass(frozen=True)
class EngineConfig:
    """How a run searches. Immutable; pass the same one to ``Engine.from_state`` on resume.

    ``max_generations`` counts completed batches including the initial population; None means no
    limit (then set ``max_evaluations``, or stop the loop yourself). ``baselines`` are choice values
    (e.g. the w8a8, w4a8 and fp genes) turned into uniform genomes; ``sensitivity`` is one score per
    layer (low = robust to lower precision), used with ``sensitivity_ladder`` (choice values from
    high to low precision) at the ``sensitivity_depths`` fractions of layers. ``surrogate``
    screens bred children by predicted merit before they are asked (None: every bred child is asked).
    """

    n_objectives: int
    n_constraints: int = 0
    objective_names: tuple[str, ...] | None = None
    pop_size: int = 32
    n_offspring: int | None = None
    max_generations: int | None = None
    max_evaluations: int | None = None
    seed: int = 0
    baselines: tuple[Any, ...] = ()
    sensitivity: tuple[float, ...] | None = None
    sensitivity_ladder: tuple[Any, ...] = ()
    sensitivity_depths: tuple[float, ...] = (0.25, 0.5, 0.75)
    crossover_prob: float = 0.9
    selection: Selection = field(default_factory=TournamentSelection)
    crossover: Crossover = field(default_factory=UniformCrossover)
    mutation: Mutation = field(default_factory=AdaptiveMutation)
    repair: Repair = field(default_factory=ClipRepair)
    #: Tries per wanted child before the engine falls back to random genomes, then gives up.
    dedup_attempts: int = 50
    #: Picks which bred children get evaluated (see ``search.surrogate``); None evaluates them all.
    surrogate: Screening | None = field(default_factory=SurrogateScreening)
    #: Children per offspring batch that are one-gene neighbours of the front's extreme points (the
    #: best feasible record of one objective, the objectives taken in turn): the ends of a front
    #: hold much of its hypervolume and are what a user often picks (the most accurate model that
    #: fits), and breeding from a crowded population reaches them last. Taken before screening.
    extremes: int = 1

    def __post_init__(self) -> None:
        if self.n_objectives < 1:
            raise SearchError("engine config: n_objectives must be >= 1")
        if self.n_constraints < 0:
            raise SearchError("engine config: n_constraints must be >= 0")
        if self.objective_names is not None and len(self.objective_names) != self.n_objectives:
            raise SearchError(
                f"engine config: {len(self.objective_names)} objective names for {self.n_objectives} objectives"
            )
        if self.pop_size < 1 or (self.n_offspring is not None and self.n_offspring < 1):
            raise SearchError("engine config: pop_size and n_offspring must be >= 1")
        if not 0.0 <= self.crossover_prob <= 1.0:
            raise SearchError("engine config: crossover_prob must be in [0, 1]")
        if self.extremes < 0:
            raise SearchError("engine config: extremes must be >= 0")

    @property
    def offspring_size(self) -> int:
        return self.n_offspring if self.n_offspring is not None else self.pop_size

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the archive (operators by class and parameters)."""
        return {
            "n_objectives": self.n_objectives,
            "n_constraints": self.n_constraints,
            "objective_names": list(self.objective_names) if self.objective_names else None,
            "pop_size": self.pop_size,
            "n_offspring": self.offspring_size,
            "max_generations": self.max_generations,
            "max_evaluations": self.max_evaluations,
            "seed": self.seed,
            "crossover_prob": self.crossover_prob,
            "selection": describe(self.selection),
            "crossover": describe(self.crossover),
            "mutation": describe(self.mutation),
            "repair": describe(self.repair),
            "surrogate": describe(self.surrogate) if self.surrogate is not None else None,
            "extremes": self.extremes,
        }


class Engine:
    """NSGA-II over a ``SearchSpace``; see the module docstring for the ask/tell lifecycle."""

    def __init__(self, space: SearchSpace, config: EngineConfig) -> None:
        if config.sensitivity is not None and len(config.sensitivity) != space.n_layers:
            raise SearchError(
                f"engine config: {len(config.sensitivity)} sensitivity scores for {space.n_layers} layers"
            )
        self.space = space
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._generation = 0
        self._population: list[Genome] = []
        self._batch: list[Genome] = []
        self._told: dict[Genome, Evaluation] = {}
        # origin and parents of each genome of the open batch (moved into its Record when told)
        self._lineage: dict[Genome, tuple[str, tuple[Genome, ...]]] = {}
        self._records: dict[Genome, Record] = {}
        self._mutation_state: MutationState = config.mutation.initial_state(space)
        self._exhausted = False

    # -- public interface -------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """Completed batches (the initial population is generation 1 once told)."""
        return self._generation

    @property
    def n_evaluations(self) -> int:
        """Results told so far, failures included (what the evaluation budget counts)."""
        return len(self._records) + len(self._told)

    @property
    def mutation_state(self) -> MutationState:
        return dict(self._mutation_state)

    @property
    def exhausted(self) -> bool:
        """True once no unseen genome could be produced."""
        return self._exhausted

    @property
    def done(self) -> bool:
        """No batch pending and a stopping rule has fired."""
        if self._batch:
            return False
        return (
            self._exhausted
            or self._budget_left() <= 0
            or (self.config.max_generations is not None and self._generation >= self.config.max_generations)
        )

    def ask(self) -> list[Genome]:
        """The genomes to evaluate next (the pending ones, if a batch is still open); [] when done."""
        if self._batch:
            return [g for g in self._batch if g not in self._told]
        if self.done:
            return []
        limit = self.config.pop_size if self._generation == 0 else self.config.offspring_size
        if self.config.max_evaluations is not None:
            limit = min(limit, self.config.max_evaluations - self.n_evaluations)
        made = self._initialize(limit) if self._generation == 0 else self._offspring(limit)
        if not made:
            self._exhausted = True
            return []
        self._batch = [g for g, _, _ in made]
        self._lineage = {g: (origin, parents) for g, origin, parents in made}
        return list(self._batch)

    def tell(self, genomes: Sequence[Sequence[int]], results: Sequence[Evaluation]) -> None:
        """Report results for pending genomes; completes the generation when the batch is full."""
        if len(genomes) != len(results):
            raise SearchError(f"tell: {len(genomes)} genomes but {len(results)} results")
        pending = set(self._batch) - set(self._told)
        staged: dict[Genome, Evaluation] = {}
        for raw, result in zip(genomes, results):
            genome = tuple(int(g) for g in raw)
            if genome not in pending or genome in staged:
                raise SearchError(f"tell: genome {genome!r} was not asked or was already told")
            staged[genome] = self._checked(result)
        # all-or-nothing: a bad entry above leaves the engine unchanged.
        self._told.update(staged)
        if self._batch and len(self._told) == len(self._batch):
            self._complete_batch()

    def revise(self, genome: Sequence[int], result: Evaluation) -> None:
        """Replace the evaluation of an already told genome (a measurement replacing a prediction).

        The record keeps its generation, origin and parents; the new objectives take effect at the
        next survival and in ``front()``. Revising is not counted as an evaluation.
        """
        g = tuple(int(x) for x in genome)
        checked = self._checked(result)
        if g in self._told:
            self._told[g] = checked
        elif g in self._records:
            self._records[g] = replace(self._records[g], evaluation=checked)
        else:
            raise SearchError(f"revise: genome {g!r} has not been told")

    def records(self) -> list[Record]:
        """Every told evaluation, in the order asked (complete batches, then the open one)."""
        told = [self._record(g) for g in self._batch if g in self._told]
        return [*self._records.values(), *told]

    def lineage(self, genome: Sequence[int]) -> tuple[str, tuple[Genome, ...]]:
        """(origin, parents) of an asked genome, pending or told, for the harness archive."""
        g = tuple(int(x) for x in genome)
        if g in self._lineage:
            return self._lineage[g]
        if g in self._records:
            return self._records[g].origin, self._records[g].parents
        raise SearchError(f"lineage: genome {g!r} was never asked")

    def population(self) -> list[Record]:
        """The current parents (survivors of the last completed generation)."""
        return [self._records[g] for g in self._population]

    def front(self, feasible_only: bool = True) -> list[Record]:
        """The first front of all told evaluations, derived now (never cached), in asked order.

        Failures are never on it. With ``feasible_only`` (the default) it is the Pareto front of the
        feasible candidates, empty if there are none; otherwise, when nothing is feasible, it is the
        candidates of least total violation (the constraint-domination first front).
        """
        candidates = [r for r in self.records() if not r.evaluation.failed]
        if feasible_only:
            candidates = [r for r in candidates if r.evaluation.feasible]
        if not candidates:
            return []
        f, cv = self._arrays(candidates)
        return [candidates[i] for i in sorted(nsga2.first_front(f, cv).tolist())]

    def recommend(
        self,
        weights: Mapping[str, float] | Sequence[float],
        ideal: Sequence[float] | None = None,
        nadir: Sequence[float] | None = None,
    ) -> Record | None:
        """The front point of least weighted normalised fitness; None when the front is empty.

        ``weights`` is one non-negative weight per objective, or a mapping by objective name
        (missing names weigh 0). Bounds default to the front's own ideal and nadir.
        """
        front = self.front()
        if not front:
            return None
        f, _ = self._arrays(front)
        return front[_recommend(f, self._weights(weights), ideal, nadir)]

    def state_dict(self, include_records: bool = True) -> dict[str, Any]:
        """Everything needed to continue exactly, as plain JSON types (ints, floats, str, lists).

        Big integers (the RNG state) are decimal strings so any JSON reader keeps them exact.
        With ``include_records=False`` the told records of completed batches are left out (the
        harness archive already holds them); ``from_state`` then needs them passed back.
        """
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "space": self.space.fingerprint,
            "n_objectives": self.config.n_objectives,
            "n_constraints": self.config.n_constraints,
            "generation": self._generation,
            "exhausted": self._exhausted,
            "rng": encode_rng_state(self._rng.bit_generator.state),
            "mutation": dict(self._mutation_state),
            "population": [list(g) for g in self._population],
            "batch": [
                {"genome": list(g), "origin": self._lineage[g][0], "parents": [list(p) for p in self._lineage[g][1]]}
                for g in self._batch
            ],
            "told": [self._record(g).to_dict() for g in self._batch if g in self._told],
            "config": self.config.describe(),
        }
        if include_records:
            state["records"] = [r.to_dict() for r in self._records.values()]
        return state

    @classmethod
    def from_state(
        cls,
        space: SearchSpace,
        config: EngineConfig,
        state: Mapping[str, Any],
        records: Sequence[Record] | None = None,
    ) -> Engine:
        """Rebuild an engine from ``state_dict()`` output; raises SearchError on a mismatch.

        ``records`` (the run's told records in asked order, e.g. rebuilt from the archive) is
        needed only when the state was saved with ``include_records=False``, and ignored otherwise;
        records of the open batch are skipped there because the state carries them. A config that
        differs from the stored run's (other than in counts, which are checked) is accepted but
        the continuation is then no longer the run that would have happened.
        """
        if state.get("format") != STATE_FORMAT:
            raise SearchError(f"engine state: format {state.get('format')!r}, expected {STATE_FORMAT}")
        if state.get("space") != space.fingerprint:
            raise SearchError("engine state: stored for a different search space (layers or choices changed)")
        if (state.get("n_objectives"), state.get("n_constraints")) != (config.n_objectives, config.n_constraints):
            raise SearchError("engine state: objective or constraint count differs from the config")
        engine = cls(space, config)
        engine._rng = restore_rng(state["rng"])
        engine._generation = int(state["generation"])
        engine._exhausted = bool(state["exhausted"])
        engine._mutation_state = {str(k): float(v) for k, v in dict(state["mutation"]).items()}
        engine._population = [engine._valid(g) for g in state["population"]]
        for item in state["batch"]:
            genome = engine._valid(item["genome"])
            engine._batch.append(genome)
            engine._lineage[genome] = (str(item["origin"]), tuple(tuple(int(x) for x in p) for p in item["parents"]))
        if "records" in state:
            records = [Record.from_dict(data) for data in state["records"]]
        elif records is None:
            raise SearchError("engine state: saved without records; pass the run's records to from_state")
        for record in records:
            if record.genome not in engine._lineage:
                engine._records[engine._valid(record.genome)] = record
        for data in state["told"]:
            record = Record.from_dict(data)
            engine._told[engine._valid(record.genome)] = record.evaluation
        if any(g not in engine._records for g in engine._population) or any(
            g not in engine._batch for g in engine._told
        ):
            raise SearchError("engine state: population or partial results refer to unknown genomes")
        return engine

    # -- protected steps --------------------------------------------------------------------------
    def _budget_left(self) -> float:
        if self.config.max_evaluations is None:
            return float("inf")
        return self.config.max_evaluations - self.n_evaluations

    def _valid(self, genome: Sequence[int]) -> Genome:
        g = tuple(int(x) for x in genome)
        if not self.space.is_valid(g):
            raise SearchError(f"engine state: genome {g!r} is not valid in this search space")
        return g

    def _checked(self, result: Evaluation) -> Evaluation:
        if result.failed:
            return Evaluation.failure(result.error or "failed")
        assert result.objectives is not None
        if len(result.objectives) != self.config.n_objectives:
            raise SearchError(f"tell: {len(result.objectives)} objectives, expected {self.config.n_objectives}")
        if len(result.violations) != self.config.n_constraints:
            raise SearchError(f"tell: {len(result.violations)} violations, expected {self.config.n_constraints}")
        return Evaluation.ok(result.objectives, result.violations)  # non-finite -> failure

    def _weights(self, weights: Mapping[str, float] | Sequence[float]) -> list[float]:
        if isinstance(weights, Mapping):
            names = self.config.objective_names
            if names is None:
                raise SearchError("recommend: weights by name need objective_names in the config")
            unknown = set(weights) - set(names)
            if unknown:
                raise SearchError(f"recommend: unknown objective {sorted(unknown)[0]!r}; use {', '.join(names)}")
            return [float(weights.get(n, 0.0)) for n in names]
        return [float(w) for w in weights]

    def _arrays(self, records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
        """Objective matrix and total violations; failures get zeros and infinite violation."""
        zeros = (0.0,) * self.config.n_objectives
        f = nsga2.as_matrix([r.evaluation.objectives or zeros for r in records], self.config.n_objectives)
        cv = np.array([r.evaluation.total_violation for r in records], dtype=float)
        return f, cv

    def _initialize(self, limit: int) -> list[Made]:
        config = self.config
        baselines = baseline_genomes(self.space, config.baselines)
        guided: list[Genome] = []
        if config.sensitivity is not None:
            guided = sensitivity_genomes(
                self.space, config.sensitivity, config.sensitivity_ladder, config.sensitivity_depths
            )
        attempts = config.dedup_attempts * max(limit, 1)
        genomes = initial_population(self.space, self._rng, limit, [*baselines, *guided], attempts)
        # first listing wins, matching initial_population's deduplication
        origin = {g: "random" for g in genomes} | {g: "sensitivity" for g in reversed(guided)}
        origin |= {g: "baseline" for g in reversed(baselines)}
        return [(g, origin[g], ()) for g in genomes]

    def _ranked_population(self) -> Ranked:
        f, cv = self._arrays([self._records[g] for g in self._population])
        rank, crowding = nsga2.rank_and_crowding(f, cv)
        return Ranked(tuple(self._population), rank, crowding)

    def _offspring(self, n: int) -> list[Made]:
        config, space = self.config, self.space
        seen: set[Genome] = set(self._records)
        if len(seen) >= space.size:
            return []
        extreme = self._extreme_children(min(config.extremes, n), seen)
        return extreme + self._screened(n - len(extreme), seen)

    def _extreme_children(self, n: int, seen: set[Genome]) -> list[Made]:
        """Up to ``n`` unseen one-gene neighbours (added to ``seen``) of the feasible told records that
        are best on one objective, objective ``(generation + i) % n_objectives`` for the i-th child;
        among records tied on it, one picked at random."""
        space, rng = self.space, self._rng
        feasible = [r for r in self._records.values() if r.evaluation.feasible and not r.evaluation.failed]
        if n <= 0 or not feasible or space.n_layers == 0:
            return []
        f, _ = self._arrays(feasible)
        k = self.config.n_objectives
        children: list[Made] = []
        for i in range(n):
            col = f[:, (self._generation + i) % k]
            tied = np.flatnonzero(col <= col.min())
            parent = feasible[int(tied[rng.integers(len(tied))])].genome
            for _ in range(self.config.dedup_attempts):
                layer = int(rng.integers(space.n_layers))
                options = len(space.choices[layer])
                if options < 2:
                    continue
                child = list(parent)
                child[layer] = int((parent[layer] + 1 + rng.integers(options - 1)) % options)
                genome = self.config.repair.repair(tuple(child), space)
                if space.is_valid(genome) and genome not in seen:
                    seen.add(genome)
                    children.append((genome, "extreme", (parent,)))
                    break
        return children

    def _screened(self, n: int, seen: set[Genome]) -> list[Made]:
        """``n`` children of the operators, picked by the screening when it is active."""
        config, space = self.config, self.space
        if n <= 0:
            return []
        screening = config.surrogate
        records = list(self._records.values())
        if screening is None or not screening.active(records):
            children = self._bred(n, seen)
            return children + self._random(n - len(children), seen)
        # Breed a pool many times the batch, add the screening's own proposals, let it pick.
        unscreened = min(n, round(screening.explore * n))
        size = n * screening.pool_factor
        n_random = round(screening.random_share * (size - unscreened))
        pool = self._bred(size - n_random, seen)
        pool += self._random(size - len(pool), seen)
        kept, rest = pool[:unscreened], pool[unscreened:]
        for genome in screening.propose(self._rng, records, n, space):
            genome = config.repair.repair(tuple(int(x) for x in genome), space)
            if space.is_valid(genome) and genome not in seen:
                seen.add(genome)
                rest.append((genome, "surrogate", ()))
        picked = screening.choose(self._rng, [g for g, _, _ in rest], records, n - len(kept), space)
        if len(set(picked)) != len(picked) or not all(0 <= i < len(rest) for i in picked):
            raise SearchError(f"screening {describe(screening)} returned bad indices")
        return kept + [rest[i] for i in picked[: n - len(kept)]]

    def _bred(self, n: int, seen: set[Genome]) -> list[Made]:
        """Up to ``n`` unseen children of the operators (added to ``seen``)."""
        config, space, rng = self.config, self.space, self._rng
        ranked = self._ranked_population()
        children: list[Made] = []
        attempts = 0
        while len(children) < n and attempts < config.dedup_attempts * n:
            attempts += 1
            i, j = config.selection.select(rng, ranked, 2)
            a, b = ranked.genomes[i], ranked.genomes[j]
            crossed = rng.random() < config.crossover_prob
            pair = config.crossover.cross(rng, a, b, space) if crossed else (a, b)
            for child in pair:
                child = config.mutation.mutate(rng, child, space, self._mutation_state)
                child = config.repair.repair(child, space)
                if not space.is_valid(child):
                    raise SearchError(f"repair {describe(config.repair)} returned an invalid genome {child!r}")
                if child not in seen and len(children) < n:
                    seen.add(child)
                    children.append((child, "crossover" if crossed else "mutation", (a, b)))
        return children

    def _random(self, n: int, seen: set[Genome]) -> list[Made]:
        """Up to ``n`` unseen uniformly random genomes (added to ``seen``).

        A converged population can keep producing known genomes; random genomes keep the budget
        useful instead of stopping early while unseen genomes remain.
        """
        space, rng = self.space, self._rng
        children: list[Made] = []
        attempts = 0
        while len(children) < n and len(seen) < space.size and attempts < self.config.dedup_attempts * n:
            attempts += 1
            child = space.random(rng)
            if child not in seen:
                seen.add(child)
                children.append((child, "random", ()))
        return children

    def _complete_batch(self) -> None:
        batch = self._batch
        new = [self._record(g) for g in batch]
        improved = self._improves(new)
        for record in new:
            self._records[record.genome] = record
        candidates = [*self._population, *batch]
        f, cv = self._arrays([self._records[g] for g in candidates])
        survivors = nsga2.survive(f, cv, self.config.pop_size)
        self._population = [candidates[i] for i in survivors.tolist()]
        if self._generation > 0:  # the initial population has nothing to improve on
            self._mutation_state = self.config.mutation.update(self._mutation_state, improved, self.space)
        self._generation += 1
        self._batch = []
        self._told = {}
        self._lineage = {}

    def _record(self, genome: Genome) -> Record:
        origin, parents = self._lineage[genome]
        # numbered like ``generation`` after this batch completes: the initial population is 1
        return Record(genome, self._told[genome], self._generation + 1, origin, parents)

    def _improves(self, new: Sequence[Record]) -> bool:
        """Did the batch improve the front? Equivalent to a hypervolume increase for any reference
        point worse than every point: some new feasible point is not weakly dominated by the old
        front. Before anything is feasible, progress is a smaller least total violation."""
        old = [r for r in self._records.values() if not r.evaluation.failed]
        new_ok = [r for r in new if not r.evaluation.failed]
        if not new_ok:
            return False
        old_feasible = [r for r in old if r.evaluation.feasible]
        new_feasible = [r for r in new_ok if r.evaluation.feasible]
        if not old_feasible:
            if new_feasible:
                return True
            best_old = min((r.evaluation.total_violation for r in old), default=float("inf"))
            return min(r.evaluation.total_violation for r in new_ok) < best_old
        if not new_feasible:
            return False
        f_old, _ = self._arrays(old_feasible)
        f_old = f_old[nsga2.first_front(f_old)]
        f_new, _ = self._arrays(new_feasible)
        weakly_dominated = np.all(f_old[None, :, :] <= f_new[:, None, :], axis=2).any(axis=1)
        return bool((~weakly_dominated).any())
