"""Search space helpers and operators: every operator keeps genomes valid in any space."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.errors import SearchError
from search.initial import baseline_genomes, initial_population, sensitivity_genomes
from search.operators import (
    AdaptiveMutation,
    ClipRepair,
    FixedMutation,
    FunctionRepair,
    NPointCrossover,
    Ranked,
    TournamentSelection,
    UniformCrossover,
)
from search.space import PerLayer, SearchSpace, genome_key

sizes_strategy = st.lists(st.integers(1, 12), min_size=1, max_size=25)


def make_space(sizes: list[int]) -> SearchSpace:
    return SearchSpace([f"l{i}" for i in range(len(sizes))], [list(range(n)) for n in sizes])


@settings(max_examples=150, deadline=None)
@given(sizes_strategy, st.integers(0, 2**32 - 1), st.integers(1, 6), st.floats(0.0, 1.0))
def test_operators_keep_genomes_valid(sizes: list[int], seed: int, n_points: int, rate: float) -> None:
    space = make_space(sizes)
    rng = np.random.default_rng(seed)
    a, b = space.random(rng), space.random(rng)
    assert space.is_valid(a) and space.is_valid(b)
    for crossover in (UniformCrossover(), UniformCrossover(0.9), NPointCrossover(n_points)):
        c1, c2 = crossover.cross(rng, a, b, space)
        for child in (c1, c2):
            assert space.is_valid(child)
            assert all(x in (p, q) for x, p, q in zip(child, a, b))  # layer-wise: genes come from a parent
    for mutation in (AdaptiveMutation(), FixedMutation(rate)):
        state = mutation.initial_state(space)
        mutant = mutation.mutate(rng, a, space, state)
        assert space.is_valid(mutant)
        assert mutation.mutate(rng, a, space, state) is not None  # state is not consumed


@settings(max_examples=150, deadline=None)
@given(sizes_strategy, st.lists(st.integers(-50, 50), max_size=30))
def test_repair_makes_anything_valid(sizes: list[int], raw: list[int]) -> None:
    space = make_space(sizes)
    repaired = ClipRepair().repair(raw, space)
    assert space.is_valid(repaired)
    hook = FunctionRepair(lambda g, s: [x + 100 for x in g])  # a careless hook stays contained
    assert space.is_valid(hook.repair(raw, space))


def test_function_repair_applies_the_rule() -> None:
    space = make_space([3, 3, 3])
    # rule: layer 0 may not use choice 2
    hook = FunctionRepair(lambda g, s: (min(g[0], 1), *g[1:]))
    assert hook.repair((2, 2, 2), space) == (1, 2, 2)


def test_mutation_with_rate_one_changes_every_multi_choice_layer() -> None:
    space = make_space([1, 2, 5, 7])
    rng = np.random.default_rng(0)
    genome = (0, 1, 3, 6)
    mutant = FixedMutation(1.0).mutate(rng, genome, space, {"rate": 1.0})
    assert mutant[0] == 0 and all(m != g for m, g in zip(mutant[1:], genome[1:]))


def test_adaptive_mutation_grows_on_stagnation_and_shrinks_on_progress() -> None:
    space = make_space([4] * 10)
    mutation = AdaptiveMutation(grow=1.5, shrink=0.8, min_factor=0.5, max_rate=0.5)
    state = mutation.initial_state(space)
    assert state["rate"] == pytest.approx(0.1)
    grown = mutation.update(state, improved=False, space=space)
    assert grown["rate"] == pytest.approx(0.15)
    assert mutation.update(state, improved=True, space=space)["rate"] == pytest.approx(0.08)
    for _ in range(50):
        state = mutation.update(state, improved=False, space=space)
    assert state["rate"] == pytest.approx(0.5)  # capped
    for _ in range(100):
        state = mutation.update(state, improved=True, space=space)
    assert state["rate"] == pytest.approx(0.05)  # floored at min_factor / L
    json.dumps(state)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_tournament_prefers_rank_then_crowding(size: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rank = rng.integers(0, 3, size)
    crowding = rng.random(size)
    population = Ranked([(i,) for i in range(size)], rank, crowding)
    picks = TournamentSelection(k).select(rng, population, 20)
    assert len(picks) == 20 and all(0 <= p < size for p in picks)
    if k >= size:  # everyone competes: the single best always wins
        best = min(range(size), key=lambda i: (rank[i], -crowding[i], i))
        assert all((rank[p], crowding[p]) == (rank[best], crowding[best]) for p in picks)


# -- space ----------------------------------------------------------------------------------------
def test_space_helpers() -> None:
    space = SearchSpace(["a", "b", "c"], [["w8a8", "w4a8", "fp"], ["w8a8", "fp"], [{"w": 8}, {"w": 4}]])
    assert space.size == 12
    assert space.uniform("w8a8") is None  # not allowed on layer c and no distance given
    assert space.uniform("fp") is None
    assert space.encode(["w4a8", "fp", {"w": 4}]) == (1, 1, 1)
    assert space.decode((1, 1, 1)) == {"a": "w4a8", "b": "fp", "c": {"w": 4}}
    assert not space.is_valid((0, 2, 0)) and not space.is_valid((0, 0)) and not space.is_valid((0, 0, True))
    assert space.clip((-3, 9)) == (0, 1, 0)
    with pytest.raises(SearchError):
        space.decode((5, 0, 0))
    with pytest.raises(SearchError):
        SearchSpace(["a", "a"], [[1], [2]])
    with pytest.raises(SearchError):
        SearchSpace(["a"], [[]])


def test_uniform_falls_back_to_nearest_with_a_distance() -> None:
    space = SearchSpace(["a", "b"], [[8, 4, 32], [8, 32]], distance=lambda x, y: abs(x - y))
    assert space.uniform(4) == (1, 0)  # 4 is not allowed on b: nearest is 8
    assert space.uniform(32) == (2, 1)


def test_a_per_layer_baseline_takes_each_layer_its_own_value() -> None:
    space = SearchSpace(["a", "b"], [[8, 4, 32], [8, 32]], distance=lambda x, y: abs(x - y))
    assert space.uniform(PerLayer((4, 32))) == (1, 1)
    assert space.uniform(PerLayer((32, 4))) == (2, 0)  # 4 is not allowed on b: nearest is 8
    with pytest.raises(SearchError, match="2 layers"):
        space.uniform(PerLayer((4,)))
    assert baseline_genomes(space, [8, PerLayer((4, 32))]) == [(0, 0), (1, 1)]


def test_keys_are_stable_across_processes() -> None:
    space = SearchSpace(["a", "b"], [[(8, 8), (4, 8)], [(8, 8), ("fp", "fp")]])
    code = (
        "from search.space import SearchSpace, genome_key;"
        "s = SearchSpace(['a', 'b'], [[(8, 8), (4, 8)], [(8, 8), ('fp', 'fp')]]);"
        "print(genome_key((1, 0)), s.fingerprint)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [genome_key((1, 0)), space.fingerprint]
    assert genome_key((1, 0)) != genome_key((0, 1))
    other = SearchSpace(["a", "b"], [[(8, 8), (4, 8)], [(8, 8), ("fp", 16)]])
    assert other.fingerprint != space.fingerprint


def test_initial_population_order_and_dedup() -> None:
    space = SearchSpace([f"l{i}" for i in range(8)], [["fp", "w8a8", "w4a8"]] * 7 + [["fp", "w8a8"]])
    baselines = baseline_genomes(space, ["w8a8", "w4a8", "fp"])
    assert baselines == [(1,) * 8, (0,) * 8]  # w4a8 is not allowed on the last layer: skipped
    sens = sensitivity_genomes(space, [8, 7, 6, 5, 4, 3, 2, 1], ["fp", "w8a8", "w4a8"], [0.25, 0.5])
    # the least sensitive layers (the last ones) drop first; w4a8 is skipped where not allowed
    assert sens[0] == (0, 0, 0, 0, 0, 0, 1, 1)
    assert sens[3] == (0, 0, 0, 0, 2, 2, 2, 0)
    rng = np.random.default_rng(0)
    pop = initial_population(space, rng, 10, [*baselines, *sens, baselines[0]], 1000)
    assert pop[:2] == baselines and pop[2:6] == sens and len(pop) == len(set(pop)) == 10
    assert all(space.is_valid(g) for g in pop)
    tiny = make_space([2, 1])
    assert sorted(initial_population(tiny, rng, 10, [], 1000)) == [(0, 0), (1, 0)]  # the whole space
