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
moment it arrives (flushed and fsynced; a torn last line is ignored), without its list of every
timed run (the latency summary and the per-op profile stay). A re-run with the same output
and settings reuses every measurement whose key (item, model hash, settings, device) matches.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.core.errors import InputError
from profiles.costmodel import ExecClass, GraphStats, cost_of, genome_classes
from profiles.fit import LayerSample, Sample, errors, fit, layer_errors
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

#: a suite larger than this is a mistake (many hours of measuring), not a calibration; the benchmark's,
#: with its development and reported held-out sets, has 529 models (about 45 minutes fresh)
MAX_MODELS = 800
#: stored models measured again before others are measured beside them (one of each kind of
#: workload, at most this many: ``drift_anchors``), and how far the latency of any one may move
#: before every stored measurement is dropped (``run``). A drift adds straight to every new
#: model's error against a +-10 % target: at 8 % (until 2026-12-04) MiniLM's anchor read 0.945x its
#: stored latency and was let through, and the 8 MiniLM candidates measured beside it were
#: over-predicted by 9.4 % on average; the other six anchors of that run read within 1.3 %.
DRIFT_ANCHORS = 8
DRIFT_BOUND = 0.05
#: times each anchor is measured again (taken together as a model's passes are: ``over_passes``)
DRIFT_REPEATS = 2

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
    "w8a8asym": {"weight_bits": 8, "activation_bits": 8, "scheme": "asymmetric"},
}
#: the last of a model's fit candidates (``default_suite(models=...)``, where there is room for them
#: and one mix): every MatMul on ONNX Runtime's MatMulNBits, 4-bit block 32, at accuracy level 0 and 4,
#: the rest float. A search's block-quantized genes run these kernels, and no mix draws them: fitted
#: from single-kernel models alone (weights held in L2), MiniLM's MatMulNBits layers came out 13.5 %
#: too fast in context on a Zen 5 host (2026-12-04). A model without a MatMul gets a random mix instead
#: (``fallback_mix``), never a second float build
MODEL_KERNEL_CANDIDATES = {
    "w4nb32": {"default": {"weight_bits": "fp", "activation_bits": "fp"},
               "op_genes": {"MatMul": {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_block",
                                       "block_size": 32, "kernel": "matmulnbits"}}},
    "w4nb32a4": {"default": {"weight_bits": "fp", "activation_bits": "fp"},
                 "op_genes": {"MatMul": {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_block",
                                         "block_size": 32, "kernel": "matmulnbits", "accuracy_level": 4}}},
}
#: more fitted uniform candidates of a suite model, for paths its random mixes may miss: digits-cnn's
#: depthwise Convs with per-channel zero points and with dequantized weights (``grouped_conv``), and
#: its small Convs on the dequantizing (int4, int16) and 4-bit weight-only paths, which dequantize
#: far faster per element than MiniLM's large MatMuls (``memory.dequantize_spill_bytes``)
EXTRA_UNIFORMS = {"builtin:digits-cnn": ("w8a8asym", "w8fp", "w4a8", "w16a16", "w4fp")}
#: Embedding-Gather genes: fp32, int8 per-tensor (qae's per-row int8 Gather build fails in ORT
#: 1.32: a QuantizeLinear on the Gather's output gets the table's per-row scales), and int4
#: weight-only, whose table ORT dequantizes whole on every run)
GATHER_GENES = {
    "fp": {"weight_bits": "fp", "activation_bits": "fp"},
    "w8t": {"weight_bits": 8, "activation_bits": "fp", "granularity": "per_tensor"},
    "w4": {"weight_bits": 4, "activation_bits": "fp"},
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
    #: calibration data (.npz) of each .onnx model the suite measures candidates of
    model_calib: dict[str, str] = field(default_factory=dict)
    #: what builds the items' models: ``Builder`` (ONNX), or ``calibrate_litert.LiteBuilder`` (.tflite)
    builder_factory: Any = None


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


#: candidates of each ``--model`` fitted by default: its three builds and eleven random mixes. With three
#: mixes the fit left MiniLM's held-out mixes predicted too fast (86.5 % within +-10 % against 97.0 % with
#: eleven, on the same one-session measurements): the mixes teach how its layers run beside each other.
DEFAULT_MODEL_CANDIDATES = 14


def default_suite(quick: bool = False, seed: int = 0, models: tuple[str, ...] | list[str] = (),
                  model_candidates: int = DEFAULT_MODEL_CANDIDATES) -> Suite:
    """104 models (17 micro at 16 tokens, 12 more at M = 1 and 64, 6 embedding Gathers, 34
    block-quantized kernels, whole candidates of digits-vit, of a MiniLM-sized transformer and of the
    convolutional digits-cnn: 11 + 12 + 12 with 6 + 7 + 5 held out); ``quick`` is 7 tiny ones.
    ``models`` (``builtin:NAME`` or an .onnx file) adds ``model_candidates`` fit candidates of each: its
    float, w8a8 and dynamic int8 builds, random mixes (``mixed_genome``) and, as the last two where
    there are at least six, its MatMuls on MatMulNBits (``MODEL_KERNEL_CANDIDATES``), so that the fit
    sees the shapes, ops and kernels of the model a search will run (few-shot calibration for one model)."""
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
        per_model, fit_mixed, names = 0, 2, ["builtin:digits-vit", "transformer", "builtin:digits-cnn"]
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
    counts = ({"builtin:digits-vit": 11, "transformer": 12, "builtin:digits-cnn": 10} if not quick
              else {n: per_model for n in names})
    for name in names:
        short = name.split(":")[-1]
        for i in range(counts[name]):
            if i < min(len(uniforms), counts[name] - 1):
                items.append(Item(f"{short}-{uniforms[i]}", name, {"default": MICRO_GENES[uniforms[i]]}, "fit"))
                continue
            role = "fit" if i < len(uniforms) + fit_mixed else "heldout"
            items.append(Item(f"{short}-mix{i:02d}", name, {"mix_seed": int(rng.integers(1 << 30))}, role))
        if not quick:  # after the mixes, which keep their seeds
            items += [Item(f"{short}-{g}", name, {"default": MICRO_GENES[g]}, "fit")
                      for g in EXTRA_UNIFORMS.get(name, ())]
    for name in models:
        short = "model-" + (name.split(":", 1)[1] if name.startswith("builtin:") else Path(name).stem)
        room = model_candidates > len(uniforms) + len(MODEL_KERNEL_CANDIDATES)
        kernels = list(MODEL_KERNEL_CANDIDATES) if room else []
        for i in range(model_candidates):
            if i < len(uniforms):
                items.append(Item(f"{short}-{uniforms[i]}", name, {"default": MICRO_GENES[uniforms[i]]}, "fit"))
            elif i >= model_candidates - len(kernels):  # the last ones: the mixes before keep their seeds
                k = kernels[i - (model_candidates - len(kernels))]
                # drawn apart, so that the next model's mixes keep their seeds
                fallback = int(np.random.default_rng((seed, len(items))).integers(1 << 30))
                items.append(Item(f"{short}-{k}", name, {**MODEL_KERNEL_CANDIDATES[k], "fallback_mix": fallback},
                                  "fit"))
            else:
                items.append(Item(f"{short}-mix{i:02d}", name, {"mix_seed": int(rng.integers(1 << 30))}, "fit"))
    if len({it.id for it in items}) != len(items):
        raise InputError(f"calibration models {', '.join(models)}: two have the same file name; give each once")
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
    """Append-only JSON lines of measurements; the last record for a key wins. One writer at a time.
    A line that is not a record, or a record a fit could not use (``usable``), is never reused: its
    model is measured again. A reset line (``reset``: the device moved since the records before it
    were taken) drops every record before it, so a run interrupted after a reset resumes without them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by an interrupted write
                if isinstance(rec, dict) and rec.get("reset") is True:
                    self.records.clear()
                elif isinstance(rec, dict) and isinstance(rec.get("key"), str):
                    self.records[rec["key"]] = rec

    def get(self, key: str) -> dict[str, Any] | None:
        rec = self.records.get(key)
        return rec if rec is not None and usable(rec) else None

    def reset(self, why: dict[str, Any]) -> None:
        """Reuse nothing stored so far, now and after a restart: a reset line, then no records."""
        self.append({"reset": True, **why})
        self.records.clear()

    def append(self, rec: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if "key" in rec:
            self.records[rec["key"]] = rec


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def usable(rec: dict[str, Any]) -> bool:
    """Whether a stored measurement can stand for its model: ok, with positive finite latency
    statistics, and a per-op profile (where there is one) whose nodes have names and times."""
    lat = rec.get("latency_ms")
    if rec.get("ok") is not True or not isinstance(lat, dict) or not all(_positive(lat.get(k)) for k in ("min", "p50")):
        return False
    prof = rec.get("op_profile")
    if prof is None:
        return True
    nodes = prof.get("nodes") if isinstance(prof, dict) else None
    return isinstance(nodes, list) and all(
        isinstance(n, dict) and isinstance(n.get("name"), str) and isinstance(n.get("ms"), (int, float))
        and math.isfinite(n["ms"]) and n["ms"] >= 0 for n in nodes)


# -- building the models --------------------------------------------------------------------------
class Builder:
    """Builds each item's quantized model under ``work``; float models and workloads are made once."""

    def __init__(self, suite: Suite, work: Path) -> None:
        self.suite, self.work = suite, work
        self._workloads: dict[str, Any] = {}
        self._kernels: dict[str, bytes] = {}
        self._graphs: dict[str, GraphStats] = {}

    def workload(self, name: str) -> Any:
        from harness.quant.workload import Workload

        if name not in self._workloads:
            if name.startswith("builtin:") or name.endswith(".onnx"):
                self._workloads[name] = Workload.open(name, calib=self.suite.model_calib.get(name))
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
        elif "op_genes" in data:  # a gene per op type (MODEL_KERNEL_CANDIDATES), the default elsewhere
            ops = data["op_genes"]
            layers = {lay.name: ops[lay.op_type] for lay in work.model.layers if lay.op_type in ops}
            data = ({"default": data["default"], "layers": layers} if layers
                    else mixed_genome(work.model.layer_names, int(data["fallback_mix"])))
        return work.genome(data)

    def build(self, item: Item) -> tuple[Path, Any]:
        from harness.quant.quantize import build_version, save_model

        genome = self.genome(item)
        # the builder's version in the name: a build a quantizer change altered is made again, never
        # taken from this cache (the measurement store keys on the file's bytes)
        path = self.work / "models" / f"{item.id}-{genome.hash}-b{build_version()}.onnx"
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

    def graph(self, workload: str) -> GraphStats:
        """The workload's genome-independent graph statistics (none for a single-layer micro model)."""
        if workload not in self._graphs:
            self._graphs[workload] = (GraphStats() if workload.startswith("micro:")
                                      else GraphStats.of(self.workload(workload).model))
        return self._graphs[workload]

    def sample(self, item: Item, genome: Any, measured_ms: float, profile: Profile) -> Sample:
        """One measured model as a fit sample; ``profile`` (the device's base) says which kernels its
        layers run (``genome_classes``), which no fitted number changes."""
        if item.workload.startswith("kernel:"):
            shape = KernelShape(**item.genome)
            # a gather model spreads its ids with one Add of M elements (profiles.microbench.spread_ids)
            graph = GraphStats(1, shape.m) if shape.kernel == "gather_block" else GraphStats()
            return Sample(item.id, item.workload, item.role, [kernel_layer(shape)], [kernel_class(shape)],
                          graph, measured_ms)
        model = self.workload(item.workload).model
        graph = self.graph(item.workload)
        classes = genome_classes(model.layers, genome, profile, graph)
        return Sample(item.id, item.workload, item.role, model.layers, classes, graph, measured_ms)


    def layer_samples(self, measured: list[tuple[Item, Any, dict[str, Any], Path, float]],
                      base: Profile) -> tuple[list[LayerSample], list[str]]:
        """Per-layer measured times of every measured model whose record carries a per-op profile
        (kernel items excluded: a single kernel is its whole model): each layer's share of the
        profile less the profiler's per-node cost, scaled to the model's latency (the last element
        of each tuple: its timed statistic, over passes as ``pick_pass`` takes it;
        ``LayerTimes.corrected_to``). Returns them and the ids of models whose profile could not be
        split (no layer time found)."""
        import onnx

        from harness.quant.opmap import layer_times

        out: list[LayerSample] = []
        unsplit: list[str] = []
        for item, genome, rec, path, value in measured:
            prof = rec.get("op_profile")
            if not prof or item.workload.startswith("kernel:") or not path.exists():
                continue
            model = self.workload(item.workload).model
            execs = genome_classes(model.layers, genome, base, self.graph(item.workload))
            classes = [tuple(c) for c in execs]
            # read bytes depend on shapes and classes only (not on fitted numbers): the base profile's
            read = sum(cost_of(layer, c, base).read_bytes for layer, c in zip(model.layers, execs))
            try:
                times = layer_times(onnx.load(str(path)), model.layers, prof, statistic="iqm_ms")
            except (KeyError, TypeError, ValueError):
                unsplit.append(item.id)
                continue
            found = 0
            times = times.corrected_to(value)
            for j, layer in enumerate(model.layers):
                ms = times.layers.get(layer.name, 0.0)
                if ms > 0:
                    out.append(LayerSample(item.id, item.workload, item.role, layer, classes[j], ms, read))
                    found += 1
            if not found:
                unsplit.append(item.id)
        return out, unsplit


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
    max_passes: int | None = None,
    spread: float = 0.05,
    plot: bool = True,
    collect: dict[str, Any] | None = None,
    drift: float = DRIFT_BOUND,
    across: str = "median",
) -> dict[str, Any]:
    """Measure the suite (reusing stored measurements), fit, write ``output``; returns the report.

    Stored measurements are reused only while the device runs as it did when they were taken: where
    some models are stored and others must be measured, one stored model of each kind of workload
    (``drift_anchors``) is measured again first (``DRIFT_REPEATS`` interleaved times, taken together
    as its stored passes are: ``over_passes``), and if any one's latency moved by more than ``drift``
    (a busier or slower machine, memory bandwidth shared with a neighbour, another board of the same
    name, a new firmware) every model is measured again, so that one fit never mixes two states of
    the device; the report's
    ``drift`` says which, with each anchor's ratio. One anchor per kind, because they drift apart: on
    a shared cloud host the memory-bound MiniLM candidates ran 1.09-1.14x their stored latency while
    the small MatMuls that were the only anchors read 1.02x.

    The noise protocol: every model is measured in ``passes`` interleaved passes, then the models
    whose latency still differs by more than ``spread`` between passes (largest over smallest - 1)
    get more interleaved passes, up to ``max_passes`` (default ``passes + 2``); those still
    beyond it are recorded, not hidden. A model's latency is the median over its passes
    (``across``, see ``pick_pass``; ``min``: the fastest pass, as before 2026-12-04) of each pass's
    ``statistic`` (``min``: the fastest timed run; or ``p50``): a host shared with other work disturbs
    single runs, which the fastest run of a pass filters out, and whole stretches of time, faster
    as well as slower, which the median over interleaved passes filters out without making a model
    measured more often look faster. The device's load
    average (agent 1.5.1) and the spreads go into the file, which says when the device was busy.

    With ``settings.profile_ops`` (the default here) each measurement also carries the device's
    per-op profile; its per-layer times (``harness.quant.opmap``) enter the fit beside the whole-model
    latencies, and the file and report carry the per-layer error by op type
    (``profiles.fit.layer_errors``) and a predicted-vs-measured plot per layer type (``plot``).
    ``collect``, when given, receives the fitted ``samples`` and ``layer_samples`` and the ``base``
    profile (a benchmark re-fits subsets of them).
    """
    from harness.devices.transport import MeasureSettings

    suite = suite or default_suite()
    if len(suite.items) > MAX_MODELS:
        raise InputError(f"a calibration suite measures at most {MAX_MODELS} models, this one has {len(suite.items)}")
    if across not in ACROSS:  # before hours of measuring, not after
        raise ValueError(f"across must be one of {ACROSS}, not {across!r}")
    max_passes = max(passes, max_passes if max_passes is not None else passes + 2)
    settings = settings or MeasureSettings(runs=50, min_seconds=1.0, warmup_runs=1, warmup_seconds=0.5,
                                           timeout_s=120, threads=1, profile_ops=True)
    base_profile = load_profile(base)
    store = Store(output.with_name(output.stem + ".measurements.jsonl"))
    from harness.core.paths import cache_dir

    builder = (suite.builder_factory or Builder)(suite, cache_dir() / "calibrate")
    settings_key = json.dumps({k: v for k, v in asdict(settings).items() if k not in ("genome", "input_shapes")},
                              sort_keys=True)
    gen = None
    reused = measured_now = 0
    best: dict[str, tuple[Item, Any, float, dict[str, Any], Path]] = {}
    last: dict[str, dict[str, Any]] = {}
    every: dict[str, list[tuple[Item, Any, float, dict[str, Any], Path]]] = {}  # item id -> its passes

    def values_of(item_id: str) -> list[float]:
        return [g[2] for g in every.get(item_id, [])]

    def key_of(item: Item, path: Path, pass_no: int) -> tuple[str, str]:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return hashlib.sha256(f"{item.id}|{sha}|{settings_key}|{device}|{pass_no}".encode()).hexdigest()[:24], sha

    def stored_values(item: Item, path: Path, first: dict[str, Any]) -> list[float]:
        """The stored passes' values of a model (the first pass's record given; ``Store.get`` returns
        only usable records)."""
        recs = [first] + [store.get(key_of(item, path, pass_no)[0]) for pass_no in range(1, max_passes)]
        return [float(rec["latency_ms"][statistic]) for rec in recs if rec is not None]

    def measurer() -> Measure:
        nonlocal measure, gen
        if measure is None:
            gen = transport_measure(device, settings)
            measure = next(gen)
        return measure

    drift_report: dict[str, Any] = {"checked": False, "bound": drift}
    try:
        with _progress(progress) as bar:
            if store.records:
                stored = []
                missing = 0
                for item in suite.items:
                    path, _ = builder.build(item)
                    rec = store.get(key_of(item, path, 0)[0])
                    if rec is not None and rec.get("ok") and rec.get("latency_ms"):
                        stored.append((item, path, rec))
                    else:
                        missing += 1
                if stored and missing:
                    anchors = drift_anchors(stored)
                    again: dict[str, list[float]] = {}
                    cpus: set[str | None] = set()
                    for _ in range(DRIFT_REPEATS):  # interleaved, as the passes are
                        for item, path, _ in anchors:
                            settings.input_shapes = builder.input_shapes(item)
                            now_rec = measurer()(path)
                            if now_rec.get("ok") and now_rec.get("latency_ms"):
                                again.setdefault(item.id, []).append(float(now_rec["latency_ms"][statistic]))
                            cpus.add(cpu_of(now_rec))
                    # the anchor's latency now against its stored latency, each taken over its
                    # measurements as a model's is over its passes (``across``: one noisy stored pass
                    # must not reset a whole store, nor the fastest of the repeats hide a drift)
                    ratios = {item.id: over_passes(again[item.id], across)
                              / over_passes(stored_values(item, path, rec), across)
                              for item, path, rec in anchors if item.id in again}
                    ratio = float(np.median(list(ratios.values()))) if ratios else None
                    worst = max(ratios, key=lambda k: abs(ratios[k] - 1.0)) if ratios else None
                    moved = worst is None or len(ratios) < len(anchors) or abs(ratios[worst] - 1.0) > drift
                    # another CPU under the same device name (a cloud host moved to a newer machine): its
                    # records are not this device's, however close the anchors came out
                    other_cpu = other_cpus({cpu_of(rec) for _, _, rec in stored}, cpus)
                    moved = moved or bool(other_cpu)
                    drift_report = {"checked": True, "bound": drift, "ratio": ratio, "moved": moved,
                                    "anchors": [it.id for it, _, _ in anchors], "ratios": ratios,
                                    "worst": worst, "stored": len(stored), "missing": missing}
                    if other_cpu:
                        drift_report["other_cpu"] = {"stored": other_cpu, "now": sorted(cpus)}
                    if moved:  # reuse nothing stored: the new records take the same keys
                        store.reset({"at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                     "device": device, "drift_ratio": ratio, "bound": drift})
            task = bar.add_task("calibrating", total=len(suite.items) * passes) if bar else None
            pending = list(suite.items)
            for pass_no in range(max_passes):
                if pass_no >= passes:
                    pending = [it for it in suite.items if item_spread(values_of(it.id)) > spread]
                    if not pending:
                        break
                    if bar and task is not None:
                        bar.update(task, total=(bar.tasks[0].total or 0) + len(pending))
                for item in pending:
                    path, genome = builder.build(item)
                    key, sha = key_of(item, path, pass_no)
                    rec = store.get(key)
                    if rec is None:
                        # The device feeds the shapes the cost model counts (the workload's data shapes),
                        # never a 1 it picked for a symbolic batch; the transport reads them per call.
                        settings.input_shapes = builder.input_shapes(item)
                        raw = measurer()(path)
                        # every timed run (up to 20,000 per model) is not needed for a fit: the summary is
                        raw.pop("runs_ms", None)
                        rec = {"key": key, "id": item.id, "workload": item.workload, "role": item.role,
                               "genome_hash": genome.hash, "model_sha256": sha, "device": device, "pass": pass_no,
                               "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **raw}
                        store.append(rec)
                        measured_now += 1
                    else:
                        reused += 1
                    last[item.id] = rec
                    if rec.get("ok") and rec.get("latency_ms"):
                        value = float(rec["latency_ms"][statistic])
                        every.setdefault(item.id, []).append((item, genome, value, rec, path))
                    if bar and task is not None:
                        bar.update(task, advance=1, description=f"calibrating {item.id} (pass {pass_no + 1})")
    finally:
        if gen is not None:
            gen.close()
    for item_id, got in every.items():
        best[item_id] = pick_pass(got, across)
    failed = [{"id": it.id, "error_kind": last.get(it.id, {}).get("error_kind"),
               "message": last.get(it.id, {}).get("message")} for it in suite.items if it.id not in best]
    samples = [builder.sample(item, genome, value, base_profile) for item, genome, value, _, _ in best.values()]
    layer_samples, unsplit = builder.layer_samples([(item, genome, rec, path, value)
                                                    for item, genome, value, rec, path in best.values()],
                                                   base_profile)
    if collect is not None:
        collect.update(samples=samples, layer_samples=layer_samples, base=base_profile)
    fitted, fit_report = fit(samples, base_profile, layer_samples)
    errs = errors(samples, fitted)
    lay = layer_errors(layer_samples, fitted, base_profile)
    noise = noise_summary(store, best, {k: values_of(k) for k in every}, spread, passes, max_passes, settings)
    memory = _memory_overhead(store, samples, builder, suite, fitted)
    env = next((r.get("environment") for r in store.records.values() if r.get("ok")), None) or {}
    when = (now or _dt.datetime.now(_dt.timezone.utc)).date().isoformat()
    data = calibrated_data(base_profile, fitted, output.stem, device, when, errs, fit_report, memory,
                           settings_key, env, reused, failed, len(suite.items))
    over = "median" if across == "median" else "smallest"
    data["calibration"]["statistic"] = (f"{statistic} latency, {over} over {passes} to {max_passes} interleaved "
                                        f"passes (more while a model's passes differ by more than {spread:.0%})")
    data["calibration"]["noise"] = noise
    data["calibration"]["drift"] = drift_report
    data["calibration"]["layers"] = {
        "profiled_models": len({s.id for s in layer_samples}), "unsplit": unsplit,
        "fit": {k: v for k, v in lay["fit"].items()}, "heldout": {k: v for k, v in lay["heldout"].items()}}
    text = yaml.safe_dump(_rounded(data), sort_keys=False, width=120)
    parse(text, str(output))  # the file we write must load
    from harness.core.atomic import atomic_write_text

    atomic_write_text(output, text)
    plot_path = None
    if plot and lay["rows"]:
        plot_path = output.with_name(output.stem + ".layers.png")
        plot_layer_fit(lay["rows"], plot_path, f"{output.stem}: per-layer time, predicted vs measured on {device}")
    return {"output": str(output), "measurements": str(store.path), "models": len(suite.items),
            "passes": passes, "max_passes": max_passes, "statistic": statistic, "across": across,
            "measured": measured_now,
            "reused": reused, "failed": failed, "fit": errs["fit"], "heldout": errs["heldout"],
            "reported": errs["reported"], "rows": errs["rows"],
            "layers": {"fit": lay["fit"], "heldout": lay["heldout"], "reported": lay["reported"],
                       "unsplit": unsplit, "rows": lay["rows"]},
            "noise": noise, "drift": drift_report, "solver": {k: v for k, v in fit_report.items() if k != "fitted"},
            "plot": str(plot_path) if plot_path else None}


def pick_pass(got: list[tuple[Item, Any, float, dict[str, Any], Path]],
              across: str = "median") -> tuple[Item, Any, float, dict[str, Any], Path]:
    """What stands for a model measured in several passes (``(item, genome, value, record, path)``
    per pass, ``value`` the pass's statistic): with ``across="median"`` the median of the values, with
    the record of the pass nearest to it (whose per-op profile is split and scaled to that median);
    with ``min``, the fastest pass.

    The median, because a model's value must not depend on how many passes it got: the noise protocol
    gives the models that spread most more passes, and the fastest of more passes is faster (on a
    shared host with phases of some 20 %: MiniLM's all-dynamic front point at 3.79, 3.53, 3.07 and
    3.34 ms in four passes, the near-identical uniform dynamic model at 3.86 and 3.86 in two)."""
    value = over_passes([g[2] for g in got], across)
    item, genome, _, rec, path = min(got, key=lambda g: abs(g[2] - value))  # with min: the fastest itself
    return item, genome, value, rec, path


#: how a model's latency is taken from its passes' values (``over_passes``)
ACROSS = ("median", "min")


def over_passes(values: list[float], across: str = "median") -> float:
    """A model's latency from its passes' values: their median, or with ``min`` the fastest."""
    if across not in ACROSS:
        raise ValueError(f"across must be one of {ACROSS}, not {across!r}")
    return float(np.median(values)) if across == "median" else float(min(values))


def cpu_of(rec: dict[str, Any]) -> str | None:
    """The CPU a measurement record names (the agent's ``environment.cpu_model``; from agent 1.6.1 with
    its generation), or None."""
    env = rec.get("environment")
    model = env.get("cpu_model") if isinstance(env, dict) else None
    return str(model) if model else None


def other_cpus(stored: set[str | None], now: set[str | None]) -> list[str]:
    """The CPUs named by stored records that are not the one measured now: where the device names its
    CPU, a stored name that is neither it nor a less specific form of it (agent 1.6.1 added the
    generation in parentheses: a record of "AMD EPYC" may be this "AMD EPYC (family 26 ...)" or a Zen 4,
    and only the drift anchors can tell)."""
    named = {c for c in now if c}
    if not named or None in now:
        return []
    return sorted(c for c in stored if c and not any(n == c or n.startswith(c + " (") for n in named))


def workload_kind(workload: str) -> str:
    """What a drift check tells apart: a whole model's workload (``builtin:NAME``, ``transformer``, an
    .onnx file), or the kind of single-layer workload (``micro``, ``kernel``, ``gather``)."""
    kind, _, _ = workload.partition(":")
    return kind if kind in ("micro", "kernel", "gather") else workload


def drift_anchors(stored: list[Any], limit: int = DRIFT_ANCHORS) -> list[Any]:
    """The first stored ``(item, path, record)`` of each kind of workload (``workload_kind``), in the
    suite's order, at most ``limit``; whole models first, since they are what a fit is judged on."""
    first: dict[str, Any] = {}
    for entry in stored:
        first.setdefault(workload_kind(entry[0].workload), entry)
    kinds = sorted(first, key=lambda k: k in ("micro", "kernel", "gather"))  # stable: suite order within
    return [first[k] for k in kinds[:limit]]


def item_spread(values: list[float]) -> float:
    """How far a model's passes disagree: largest over smallest - 1 (0 with one pass or none)."""
    return max(values) / min(values) - 1.0 if len(values) > 1 and min(values) > 0 else 0.0


def noise_summary(store: Store, best: dict[str, Any], values: dict[str, list[float]], bound: float, passes: int,
                  max_passes: int, settings: Any) -> dict[str, Any]:
    """What the file says about noise: per-model spread between passes, how many stayed beyond the
    bound, and the device's 1-minute load average over the measurements (beyond the measuring
    threads: ``busy`` when its median exceeds 0.5)."""
    spreads = {k: item_spread(v) for k, v in values.items()}
    loads = [float(r["environment"]["loadavg_1m_before"]) for r in store.records.values()
             if r.get("ok") and r.get("id") in best and isinstance(r.get("environment"), dict)
             and isinstance(r["environment"].get("loadavg_1m_before"), (int, float))]
    threads = int(getattr(settings, "threads", None) or 1)
    out: dict[str, Any] = {
        "spread_bound": bound, "passes_min": passes, "passes_max": max_passes,
        "spread_median": float(np.median(list(spreads.values()))) if spreads else None,
        "spread_max": max(spreads.values()) if spreads else None,
        "beyond_bound": sorted(k for k, v in spreads.items() if v > bound),
        "passes_used": {k: len(v) for k, v in sorted(values.items()) if len(v) > passes},
    }
    if loads:
        med = float(np.median(loads))
        out["loadavg_1m"] = {"min": min(loads), "median": med, "max": max(loads), "measuring_threads": threads}
        out["busy"] = bool(med - threads > 0.5)
        out["verdict"] = (f"busy: median 1-minute load {med:.2f} with {threads} measuring thread(s)" if out["busy"]
                          else f"quiet: median 1-minute load {med:.2f} with {threads} measuring thread(s)")
    else:
        out["busy"] = None
        out["verdict"] = "unknown: the device sent no load average (agent before 1.5.1, or no OS support)"
    return out


def _rounded(node: Any) -> Any:
    """Floats to 6 significant digits, so that the file stays readable."""
    if isinstance(node, float):
        return float(f"{node:.6g}")
    if isinstance(node, dict):
        return {k: _rounded(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_rounded(v) for v in node]
    return node


def plot_layer_fit(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """One log-log panel per layer kind: predicted against measured per-layer time, the +-10 % band,
    fit layers and held-out layers apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from harness.core.atomic import atomic_write_bytes

    kinds = sorted({r["kind"] for r in rows})
    cols = min(4, len(kinds))
    nrows = math.ceil(len(kinds) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.2 * nrows), squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        sel = [r for r in rows if r["kind"] == kind]
        vals = [v for r in sel for v in (r["measured_ms"], r["predicted_ms"]) if v > 0]
        lo, hi = min(vals) / 1.5, max(vals) * 1.5
        xs = np.array([lo, hi])
        ax.plot(xs, xs, color="0.3", lw=0.8)
        ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.85", label="+-10 %")
        for role, marker, color in (("fit", "o", "tab:blue"), ("heldout", "^", "tab:orange")):
            pts = [r for r in sel if r["role"] == role]
            if pts:
                ax.scatter([r["measured_ms"] for r in pts], [r["predicted_ms"] for r in pts], s=14, marker=marker,
                           color=color, label=f"{role} ({len(pts)})", alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(kind, fontsize=8)
        ax.set_xlabel("measured ms", fontsize=7)
        ax.set_ylabel("predicted ms", fontsize=7)
        ax.tick_params(labelsize=6)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.2 * nrows)))  # room for the title
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


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
