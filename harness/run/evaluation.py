"""Evaluating candidates for the engine: accuracy and size on the host (through the fitness cache
and optional worker processes), predicted costs from a target's cost table, the objective vector and
budget violations the engine is told, and the archive-derived summaries the progress line shows."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from harness.core.errors import QaeError
from harness.core.genome import Genome
from harness.quant.evalcache import EvalCache, settings_hash
from harness.quant.exact import u8s8_saturates
from harness.quant.quantize import build_kinds, build_version
from harness.quant.workload import Workload
from harness.run.archive import Archive, Value
from harness.run.config import BUDGET_KEYS, OBJECTIVES, SearchConfig, metric_unit

# -- evaluation on the host ---------------------------------------------------------------------
_WORK: Workload | None = None


def open_workload(cfg: SearchConfig) -> Workload:
    """The workload a search config describes: the same model, data, shapes and data options in the
    search, its worker processes, a resumed run and ``qae export``."""
    from harness.quant.data import DataOptions
    from harness.quant.litert_workload import open_workload as open_any

    options = DataOptions.from_dict(cfg.data_options) if cfg.data_options else None
    return open_any(
        cfg.model,
        cfg.runtime,
        calib=cfg.calib,
        eval_data=cfg.data,
        method=cfg.method,
        input_shapes=dict(cfg.input_shapes) or None,
        metric=options.metric if options is not None else "auto",
        options=options,
        test_data=cfg.test,
        holdout=cfg.holdout,
    )


def die_with_parent(parent: int) -> None:
    """A worker exits as soon as its parent is gone (kill -9, crash), instead of living on orphaned.

    Linux's PR_SET_PDEATHSIG is not used: it fires when the *thread* that forked the worker exits,
    and the executor may fork from a helper thread. A daemon thread polling getppid() is portable:
    an orphan is re-parented (to init or a subreaper), so its parent PID changes."""
    import os
    import signal
    import threading

    # Forked workers inherit the CLI's SIGTERM handler; a worker told to stop just stops.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="qae-parent-watchdog", daemon=True).start()


def worker_init(config: dict[str, Any] | str, calib: str | None = None, data: str | None = None,
                method: str = "minmax", parent: int | None = None) -> None:
    """Each worker process opens the workload the parent did, from the config (see ``open_workload``).

    A model spec with ``calib``, ``data`` and ``method`` (the older form) opens it with the defaults."""
    global _WORK
    if parent is not None:
        die_with_parent(parent)
    if isinstance(config, str):
        config = {"model": config, "profiles": [], "calib": calib, "data": data, "method": method}
    _WORK = open_workload(SearchConfig.from_dict(config))


def evaluate_genome(genome_data: dict[str, Any]) -> dict[str, Any]:
    """One candidate on this process's workload (``worker_init``, or the search's own)."""
    assert _WORK is not None
    return evaluate_on(_WORK, genome_data)


def evaluate_on(work: Workload, genome_data: dict[str, Any]) -> dict[str, Any]:
    """Build and score one genome on ``work``: its evaluation report, or an error record (a candidate
    that cannot be built or run is a record, never a crash). What every runner (this process, worker
    processes, a cluster's workers) calls, so they all compute the same thing."""
    try:
        genome = work.genome(genome_data)
        result = work.build(genome)
        report = work.evaluate(result, threads=1)
    except QaeError as exc:
        return {"error_kind": "BUILD", "message": str(exc)}
    except Exception as exc:  # a candidate ORT cannot build or run is a record, not a crash
        return {"error_kind": "BUILD", "message": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return report.to_dict()


def eval_settings(work: Workload, cfg: SearchConfig, split: str) -> str:
    """The fitness cache's settings hash: everything besides the model and genome that a score
    depends on, for the ``validation`` split (the search) or the ``test`` split (with statistics)."""
    import onnxruntime

    data = work.eval_data if split == "validation" else work.test_data
    assert data is not None
    settings = {
        "calib": work.calib.sha256,
        "eval": data.sha256,
        "method": cfg.method,
        "onnxruntime": onnxruntime.__version__,
        "threads": 1,
        "metric": getattr(work, "metric", "auto"),
        # what the data options and shapes change is what is scored: a different cache entry
        "options": cfg.data_options,
        "shapes": work.model.shapes_used,
        "build": build_version(build_kinds(work.model)),
    }
    if u8s8_saturates():  # scores here were u8s8-saturated before the exact rewrite: other entries
        settings["int8"] = "exact-u8u8"
    if getattr(work, "runtime", "onnxruntime") == "litert":  # another backend: other numbers, other entries
        from harness.quant.litert_model import litert_version

        settings.update(runtime="litert", litert=litert_version(), onnxruntime=None, build=None)
    if split != "validation":  # a validation entry keeps the key it always had
        settings.update(split=split, stats=True)
    return settings_hash(settings)


class Runner(Protocol):
    """Where uncached candidates are built and scored, besides this process and its worker processes
    (``harness.run.cluster.ClusterRunner``: the tasks of a Dask cluster).

    ``map`` yields one result per payload (a genome's ``to_dict()``), in the payloads' order, each
    ``evaluate_on``'s return value; it may raise a ``QaeError`` when it cannot go on (its workers are
    gone), and the caller's run stays resumable. ``close(abort)`` ends its tasks (now, with ``abort``)
    and its connection. Used from the search's thread only."""

    def map(self, payloads: list[dict[str, Any]]) -> Iterator[dict[str, Any]]: ...

    def close(self, abort: bool = False) -> None: ...


class HostEvaluator:
    """Accuracy and size of genomes on this host, through the cache and optional worker processes
    (or a ``runner``: a cluster's workers). The cache is only written here, by the search's process."""

    def __init__(self, work: Workload, cfg: SearchConfig, runner: Runner | None = None) -> None:
        self.work = work
        self.cache = EvalCache()
        self.settings = eval_settings(work, cfg, "validation")
        self.pool: ProcessPoolExecutor | None = None
        self.runner = runner
        if runner is None and cfg.workers > 1:
            self.pool = ProcessPoolExecutor(
                cfg.workers, initializer=worker_init, initargs=(cfg.to_dict(), None, None, "minmax", os.getpid())
            )
        elif runner is None:
            global _WORK
            _WORK = work

    def evaluate(self, genomes: list[Genome]) -> list[dict[str, Any]]:
        return list(self.evaluate_iter(genomes))

    def evaluate_iter(self, genomes: list[Genome]) -> Iterator[dict[str, Any]]:
        """Each genome's result in order, as soon as it and those before it are done (cache hits at
        once), so a caller can record a candidate while the rest of its batch is evaluated."""
        hits = [self.cache.get(self.work.model.sha256, g.hash, self.settings) for g in genomes]
        payload = [g.to_dict() for g, hit in zip(genomes, hits) if hit is None]
        if self.runner is not None:
            results = self.runner.map(payload)
        else:
            results = self.pool.map(evaluate_genome, payload) if self.pool else map(evaluate_genome, payload)
        for genome, hit in zip(genomes, hits):
            if hit is not None:
                yield hit
                continue
            res = next(results)
            if "error_kind" not in res:
                self.cache.put(self.work.model.sha256, genome.hash, self.settings, res)
            yield res

    def close(self, abort: bool = False) -> None:
        """``abort`` (an interrupt or a crash): stop the workers now instead of letting their tasks finish."""
        if self.runner is not None:
            self.runner.close(abort)
        if self.pool:
            if abort:
                # The executor has no public way to stop running workers; its process table is read
                # only to terminate them (they would exit by themselves once this process is gone).
                processes = list((getattr(self.pool, "_processes", None) or {}).values())
                self.pool.shutdown(wait=False, cancel_futures=True)
                for proc in processes:
                    proc.terminate()
                for proc in processes:
                    proc.join(timeout=5)
            else:
                self.pool.shutdown()
        self.cache.close()


@dataclass
class Target:
    name: str
    profile: Any
    table: Any
    budgets: dict[str, float]

    @classmethod
    def open(cls, name: str, work: Workload, user_budgets: dict[str, float]) -> Target:
        from profiles import load_profile
        from profiles.costmodel import CostTable, GraphStats

        profile = load_profile(name)
        budgets = {**profile.budgets, **user_budgets}
        return cls(profile.name, profile, CostTable(work.model.layers, profile, GraphStats.of(work.model)), budgets)


def host_values(host: dict[str, Any], runtime: str = "onnxruntime") -> dict[str, Value]:
    """Accuracy and size of a built candidate, computed on this host.

    Only the accuracy carries the evaluation's metric (its name and unit); the size is bytes, and
    the mean cosine and SQNR, kept beside it, are labelled as what they are."""
    emulated = bool(host.get("emulated"))
    computed = {"on": "host", "runtime": runtime, "n": host["n"], "emulated": emulated, "split": "validation"}
    metric = str(host["metric"])
    values = {
        "accuracy": Value(float(host["accuracy"]), "computed", {**computed, "metric": metric,
                                                                "unit": metric_unit(metric)}),
        "size": Value(float(host["weight_bytes"]), "computed", {**computed, "unit": "bytes", "nominal": True}),
    }
    if host.get("mean_cosine") is not None:
        values["mean_cosine"] = Value(float(host["mean_cosine"]), "computed",
                                      {**computed, "metric": "mean_cosine", "unit": "fraction"})
    sqnr = host.get("sqnr_db")
    if sqnr is not None and np.isfinite(sqnr) and not metric.startswith("sqnr"):
        values["sqnr"] = Value(float(sqnr), "computed", {**computed, "metric": "sqnr", "unit": "dB"})
    return values


def latency_statistic_of(table: Any) -> str | None:
    """The latency statistic a cost table predicts: its own ``statistic`` (an online fit's), else its
    profile's calibration (``Profile.latency_statistic``); None for a profile from public figures."""
    own = getattr(table, "statistic", None)
    if own:
        return str(own)
    profile = getattr(table, "profile", None)
    return getattr(profile, "latency_statistic", None)


def prediction_values(genome: Genome, table: Any, fit_n: int = 0) -> dict[str, Value]:
    """Latency, energy and memory predicted by ``table`` (a cost table, possibly re-fitted online)."""
    pred = table.predict(genome)
    detail = {
        "profile": pred.profile,
        "calibration_id": pred.calibration_id,
        "expected_error": pred.uncertainty,
        "emulated": genome.emulated,
        "fit_n": fit_n,
    }
    other = pred.energy_memory_uncertainty
    statistic = latency_statistic_of(table)  # which latency the profile predicts, where its calibration says
    return {
        "latency": Value(pred.latency_ms, "predicted",
                         {**detail, "unit": "ms", **({"statistic": statistic} if statistic else {})}),
        # a calibration fits latency only: energy and memory keep the error of what was not calibrated
        "energy": Value(pred.energy_j * 1e3, "predicted", {**detail, "unit": "mJ", "expected_error": other}),
        "memory": Value(pred.memory_bytes, "predicted", {**detail, "unit": "bytes", "expected_error": other}),
    }


def raw_objectives(values: dict[str, Value], fp32_accuracy: float) -> dict[str, float]:
    """Objective numbers in engine units (all minimised) from the current values of a candidate."""
    raw = {name: float(values[name].value) for name in OBJECTIVES if name in values}
    raw["accuracy"] = fp32_accuracy - float(values["accuracy"].value)
    return raw


def evaluation_of(
    values: dict[str, Value], fp32_accuracy: float, objectives: Sequence[str], budgets: dict[str, float]
) -> tuple[Any, float]:
    """(the engine's Evaluation, total budget violation) for a candidate's current values."""
    from search import Evaluation

    raw = raw_objectives(values, fp32_accuracy)
    viol = violations(raw, budgets)
    return Evaluation.ok([raw[o] for o in objectives], viol), float(sum(max(v, 0.0) for v in viol))


def violations(raw: dict[str, float], budgets: dict[str, float]) -> list[float]:
    """value/budget - 1 per budget (<= 0 is feasible), in a fixed order."""
    out = []
    for name, key in BUDGET_KEYS.items():
        if key in budgets:
            value = raw[name] if name != "energy" else raw[name] / 1e3
            out.append(value / budgets[key] - 1.0)
    return out


@dataclass
class Progress:
    target: str
    generation: int
    generations: int
    evaluations: int
    hypervolume: float
    hit_rate: float
    best: dict[str, float]
    elapsed_s: float
    measured: int | None = None
    #: the accuracy metric (its unit decides how ``best["accuracy"]`` reads: a fraction, or dB)
    metric: str = ""


def engine_state(engine: Any, genome: Any) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """The lean engine state (completed records live in the archive) and this genome's record."""
    record = next(r for r in reversed(engine.records()) if r.genome == genome)
    return engine.state_dict(include_records=False), engine.generation, record.to_dict()


def layers_dict(decoded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Search-space values (``harness.run.seeds.gene_value``) back to genome-file genes: four base
    fields, then any ``(field, value)`` pairs (issue 15's fields, present only when not default)."""
    return {
        name: {"weight_bits": v[0], "activation_bits": v[1], "scheme": v[2], "granularity": v[3],
               **{str(k): x for k, x in v[4:]}}
        for name, v in decoded.items()
    }


def objective_matrix(
    archive: Archive, target: str, objectives: Sequence[str], fp32: float, feasible_only: bool = True
) -> tuple[np.ndarray, list[Any]]:
    rows, cands = [], []
    for cand in archive.candidates(target):
        if not cand.values or (feasible_only and cand.feasible is False):
            continue
        raw = {o: cand.values[o].value for o in OBJECTIVES if o in cand.values}
        raw["accuracy"] = fp32 - raw["accuracy"]
        rows.append([raw[o] for o in objectives])
        cands.append(cand)
    return np.array(rows, dtype=float).reshape(-1, len(objectives)), cands


def front_hypervolume(archive: Archive, target: str, objectives: Sequence[str], fp32: float) -> float:
    """Hypervolume of the feasible points, normalised by the first generation's bounds (fixed per run)."""
    from search.metrics import hypervolume

    pts, cands = objective_matrix(archive, target, objectives, fp32)
    if not len(pts):
        return 0.0
    first = np.array([p for p, c in zip(pts, cands) if c.generation == 1]) if cands else pts
    if not len(first):
        first = pts
    lo, hi = first.min(axis=0), first.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    norm = (pts - lo) / (hi - lo)
    return float(hypervolume(norm, np.ones(len(objectives))))


def best_values(archive: Archive, target: str) -> dict[str, float]:
    cands = [c for c in archive.candidates(target) if c.values and c.feasible is not False]
    if not cands:
        return {}
    return {
        "accuracy": max(c.values["accuracy"].value for c in cands),
        "size": min(c.values["size"].value for c in cands),
        "latency": min(c.values["latency"].value for c in cands),
    }


