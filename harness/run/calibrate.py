"""``qae calibrate``: measure a micro-benchmark suite on a device and fit a profile to it.

Phases: (1) the suite: single-layer MatMul models over a spread of shapes and precisions, single
MatMulNBits / GatherBlockQuantized kernels at M = 1 and M = 64 (``kernel_items``: built directly
with onnx.helper, so that the fit learns the profile's ``kernels:`` rates), plus whole candidate
models of digits-vit and of a larger transformer (``profiles.microbench``), each with a role,
``fit`` or ``heldout``; (2) each model is built with qae's own quantizer and measured through
the device's transport (``harness.devices.transport``); (3) the profile is fitted on the micro-benchmarks
and the ``fit`` candidates (``profiles.fit``) and judged on the held-out candidates; (4) the
calibrated profile is written with its data summary and held-out error.

Resumable: every measurement is appended, as one JSON line, to ``OUTPUT.measurements.jsonl`` the
moment it arrives (flushed and fsynced; a torn last line is ignored). A re-run with the same output
and settings reuses every measurement whose key (item, model hash, settings, device) matches.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.core.errors import InputError
from profiles.costmodel import ExecClass, GraphStats, precision_tokens
from profiles.fit import Sample, errors, fit
from profiles.microbench import (
    GatherShape,
    KernelShape,
    LayerShape,
    kernel_model,
    save_with_calib,
    single_gather,
    single_layer,
    transformer,
)
from profiles.schema import Profile, load_profile, parse

MAX_MODELS = 100

#: (weight_bits, activation_bits, weight) of a candidate layer: what a search proposes, int4 included.
CANDIDATE_GENES: list[tuple[Any, Any, float]] = [
    (8, 8, 0.30), (8, "dynamic", 0.14), ("fp", "fp", 0.14), (4, 8, 0.07), (8, "fp", 0.08),
    (4, "fp", 0.06), (6, 6, 0.07), (16, 16, 0.04), (8, 16, 0.05), (5, 8, 0.05),
]
MICRO_GENES = {
    "fp": {"weight_bits": "fp", "activation_bits": "fp"},
    "w8a8": {"weight_bits": 8, "activation_bits": 8},
    "w8dyn": {"weight_bits": 8, "activation_bits": "dynamic"},
    "w4a8": {"weight_bits": 4, "activation_bits": 8},
    "w16a16": {"weight_bits": 16, "activation_bits": 16},
    "w8fp": {"weight_bits": 8, "activation_bits": "fp"},
    "w4fp": {"weight_bits": 4, "activation_bits": "fp"},
    "w8a16": {"weight_bits": 8, "activation_bits": 16},
    "w4a8t": {"weight_bits": 4, "activation_bits": 8, "granularity": "per_tensor"},
    "w16a16t": {"weight_bits": 16, "activation_bits": 16, "granularity": "per_tensor"},
}
#: Embedding-Gather genes: fp32, and int8 per-tensor (qae's per-row int8 Gather build fails in ORT
#: 1.32: a QuantizeLinear on the Gather's output gets the table's per-row scales)
GATHER_GENES = {
    "fp": {"weight_bits": "fp", "activation_bits": "fp"},
    "w8t": {"weight_bits": 8, "activation_bits": "fp", "granularity": "per_tensor"},
}


#: The block-quantized kernels the full suite measures, as (kernel, bits, block, accuracy_level,
#: [(K, N), ...]), each at M = 1 and M = 64: MiniLM's projection shapes and its 30522 x 384 word table.
KERNEL_PLAN: list[tuple[str, int, int, int, list[tuple[int, int]]]] = [
    ("matmulnbits", 4, 32, 0, [(384, 384), (384, 1536)]),
    ("matmulnbits", 4, 128, 0, [(1536, 384)]),
    ("matmulnbits", 4, 32, 4, [(384, 384), (1536, 384)]),
    ("matmulnbits", 4, 128, 4, [(384, 1536)]),
    ("matmulnbits", 8, 32, 0, [(384, 384)]),
    ("matmulnbits", 8, 128, 0, [(384, 384)]),
    ("matmulnbits", 8, 32, 4, [(384, 384)]),
    ("matmulnbits", 8, 128, 4, [(1536, 384)]),
    ("matmulnbits", 2, 32, 0, [(384, 384)]),
    ("matmulnbits", 2, 32, 4, [(384, 384)]),
    ("matmulnbits", 2, 128, 4, [(384, 384)]),
    ("gather_block", 4, 32, 0, [(30522, 384)]),
    ("gather_block", 4, 128, 0, [(30522, 384)]),
    ("gather_block", 8, 32, 0, [(30522, 384)]),
    ("gather_block", 8, 128, 0, [(30522, 384)]),
]
KERNEL_ROWS = (1, 64)


@dataclass(frozen=True)
class Item:
    """One model to measure. ``workload`` is ``micro:TAG``, ``kernel:TAG`` (a single block-quantized
    kernel; ``genome`` then holds its ``KernelShape`` fields), ``builtin:NAME`` or ``transformer``."""

    id: str
    workload: str
    genome: dict[str, Any]
    role: str


@dataclass
class Suite:
    items: list[Item]
    larger: dict[str, int] = field(default_factory=lambda: {"dim": 384, "tokens": 16, "blocks": 2})
    micro_shapes: dict[str, LayerShape] = field(default_factory=dict)
    #: ``gather:TAG`` workloads: a float embedding Gather the quantizer builds (fp32 / QDQ int8)
    gather_shapes: dict[str, GatherShape] = field(default_factory=dict)


def kernel_items(plan: list[tuple[str, int, int, int, list[tuple[int, int]]]] | None = None,
                 rows: tuple[int, ...] = KERNEL_ROWS) -> list[Item]:
    """One ``fit`` item per kernel variant, shape and M (see ``KERNEL_PLAN``)."""
    out = []
    for kernel, bits, block, acc, shapes in KERNEL_PLAN if plan is None else plan:
        for k, n in shapes:
            for m in rows:
                shape = KernelShape(kernel, m, k, n, bits, block, acc)
                out.append(Item(f"kernel-{shape.tag}", f"kernel:{shape.tag}", asdict(shape), "fit"))
    return out


def kernel_layer(shape: KernelShape) -> Any:
    """The layer a kernel model is costed as: the MatMul or embedding Gather it replaces."""
    from harness.core.model import LayerSpec

    if shape.kernel == "gather_block":
        return LayerSpec("layer", "/layer/Gather", "Gather", "w", (shape.k, shape.n), shape.k * shape.n, 0, None,
                         "y", 0, input_elements=shape.m, output_elements=shape.m * shape.n)
    return LayerSpec("layer", "/layer/MatMul", "MatMul", "w", (shape.k, shape.n), shape.k * shape.n,
                     shape.m * shape.k * shape.n, "x", "y", 1, input_elements=shape.m * shape.k,
                     output_elements=shape.m * shape.n)


def kernel_class(shape: KernelShape) -> ExecClass:
    return ExecClass(f"int{shape.bits}", "fp32", "block", shape.kernel, shape.block, shape.accuracy, False)


@dataclass(frozen=True)
class KernelGenome:
    """Stands in for a genome in the measurement records of a kernel item."""

    hash: str


def default_suite(quick: bool = False, seed: int = 0) -> Suite:
    """90 models (17 micro at 16 tokens, 12 more at M = 1 and 64, 4 embedding Gathers, 34
    block-quantized kernels, 11 + 12 whole candidates with 6 + 7 held out); ``quick`` is 7 tiny ones."""
    if quick:
        shapes = {"A": LayerShape(8, 64, 64)}
        micro = [("A", "fp"), ("A", "w8a8"), ("A", "w4a8")]
        larger = {"dim": 64, "tokens": 8, "blocks": 1}
        per_model, fit_mixed, names = 2, 0, ["builtin:digits-vit", "transformer"]
    else:
        # Every execution path at two sizes (one under and one over a 1 MB cache), per-tensor
        # dequantization, and a tiny shape for the float and int8 kernels.
        shapes = {"A": LayerShape(16, 384, 384), "B": LayerShape(16, 384, 1536),
                  "C": LayerShape(64, 512, 512), "D": LayerShape(16, 32, 128)}
        micro = [("A", g) for g in ("fp", "w8a8", "w8dyn", "w4a8", "w16a16", "w8a16", "w4fp")] + [
            ("B", g) for g in ("fp", "w8a8", "w8dyn", "w4a8", "w16a16", "w8a16")] + [
            ("B", "w4a8t"), ("B", "w16a16t"), ("D", "fp"), ("D", "w8a8")]
        larger = {"dim": 384, "tokens": 16, "blocks": 2}
        per_model, fit_mixed, names = 0, 2, ["builtin:digits-vit", "transformer"]
    items = [Item(f"micro-{shapes[s].tag}-{g}", f"micro:{shapes[s].tag}", {"default": MICRO_GENES[g]}, "fit")
             for s, g in micro]
    gathers: dict[str, GatherShape] = {}
    if not quick:
        # fp32 and int8 (dynamic, QDQ) at the kernels' M = 1 and M = 64, and MiniLM-sized embedding
        # Gathers (fp32, int8 QDQ per-tensor) beside GatherBlockQuantized
        for m in KERNEL_ROWS:
            for k, n in ((384, 384), (1536, 384)):
                shape = LayerShape(m, k, n)
                shapes[f"M{m}x{k}"] = shape
                items += [Item(f"micro-{shape.tag}-{g}", f"micro:{shape.tag}", {"default": MICRO_GENES[g]}, "fit")
                          for g in ("fp", "w8dyn", "w8a8")]
            gshape = GatherShape(m, 30522, 384)
            gathers[gshape.tag] = gshape
            items += [Item(f"micro-{gshape.tag}-{g}", f"gather:{gshape.tag}", {"default": GATHER_GENES[g]}, "fit")
                      for g in GATHER_GENES]
        items += kernel_items()
    rng = np.random.default_rng(seed)
    uniforms = ["fp", "w8a8", "w8dyn"]
    counts = {"builtin:digits-vit": 11, "transformer": 12} if not quick else {n: per_model for n in names}
    for name in names:
        short = name.split(":")[-1]
        for i in range(counts[name]):
            if i < min(len(uniforms), counts[name] - 1):
                items.append(Item(f"{short}-{uniforms[i]}", name, {"default": MICRO_GENES[uniforms[i]]}, "fit"))
                continue
            role = "fit" if i < len(uniforms) + fit_mixed else "heldout"
            items.append(Item(f"{short}-mix{i:02d}", name, {"mix_seed": int(rng.integers(1 << 30))}, role))
    return Suite(items, larger, {s.tag: s for s in shapes.values()}, gathers)


def mixed_genome(layer_names: list[str], seed: int) -> dict[str, Any]:
    """A candidate as a search would propose one: a per-layer draw from ``CANDIDATE_GENES``."""
    rng = np.random.default_rng(seed)
    probs = np.array([w for *_, w in CANDIDATE_GENES])
    layers = {}
    for name in layer_names:
        wb, ab, _ = CANDIDATE_GENES[int(rng.choice(len(CANDIDATE_GENES), p=probs / probs.sum()))]
        gene: dict[str, Any] = {"weight_bits": wb, "activation_bits": ab}
        if rng.random() < 0.3:
            gene["scheme"] = "asymmetric"
        if rng.random() < 0.2:
            gene["granularity"] = "per_tensor"
        layers[name] = gene
    return {"default": MICRO_GENES["w8a8"], "layers": layers}


# -- the measurement store ------------------------------------------------------------------------
class Store:
    """Append-only JSON lines of measurements; the last record for a key wins. One writer at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by an interrupted write
                self.records[rec["key"]] = rec

    def get(self, key: str) -> dict[str, Any] | None:
        rec = self.records.get(key)
        return rec if rec is not None and rec.get("ok") else None

    def append(self, rec: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[rec["key"]] = rec


# -- building the models --------------------------------------------------------------------------
class Builder:
    """Builds each item's quantized model under ``work``; float models and workloads are made once."""

    def __init__(self, suite: Suite, work: Path) -> None:
        self.suite, self.work = suite, work
        self._workloads: dict[str, Any] = {}
        self._kernels: dict[str, bytes] = {}

    def workload(self, name: str) -> Any:
        from harness.quant.workload import Workload

        if name not in self._workloads:
            if name.startswith("builtin:"):
                self._workloads[name] = Workload.open(name)
            else:
                if name == "transformer":
                    proto, stem = transformer(**self.suite.larger), "transformer-{dim}x{tokens}x{blocks}".format(
                        **self.suite.larger)
                elif name.startswith("gather:"):
                    gshape = self.suite.gather_shapes[name.split(":", 1)[1]]
                    proto = single_gather(gshape)
                    stem = f"{gshape.tag}-{hashlib.sha256(proto.SerializeToString()).hexdigest()[:8]}"
                    # ids 0/1 as a device feeds them; the model spreads them over the table
                    onnx_path, calib = save_with_calib(proto, self.work / "float", stem, ids_below=2)
                    self._workloads[name] = Workload.open(onnx_path, calib=calib)
                    return self._workloads[name]
                else:
                    tag = name.split(":", 1)[1]
                    proto, stem = single_layer(self.suite.micro_shapes[tag]), tag
                onnx_path, calib = save_with_calib(proto, self.work / "float", stem)
                self._workloads[name] = Workload.open(onnx_path, calib=calib)
        return self._workloads[name]

    def kernel_bytes(self, item: Item) -> bytes:
        if item.id not in self._kernels:
            self._kernels[item.id] = kernel_model(KernelShape(**item.genome)).SerializeToString()
        return self._kernels[item.id]

    def genome(self, item: Item) -> Any:
        if item.workload.startswith("kernel:"):  # named by content: a changed builder makes a new model
            return KernelGenome(hashlib.sha256(self.kernel_bytes(item)).hexdigest()[:16])
        work = self.workload(item.workload)
        data = item.genome
        if "mix_seed" in data:
            data = mixed_genome(work.model.layer_names, int(data["mix_seed"]))
        return work.genome(data)

    def build(self, item: Item) -> tuple[Path, Any]:
        from harness.quant.quantize import save_model

        genome = self.genome(item)
        path = self.work / "models" / f"{item.id}-{genome.hash}.onnx"
        if item.workload.startswith("kernel:"):
            if not path.exists():
                from harness.core.atomic import atomic_write_bytes

                atomic_write_bytes(path, self.kernel_bytes(item))
            return path, genome
        if not path.exists():
            save_model(self.workload(item.workload).build(genome), path)
        return path, genome

    def input_shapes(self, item: Item) -> dict[str, list[int]]:
        """The shapes the device feeds: the workload's data shapes, or a kernel model's fixed ones."""
        if item.workload.startswith("kernel:"):
            shape = KernelShape(**item.genome)
            return {"ids": [1, shape.m]} if shape.kernel == "gather_block" else {"x": [1, shape.m, shape.k]}
        return dict(self.workload(item.workload).model.shapes_used)

    def sample(self, item: Item, genome: Any, measured_ms: float) -> Sample:
        if item.workload.startswith("kernel:"):
            shape = KernelShape(**item.genome)
            # a gather model spreads its ids with one Add of M elements (profiles.microbench.spread_ids)
            graph = GraphStats(1, shape.m) if shape.kernel == "gather_block" else GraphStats()
            return Sample(item.id, item.workload, item.role, [kernel_layer(shape)], [kernel_class(shape)],
                          graph, measured_ms)
        model = self.workload(item.workload).model
        classes = [precision_tokens(genome[layer.name]) for layer in model.layers]
        graph = GraphStats.of(model) if item.workload in ("transformer",) or item.workload.startswith(
            ("builtin:", "gather:")) else GraphStats()
        return Sample(item.id, item.workload, item.role, model.layers, classes, graph, measured_ms)


# -- measuring ------------------------------------------------------------------------------------
Measure = Callable[[Path], dict[str, Any]]


def transport_measure(device: str, settings: Any) -> Generator[Measure, None, None]:
    """A generator yielding one measuring function over the device's transport; closes it after."""
    from harness.devices.config import get_device
    from harness.devices.connect import connect

    transport = connect(get_device(device))
    try:
        def measure(path: Path) -> dict[str, Any]:
            return transport.measure(path, settings).to_dict()

        yield measure
    finally:
        transport.close()


def run(
    device: str,
    base: str | Path,
    output: Path,
    suite: Suite | None = None,
    settings: Any = None,
    measure: Measure | None = None,
    progress: bool = True,
    now: _dt.datetime | None = None,
    passes: int = 2,
    statistic: str = "min",
) -> dict[str, Any]:
    """Measure the suite (reusing stored measurements), fit, write ``output``; returns the report.

    Each model is measured in ``passes`` interleaved passes and its latency is the smallest
    ``statistic`` (``min``: the fastest timed run; or ``p50``) over the passes: a host shared with
    other work disturbs single runs and whole stretches of time, and both choices filter that out.
    """
    from harness.devices.transport import MeasureSettings

    suite = suite or default_suite()
    if len(suite.items) > MAX_MODELS:
        raise InputError(f"a calibration suite measures at most {MAX_MODELS} models, this one has {len(suite.items)}")
    settings = settings or MeasureSettings(runs=50, min_seconds=1.0, warmup_runs=1, warmup_seconds=0.5,
                                           timeout_s=120, threads=1)
    base_profile = load_profile(base)
    store = Store(output.with_name(output.stem + ".measurements.jsonl"))
    from harness.core.paths import cache_dir

    builder = Builder(suite, cache_dir() / "calibrate")
    settings_key = json.dumps({k: v for k, v in asdict(settings).items() if k not in ("genome", "input_shapes")},
                              sort_keys=True)
    gen = None
    failed: list[dict[str, Any]] = []
    reused = measured_now = 0
    best: dict[str, tuple[Item, Any, float]] = {}
    try:
        with _progress(progress) as bar:
            task = bar.add_task("calibrating", total=len(suite.items) * passes) if bar else None
            for pass_no, item in ((k, it) for k in range(passes) for it in suite.items):
                path, genome = builder.build(item)
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                key = hashlib.sha256(f"{item.id}|{sha}|{settings_key}|{device}|{pass_no}".encode()).hexdigest()[:24]
                rec = store.get(key)
                if rec is None:
                    if measure is None:
                        gen = transport_measure(device, settings)
                        measure = next(gen)
                    # The device feeds the shapes the cost model counts (the workload's data shapes),
                    # never a 1 it picked for a symbolic batch; the transport reads them per call.
                    settings.input_shapes = builder.input_shapes(item)
                    raw = measure(path)
                    rec = {"key": key, "id": item.id, "workload": item.workload, "role": item.role,
                           "genome_hash": genome.hash, "model_sha256": sha, "device": device,
                           "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **raw}
                    store.append(rec)
                    measured_now += 1
                else:
                    reused += 1
                if rec.get("ok") and rec.get("latency_ms"):
                    value = float(rec["latency_ms"][statistic])
                    if item.id not in best or value < best[item.id][2]:
                        best[item.id] = (item, genome, value)
                elif pass_no == passes - 1 and item.id not in best:
                    failed.append({"id": item.id, "error_kind": rec.get("error_kind"), "message": rec.get("message")})
                if bar and task is not None:
                    bar.update(task, advance=1, description=f"calibrating {item.id}")
    finally:
        if gen is not None:
            gen.close()
    samples = [builder.sample(item, genome, value) for item, genome, value in best.values()]
    fitted, fit_report = fit(samples, base_profile)
    errs = errors(samples, fitted)
    memory = _memory_overhead(store, samples, builder, suite, fitted)
    env = next((r.get("environment") for r in store.records.values() if r.get("ok")), None) or {}
    when = (now or _dt.datetime.now(_dt.timezone.utc)).date().isoformat()
    data = calibrated_data(base_profile, fitted, output.stem, device, when, errs, fit_report, memory,
                           settings_key, env, reused, failed, len(suite.items))
    data["calibration"]["statistic"] = f"{statistic} latency, smallest over {passes} interleaved passes"
    text = yaml.safe_dump(data, sort_keys=False, width=120)
    parse(text, str(output))  # the file we write must load
    from harness.core.atomic import atomic_write_text

    atomic_write_text(output, text)
    return {"output": str(output), "measurements": str(store.path), "models": len(suite.items),
            "passes": passes, "statistic": statistic, "measured": measured_now, "reused": reused,
            "failed": failed, "fit": errs["fit"], "heldout": errs["heldout"],
            "rows": errs["rows"]}


def _memory_overhead(store: Store, samples: list[Sample], builder: Builder, suite: Suite,
                     profile: Profile) -> float | None:
    """Runtime overhead = median of measured peak memory minus predicted weights + activations."""
    from profiles.costmodel import cost_of

    peaks = {r["id"]: r.get("peak_memory_bytes") for r in store.records.values() if r.get("ok")}
    diffs = []
    for s in samples:
        peak = peaks.get(s.id)
        if not peak:
            continue
        costs = [cost_of(lay, c, profile) for lay, c in zip(s.layers, s.classes)]
        model_bytes = sum(c.weight_bytes for c in costs) + max((c.activation_bytes for c in costs), default=0)
        diffs.append(float(peak) - model_bytes)
    return float(max(np.median(diffs), 0.0)) if diffs else None


def calibrated_data(base: Profile, fitted: Profile, name: str, device: str, when: str, errs: dict[str, Any],
                    fit_report: dict[str, Any], memory: float | None, settings_key: str, env: dict[str, Any],
                    reused: int, failed: list[dict[str, Any]], n_items: int) -> dict[str, Any]:
    """The calibrated profile's YAML data: fitted numbers re-sourced, plus the calibration record."""
    data = fitted.copy().data
    source = f"calibrated on {device} at {when}"
    n_fit = errs["fit"]["n"]
    for dotted in fit_report["fitted"]:
        node: Any = data
        for k in dotted.split("."):
            node = node[k]
        node["value"] = float(f"{node['value']:.6g}")
        node["source"] = f"{source} (robust fit to {n_fit} measurements)"
    if memory is not None:
        data["memory"]["runtime_overhead_bytes"] = {
            "value": round(memory), "source": f"{source} (median measured peak RSS minus weights and activations)"}
    held = errs["heldout"]
    rel = held["rms_rel"] if held["n"] else errs["fit"]["rms_rel"]
    data["uncertainty"] = {"value": float(f"{max(rel or 0.05, 0.02):.4g}"),
                           "source": f"{source} (RMS relative error on {held['n'] or n_fit} "
                                     f"{'held-out' if held['n'] else 'fit'} models)"}
    data["name"] = name
    data["description"] = f"{base.data['description']} (calibrated on {device} at {when})"
    ident = hashlib.sha256(json.dumps([settings_key, device, errs["rows"]], sort_keys=True).encode()).hexdigest()[:12]
    data["calibration"] = {
        "id": ident,
        "device": device,
        "date": when,
        "base_profile": base.name,
        "settings": json.loads(settings_key),
        "environment": {k: env[k] for k in sorted(env) if isinstance(env[k], (str, int, float))},
        "models": n_items,
        "failed": failed,
        "energy": "not calibrated (no energy sensor on this device): energy figures keep their base sources",
        "fit": {k: v for k, v in errs["fit"].items()},
        "heldout": {k: v for k, v in errs["heldout"].items()},
        "solver": {k: v for k, v in fit_report.items() if k != "fitted"},
        "data": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in errs["rows"]],
    }
    return data


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)
