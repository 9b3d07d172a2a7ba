"""Search quality: hypervolume ratio to the true front on an exhaustively enumerated digits-vit space.

The space: digits-vit's 14 layers in 6 groups (patch embedding, block 0 attention, block 0 FFN,
block 1 attention, block 1 FFN, head); each group takes one (weight bits, activation bits) choice
for all its layers: the four block groups one of fp, w8a8, w8 dynamic, w4a8, w4 weight-only, the
patch embedding and the head one of fp, w8a8 -> 5^4 * 2 * 2 = 2500 genomes. Every genome is built
and evaluated once for real (host accuracy on the validation split of the held-out digits, 540 images
until issue 14 and 270 since, and exact weight bytes;
latency predicted by the calibrated ``host-cpu-local`` profile) and the table is stored in
results/bench/search_space_table.json; later runs reuse it (it is rebuilt when the model, data,
ONNX Runtime or profile changes, or with ``--fresh-table``).

Objectives (all minimised): accuracy loss vs FP32 (labelled top-1), weight bytes, predicted latency:
the three qae searches by default. A second view re-scores the same runs' settings with 1 - mean
cosine to FP32 in place of the labelled accuracy loss (``variant_cosine``): a few hundred labelled digits make
the accuracy loss coarse (steps of 0.19 %) and noisy (some quantized genomes score above FP32), the
cosine is the steadier quality signal. Every method draws from the same table through one ``Oracle`` that counts each
distinct genome once; a method that proposes a genome it already evaluated gets the stored value for
free (pymoo and Optuna can re-propose genomes; qae's engine, random search and the greedy baseline
never do). Each method runs once per seed up to the largest budget, and the hypervolume of the
first B distinct evaluations is reported for every budget B (all methods are anytime: none of them
changes behaviour with the budget). Hypervolume: normalised by the table's ideal and nadir, reference
point 1.1 in every objective, ratio to the true front's.

Methods: ``qae`` (search.Engine as ``qae search`` configures it: uniform baselines and
sensitivity-guided genomes in the first population; its per-group sensitivity probes are
evaluations and count against the budget), ``pymoo_nsga2`` (NSGA2, integer variables, SBX + PM with
rounding, duplicate elimination), ``optuna_nsga2`` (NSGAIISampler, categorical parameters),
``optuna_motpe`` (Optuna's multi-objective TPESampler, multivariate),
``random`` (uniform, without replacement) and ``greedy_sensitivity`` (AIMET/HAWQ style: probe each
group at each lower choice, then lower the least sensitive group per unit of cost saved first,
one path per cost weighting; deterministic, so its seeds agree). Two ablations of qae's seeding are
reported beside them (``qae_no_sensitivity``: no probes or guided genomes; ``qae_unseeded``: not
even the uniform baselines); they are not part of the issue's bars. Each run also records how many
proposals a method made (repeats included) and the median ratio when every proposal counts.

    python -m benchmarks.bench_search [--quick] [--budgets 100,200,400] [--seeds 5] [--fresh-table]

One module because it is one benchmark script: the enumerated true front, the competitors and the
report are read together.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from harness.core.atomic import atomic_write_text

WORKLOAD = "builtin:digits-vit"
PROFILE = "host-cpu-local"
METHODS = ("qae", "pymoo_nsga2", "optuna_nsga2", "optuna_motpe", "random", "greedy_sensitivity")
OBJECTIVES = ("accuracy_loss", "weight_bytes", "latency_ms")
POP_SIZE = 20
CHOICES_BLOCK: tuple[tuple[Any, Any], ...] = (("fp", "fp"), (8, 8), (8, "dynamic"), (4, 8), (4, "fp"))
CHOICES_IO: tuple[tuple[Any, Any], ...] = (("fp", "fp"), (8, 8))
#: group name -> (layer-name prefixes, choices)
GROUPS: tuple[tuple[str, tuple[str, ...], tuple[tuple[Any, Any], ...]], ...] = (
    ("patch_embed", ("patch_embed",), CHOICES_IO),
    ("blocks.0.attn", ("blocks.0.attn.",), CHOICES_BLOCK),
    ("blocks.0.ffn", ("blocks.0.ffn.",), CHOICES_BLOCK),
    ("blocks.1.attn", ("blocks.1.attn.",), CHOICES_BLOCK),
    ("blocks.1.ffn", ("blocks.1.ffn.",), CHOICES_BLOCK),
    ("head", ("head",), CHOICES_IO),
)
TABLE_NAME = "search_space_table.json"

Genome = tuple[int, ...]


# -- the table: every genome of the space, evaluated once -----------------------------------------
@dataclass
class Table:
    """Objective rows of every genome of a space (index tuple -> row), with the space's choices."""

    choices: list[list[Any]]
    names: list[str]
    rows: dict[Genome, np.ndarray]
    extra: dict[str, Any]

    @property
    def matrix(self) -> np.ndarray:
        return np.array(list(self.rows.values()))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.matrix
        return m.min(axis=0), m.max(axis=0)

    def hv(self, points: np.ndarray) -> float:
        from search.metrics import normalised_hypervolume

        lo, hi = self.bounds()
        return normalised_hypervolume(points, lo, hi, margin=0.1)

    def true_front(self) -> np.ndarray:
        from search.nsga2 import first_front

        m = self.matrix
        return m[first_front(m)]


def _gene_dict(choice: Sequence[Any]) -> dict[str, Any]:
    return {"weight_bits": choice[0], "activation_bits": choice[1], "scheme": "symmetric",
            "granularity": "per_channel"}


def group_layers(layer_names: Sequence[str]) -> list[list[str]]:
    out = []
    for name, prefixes, _ in GROUPS:
        members = [n for n in layer_names if any(n == p or n.startswith(p) for p in prefixes)]
        if not members:
            raise RuntimeError(f"group {name}: no layer of {WORKLOAD} matches {prefixes}")
        out.append(members)
    return out


def genome_dict(genome: Genome, groups: list[list[str]]) -> dict[str, Any]:
    layers = {}
    for (_, _, choices), members, idx in zip(GROUPS, groups, genome):
        for layer in members:
            layers[layer] = _gene_dict(choices[idx])
    return {"layers": layers}


def table_key(work: Any, profile: Any) -> dict[str, Any]:
    import onnxruntime

    assert work.eval_data is not None
    return {
        "model_sha256": work.model.sha256,
        "calib": work.calib.sha256,
        "eval": work.eval_data.sha256,
        "onnxruntime": onnxruntime.__version__,
        "profile": profile.name,
        "calibration_id": profile.calibration_id,
        "groups": [[g[0], list(g[1]), [list(c) for c in g[2]]] for g in GROUPS],
    }


def build_table(results: Path, fresh: bool = False, workers: int = 2) -> Table:
    """Load the stored table if its key matches, else evaluate every genome (minutes) and store it."""
    from concurrent.futures import ProcessPoolExecutor

    from harness.quant.workload import Workload
    from harness.run.evaluation import evaluate_genome, worker_init
    from profiles import load_profile
    from profiles.costmodel import CostTable, GraphStats

    work = Workload.open(WORKLOAD)
    profile = load_profile(PROFILE)
    key = table_key(work, profile)
    path = results / TABLE_NAME
    if path.exists() and not fresh:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return _table_from(stored)
        print(f"{path}: stored for other inputs; rebuilding", file=sys.stderr)
    groups = group_layers(work.model.layer_names)
    sizes = [len(g[2]) for g in GROUPS]
    genomes: list[Genome] = [tuple(g) for g in product(*[range(n) for n in sizes])]
    fp32 = work.evaluate(None).accuracy
    costs = CostTable(work.model.layers, profile, GraphStats.of(work.model))
    t0 = time.perf_counter()
    payload = [genome_dict(g, groups) for g in genomes]
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=worker_init, initargs=(WORKLOAD, None, None, "minmax")) as ex:
            hosts = list(ex.map(evaluate_genome, payload, chunksize=16))
    else:
        worker_init(WORKLOAD, None, None, "minmax")
        hosts = [evaluate_genome(p) for p in payload]
    elapsed = time.perf_counter() - t0
    rows = []
    for g, data, host in zip(genomes, payload, hosts):
        if "error_kind" in host:
            raise RuntimeError(f"genome {g} failed to build: {host['message']}")
        pred = costs.predict(work.genome(data))
        rows.append({"genome": list(g), "accuracy": host["accuracy"], "mean_cosine": host.get("mean_cosine"),
                     "weight_bytes": host["weight_bytes"], "latency_ms": pred.latency_ms})
    stored = {"key": key, "fp32_accuracy": fp32, "groups": [[g[0], len(m)] for g, m in zip(GROUPS, groups)],
              "evaluation_seconds": elapsed, "workers": workers, "n": len(rows), "rows": rows,
              "environment": common.environment()}
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(stored, separators=(",", ":")) + "\n")
    print(f"evaluated {len(rows)} genomes in {elapsed:.0f} s with {workers} workers -> {path}", file=sys.stderr)
    return _table_from(stored)


def _table_from(stored: dict[str, Any]) -> Table:
    fp32 = float(stored["fp32_accuracy"])
    rows = {tuple(r["genome"]): np.array([fp32 - r["accuracy"], r["weight_bytes"], r["latency_ms"]], dtype=float)
            for r in stored["rows"]}
    choices = [list(g[2]) for g in GROUPS]
    return Table(choices, [g[0] for g in GROUPS], rows,
                 {"fp32_accuracy": fp32, "evaluation_seconds": stored.get("evaluation_seconds"),
                  "mean_cosine": {tuple(r["genome"]): r.get("mean_cosine") for r in stored["rows"]}})


def synthetic_table(sizes: Sequence[int] = (2, 3, 3, 3, 2), seed: int = 0) -> Table:
    """A tiny made-up space with the same shape of trade-off (for the smoke test: no ONNX Runtime)."""
    rng = np.random.default_rng(seed)
    bits = [np.sort(rng.uniform(0.0, 1.0, n))[::-1] for n in sizes]  # choice 0 is the most precise
    weight = rng.uniform(1.0, 4.0, len(sizes))
    rows = {}
    for g in product(*[range(n) for n in sizes]):
        prec = np.array([bits[i][j] for i, j in enumerate(g)])
        loss = float(np.sum(weight * (1 - prec) ** 2))
        size = float(np.sum(weight * (0.2 + prec)))
        lat = float(np.sum((prec - 0.5) ** 2) + 0.1 * loss)
        rows[tuple(g)] = np.array([loss, size, lat])
    choices = [[("fp", "fp")] + [(8 - 2 * k, 8) for k in range(n - 1)] for n in sizes]
    mean_cosine = {g: float(1.0 - r[0] / 10) for g, r in rows.items()}
    return Table(choices, [f"g{i}" for i in range(len(sizes))], rows,
                 {"fp32_accuracy": 1.0, "mean_cosine": mean_cosine, "synthetic": True})


# -- the evaluation function every method shares ---------------------------------------------------
class BudgetSpent(Exception):
    """Raised by the oracle when a method asks for a new genome beyond the budget."""


class Oracle:
    """The shared evaluation function: objective rows from the table, distinct genomes counted."""

    def __init__(self, table: Table, budget: int) -> None:
        self.table = table
        self.budget = budget
        self.order: list[Genome] = []
        self.seen: set[Genome] = set()
        self.calls = 0
        #: distinct genomes evaluated after each call (for counting every proposal instead)
        self.distinct_after_call: list[int] = []

    @property
    def count(self) -> int:
        return len(self.order)

    @property
    def exhausted(self) -> bool:
        return self.count >= self.budget

    def __call__(self, genome: Sequence[int]) -> np.ndarray:
        g = tuple(int(x) for x in genome)
        self.calls += 1
        if g not in self.seen:
            if self.exhausted:
                raise BudgetSpent
            self.seen.add(g)
            self.order.append(g)
        self.distinct_after_call.append(len(self.order))
        return self.table.rows[g]

    def cosine_loss(self, genome: Sequence[int]) -> float:
        """1 - mean cosine of an (already evaluated) genome: the sensitivity probes' statistic."""
        value = self.table.extra["mean_cosine"].get(tuple(genome))
        return 1.0 - float(value) if value is not None else float(self.table.rows[tuple(genome)][0])


# -- methods ------------------------------------------------------------------------------------------
def _space(table: Table) -> Any:
    from search import SearchSpace

    return SearchSpace(table.names, [[tuple(c) for c in cs] for cs in table.choices], distance=choice_distance)


def _bits(v: Any) -> float:
    return {"fp": 32.0, "dynamic": 8.0}[v] if isinstance(v, str) else float(v)


def choice_distance(a: Sequence[Any], b: Sequence[Any]) -> float:
    """harness.run.search.choice_distance on (weight, activation) pairs.

    Re-stated here because harness.run.search._bits evaluates ``float("fp")`` eagerly (dict.get's
    default) and raises whenever a uniform baseline has to fall back to a nearest choice.
    """
    w = abs(np.log2(_bits(a[0])) - np.log2(_bits(b[0])))
    act = abs(np.log2(_bits(a[1])) - np.log2(_bits(b[1])))
    act += 0.0 if (a[1] == "dynamic") == (b[1] == "dynamic") else 0.5
    return float(2 * w + act)


def _probe(table: Table, group: int, choice: int) -> Genome:
    """Only ``group`` at ``choice``, every other group at its first (most precise, fp) choice."""
    g = [0] * len(table.choices)
    g[group] = choice
    return tuple(g)


def run_qae(oracle: Oracle, seed: int, probes: bool = True, baselines: bool = True) -> None:
    """search.Engine configured as harness.run.search.run_search does (baselines, sensitivity).

    ``probes=False`` / ``baselines=False`` are the ablations: no sensitivity probes and guided genomes,
    and no uniform baselines either (a plain random first population).
    """
    from search import Engine, EngineConfig, Evaluation

    table = oracle.table
    space = _space(table)
    sensitivity: list[float] | None = None
    if probes:
        # run_search's probe: one group at w4a8, the rest fp; 1 - mean cosine is the sensitivity.
        sensitivity = []
        for i, cs in enumerate(table.choices):
            j = space.index_of(i, (4, 8))
            if j is None:
                j = len(cs) - 1
            probe = _probe(table, i, j)
            oracle(probe)
            sensitivity.append(oracle.cosine_loss(probe))
    cfg = EngineConfig(
        n_objectives=3, pop_size=POP_SIZE, seed=seed,
        baselines=((8, 8), (4, 8), ("fp", "fp"), (8, "dynamic")) if baselines else (),
        sensitivity=tuple(sensitivity) if sensitivity is not None else None,
        sensitivity_ladder=((8, 8), (4, 8)) if probes else (),
    )
    engine = Engine(space, cfg)
    while not engine.done:
        batch = engine.ask()
        if not batch:
            return
        for g in batch:
            engine.tell([g], [Evaluation.ok(oracle(g).tolist())])


def run_pymoo(oracle: Oracle, seed: int) -> None:
    """pymoo NSGA2 over integer variables (its documented integer recipe), ask/tell."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.evaluator import Evaluator
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling

    sizes = [len(c) for c in oracle.table.choices]
    problem = Problem(n_var=len(sizes), n_obj=3, xl=np.zeros(len(sizes)), xu=np.array(sizes) - 1, vtype=int)
    algo = NSGA2(pop_size=POP_SIZE, sampling=IntegerRandomSampling(),
                 crossover=SBX(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
                 mutation=PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
                 eliminate_duplicates=True)
    algo.setup(problem, termination=("n_gen", 10**6), seed=seed, verbose=False)
    evaluator = Evaluator()
    stale = 0
    with warnings.catch_warnings():  # pymoo's crowding divides by a zero span on tied fronts
        warnings.simplefilter("ignore", RuntimeWarning)
        while stale < 50:
            pop = algo.ask()
            before = oracle.count
            f = np.array([oracle(np.round(x).astype(int)) for x in pop.get("X")])
            pop.set("F", f)
            evaluator.eval(problem, pop, skip_already_evaluated=True)
            algo.tell(infills=pop)
            stale = stale + 1 if oracle.count == before else 0


def optuna_sampler(kind: str, seed: int) -> Any:
    """``nsga2``: NSGAIISampler; ``motpe``: the multi-objective TPESampler (MOTPE)."""
    import optuna

    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=POP_SIZE, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def run_optuna(oracle: Oracle, seed: int, kind: str = "nsga2") -> None:
    """An Optuna sampler (``optuna_sampler``) over categorical parameters; stops at the distinct-genome
    budget."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = oracle.table
    with warnings.catch_warnings():  # multivariate TPE is marked experimental
        warnings.simplefilter("ignore")
        sampler = optuna_sampler(kind, seed)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)
    stale = [0]

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        g = tuple(trial.suggest_categorical(name, list(range(len(cs)))) for name, cs in zip(table.names,
                                                                                            table.choices))
        before = oracle.count
        row = oracle(g)
        stale[0] = stale[0] + 1 if oracle.count == before else 0
        return float(row[0]), float(row[1]), float(row[2])

    def stop(study: optuna.Study, _: Any) -> None:
        if oracle.exhausted or stale[0] >= 200:
            study.stop()

    study.optimize(objective, n_trials=20 * oracle.budget, callbacks=[stop], catch=(BudgetSpent,))


def run_random(oracle: Oracle, seed: int) -> None:
    rng = np.random.default_rng(seed)
    genomes = list(oracle.table.rows)
    for i in rng.permutation(len(genomes)):
        oracle(genomes[i])


def run_greedy(oracle: Oracle, seed: int) -> None:
    """Sensitivity-greedy (AIMET auto-mixed-precision / HAWQ style), deterministic.

    Phase 1: probe every group at every lower choice (the rest fp): sensitivity = 1 - mean cosine.
    Phase 2: from all-fp, repeatedly take the single-group change of least added sensitivity per unit
    of cost saved (cost = w * normalised bytes + (1 - w) * normalised latency, summed from the
    probes) and evaluate it; stop when no change saves cost. One path per weight w (0.5, 1, 0, 0.75,
    0.25, ...: a van der Corput sweep) until the budget or new genomes run out.
    """
    del seed  # deterministic: every seed gives the same run
    table = oracle.table
    n = len(table.choices)
    base = oracle(tuple([0] * n))
    sens: dict[tuple[int, int], float] = {}
    delta: dict[tuple[int, int], np.ndarray] = {}
    for i, cs in enumerate(table.choices):
        for j in range(len(cs)):
            probe = _probe(table, i, j)
            row = oracle(probe)
            sens[i, j] = oracle.cosine_loss(probe)
            delta[i, j] = row - base
    lo, hi = table.bounds()
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    weights = [0.5, 1.0, 0.0] + [_van_der_corput(k) for k in range(1, 64)]
    for w in dict.fromkeys(weights):
        state = [0] * n
        while True:
            best: tuple[float, int, int] | None = None
            for i in range(n):
                for j in range(len(table.choices[i])):
                    d = delta[i, j] - delta[i, state[i]]
                    saved = -(w * d[1] / span[1] + (1 - w) * d[2] / span[2])
                    if saved <= 1e-12:
                        continue
                    score = (sens[i, j] - sens[i, state[i]]) / saved
                    if best is None or score < best[0]:
                        best = (score, i, j)
            if best is None:
                break
            state[best[1]] = best[2]
            oracle(tuple(state))


def _van_der_corput(k: int) -> float:
    out, denom = 0.0, 1.0
    while k:
        denom *= 2
        out += (k % 2) / denom
        k //= 2
    return out


RUNNERS: dict[str, Callable[[Oracle, int], None]] = {
    "qae": run_qae,
    "pymoo_nsga2": run_pymoo,
    "optuna_nsga2": run_optuna,
    "optuna_motpe": lambda oracle, seed: run_optuna(oracle, seed, "motpe"),
    "random": run_random,
    "greedy_sensitivity": run_greedy,
    # ablations of qae's seeding, reported beside the five methods (not part of the bars)
    "qae_no_sensitivity": lambda oracle, seed: run_qae(oracle, seed, probes=False),
    "qae_unseeded": lambda oracle, seed: run_qae(oracle, seed, probes=False, baselines=False),
}
ABLATIONS = ("qae_no_sensitivity", "qae_unseeded")


# -- the comparison ------------------------------------------------------------------------------------
def compare(table: Table, budgets: Sequence[int], seeds: Sequence[int],
            methods: Sequence[str] = METHODS) -> dict[str, Any]:
    """Run every method per seed up to max(budgets); hypervolume ratio of each budget's prefix."""
    true_front = table.true_front()
    true_hv = table.hv(true_front)
    front_set = {tuple(r) for r in true_front.tolist()}
    # The true-front points at the lowest first objective (the most accurate corner) and the
    # hypervolume only they hold: a run that never evaluates one of them cannot pass 1 - share.
    corner = true_front[:, 0] <= true_front[:, 0].min() + 1e-12
    share = 1.0 - table.hv(true_front[~corner]) / true_hv
    corner_vectors = {tuple(r) for r in true_front[corner].tolist()}
    key_genomes = [g for g, r in table.rows.items() if tuple(r.tolist()) in corner_vectors]
    top = max(budgets)
    runs: dict[str, dict[str, Any]] = {}
    for name in methods:
        per_budget: dict[int, list[float]] = {b: [] for b in budgets}
        per_call: dict[int, list[float]] = {b: [] for b in budgets}
        calls: list[int] = []
        used: list[int] = []
        found: list[int] = []
        key_found: list[bool] = []
        t0 = time.perf_counter()
        for seed in seeds:
            oracle = Oracle(table, top)
            try:
                RUNNERS[name](oracle, seed)
            except BudgetSpent:
                pass
            used.append(oracle.count)
            found.append(len(front_set & {tuple(table.rows[g].tolist()) for g in oracle.order}))
            key_found.append(any(g in oracle.seen for g in key_genomes))
            calls.append(oracle.calls)
            for b in budgets:
                pts = np.array([table.rows[g] for g in oracle.order[:b]])
                per_budget[b].append(table.hv(pts) / true_hv)
                # counting every proposal, repeats included (as n_trials does): fewer distinct genomes
                seen = oracle.distinct_after_call[min(b, len(oracle.distinct_after_call)) - 1]
                pts = np.array([table.rows[g] for g in oracle.order[:seen]])
                per_call[b].append(table.hv(pts) / true_hv)
        runs[name] = {
            "hv_ratio": {str(b): v for b, v in per_budget.items()},
            "median": {str(b): statistics.median(v) for b, v in per_budget.items()},
            "min": {str(b): min(v) for b, v in per_budget.items()},
            "max": {str(b): max(v) for b, v in per_budget.items()},
            "evaluations_used": used,
            "proposals_made": calls,
            "median_counting_every_proposal": {str(b): statistics.median(v) for b, v in per_call.items()},
            "true_front_vectors_found": found,
            "most_accurate_corner_found": key_found,
            "seconds": time.perf_counter() - t0,
        }
    return {"true_front_hv": true_hv, "true_front_size": len(true_front), "true_front_vectors": len(front_set),
            "most_accurate_corner": {"first_objective": float(true_front[:, 0].min()), "share": share,
                                     "points": int(corner.sum()), "genomes": [list(g) for g in key_genomes]},
            "runs": runs}


def cosine_variant(table: Table) -> Table:
    """The same table with 1 - mean cosine (fidelity to FP32) in place of the labelled accuracy loss."""
    cos = table.extra["mean_cosine"]
    rows = {g: np.array([1.0 - float(cos[g]), r[1], r[2]]) for g, r in table.rows.items()}
    return Table(table.choices, table.names, rows, table.extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="100,200,400")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="budgets 40,80 and 2 seeds (the stored table is reused)")
    ap.add_argument("--synthetic", action="store_true", help="a tiny made-up table instead of digits-vit (tests)")
    ap.add_argument("--fresh-table", action="store_true", help="re-evaluate the whole space")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = list(range(args.seeds))
    if args.quick:
        budgets, seeds = [40, 80], [0, 1]
    if args.synthetic:
        table = synthetic_table()
        budgets = [b for b in budgets if b < len(table.rows)] or [len(table.rows) // 4]
    else:
        table = build_table(common.RESULTS, fresh=args.fresh_table, workers=args.workers)
    t0 = time.perf_counter()
    result = compare(table, budgets, seeds, METHODS + ABLATIONS)
    fidelity = compare(cosine_variant(table), budgets, seeds, METHODS + ABLATIONS)
    lo, hi = table.bounds()
    body = {
        "benchmark": "search_quality",
        "workload": "synthetic" if args.synthetic else WORKLOAD,
        "profile": None if args.synthetic else PROFILE,
        "objectives": list(OBJECTIVES),
        "space": {"groups": table.names, "choices": [[list(c) for c in cs] for cs in table.choices],
                  "size": len(table.rows), "table": None if args.synthetic else TABLE_NAME,
                  "table_evaluation_seconds": table.extra.get("evaluation_seconds")},
        "normalisation": {"ideal": lo.tolist(), "nadir": hi.tolist(), "reference": 1.1},
        "budgets": budgets,
        "seeds": seeds,
        "pop_size": POP_SIZE,
        "median_hv_ratio": {str(b): {m: result["runs"][m]["median"][str(b)] for m in METHODS} for b in budgets},
        **result,
        # A second view on the same table and runs' settings: fidelity instead of labelled accuracy.
        "variant_cosine": {"objectives": ["1 - mean_cosine", "weight_bytes", "latency_ms"],
                           "median_hv_ratio": {str(b): {m: fidelity["runs"][m]["median"][str(b)] for m in METHODS}
                                               for b in budgets}, **fidelity},
        "seconds": time.perf_counter() - t0,
    }
    path = common.write_result("search_quality", body)
    print(f"search quality on {body['workload']} ({len(table.rows)} genomes, true front "
          f"{result['true_front_size']} points): median hypervolume ratio over {len(seeds)} seeds")
    print("  method              " + "".join(f"{b:>9d}" for b in budgets))
    for m in METHODS + ABLATIONS:
        print(f"  {m:20s}" + "".join(f"{result['runs'][m]['median'][str(b)]:9.4f}" for b in budgets))
    print("  with 1 - mean cosine in place of the accuracy loss:")
    for m in METHODS + ABLATIONS:
        print(f"  {m:20s}" + "".join(f"{fidelity['runs'][m]['median'][str(b)]:9.4f}" for b in budgets))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
