"""The analytic cost model: latency, energy and peak memory of a model's layers under a genome.

Per layer (DESIGN.md): ``latency = max(MACs / throughput(p), DRAM bytes / bandwidth) + per-layer
overhead`` plus the conversions its precision needs (quantizing its input, dequantizing weights on a
fallback path) and the fallback penalty when the target lacks a precision. The rest of the graph
(LayerNorm, Softmax, residual Adds...) is genome-independent and costed from ``GraphStats``: one
overhead per op and a cost per element. Energy = MACs x energy per MAC of the precision + bytes
moved x energy per byte + (static + active power) x time. Memory = weights at storage width + peak
live activations (+ weights dequantized at run time) + runtime overhead.

How a gene maps to an execution path (``path_of``): weights ``fp`` run at the profile's float type;
integer weights with float activations run as weight-only (float compute plus a per-weight cost,
zero where the runtime folds or decompresses for free); integer weights with integer or dynamic
activations run natively when both are in ``native``, else they take the profile's ``fallback`` for
the first missing precision. Emulated widths (2, 3, 5, 6 bits) are costed at their storage width,
so an emulated width is never predicted faster than its storage type.

``CostTable`` precomputes every layer's cost for each of the few execution classes, so that
predicting a population is a table lookup and a sum (``predict_many``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from profiles.errors import ProfileError
from profiles.protocols import GeneLike, GenomeLike, LayerLike, ModelLike
from profiles.schema import Profile

#: Nodes that cost nothing at run time (removed by graph optimisation, or constants).
_FREE_OPS = {"Identity", "Constant", "Shape"}


@dataclass(frozen=True)
class GraphStats:
    """The genome-independent rest of a model: op count and elements those ops write per inference."""

    other_ops: int = 0
    other_elements: int = 0

    @classmethod
    def of(cls, model: ModelLike) -> GraphStats:
        layer_nodes = {layer.node_name for layer in model.layers}
        shapes = model.tensor_shapes()
        ops = elements = 0
        for node in model.proto.graph.node:
            if node.name in layer_nodes or node.op_type in _FREE_OPS:
                continue
            ops += 1
            for out in node.output:
                # A 0-d tensor is shape arithmetic (a gathered dimension): its cost is the op's overhead,
                # and the calibrated profiles were fitted without it.
                if shapes.get(out):
                    elements += int(np.prod(shapes[out]))
        return cls(ops, elements)


def precision_tokens(gene: GeneLike) -> tuple[str, str, str]:
    """(weight type, activation type, granularity) as the target stores them: emulated widths count
    as int8; granularity is ``channel`` or ``tensor`` (it matters where weights are dequantized)."""
    gran = "tensor" if gene.granularity == "per_tensor" else "channel"
    if not gene.quantized:
        return "fp32", "fp32", "channel"
    wt = f"int{gene.weight_storage_bits}"
    if gene.dynamic:
        return wt, "dynamic", gran
    if not gene.static_activation:
        return wt, "fp32", gran
    bits = int(gene.activation_bits)
    return wt, f"int{bits if bits in (4, 8, 16) else 8}", gran


def layer_macs(layer: LayerLike) -> int:
    """The layer's MACs per inference; unknown MACs (input shapes not given) are an error, never 0."""
    macs = layer.macs
    if macs is None:
        raise ProfileError(
            f"layer {layer.name} ({layer.op_type}) has unknown MACs because the model's input shapes are "
            "unknown: give input shapes (--input-shape NAME=D1xD2x..., or data with --data/--calib)"
        )
    return int(macs)


def layer_io(layer: LayerLike) -> tuple[float, float]:
    """Elements of the layer's input and output activations per inference.

    The layer's own counts (``input_elements`` / ``output_elements``, from shape inference at the
    shapes the model runs at) when it has them; otherwise inferred from MACs and weight shape, which
    is exact for MatMul and Gemm but assumes stride = kernel for a Conv (a patch embedding). An
    embedding Gather is costed by its table bytes alone (its traffic is the rows it reads, which the
    calibrated fits absorbed into the table term), and an op without a rule (LSTM, GRU) by what it
    reports, else nothing.
    """
    if layer.op_type == "Gather":
        return 0.0, 0.0
    given_in, given_out = getattr(layer, "input_elements", None), getattr(layer, "output_elements", None)
    macs = layer_macs(layer)
    w = layer.weight_shape
    if given_in is not None and given_out is not None:
        return float(given_in), float(given_out)
    inferred = (0.0, 0.0)
    if macs > 0 and layer.op_type == "Conv" and len(w) >= 2:
        reduce = float(np.prod(w[1:]))
        out = macs / reduce
        inferred = (out / w[0] * reduce, out)
    elif macs > 0 and layer.op_type in ("MatMul", "Gemm") and len(w) == 2:
        k, n = (w[1], w[0]) if layer.op_type == "Gemm" and layer.channel_axis == 0 else (w[0], w[1])
        inferred = (macs / n, macs / k)
    return (
        float(given_in) if given_in is not None else inferred[0],
        float(given_out) if given_out is not None else inferred[1],
    )


@dataclass
class Path:
    """How one layer runs: compute precision, rate, and which extra costs apply."""

    kind: str  # float | weight_only | native | dequantize | slower_unit
    compute: str
    weight: str
    activation: str
    throughput_gmacs: float
    energy_per_mac_pj: float
    penalty_us: float = 0.0


def _int_key(wt: str, at: str) -> str:
    if "int16" in (wt, at):
        return "int16"
    if wt == "int4" and at in ("int4", "int8", "dynamic"):
        return "int4"
    return "int8"


def path_of(wt: str, at: str, profile: Profile) -> Path:
    thr = profile.table("throughput_gmacs")
    epm = profile.table("energy", "per_mac_pj")
    ft = profile.data["float_type"]
    native = profile.data["native"]
    fallback = profile.data["fallback"]

    def floating(kind: str, to: str = ft) -> Path:
        return Path(kind, to, wt, at, thr[to], epm[to])

    if wt == "fp32":
        return floating("float")
    missing = [p for p, ok in ((wt, wt in native["weights"]),) if not ok]
    if at != "fp32" and at not in native["activations"]:
        missing.append(at)
    if not missing:
        if at == "fp32":
            return floating("weight_only")
        key = _int_key(wt, at)
        rate = thr.get(key) or min(v for k, v in thr.items() if k.startswith("int"))
        return Path("native", key, wt, at, rate, epm.get(key, epm[ft]))
    fb = fallback.get(missing[0])
    if fb is None or fb["action"] == "dequantize":
        kind = "weight_only" if at == "fp32" else "dequantize"
        return floating(kind, ft if fb is None else fb["to"])
    return Path("slower_unit", str(fb["unit"]), wt, at, float(fb["throughput_gmacs"]["value"]),
                float(fb["energy_per_mac_pj"]["value"]), float(fb["penalty_us"]["value"]))


_BYTES = {"fp32": 4.0, "fp16": 2.0, "int16": 2.0, "int8": 1.0, "int4": 0.5, "dynamic": 1.0}


@dataclass
class LayerCost:
    latency_us: float
    energy_j: float
    weight_bytes: float
    activation_bytes: float
    transient_bytes: float
    path: str
    compute: str


def layer_cost(layer: LayerLike, wt: str, at: str, profile: Profile, gran: str = "channel") -> LayerCost:
    """The cost of one layer on one execution path (see the module docstring for the formula)."""
    p = path_of(wt, at, profile)
    macs = layer_macs(layer)
    in_el, out_el = layer_io(layer)
    ft = profile.data["float_type"]
    wbytes = layer.params * (_BYTES[wt] if wt != "fp32" else _BYTES[ft])
    abytes = in_el * _BYTES[ft] + out_el * _BYTES[ft]
    onchip = profile.num("memory", "onchip_bytes")
    bw = profile.num("memory", "dram_bandwidth_gbs") * 1e3  # bytes per us
    dram = wbytes + (abytes if abytes > onchip else 0.0)
    compute_us = macs / (p.throughput_gmacs * 1e3)
    us = max(compute_us, dram / bw) + profile.num("overhead", "per_layer_us")
    conv = profile.data["conversion"]
    extra_j = 0.0
    transient = 0.0
    if p.kind == "weight_only":
        us += layer.params * profile.table("weight_only_ns_per_element").get(wt, 0.0) / 1e3
    if p.kind in ("native", "dequantize") and at != "fp32":
        # Quantize the float input on entry; dynamic activations also find their range at run time.
        per_el = conv["dynamic_ns_per_element"] if at == "dynamic" else conv["ns_per_element"]
        us += float(conv["per_op_us"]["value"]) + in_el * float(per_el["value"]) / 1e3
    if p.kind == "dequantize":
        # The fallback: weights (and activations) are dequantized every run, then float compute.
        dq = profile.table("dequantize_ns_per_element")
        if gran == "tensor" and "dequantize_per_tensor_ns_per_element" in profile.data:
            dq = profile.table("dequantize_per_tensor_ns_per_element")  # one scale: a faster loop
        us += float(conv["per_op_us"]["value"]) + layer.params * dq.get(wt, 0.0) / 1e3
        spill = profile.data.get("dequantize_spill_ns_per_element", {})
        if wt in spill:  # dequantized weights that do not fit on chip cost more per element
            spilled = max(0.0, layer.params - onchip / _BYTES[p.compute])
            us += spilled * float(spill[wt]["value"]) / 1e3
        us += (in_el + out_el) * float(conv["ns_per_element"]["value"]) / 1e3
        transient = layer.params * _BYTES[p.compute]
        extra_j += layer.params * profile.num("energy", "per_mac_pj", p.compute) * 1e-12
    if p.kind == "slower_unit":
        us += p.penalty_us
        dram += abytes  # handing the tensors to another unit goes through shared memory
    e = profile.data["energy"]
    joules = (
        macs * p.energy_per_mac_pj * 1e-12
        + dram * float(e["dram_pj_per_byte"]["value"]) * 1e-12
        + (abytes if abytes <= onchip else 0.0) * float(e["onchip_pj_per_byte"]["value"]) * 1e-12
        + extra_j
    )
    return LayerCost(us, joules, wbytes, abytes, transient, p.kind, p.compute)


@dataclass
class Prediction:
    """Predicted objectives of one genome on one profile; never a measurement."""

    profile: str
    calibration_id: str | None
    latency_ms: float
    energy_j: float
    memory_bytes: float
    uncertainty: float
    layers: list[dict[str, Any]] = field(default_factory=list)
    emulated_layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": "predicted",
            "profile": self.profile,
            "calibration_id": self.calibration_id,
            "latency_ms": self.latency_ms,
            "energy_j": self.energy_j,
            "memory_bytes": self.memory_bytes,
            "uncertainty": self.uncertainty,
            "emulated_layers": self.emulated_layers,
            "layers": self.layers,
        }


_CLASSES: list[tuple[str, str, str]] = [
    (w, a, g) for w in ("fp32", "int4", "int8", "int16") for a in ("fp32", "dynamic", "int4", "int8", "int16")
    for g in ("channel", "tensor") if not (w == "fp32" and (a != "fp32" or g != "channel"))
]
_CLASS_INDEX = {c: i for i, c in enumerate(_CLASSES)}


class CostTable:
    """Every layer's cost on every execution class, so a population costs a lookup and a sum.

    Built once per (layers, profile, graph); immutable afterwards and safe to share between threads.
    """

    def __init__(self, layers: Sequence[LayerLike], profile: Profile, graph: GraphStats | None = None) -> None:
        self.layers = list(layers)
        self.profile = profile
        self.graph = graph or GraphStats()
        n, c = len(self.layers), len(_CLASSES)
        self.lat = np.zeros((n, c))
        self.energy = np.zeros((n, c))
        self.wbytes = np.zeros((n, c))
        self.transient = np.zeros((n, c))
        self.abytes = np.zeros(n)
        self.costs: list[list[LayerCost]] = []
        for i, layer in enumerate(self.layers):
            row = [layer_cost(layer, w, a, profile, g) for w, a, g in _CLASSES]
            self.costs.append(row)
            for j, lc in enumerate(row):
                self.lat[i, j], self.energy[i, j] = lc.latency_us, lc.energy_j
                self.wbytes[i, j], self.transient[i, j] = lc.weight_bytes, lc.transient_bytes
            self.abytes[i] = row[0].activation_bytes
        self.fixed_us = (
            profile.num("overhead", "per_inference_us")
            + self.graph.other_ops * profile.num("overhead", "other_op_us")
            + self.graph.other_elements * profile.num("overhead", "other_ns_per_element") / 1e3
        )
        e = profile.data["energy"]
        self.power_w = float(e["static_power_w"]["value"]) + float(e["active_power_w"]["value"])
        self.runtime_bytes = profile.num("memory", "runtime_overhead_bytes")

    def classes(self, genome: GenomeLike) -> np.ndarray:
        return np.array([_CLASS_INDEX[precision_tokens(genome[lay.name])] for lay in self.layers], dtype=np.int64)

    def totals(self, idx: np.ndarray) -> np.ndarray:
        """Rows of (latency_ms, energy_j, memory_bytes) for class matrices ``idx`` [genomes, layers]."""
        idx = np.atleast_2d(idx)
        rows = np.arange(len(self.layers))[None, :]
        lat_us = self.lat[rows, idx].sum(axis=1) + self.fixed_us
        energy = self.energy[rows, idx].sum(axis=1) + self.power_w * lat_us * 1e-6
        peak_act = float(self.abytes.max()) if len(self.layers) else 0.0
        transient = self.transient[rows, idx].max(axis=1) if len(self.layers) else 0.0
        memory = self.wbytes[rows, idx].sum(axis=1) + peak_act + transient + self.runtime_bytes
        return np.stack([lat_us / 1e3, energy, memory], axis=1)

    def predict_many(self, genomes: Iterable[GenomeLike]) -> np.ndarray:
        """(latency_ms, energy_j, memory_bytes) per genome: a population of 100 in about a millisecond."""
        idx = np.stack([self.classes(g) for g in genomes])
        return self.totals(idx)

    def predict(self, genome: GenomeLike) -> Prediction:
        idx = self.classes(genome)
        lat_ms, energy, memory = self.totals(idx[None, :])[0]
        rows = []
        for i, layer in enumerate(self.layers):
            lc = self.costs[i][int(idx[i])]
            gene = genome[layer.name]
            rows.append({
                "layer": layer.name, "op_type": layer.op_type, "macs": layer.macs,
                "weight_bits": gene.weight_bits, "activation_bits": gene.activation_bits,
                "path": lc.path, "compute": lc.compute, "latency_ms": lc.latency_us / 1e3,
                "energy_j": lc.energy_j + self.power_w * lc.latency_us * 1e-6,
                "weight_bytes": lc.weight_bytes,
            })
        return Prediction(
            profile=self.profile.name,
            calibration_id=self.profile.calibration_id,
            latency_ms=float(lat_ms),
            energy_j=float(energy),
            memory_bytes=float(memory),
            uncertainty=self.profile.num("uncertainty"),
            layers=rows,
            emulated_layers=genome.emulated_layers,
        )


def predict(
    layers: Sequence[LayerLike], genome: GenomeLike, profile: Profile, graph: GraphStats | None = None
) -> Prediction:
    """Predicted latency, energy and memory of ``genome`` over ``layers`` on ``profile``.

    ``graph`` adds the genome-independent rest of the model (``GraphStats.of(model)``); without it the
    prediction covers the quantizable layers and the per-inference overhead only.
    """
    return CostTable(layers, profile, graph).predict(genome)


def predict_model(model: ModelLike, genome: GenomeLike, profile: Profile) -> Prediction:
    """``predict`` over a whole loaded model, rest of the graph included."""
    return predict(model.layers, genome, profile, GraphStats.of(model))
