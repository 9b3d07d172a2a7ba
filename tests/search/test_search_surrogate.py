"""Surrogate screening: the linear model, the pick, and what it does inside the engine."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from search import nsga2
from search.engine import Engine, EngineConfig
from search.errors import SearchError
from search.evaluation import Evaluation, Record
from search.metrics import bounds, normalised_hypervolume
from search.space import Genome, SearchSpace
from search.surrogate import LinearModel, Screening, SurrogateScreening, one_hot
from search.synthetic import SeparableProblem


def test_one_hot_sets_one_column_per_layer() -> None:
    space = SearchSpace(["a", "b", "c"], [[0, 1], [0, 1, 2], [0]])
    x = one_hot([(1, 2, 0), (0, 0, 0)], space)
    assert x.tolist() == [[0, 1, 0, 0, 1, 1], [1, 0, 1, 0, 0, 1]]


def test_linear_model_is_exact_on_additive_targets_and_unsure_where_unseen() -> None:
    problem = SeparableProblem(6, 4, n_objectives=3, seed=2)
    rng = np.random.default_rng(0)
    genomes = [problem.space.random(rng) for _ in range(60)]
    y = np.array([problem.objectives(g) for g in genomes])
    model = LinearModel.fit(one_hot(genomes, problem.space), y)
    fresh = [problem.space.random(rng) for _ in range(20)]
    mean, std = model.predict(one_hot(fresh, problem.space))
    assert np.allclose(mean, [problem.objectives(g) for g in fresh], atol=1e-6 * np.abs(y).max())
    assert np.all(std < 1e-3 * np.abs(y).max())
    # choice 2 of layer a was never told: its weight is a guess, and the model says so
    space = SearchSpace(["a", "b"], [[0, 1, 2], [0, 1]])
    told: list[Genome] = [(0, 0), (0, 1), (1, 0), (1, 1)] * 3
    values = np.array([[float(a + 2 * b)] for a, b in told])
    mean, std = LinearModel.fit(one_hot(told, space), values).predict(one_hot([(0, 1), (2, 1)], space))
    assert abs(mean[0, 0] - 2.0) < 1e-3
    assert std[1, 0] > 100 * std[0, 0]


def _records(problem: SeparableProblem, genomes: Sequence[Genome]) -> list[Record]:
    return [Record(g, problem.evaluate(g)) for g in genomes]


def test_choose_prefers_children_that_extend_the_front() -> None:
    problem = SeparableProblem(6, 4, n_objectives=2, seed=5)
    rng = np.random.default_rng(1)
    told = list(dict.fromkeys(problem.space.random(rng) for _ in range(40)))
    pool = [g for g in dict.fromkeys(problem.space.random(rng) for _ in range(300)) if g not in told]
    picked = SurrogateScreening().choose(np.random.default_rng(2), pool, _records(problem, told), 10, problem.space)
    assert len(picked) == len(set(picked)) == 10
    f_told = np.array([problem.objectives(g) for g in told])
    front = f_told[nsga2.first_front(f_told)]
    ideal, nadir = bounds(np.vstack([f_told, [problem.objectives(g) for g in pool]]))

    def hv_gain(genomes: Sequence[Genome]) -> float:
        points = np.vstack([front, [problem.objectives(g) for g in genomes]])
        return normalised_hypervolume(points, ideal, nadir) - normalised_hypervolume(front, ideal, nadir)

    screened = hv_gain([pool[i] for i in picked])
    blind = [hv_gain([pool[i] for i in np.random.default_rng(s).choice(len(pool), 10, replace=False)])
             for s in range(20)]
    assert screened > max(blind)


def test_choose_before_anything_is_feasible_goes_for_least_violation() -> None:
    problem = SeparableProblem(6, 4, n_objectives=2, seed=5, budget=0.05)  # nothing fits the budget
    rng = np.random.default_rng(3)
    told = list(dict.fromkeys(problem.space.random(rng) for _ in range(30)))
    pool = [g for g in dict.fromkeys(problem.space.random(rng) for _ in range(200)) if g not in told]
    picked = SurrogateScreening().choose(np.random.default_rng(0), pool, _records(problem, told), 5, problem.space)
    violation = [problem.evaluate(g).total_violation for g in pool]
    assert sorted(violation[i] for i in picked) == sorted(violation)[:5]


def test_screening_improves_the_front_at_a_fixed_budget() -> None:
    problem = SeparableProblem(20, 4, n_objectives=3, seed=9)
    fronts: dict[str, list[np.ndarray]] = {"on": [], "off": []}
    for seed in range(3):
        for label, screening in (("on", SurrogateScreening()), ("off", None)):
            cfg = EngineConfig(n_objectives=3, pop_size=16, max_evaluations=160, seed=seed, surrogate=screening)
            engine = Engine(problem.space, cfg)
            while not engine.done:
                genomes = engine.ask()
                engine.tell(genomes, [problem.evaluate(g) for g in genomes])
            fronts[label].append(np.array([r.evaluation.objectives for r in engine.front()]))
    ideal, nadir = bounds(np.vstack([f for fs in fronts.values() for f in fs]))
    hv = {k: [normalised_hypervolume(f, ideal, nadir) for f in fs] for k, fs in fronts.items()}
    assert min(hv["on"]) > max(hv["off"])


class Reverse(Screening):
    """Picks the last children of the pool; records what it saw."""

    pool_factor = 3

    def __init__(self) -> None:
        self.pools: list[list[Genome]] = []

    def choose(
        self, rng: np.random.Generator, pool: Sequence[Genome], records: Sequence[Record], n: int, space: SearchSpace
    ) -> list[int]:
        self.pools.append(list(pool))
        return list(range(len(pool) - 1, len(pool) - 1 - n, -1))


def test_an_injected_screening_picks_from_a_pool_of_unseen_children() -> None:
    problem = SeparableProblem(8, 4, n_objectives=2, seed=1)
    screening = Reverse()
    # without the extreme points' neighbours, every child after the first generation is the screening's pick
    engine = Engine(problem.space, EngineConfig(n_objectives=2, pop_size=6, max_generations=3, surrogate=screening,
                                                extremes=0))
    asked = []
    while not engine.done:
        genomes = engine.ask()
        asked.append(genomes)
        engine.tell(genomes, [problem.evaluate(g) for g in genomes])
    assert len(screening.pools) == 2 and all(len(p) == 18 for p in screening.pools)
    for pool, batch in zip(screening.pools, asked[1:]):
        assert batch == pool[::-1][:6]
        assert not set(pool) & set(asked[0])
    assert engine.state_dict()["config"]["surrogate"] == "Reverse()"
    default = EngineConfig(n_objectives=2).describe()["surrogate"]
    assert default.startswith("SurrogateScreening(") and "pool_factor=20" in default


def test_a_screening_returning_bad_indices_is_an_error() -> None:
    class Bad(Reverse):
        def choose(self, rng: np.random.Generator, pool: Sequence[Genome], records: Sequence[Record], n: int,
                   space: SearchSpace) -> list[int]:
            return [0] * n

    problem = SeparableProblem(8, 4, n_objectives=2, seed=1)
    engine = Engine(problem.space, EngineConfig(n_objectives=2, pop_size=6, surrogate=Bad()))
    first = engine.ask()
    engine.tell(first, [problem.evaluate(g) for g in first])
    with pytest.raises(SearchError):
        engine.ask()


class Gated(Reverse):
    def active(self, records: Sequence[Record]) -> bool:
        return sum(not r.evaluation.failed for r in records) >= 4


def test_screening_waits_until_it_is_active() -> None:
    space = SearchSpace([f"l{i}" for i in range(6)], [[0, 1, 2]] * 6)
    screening = Gated()
    engine = Engine(space, EngineConfig(n_objectives=1, pop_size=4, max_generations=3, surrogate=screening))
    first = engine.ask()
    engine.tell(first, [Evaluation.failure("CRASH")] * 2 + [Evaluation.ok([1.0])] * 2)
    second = engine.ask()
    assert screening.pools == [] and len(second) == 4  # 2 successes: bred as usual
    engine.tell(second, [Evaluation.ok([float(sum(g))]) for g in second])
    assert len(engine.ask()) == 4 and len(screening.pools) == 1  # 6 successes now


def test_surrogate_off_and_on_both_resume_exactly_mid_batch() -> None:
    problem = SeparableProblem(10, 5, n_objectives=3, seed=11, budget=0.7, fail_every=7)
    for screening in (None, SurrogateScreening(pool_factor=5, explore=0.25)):
        cfg = EngineConfig(n_objectives=3, n_constraints=1, pop_size=10, max_generations=6, seed=3,
                           surrogate=screening)
        reference = Engine(problem.space, cfg)
        while not reference.done:
            genomes = reference.ask()
            reference.tell(genomes, [problem.evaluate(g) for g in genomes])
        engine = Engine(problem.space, cfg)
        for _ in range(3):
            genomes = engine.ask()
            engine.tell(genomes, [problem.evaluate(g) for g in genomes])
        genomes = engine.ask()
        engine.tell(genomes[:3], [problem.evaluate(g) for g in genomes[:3]])
        resumed = Engine.from_state(problem.space, cfg, json.loads(json.dumps(engine.state_dict())))
        while not resumed.done:
            genomes = resumed.ask()
            resumed.tell(genomes, [problem.evaluate(g) for g in genomes])
        assert [r.genome for r in resumed.records()] == [r.genome for r in reference.records()]
        assert [r.genome for r in resumed.front()] == [r.genome for r in reference.front()]


def test_bad_screening_parameters_are_rejected() -> None:
    for kwargs in ({"pool_factor": 0}, {"samples": 0}, {"random_share": 1.5}, {"explore": -0.1}):
        with pytest.raises(ValueError):
            SurrogateScreening(**kwargs)  # type: ignore[arg-type]


def test_proposals_are_the_additive_model_s_exact_optima_and_unseen_ones_join_the_pool() -> None:
    from itertools import product

    problem = SeparableProblem(5, 4, n_objectives=3, seed=3)
    rng = np.random.default_rng(0)
    told = list(dict.fromkeys(problem.space.random(rng) for _ in range(60)))
    screening = SurrogateScreening()
    proposed = screening.propose(np.random.default_rng(1), _records(problem, told), 12, problem.space)
    assert len(proposed) == len(set(proposed)) >= 3
    every = list(product(*[range(n) for n in problem.space.sizes]))
    f = np.array([problem.objectives(g) for g in every])
    # the single objectives' optima (on the posterior mean for the 1st and 3rd, a Thompson draw for the
    # 2nd): exact for additive targets, found without evaluating the 1,024 genomes
    for j in (0, 2):
        assert every[int(np.argmin(f[:, j]))] in proposed
    # in the engine they are asked like bred children, labelled by origin
    cfg = EngineConfig(n_objectives=3, pop_size=10, max_generations=4, seed=0, surrogate=screening)
    engine = Engine(problem.space, cfg)
    while not engine.done:
        batch = engine.ask()
        engine.tell(batch, [problem.evaluate(g) for g in batch])
    origins = {r.origin for r in engine.records()}
    assert "surrogate" in origins and origins <= {"baseline", "sensitivity", "random", "crossover", "mutation",
                                                  "extreme", "surrogate"}


def test_default_screening_model_is_a_gaussian_process_and_the_linear_one_stays_available() -> None:
    problem = SeparableProblem(6, 4, n_objectives=2, seed=5)
    rng = np.random.default_rng(1)
    told = list(dict.fromkeys(problem.space.random(rng) for _ in range(150)))  # past the tuning subset
    pool = [g for g in dict.fromkeys(problem.space.random(rng) for _ in range(200)) if g not in told]
    assert "model='gp'" in EngineConfig(n_objectives=2).describe()["surrogate"]
    for model in ("gp", "linear"):
        picked = SurrogateScreening(model=model).choose(np.random.default_rng(2), pool, _records(problem, told), 8,
                                                        problem.space)
        assert len(picked) == len(set(picked)) == 8 and all(0 <= i < len(pool) for i in picked)
    with pytest.raises(ValueError):
        SurrogateScreening(model="forest")


def test_every_length_scale_form_screens_and_a_bad_one_is_rejected() -> None:
    problem = SeparableProblem(6, 4, n_objectives=2, seed=5)
    rng = np.random.default_rng(1)
    told = list(dict.fromkeys(problem.space.random(rng) for _ in range(150)))  # past the tuning subset
    pool = [g for g in dict.fromkeys(problem.space.random(rng) for _ in range(200)) if g not in told]
    described = EngineConfig(n_objectives=2).describe()["surrogate"]  # the default: per layer, with the prior
    assert "length_scales='layer'" in described and "length_scale_prior=True" in described
    for scales, prior in (("shared", False), ("layer", False), ("layer", True), ("choice", False)):
        screening = SurrogateScreening(length_scales=scales, length_scale_prior=prior)
        picked = screening.choose(np.random.default_rng(2), pool, _records(problem, told), 8, problem.space)
        assert len(picked) == len(set(picked)) == 8 and all(0 <= i < len(pool) for i in picked)
        again = screening.choose(np.random.default_rng(2), pool, _records(problem, told), 8, problem.space)
        assert again == picked  # fixed starts: one fit per data
    with pytest.raises(ValueError):
        SurrogateScreening(length_scales="dimension")
