"""``qae search``: the evolution engine driven over a workload, one run per target profile.

For each target the engine (``search.Engine``) proposes genomes; qae builds and evaluates each on
the host (accuracy and exact bytes: ``computed``, cached across targets and runs), predicts its
latency, energy and memory from the target's profile (``predicted``), and tells the engine the
objective vector and the budget violations. Every told evaluation and the engine state that counts
it are written to the run archive in one transaction, so ``--resume`` continues a killed run and
reaches the same result as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.archive import Archive, Value
from harness.errors import InputError, QaeError
from harness.evalcache import EvalCache, settings_hash
from harness.genome import Bits, Gene, Genome, normalise
from harness.pipeline import Workload

OBJECTIVES = ("accuracy", "size", "latency", "energy", "memory")
DEFAULT_OBJECTIVES = ("accuracy", "size", "latency")
#: Objective -> (budget key in a profile, unit label)
UNITS = {"accuracy": "accuracy loss (fraction)", "size": "bytes", "latency": "ms", "energy": "mJ", "memory": "bytes"}
BUDGET_KEYS = {
    "latency": "latency_ms",
    "energy": "energy_j",
    "memory": "memory_bytes",
    "size": "size_bytes",
    "accuracy": "accuracy_loss",
}
#: The per-layer menu: (weight bits, activation bits). Emulated widths join with --emulated.
MENU: tuple[tuple[Any, Any], ...] = (
    ("fp", "fp"),
    (8, 8),
    (8, 16),
    (8, "dynamic"),
    (8, "fp"),
    (4, 8),
    (4, 16),
    (4, "fp"),
    (16, 16),
)
EMULATED_MENU: tuple[tuple[Any, Any], ...] = ((6, 8), (3, 8), (2, "fp"), (3, "fp"))
#: Uniform genomes every initial population holds: static int8, int4 weights, float, and dynamic int8
#: (ONNX Runtime's strongest simple baseline; FACTS.md).
BASELINES: dict[str, tuple[Bits, Bits]] = {
    "w8a8": (8, 8), "w4a8": (4, 8), "fp32": ("fp", "fp"), "w8-dynamic": (8, "dynamic"),
}
#: (scheme, granularity) of embedding tables where a baseline's tool differs from the run's:
#: quantize_dynamic builds per-tensor asymmetric tables.
BASELINE_TABLES: dict[str, tuple[str, str]] = {"w8-dynamic": ("asymmetric", "per_tensor")}
#: The baseline fallback genomes start from.
FALLBACK_BASE = "w8-dynamic"
#: From high to low precision: sensitivity-guided genomes lower the least sensitive layers first.
SENSITIVITY_LADDER = ((8, 8), (4, 8))
#: Fallback genomes: the dynamic baseline with this many of its most sensitive layers reading float
#: activations (a negative number is that fraction of the layers).
FALLBACK_COUNTS = (1, 2, -0.125)


@dataclass
class SearchConfig:
    model: str
    profiles: list[str]
    calib: str | None = None
    data: str | None = None
    method: str = "minmax"
    objectives: list[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    budgets: dict[str, float] = field(default_factory=dict)
    generations: int = 12
    population: int = 24
    seed: int = 0
    workers: int = 1
    emulated: bool = False
    scheme: str = "symmetric"
    granularity: str = "per_channel"
    devices: list[str] = field(default_factory=list)
    devices_file: str | None = None
    hil: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """From an archive's stored config (which also holds derived keys such as model_sha256)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def parse_budgets(items: Sequence[str]) -> dict[str, float]:
    """``latency=30`` (ms), ``energy=0.3`` (mJ), ``memory=50`` (MB), ``size=40`` (KB), ``accuracy=0.01``."""
    scale = {"latency": 1.0, "energy": 1e-3, "memory": 1e6, "size": 1e3, "accuracy": 1.0}
    out = {}
    for item in items:
        name, _, raw = item.partition("=")
        if name not in scale:
            raise InputError(f"--budget {item!r}: unknown objective {name!r}: use one of {', '.join(scale)}")
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"--budget {item!r} is not NAME=NUMBER, e.g. latency=30") from None
        if value <= 0:
            raise InputError(f"--budget {item!r}: a budget must be positive")
        out[BUDGET_KEYS[name]] = value * scale[name]
    return out


# -- evaluation on the host ---------------------------------------------------------------------
_WORK: Workload | None = None


def _worker_init(model: str, calib: str | None, data: str | None, method: str) -> None:
    global _WORK
    _WORK = Workload.open(model, calib=calib, eval_data=data, method=method)


def _evaluate_genome(genome_data: dict[str, Any]) -> dict[str, Any]:
    assert _WORK is not None
    try:
        genome = _WORK.genome(genome_data)
        result = _WORK.build(genome)
        report = _WORK.evaluate(result, threads=1)
    except QaeError as exc:
        return {"error_kind": "BUILD", "message": str(exc)}
    except Exception as exc:  # a candidate ORT cannot build or run is a record, not a crash
        return {"error_kind": "BUILD", "message": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return report.to_dict()


class HostEvaluator:
    """Accuracy and size of genomes on this host, through the cache and optional worker processes."""

    def __init__(self, work: Workload, cfg: SearchConfig) -> None:
        import onnxruntime

        self.work = work
        self.cache = EvalCache()
        assert work.eval_data is not None
        self.settings = settings_hash(
            {
                "calib": work.calib.sha256,
                "eval": work.eval_data.sha256,
                "method": cfg.method,
                "onnxruntime": onnxruntime.__version__,
                "threads": 1,
                "metric": getattr(work, "metric", "auto"),
            }
        )
        self.pool: ProcessPoolExecutor | None = None
        if cfg.workers > 1:
            self.pool = ProcessPoolExecutor(
                cfg.workers, initializer=_worker_init, initargs=(cfg.model, cfg.calib, cfg.data, cfg.method)
            )
        else:
            global _WORK
            _WORK = work

    def evaluate(self, genomes: list[Genome]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = []
        todo = []
        for i, genome in enumerate(genomes):
            hit = self.cache.get(self.work.model.sha256, genome.hash, self.settings)
            out.append(hit)
            if hit is None:
                todo.append(i)
        payload = [genomes[i].to_dict() for i in todo]
        results = (
            list(self.pool.map(_evaluate_genome, payload)) if self.pool else [_evaluate_genome(p) for p in payload]
        )
        for i, res in zip(todo, results):
            if "error_kind" not in res:
                self.cache.put(self.work.model.sha256, genomes[i].hash, self.settings, res)
            out[i] = res
        return [r for r in out if r is not None]

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()
        self.cache.close()


# -- targets ------------------------------------------------------------------------------------
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


def layer_choices(work: Workload, cfg: SearchConfig) -> list[list[Gene]]:
    """Per layer, the distinct genes the menu allows once normalised (a Gather has no activation)."""
    menu = MENU + (EMULATED_MENU if cfg.emulated else ())
    out = []
    for layer in work.model.layers:
        genes: list[Gene] = []
        gather = layer.op_type == "Gather"
        # An embedding table has one row per token: per-row scales cost 4 bytes a row, which on a
        # 30k-token vocabulary outweighs what they buy, so per-tensor is offered there too. Its values
        # are rarely centred on zero (MiniLM's words span -0.51..1.05) and only the gathered rows are
        # dequantized, so an asymmetric grid costs nothing at run time: it is offered as well.
        granularities = [cfg.granularity] + (["per_tensor"] if gather else [])
        schemes = [cfg.scheme] + (["asymmetric"] if gather else [])
        for granularity in dict.fromkeys(granularities):
            for scheme in dict.fromkeys(schemes):
                for w, a in menu:
                    gene = normalise(Gene(w, a, scheme, granularity), layer.op_type, layer.name)
                    if gene not in genes:
                        genes.append(gene)
        out.append(genes)
    return out


def layer_sensitivity(work: Workload, evaluator: HostEvaluator, cfg: SearchConfig) -> list[float]:
    """Per layer, 1 - mean cosine to FP32 with only that layer at w4a8 (HAWQ/AIMET-style probe).

    One host evaluation per layer, through the fitness cache; low means robust to lower precision.
    """
    probes = []
    for layer in work.model.layers:
        probes.append(
            Genome.from_dict(
                {
                    "default": {"weight_bits": "fp"},
                    "layers": {
                        layer.name: {
                            "weight_bits": 4,
                            "activation_bits": 8,
                            "scheme": cfg.scheme,
                            "granularity": cfg.granularity,
                        }
                    },
                },
                work.layer_ops,
            )
        )
    out = []
    for res in evaluator.evaluate(probes):
        cosine = res.get("mean_cosine")
        out.append(1.0 - float(cosine) if cosine is not None else 1.0)
    return out


def _bits(v: Any) -> float:
    named = {"fp": 32.0, "dynamic": 8.0}
    return named[v] if v in named else float(v)


def baseline_values(work: Workload, cfg: SearchConfig, sensitivity: Sequence[float] | None = None) -> list[Any]:
    """The seeded baselines as choice values (a ``PerLayer`` where ``BASELINE_TABLES`` gives embedding
    tables their own grid: ``w8-dynamic`` is then ONNX Runtime's ``quantize_dynamic`` as a user runs it).

    With ``sensitivity`` (one score per layer, high = sensitive), fallback genomes follow it: the
    ``FALLBACK_BASE`` baseline with its ``FALLBACK_COUNTS`` most sensitive layers reading float activations
    over their int8 weights (the same bytes; what accuracy-driven tuning does when it excludes
    nodes from activation quantization, one step of it per genome).
    """
    from search.space import PerLayer

    layers = work.model.layers
    out: list[Any] = []
    dynamic: list[tuple[Any, ...]] = []
    for name, (w, a) in BASELINES.items():
        value = (w, a, cfg.scheme, cfg.granularity)
        per_layer = [value] * len(layers)
        if name in BASELINE_TABLES:
            table = _gene_value(normalise(Gene(w, a, *BASELINE_TABLES[name]), "Gather", "embedding"))
            per_layer = [table if lay.op_type == "Gather" else value for lay in layers]
        out.append(PerLayer(tuple(per_layer)) if per_layer != [value] * len(layers) else value)
        if name == FALLBACK_BASE:
            dynamic = per_layer
    if sensitivity is None or not dynamic:
        return out
    # an embedding table reads indices: it has no activation to keep in float
    order = [i for i in sorted(range(len(layers)), key=lambda i: (-sensitivity[i], i)) if dynamic[i][1] != "fp"]
    counts = sorted({min(len(order), int(c) if c > 0 else math.ceil(-c * len(order))) for c in FALLBACK_COUNTS} - {0})
    for count in counts:
        values = list(dynamic)
        for i in order[:count]:
            w, _, scheme, granularity = dynamic[i]
            values[i] = _gene_value(normalise(Gene(w, "fp", scheme, granularity), layers[i].op_type, layers[i].name))
        out.append(PerLayer(tuple(values)))
    return out


def choice_distance(a: Any, b: Any) -> float:
    """How far two genes are apart, so a uniform baseline maps a layer lacking it to its nearest gene
    (an embedding Gather has no activation choice: w8a8 there means 8-bit weights, float output)."""
    w = abs(np.log2(_bits(a[0])) - np.log2(_bits(b[0])))
    act = abs(np.log2(_bits(a[1])) - np.log2(_bits(b[1]))) + (
        0.0 if (a[1] == "dynamic") == (b[1] == "dynamic") else 0.5
    )
    return float(2 * w + act + (a[2] != b[2]) + (a[3] != b[3]))


def _gene_value(gene: Gene) -> tuple[Any, ...]:
    return (gene.weight_bits, gene.activation_bits, gene.scheme, gene.granularity)


def host_values(host: dict[str, Any]) -> dict[str, Value]:
    """Accuracy and size of a built candidate, computed on this host."""
    emulated = bool(host.get("emulated"))
    computed = {"on": "host", "runtime": "onnxruntime", "n": host["n"], "metric": host["metric"], "emulated": emulated}
    values = {
        "accuracy": Value(float(host["accuracy"]), "computed", computed),
        "size": Value(float(host["weight_bytes"]), "computed", {**computed, "unit": "bytes", "nominal": True}),
    }
    if host.get("mean_cosine") is not None:
        values["mean_cosine"] = Value(float(host["mean_cosine"]), "computed", computed)
    return values


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
    return {
        "latency": Value(pred.latency_ms, "predicted", {**detail, "unit": "ms"}),
        "energy": Value(pred.energy_j * 1e3, "predicted", {**detail, "unit": "mJ"}),
        "memory": Value(pred.memory_bytes, "predicted", {**detail, "unit": "bytes"}),
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


# -- the run --------------------------------------------------------------------------------------
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


def device_targets(
    cfg: SearchConfig, work: Workload, archive: Archive, out: Path, say: Callable[[str], None]
) -> list[Any]:
    """Group the --device devices by hardware profile; each group is one measured target."""
    from harness.devices import DeviceConfig, get_device
    from harness.hil import DeviceTarget, HilSettings
    from profiles import load_profile

    groups: dict[str, list[DeviceConfig]] = {}
    for name in cfg.devices:
        device = get_device(name, cfg.devices_file)
        profile_name = device.profile or ("host-cpu" if device.transport == "local" else None)
        if profile_name is None:
            raise InputError(
                f"device {name} has no profile: set `profile:` for it in devices.yaml "
                "(`qae profiles list` shows the profiles)"
            )
        groups.setdefault(profile_name, []).append(device)
    targets = []
    for profile_name, devices in groups.items():
        profile = load_profile(profile_name)
        targets.append(
            DeviceTarget(
                "+".join(d.name for d in devices),
                devices,
                profile,
                work,
                archive,
                out,
                {**profile.budgets, **cfg.budgets},
                HilSettings(**cfg.hil),
                say,
            )
        )
    return targets


def run_search(
    cfg: SearchConfig,
    out: Path,
    resume: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    say: Callable[[str], None] = print,
) -> Archive:
    """Run (or resume) the search for every target profile and device group; returns the archive."""
    from harness.search_driver import Driver
    from search import Engine, EngineConfig, Record, SearchError, SearchSpace

    for name in cfg.objectives:
        if name not in OBJECTIVES:
            raise InputError(f"unknown objective {name!r}: use any of {', '.join(OBJECTIVES)}")
    if "accuracy" not in cfg.objectives:
        raise InputError("the objectives must include accuracy: qae trades accuracy against cost")
    work = Workload.open(cfg.model, calib=cfg.calib, eval_data=cfg.data, method=cfg.method)
    if work.eval_data is None:
        raise InputError("--data is required for a model that is not a builtin: give an evaluation .npz")
    targets: list[Any] = [Target.open(name, work, cfg.budgets) for name in cfg.profiles]
    archive = Archive(out / "archive.sqlite")
    if not resume:
        archive.start({**cfg.to_dict(), "model_sha256": work.model.sha256, "layers": work.model.layer_names})
    targets += device_targets(cfg, work, archive, out, say)
    evaluator = HostEvaluator(work, cfg)
    fp32 = work.evaluate(None).accuracy
    choices = layer_choices(work, cfg)
    names = [layer.name for layer in work.model.layers]
    space = SearchSpace(names, [[_gene_value(g) for g in genes] for genes in choices], distance=choice_distance)
    sensitivity = layer_sensitivity(work, evaluator, cfg)
    started = time.time()
    try:
        for target in targets:
            baselines = baseline_values(work, cfg, sensitivity)
            engine_cfg = EngineConfig(
                n_objectives=len(cfg.objectives),
                n_constraints=len(violations({k: 0.0 for k in BUDGET_KEYS}, target.budgets)),
                objective_names=tuple(cfg.objectives),
                pop_size=cfg.population,
                max_generations=cfg.generations,
                seed=cfg.seed,
                baselines=tuple(baselines),
                sensitivity=tuple(sensitivity),
                sensitivity_ladder=tuple((*v, cfg.scheme, cfg.granularity) for v in SENSITIVITY_LADDER),
            )
            state = archive.engine_state(target.name)
            try:
                if state:
                    records = [Record.from_dict(r) for r in archive.engine_records(target.name)]
                    engine = Engine.from_state(space, engine_cfg, state, records=records)
                else:
                    engine = Engine(space, engine_cfg)
            except SearchError as exc:
                raise InputError(f"cannot resume the run in {out} ({exc}): start a new run with --out") from None
            Driver(engine, space, work, evaluator, target, cfg, fp32, archive, started, on_progress).run()
        archive.set_status("finished")
    finally:
        evaluator.close()
        for target in targets:
            if hasattr(target, "close"):
                target.close()
    return archive


def _state(engine: Any, genome: Any) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """The lean engine state (completed records live in the archive) and this genome's record."""
    record = next(r for r in reversed(engine.records()) if r.genome == genome)
    return engine.state_dict(include_records=False), engine.generation, record.to_dict()


def _layers_dict(decoded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: {"weight_bits": v[0], "activation_bits": v[1], "scheme": v[2], "granularity": v[3]}
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


def _best(archive: Archive, target: str) -> dict[str, float]:
    cands = [c for c in archive.candidates(target) if c.values and c.feasible is not False]
    if not cands:
        return {}
    return {
        "accuracy": max(c.values["accuracy"].value for c in cands),
        "size": min(c.values["size"].value for c in cands),
        "latency": min(c.values["latency"].value for c in cands),
    }


def default_out(model: str) -> Path:
    stem = model.replace("builtin:", "").replace(os.sep, "_").rsplit(".", 1)[0]
    return Path("results") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
