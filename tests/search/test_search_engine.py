"""The ask/tell engine: determinism, exact resume, convergence on a known front, failures, budgets."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search import nsga2
from search.engine import Engine, EngineConfig
from search.errors import SearchError
from search.evaluation import Evaluation, Record
from search.metrics import bounds, normalised_hypervolume
from search.operators import NPointCrossover, TournamentSelection
from search.rng import encode_rng_state, restore_rng
from search.space import Genome, SearchSpace
from search.synthetic import SeparableProblem

PROBLEM = SeparableProblem(10, 5, n_objectives=3, seed=11, budget=0.7)


def config(problem: SeparableProblem = PROBLEM, **overrides: Any) -> EngineConfig:
    settings_: dict[str, Any] = {
        "n_objectives": problem.n_objectives,
        "n_constraints": problem.n_constraints,
        "objective_names": problem.names,
        "pop_size": 16,
        "max_generations": 8,
        "seed": 0,
        "baselines": ("c0", "c2", "c4"),
        "sensitivity": problem.sensitivity,
        "sensitivity_ladder": ("c0", "c2", "c4"),
    }
    settings_.update(overrides)
    return EngineConfig(**settings_)


def run(engine: Engine, problem: SeparableProblem = PROBLEM) -> list[list[Genome]]:
    """Drive to the end; returns every asked batch."""
    asked = []
    while not engine.done:
        genomes = engine.ask()
        asked.append(genomes)
        engine.tell(genomes, [problem.evaluate(g) for g in genomes])
    return asked


def summary(engine: Engine) -> Any:
    return (
        [(r.genome, r.evaluation) for r in engine.records()],
        [r.genome for r in engine.front()],
        engine.population(),
        engine.mutation_state,
        engine.generation,
    )


def test_same_seed_same_run_and_different_seed_different_run() -> None:
    a, b, c = Engine(PROBLEM.space, config()), Engine(PROBLEM.space, config()), Engine(PROBLEM.space, config(seed=1))
    asked_a, asked_b, asked_c = run(a), run(b), run(c)
    assert asked_a == asked_b and summary(a) == summary(b)
    assert asked_a != asked_c
    assert a.generation == 8 and a.n_evaluations == 16 * 8


def test_initial_population_holds_baselines_and_sensitivity_genomes() -> None:
    first = Engine(PROBLEM.space, config()).ask()
    assert first[:3] == [(0,) * 10, (2,) * 10, (4,) * 10]
    order = np.argsort(PROBLEM.sensitivity, kind="stable")
    least = set(order[:3].tolist())  # ceil(0.25 * 10) least sensitive layers drop to c2 first
    assert first[3] == tuple(2 if i in least else 0 for i in range(10))
    assert len(first) == 16 == len(set(first))


_REFERENCE_RUNS: dict[int, tuple[Engine, list[list[Genome]]]] = {}


def _reference_run(seed: int) -> tuple[Engine, list[list[Genome]]]:
    """The uninterrupted run of a seed, once per seed (the default screening fits a GP per batch)."""
    if seed not in _REFERENCE_RUNS:
        engine = Engine(PROBLEM.space, config(seed=seed, max_generations=6))
        _REFERENCE_RUNS[seed] = (engine, run(engine))
    return _REFERENCE_RUNS[seed]


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 7), st.booleans(), st.integers(0, 3))
def test_resume_through_json_is_exact(stop_after: int, mid_batch: bool, seed: int) -> None:
    """Kill at any point (between batches or with a half-told batch), resume from JSON, same run."""
    cfg = config(seed=seed, max_generations=6)
    reference, asked_ref = _reference_run(seed)

    engine = Engine(PROBLEM.space, cfg)
    asked: list[list[Genome]] = []
    for _ in range(stop_after):
        if engine.done:
            break
        genomes = engine.ask()
        asked.append(genomes)
        engine.tell(genomes, [PROBLEM.evaluate(g) for g in genomes])
    if mid_batch and not engine.done:
        genomes = engine.ask()
        asked.append(genomes)
        half = genomes[::2]
        engine.tell(half, [PROBLEM.evaluate(g) for g in half])
    stored = json.loads(json.dumps(engine.state_dict(), allow_nan=False))
    del engine  # nothing survives but the stored state

    resumed = Engine.from_state(PROBLEM.space, cfg, stored)
    pending = resumed.ask()
    if mid_batch and asked and pending:
        assert pending == asked[-1][1::2]  # exactly the genomes still awaiting results
        resumed.tell(pending, [PROBLEM.evaluate(g) for g in pending])
    asked += run(resumed)
    flat = [g for batch in asked for g in batch]
    assert flat == [g for batch in asked_ref for g in batch]
    assert summary(resumed) == summary(reference)


def test_tell_order_does_not_change_the_run() -> None:
    forward, backward = Engine(PROBLEM.space, config()), Engine(PROBLEM.space, config())
    run(forward)
    while not backward.done:
        genomes = backward.ask()
        for g in reversed(genomes):  # one at a time, last first: asynchronous devices
            backward.tell([g], [PROBLEM.evaluate(g)])
    assert summary(forward)[1:] == summary(backward)[1:]


def test_ask_is_idempotent_while_a_batch_is_open() -> None:
    engine = Engine(PROBLEM.space, config())
    first = engine.ask()
    assert engine.ask() == first
    engine.tell(first[:5], [PROBLEM.evaluate(g) for g in first[:5]])
    assert engine.ask() == first[5:]
    assert engine.n_evaluations == 5 and engine.generation == 0


@pytest.mark.parametrize(
    ("layers", "choices", "n_objectives", "bytes_budget", "evaluations"),
    [(8, 3, 2, None, 400), (7, 4, 3, None, 600), (7, 4, 3, 0.5, 600)],
)
def test_reaches_95_percent_of_the_true_front(
    layers: int, choices: int, n_objectives: int, bytes_budget: float | None, evaluations: int
) -> None:
    problem = SeparableProblem(layers, choices, n_objectives=n_objectives, seed=7, budget=bytes_budget)
    # exhaustive enumeration gives the true (feasible) front
    everything = [problem.evaluate(g) for g in itertools.product(range(choices), repeat=layers)]
    f = np.array([e.objectives for e in everything])
    cv = np.array([e.total_violation for e in everything])
    true_front = f[nsga2.first_front(f, cv)]
    ideal, nadir = bounds(true_front)
    best = normalised_hypervolume(true_front, ideal, nadir)
    for seed in range(3):
        engine = Engine(
            problem.space,
            EngineConfig(
                n_objectives=n_objectives,
                n_constraints=problem.n_constraints,
                pop_size=32,
                max_evaluations=evaluations,
                seed=seed,
                baselines=("c0", f"c{choices - 1}"),  # uniform highest and lowest precision
            ),
        )
        run(engine, problem)
        assert engine.n_evaluations == evaluations < 0.1 * len(everything)
        found = np.array([r.evaluation.objectives for r in engine.front()])
        assert normalised_hypervolume(found, ideal, nadir) >= 0.95 * best


def test_constrained_front_is_feasible() -> None:
    engine = Engine(PROBLEM.space, config())
    run(engine)
    front = engine.front()
    assert front and all(r.evaluation.feasible for r in front)
    assert any(not r.evaluation.feasible for r in engine.records())  # the budget did bite
    # the front is exactly the feasible non-dominated told points (brute force)
    feasible = [r for r in engine.records() if r.evaluation.feasible]
    expected = [
        r.genome
        for r in feasible
        if not any(
            nsga2.pareto_dominates(np.array(o.evaluation.objectives), np.array(r.evaluation.objectives))
            for o in feasible
        )
    ]
    assert [r.genome for r in front] == expected


def test_failures_do_not_crash_and_stay_off_the_front() -> None:
    problem = SeparableProblem(10, 5, n_objectives=2, seed=3, fail_every=3)
    engine = Engine(problem.space, config(problem, sensitivity=None, baselines=()))
    run(engine, problem)
    failed = [r for r in engine.records() if r.evaluation.failed]
    assert failed and engine.front()
    assert not {r.genome for r in failed} & {r.genome for r in engine.front()}
    assert all(not r.evaluation.failed for r in engine.population())


def test_all_failures_leave_an_empty_front() -> None:
    space = SearchSpace(["a", "b"], [[0, 1, 2]] * 2)
    engine = Engine(space, EngineConfig(n_objectives=2, pop_size=4, max_generations=10))
    while not engine.done:
        genomes = engine.ask()
        engine.tell(genomes, [Evaluation.failure("AGENT_CRASHED") for _ in genomes])
    assert engine.front() == [] and engine.recommend([1.0, 1.0]) is None
    assert engine.n_evaluations == 9  # the space had 9 genomes: all tried, then exhausted
    assert engine.exhausted


def test_non_finite_results_become_failures() -> None:
    space = SearchSpace(["a"], [[0, 1, 2]])
    engine = Engine(space, EngineConfig(n_objectives=2, pop_size=3, max_generations=1))
    genomes = engine.ask()
    engine.tell(genomes, [Evaluation((math.nan, 1.0)), Evaluation((1.0, 1.0)), Evaluation.ok([math.inf, 0.0])])
    assert [r.evaluation.error for r in engine.records()] == ["non_finite", None, "non_finite"]
    json.dumps(engine.state_dict(), allow_nan=False)


def test_space_exhaustion_stops_gracefully() -> None:
    space = SearchSpace(["a", "b"], [[0, 1], [0, 1]])
    engine = Engine(space, EngineConfig(n_objectives=1, pop_size=3, max_generations=100))
    asked = run_simple(engine)
    assert sorted(g for batch in asked for g in batch) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert engine.done and engine.exhausted and engine.ask() == []


def run_simple(engine: Engine) -> list[list[Genome]]:
    asked = []
    while not engine.done:
        genomes = engine.ask()
        if not genomes:
            break
        asked.append(genomes)
        engine.tell(genomes, [Evaluation.ok([float(sum(g))]) for g in genomes])
    return asked


def test_evaluation_budget_is_exact_and_no_genome_is_asked_twice() -> None:
    engine = Engine(PROBLEM.space, config(max_generations=None, max_evaluations=77))
    asked = run(engine)
    flat = [g for batch in asked for g in batch]
    assert len(flat) == 77 == engine.n_evaluations == len(set(flat))


def test_bad_tells_raise_and_leave_the_engine_unchanged() -> None:
    engine = Engine(PROBLEM.space, config())
    genomes = engine.ask()
    before = json.dumps(engine.state_dict())
    with pytest.raises(SearchError):
        engine.tell([genomes[0], (9,) * 10], [PROBLEM.evaluate(genomes[0])] * 2)
    with pytest.raises(SearchError):
        engine.tell([genomes[0], genomes[0]], [PROBLEM.evaluate(genomes[0])] * 2)
    with pytest.raises(SearchError):
        engine.tell([genomes[0]], [Evaluation.ok([1.0], [0.0])])  # wrong objective count
    assert json.dumps(engine.state_dict()) == before


def test_from_state_rejects_a_different_space_or_config() -> None:
    engine = Engine(PROBLEM.space, config())
    run(engine)
    state = engine.state_dict()
    other = SeparableProblem(10, 4, n_objectives=3, seed=11, budget=0.7)
    with pytest.raises(SearchError):
        Engine.from_state(other.space, config(other), state)
    with pytest.raises(SearchError):
        Engine.from_state(PROBLEM.space, config(n_objectives=2, objective_names=None), state)


def test_recommend_by_objective_names() -> None:
    engine = Engine(PROBLEM.space, config())
    run(engine)
    front = engine.front()
    cheapest = engine.recommend({"bytes": 1.0})
    most_accurate = engine.recommend({"accuracy_loss": 1.0})
    assert cheapest is not None and most_accurate is not None
    assert cheapest.evaluation.objectives[1] == min(r.evaluation.objectives[1] for r in front)  # type: ignore[index]
    assert most_accurate.evaluation.objectives[0] == min(r.evaluation.objectives[0] for r in front)  # type: ignore[index]
    with pytest.raises(SearchError):
        engine.recommend({"energy": 1.0})


def test_injected_operators_are_used() -> None:
    default = Engine(PROBLEM.space, config())
    custom = Engine(PROBLEM.space, config(selection=TournamentSelection(4), crossover=NPointCrossover(2)))
    assert run(default)[1:] != run(custom)[1:]
    assert custom.state_dict()["config"]["crossover"] == "NPointCrossover(n_points=2)"


def test_adaptive_mutation_rate_moves_within_bounds() -> None:
    # without screening: the rate's rule is the operators' own (30 GP fits would only cost time)
    engine = Engine(PROBLEM.space, config(max_generations=30, surrogate=None))
    rates = []
    while not engine.done:
        genomes = engine.ask()
        engine.tell(genomes, [PROBLEM.evaluate(g) for g in genomes])
        rates.append(engine.mutation_state["rate"])
    assert len(set(rates)) > 1
    assert all(0.05 - 1e-12 <= r <= 0.5 for r in rates)


def test_state_without_records_resumes_with_records_passed_back() -> None:
    cfg = config(max_generations=6)
    reference = Engine(PROBLEM.space, cfg)
    run(reference)
    engine = Engine(PROBLEM.space, cfg)
    for _ in range(3):
        genomes = engine.ask()
        engine.tell(genomes, [PROBLEM.evaluate(g) for g in genomes])
    genomes = engine.ask()
    engine.tell(genomes[:4], [PROBLEM.evaluate(g) for g in genomes[:4]])  # an open batch, half told
    lean = json.loads(json.dumps(engine.state_dict(include_records=False)))
    assert "records" not in lean
    with pytest.raises(SearchError):
        Engine.from_state(PROBLEM.space, cfg, lean)
    archive = [Record.from_dict(json.loads(json.dumps(r.to_dict()))) for r in engine.records()]
    resumed = Engine.from_state(PROBLEM.space, cfg, lean, records=archive)  # archive includes the 4
    assert resumed.n_evaluations == engine.n_evaluations
    rest = resumed.ask()
    resumed.tell(rest, [PROBLEM.evaluate(g) for g in rest])
    run(resumed)
    assert summary(resumed) == summary(reference)


def test_rng_state_is_exact_for_any_json_reader() -> None:
    for generator in (np.random.default_rng(5), np.random.Generator(np.random.MT19937(5))):
        generator.random(3)
        encoded = encode_rng_state(generator.bit_generator.state)
        text = json.dumps(encoded)
        # no bare number wider than a double's 53-bit mantissa
        assert all(abs(v) < 2**53 for v in _numbers(json.loads(text)))
        restored = restore_rng(json.loads(text))
        assert restored.random(5).tolist() == generator.random(5).tolist()


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_engine_imports_nothing_of_the_harness_or_devices() -> None:
    import subprocess
    import sys

    code = (
        "import sys, search, search.synthetic;"
        "bad = [m for m in ('harness', 'onnx', 'onnxruntime', 'paramiko') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lineage_is_recorded_and_survives_resume() -> None:
    engine = Engine(PROBLEM.space, config())
    first = engine.ask()
    origins = [engine.lineage(g)[0] for g in first]
    assert origins[:3] == ["baseline"] * 3
    assert origins[3:9] == ["sensitivity"] * 6  # 2 lower rungs x 3 depths
    assert set(origins[9:]) == {"random"}
    engine.tell(first, [PROBLEM.evaluate(g) for g in first])
    parents_pool = {r.genome for r in engine.population()}
    told = {r.genome for r in engine.records()}
    second = engine.ask()
    resumed = Engine.from_state(PROBLEM.space, config(), json.loads(json.dumps(engine.state_dict())))
    for g in second:
        origin, parents = engine.lineage(g)
        assert resumed.lineage(g) == (origin, parents)
        assert origin in {"crossover", "mutation", "random", "surrogate", "extreme"}
        if origin == "extreme":  # a one-gene neighbour of one told genome
            assert len(parents) == 1 and parents[0] in told
        else:
            assert origin in ("random", "surrogate") or (len(parents) == 2 and set(parents) <= parents_pool)
    resumed.tell(second, [PROBLEM.evaluate(g) for g in second])
    told = {r.genome: r for r in resumed.records()}
    assert all((told[g].origin, told[g].parents) == engine.lineage(g) for g in second)
    with pytest.raises(SearchError):
        engine.lineage((4,) * 9 + (3,))


def test_record_generations_match_engine_generation() -> None:
    engine = Engine(PROBLEM.space, config(max_generations=3))
    run(engine)
    assert sorted({r.generation for r in engine.records()}) == [1, 2, 3] == list(range(1, engine.generation + 1))
    assert all(r.origin != "crossover" for r in engine.records() if r.generation == 1)


def test_extreme_children_are_one_gene_neighbours_of_each_objectives_best() -> None:
    cfg = config(extremes=3, max_generations=4)
    engine = Engine(PROBLEM.space, cfg)
    first = engine.ask()
    engine.tell(first, [PROBLEM.evaluate(g) for g in first])
    told = {r.genome: r.evaluation for r in engine.records()}
    second = engine.ask()
    assert len(second) == 16 == len(set(second)) and not set(second) & set(told)
    for i, child in enumerate(second[:3]):
        origin, parents = engine.lineage(child)
        assert origin == "extreme" and len(parents) == 1
        (parent,) = parents
        assert sum(a != b for a, b in zip(child, parent)) == 1
        k = (engine.generation + i) % PROBLEM.n_objectives
        best = min(e.objectives[k] for e in told.values() if e.feasible and not e.failed)
        assert told[parent].feasible and told[parent].objectives[k] == best
    assert all(engine.lineage(g)[0] != "extreme" for g in second[3:])
    # a run with extreme children resumes exactly, mid-batch included
    engine.tell(second[:5], [PROBLEM.evaluate(g) for g in second[:5]])
    resumed = Engine.from_state(PROBLEM.space, cfg, json.loads(json.dumps(engine.state_dict())))
    rest = second[5:]
    for e in (engine, resumed):
        e.tell(rest, [PROBLEM.evaluate(g) for g in rest])
    run(engine), run(resumed)
    assert summary(engine) == summary(resumed)
    with pytest.raises(SearchError):
        EngineConfig(n_objectives=2, extremes=-1)
