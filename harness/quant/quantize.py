"""Genome -> quantized ONNX model, built by ONNX Runtime's quantizers from cached ranges.

The steps, each for a reason:
1. Every quantized layer gets its own activation tensor (an Identity per consumer), because
   ONNX Runtime's overrides are per tensor and q/k/v share one input but may differ in precision.
2. qae computes every scale and zero point itself (weights from the weights, activations from the
   cached calibration ranges) and hands them to ONNX Runtime as ``TensorQuantOverrides``. That is
   what makes power-of-two scales exact and the emulated widths (2, 3, 5, 6 bits) exact: their
   weights are rounded onto the b-bit grid and stored in int8 with the b-bit scale.
3. Layers with ``dynamic`` activations go through ONNX Runtime's dynamic quantizer
   (DynamicQuantizeLinear + MatMulInteger/ConvInteger) first, on the float graph.
4. Layers with static activations (and weight-only layers) go through the QDQ quantizer at opset 21.
5. Weight-only layers (``activation_bits: fp``) lose their activation Q/DQ pair; emulated
   activation widths get a Clip before their QuantizeLinear, since QuantizeLinear only saturates
   to the storage type.
6. LSTM and GRU layers are weight-only and built by qae itself, after ONNX Runtime's passes (its
   quantizers leave these ops float): W and R become integer initializers with a per-gate-row
   DequantizeLinear feeding the op.
7. Block-wise weights and the packed kernels (issue 15) are qae's own too, after ONNX Runtime's
   passes (``harness.quant.kernels``): ``kernel: matmulnbits`` turns a MatMul into com.microsoft
   MatMulNBits, ``kernel: gather_block`` an embedding Gather into GatherBlockQuantized, and
   ``per_block`` QDQ weights get a DequantizeLinear with ``block_size`` (all three weight-only, see
   ``harness.core.genome``). A gene's ``rounding`` other than ``rtn`` rounds its weights through
   ``harness.quant.rounding`` on every path but LSTM/GRU; ``gptq`` needs the layers' calibration
   inputs as ``samples``.

One module (~670 lines) because every path from a genome to an ONNX model (QDQ, dynamic, weight-
only, emulated widths, embedding tables, recurrent weights) shares the per-layer planning and the final
graph edits.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from harness.core.atomic import atomic_path
from harness.core.errors import ModelError
from harness.core.forms import name_nodes
from harness.core.genome import NATIVE_BITS, WEIGHT_ONLY_OPS, Gene, Genome
from harness.core.model import LayerSpec, ModelInfo
from harness.quant import kernels
from harness.quant.calibration import Ranges
from harness.quant.rounding import INT_TYPES, grid, integer_tensor

OPSET = 21
# Bump whenever a genome builds a different model than before (a new grid, a new graph edit): the
# fitness cache keys on it, so no score of the old build is served for the new one.
# 2: never-negative activations on the unsigned grid; 3: output Q/DQ of Conv + ReLU into a pool;
# 4: no all-zero weight/bias zero points on Conv; 5: float bias on a Conv ORT cannot fuse (issue 16);
# 6: a Gemm with dynamic activations is quantized (MatMulInteger), no longer left float by ORT's rewrite.
BUILD_VERSION = 6
#: Later changes that touched only some layer kinds: (version, the layer op types whose build changed).
#: A model with none of them builds as it did, so its cached scores stay valid (``build_version``).
#: 7: a 4-bit QDQ embedding table is written as GatherBlockQuantized (indexed, not dequantized whole).
#: 8: a static Conv whose output reaches a float, weight-only or dynamic layer through an Identity, or
#: whose activations are emulated (5-7 bits), gets its output Q/DQ, so ORT runs it as QLinearConv.
#: 9: ... but not where a float or weight-only layer reads it: ORT ran that layer as an int8 QLinearConv.
#: 10: LSTM and GRU integer weights stored as raw bytes (the file was larger than the float model's).
#: 11: a static or weight-only Gemm with a constant bias and beta != 1 gets beta * C (``GEMM_BETA``).
#: 12: layers that share a weight and get different genes each get their own copy (``SHARED_WEIGHT``).
#: 13: a static MatMul on a fixed N-D input followed by a bias Add runs on rows (``static_nd_matmuls``).
GEMM_BETA = "Gemm(beta)"
SHARED_WEIGHT = "shared weight"
MATMUL_ROWS = "MatMul(fixed N-D)"
SCOPED_BUILD_CHANGES: tuple[tuple[int, frozenset[str]], ...] = (
    (7, frozenset({"Gather"})), (8, frozenset({"Conv"})), (9, frozenset({"Conv"})), (10, frozenset({"LSTM", "GRU"})),
    (11, frozenset({GEMM_BETA})), (12, frozenset({SHARED_WEIGHT})), (13, frozenset({MATMUL_ROWS})))


def build_version(op_types: Iterable[str] | None = None) -> int:
    """The build version of a model whose layers have these op types (what a cache of its scores keys
    on; ``build_kinds`` gives them): ``BUILD_VERSION`` or the latest scoped change that touched one of
    them; None: the latest of all."""
    ops = None if op_types is None else set(op_types)
    return max([BUILD_VERSION] + [v for v, scope in SCOPED_BUILD_CHANGES if ops is None or scope & ops])


def build_kinds(model: ModelInfo) -> list[str]:
    """What ``build_version`` is asked about a model: its layers' op types, plus ``GEMM_BETA`` when a
    Gemm layer adds a constant bias with beta != 1 and ``SHARED_WEIGHT`` when two layers read one weight
    (build changes that only such models see)."""
    kinds = [layer.op_type for layer in model.layers]
    weights = [layer.weight for layer in model.layers if layer.weight]
    if len(set(weights)) < len(weights):
        kinds.append(SHARED_WEIGHT)
    if static_nd_matmuls(model):
        kinds.append(MATMUL_ROWS)
    nodes = {n.name: n for n in model.proto.graph.node if n.op_type == "Gemm"}
    inits = {t.name for t in model.proto.graph.initializer}
    for layer in model.layers:
        node = nodes.get(layer.node_name)
        if node is None or len(node.input) < 3 or node.input[2] not in inits:
            continue
        if any(a.name == "beta" and a.f != 1.0 for a in node.attribute):
            kinds.append(GEMM_BETA)
    return kinds


_HOLD_DOMAIN = "ai.qae.hold"


@dataclass
class QuantResult:
    """A quantized model and what qae knows of it that the file alone does not say."""

    proto: onnx.ModelProto
    genome: Genome
    #: quantized weight initializer name -> nominal bits (what the weight would take packed)
    nominal_bits: dict[str, int] = field(default_factory=dict)
    emulated_layers: list[str] = field(default_factory=list)
    #: The TensorQuantOverrides handed to ONNX Runtime, JSON-able (quant types by name)
    overrides: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def emulated(self) -> bool:
        return bool(self.emulated_layers)


@dataclass(frozen=True)
class QParams:
    """Scale/zero point (scalars or per-channel arrays) and the integer grid they map onto."""

    scale: np.ndarray
    zero_point: np.ndarray
    qlo: int
    qhi: int
    storage: str  # a QuantType name: QInt8, QUInt4, ...


@dataclass(frozen=True)
class LearnedScales:
    """Scales a quantization-aware fine-tune learned for one layer (``harness.quant.fakequant``, LSQ),
    used in place of the ones qae computes; a None field keeps qae's. ``weight_scale`` and
    ``weight_zero_point`` are per channel along the ONNX weight's channel axis (scalars per tensor), or
    ``[C, n_blocks]`` for a block-wise gene (rows = output channels or table rows, blocks along the
    reduction)."""

    weight_scale: np.ndarray | None = None
    weight_zero_point: np.ndarray | None = None
    activation_scale: float | None = None
    activation_zero_point: int | None = None


def _learned_shape(values: np.ndarray | None, own: np.ndarray, layer: str, what: str) -> np.ndarray:
    """A fine-tune's per-channel (or per-tensor) weight ``what`` for ``layer`` in the shape and type of
    qae's own ``own`` (None keeps qae's); a count that does not match the layer's channels, a value that
    is not finite or a scale that is not positive is a one-line ModelError (the scales came from a file)."""
    if values is None:
        return own
    arr = np.asarray(values, dtype=np.float64)
    if arr.size != own.size or not np.all(np.isfinite(arr)) or (what == "scale" and not np.all(arr > 0)):
        raise ModelError(f"layer {layer}: the fine-tune's weight {what} holds {arr.size} value(s) where the layer "
                         f"has {own.size} channel(s), or one that is not finite (or a scale that is not positive): it "
                         "belongs to another model or genome; fine-tune this one again")
    return arr.astype(own.dtype).reshape(own.shape)


def _storage(bits: int, signed: bool) -> str:
    base = {4: "Int4", 8: "Int8", 16: "Int16"}[bits]
    return ("Q" if signed else "QU") + base


def _pow2(scale: np.ndarray) -> np.ndarray:
    return np.exp2(np.ceil(np.log2(scale))).astype(np.float32)


def weight_qparams(w: np.ndarray, gene: Gene, axis: int) -> QParams:
    """Per-channel (along ``axis``) or per-tensor scale and zero point for a weight."""
    bits = int(gene.weight_bits)
    symmetric = gene.scheme != "asymmetric"
    qlo, qhi = grid(bits, symmetric)
    storage = _storage(gene.weight_storage_bits, symmetric)
    if gene.granularity == "per_channel":
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        wmin, wmax = w.min(axis=reduce), w.max(axis=reduce)
    else:
        wmin, wmax = np.array(w.min()), np.array(w.max())
    wmin = np.minimum(wmin, 0).astype(np.float64)
    wmax = np.maximum(wmax, 0).astype(np.float64)
    if symmetric:
        span = np.maximum(np.abs(wmin), np.abs(wmax)) / qhi
        scale = np.where(span > 0, span, 1.0).astype(np.float32)
        if gene.scheme == "power_of_two":
            scale = _pow2(scale)
        zero = np.zeros_like(scale, dtype=np.int64)
    else:
        span = (wmax - wmin) / (qhi - qlo)
        scale = np.where(span > 0, span, 1.0).astype(np.float32)
        zero = np.clip(np.round(qlo - wmin / scale), qlo, qhi).astype(np.int64)
    return QParams(scale, zero, qlo, qhi, storage)


def fake_quantize(w: np.ndarray, qp: QParams, axis: int | None) -> np.ndarray:
    """Round ``w`` onto its grid, so that the quantizer's own rounding lands on exact b-bit values."""
    scale, zero = qp.scale, qp.zero_point
    if axis is not None and scale.ndim == 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    q = np.clip(np.round(w / scale) + zero, qp.qlo, qp.qhi)
    return ((q - zero) * scale).astype(np.float32)


def activation_qparams(rng: tuple[float, float], gene: Gene) -> QParams:
    bits = int(gene.activation_bits)
    symmetric = gene.scheme != "asymmetric"
    lo, hi = min(float(rng[0]), 0.0), max(float(rng[1]), 0.0)
    if symmetric and lo == 0.0:
        # Never negative (after a ReLU / ReLU6, a pixel input): zero point 0 on the unsigned grid.
        # Still symmetric's zero point, twice the resolution, and ONNX Runtime can then drop the
        # Relu/Clip in front of the QuantizeLinear and fuse DQ -> Conv -> Q into QLinearConv.
        qlo, qhi = grid(bits, False)
        scale = np.array(hi / qhi if hi > 0 else 1.0, np.float32)
        if gene.scheme == "power_of_two":
            scale = _pow2(scale)
        storage = _storage(bits if bits in NATIVE_BITS else 8, False)
        return QParams(scale, np.array(0), qlo, qhi, storage)
    qlo, qhi = grid(bits, symmetric)
    storage = _storage(bits if bits in NATIVE_BITS else 8, symmetric)
    if symmetric:
        span = max(abs(lo), abs(hi)) / qhi
        scale = np.array(span if span > 0 else 1.0, np.float32)
        if gene.scheme == "power_of_two":
            scale = _pow2(scale)
        zero = 0
    else:
        span = (hi - lo) / (qhi - qlo)
        scale = np.array(span if span > 0 else 1.0, np.float32)
        zero = int(np.clip(round(qlo - lo / float(scale)), qlo, qhi))
    return QParams(np.array(scale, np.float32), np.array(zero), qlo, qhi, storage)


def _own_kernel(gene: Gene) -> bool:
    """Built by ``harness.quant.kernels`` rather than by ONNX Runtime's quantizers."""
    return gene.kernel != "qdq" or gene.granularity == "per_block"


def quantize(
    model: ModelInfo, genome: Genome, ranges: Ranges, samples: Mapping[str, np.ndarray] | None = None,
    learned: Mapping[str, LearnedScales] | None = None,
) -> QuantResult:
    """Build the quantized model for ``genome``; the float model in ``model`` is left untouched.

    ``samples``: layer name -> its calibration inputs ``[S, K]``, needed by ``rounding: gptq`` only
    (``harness.quant.rounding.activation_samples`` collects them). ``learned``: layer name -> scales a
    fine-tune learned (QDQ per-channel / per-tensor layers), handed to ONNX Runtime as overrides.
    """
    from onnxruntime.quantization import QuantType

    proto = copy.deepcopy(model.proto)
    _ensure_opset(proto)
    name_nodes(proto)
    samples = samples or {}
    learned = learned or {}
    all_layers = _untie_shared_weights(proto, model.layers, genome)
    quantized = [layer for layer in all_layers if genome[layer.name].quantized]
    recurrent = [layer for layer in quantized if layer.op_type in WEIGHT_ONLY_OPS]
    own = [lay for lay in quantized if lay.op_type not in WEIGHT_ONLY_OPS and _own_kernel(genome[lay.name])]
    layers = [lay for lay in quantized if lay.op_type not in WEIGHT_ONLY_OPS and not _own_kernel(genome[lay.name])]
    node_names = {layer.name: layer.node_name for layer in all_layers}
    ranges = dict(ranges)
    act_tensor = _split_activations(proto, [lay for lay in layers if lay.activation], node_names, ranges)
    flat = [lay for lay in layers if genome[lay.name].static_activation and lay.name in act_tensor]
    act_tensor.update(_matmuls_on_rows(proto, model, flat, act_tensor, ranges))
    inits = {t.name: t for t in proto.graph.initializer}

    result = QuantResult(proto, genome)
    weight_overrides: dict[str, list[dict[str, Any]]] = {}
    act_overrides: dict[str, list[dict[str, Any]]] = {}
    clips: dict[str, tuple[float, float]] = {}
    for layer in layers:
        gene = genome[layer.name]
        if gene.emulated:
            result.emulated_layers.append(layer.name)
        w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        per_channel = gene.granularity == "per_channel"
        mine = learned.get(layer.name)
        if mine is not None and mine.weight_scale is not None:
            # a fine-tune's grid (learned, or its rounding method's scales kept fixed while training):
            # the trained weights round to nearest on it, whatever the gene's rounding
            qp = weight_qparams(w, gene, layer.channel_axis)
            qp = replace(qp, scale=_learned_shape(mine.weight_scale, qp.scale, layer.name, "scale"),
                         zero_point=_learned_shape(mine.weight_zero_point, qp.zero_point, layer.name, "zero point"))
            wq = fake_quantize(w, qp, layer.channel_axis if per_channel else None)
        elif gene.rounding != "rtn":
            qp, wq = _rounded_qparams(w, gene, layer, samples.get(layer.name))
        else:
            qp = weight_qparams(w, gene, layer.channel_axis)
            wq = fake_quantize(w, qp, layer.channel_axis if per_channel else None)
        inits[layer.weight].CopyFrom(numpy_helper.from_array(wq.astype(w.dtype), layer.weight))
        qtype = QuantType[qp.storage]
        if per_channel:
            weight_overrides[layer.weight] = [
                {"axis": layer.channel_axis, "quant_type": qtype, "scale": float(s), "zero_point": int(z)}
                if i == 0
                else {"scale": float(s), "zero_point": int(z)}
                for i, (s, z) in enumerate(zip(qp.scale.ravel(), qp.zero_point.ravel()))
            ]
        else:
            weight_overrides[layer.weight] = [
                {"quant_type": qtype, "scale": float(qp.scale), "zero_point": int(qp.zero_point)}
            ]
        result.nominal_bits[layer.weight] = int(gene.weight_bits)
        if gene.static_activation and layer.activation:
            tensor = act_tensor[layer.name]
            if tensor not in ranges:
                raise ModelError(
                    f"no calibration range for the input of layer {layer.name}: recalibrate "
                    "(delete the cache under $QAE_CACHE_DIR) with data that reaches this layer"
                )
            aq = activation_qparams(ranges[tensor], gene)
            mine = learned.get(layer.name)
            if mine is not None and mine.activation_scale is not None:
                aq = replace(aq, scale=np.array(mine.activation_scale, np.float32),
                             zero_point=np.array(int(mine.activation_zero_point or 0)))
            dtype = _np_storage(aq.storage)
            act_overrides[tensor] = [
                {
                    "quant_type": QuantType[aq.storage],
                    "scale": np.array(aq.scale, np.float32),
                    "zero_point": np.array(aq.zero_point, dtype),
                }
            ]
            if int(gene.activation_bits) not in NATIVE_BITS:
                s, z = float(aq.scale), int(aq.zero_point)
                clips[tensor] = ((aq.qlo - z) * s, (aq.qhi - z) * s)

    result.overrides = _jsonable({**weight_overrides, **act_overrides})
    dynamic = [lay for lay in layers if genome[lay.name].dynamic]
    static = [lay for lay in layers if not genome[lay.name].dynamic]
    if dynamic:
        proto = _dynamic_pass(proto, dynamic, genome, weight_overrides)
    if static:
        overrides = {k: v for k, v in weight_overrides.items() if k in {lay.weight for lay in static}}
        overrides.update(act_overrides)
        _fold_gemm_beta(proto, {lay.node_name for lay in static if lay.op_type == "Gemm"})
        proto = _static_pass(proto, static, overrides, ranges)
        weight_only = [lay for lay in static if not genome[lay.name].static_activation and lay.activation]
        # ORT's QDQ Gather also quantizes the output with the table's (per-row) parameters, which
        # is wrong for per-row scales and adds nothing otherwise: a Gather layer is weight-only.
        gathers = [lay.output for lay in static if lay.op_type == "Gather"]
        _strip_activation_qdq(proto, [act_tensor[lay.name] for lay in weight_only] + gathers)
        _gather_then_dequantize(proto, {lay.node_name for lay in static if lay.op_type == "Gather"})
        _insert_clips(proto, clips)
        float_readers = {lay.node_name for lay in all_layers
                         if not genome[lay.name].static_activation and not genome[lay.name].dynamic}
        _quantize_conv_outputs(proto, [lay for lay in static if lay.op_type == "Conv"], genome, ranges, float_readers)
        _drop_zero_points(proto, {lay.node_name for lay in static if lay.op_type == "Conv"})
        _float_bias_where_unfused(proto, {lay.node_name for lay in static if lay.op_type == "Conv"})
    _own_kernels(proto, own, genome, samples, result, learned)
    for layer in recurrent:
        _dequantized_weights(proto, layer, genome[layer.name], result)
    from onnxruntime.quantization.onnx_model import ONNXModel

    ONNXModel(proto).topological_sort()  # the quantizers append nodes; checkers want graph order
    _map_quantized_names(proto, result)
    _stamp(proto, result, model)
    result.proto = proto
    return result


def _rounded_qparams(
    w: np.ndarray, gene: Gene, layer: LayerSpec, x: np.ndarray | None
) -> tuple[QParams, np.ndarray]:
    """Per-channel scales and the weights on their grid from ``harness.quant.rounding`` (a method
    other than round-to-nearest), in the form ONNX Runtime's overrides take."""
    per_tensor = gene.granularity == "per_tensor"
    rows = w.reshape(1, -1) if per_tensor else kernels.rows_view(w, layer.channel_axis)  # one row: one scale
    rq = kernels.quantize_rows(rows, gene, block_size=None, x=x)
    symmetric = rq.zero_point is None
    qlo, qhi = grid(int(gene.weight_bits), symmetric)
    zero: np.ndarray = np.zeros(rq.scale.shape[0], np.int64) if symmetric else rq.zero_point.ravel()  # type: ignore[union-attr]
    scale: np.ndarray = rq.scale.ravel()
    if per_tensor:
        scale, zero = scale.reshape(()), zero.reshape(())
    qp = QParams(scale, zero, int(min(qlo, rq.q.min())), qhi, _storage(gene.weight_storage_bits, symmetric))
    deq = rq.dequantize()
    wq = deq.reshape(w.shape) if per_tensor else kernels.from_rows(deq, w.shape, layer.channel_axis)
    return qp, wq.astype(np.float32)


def _own_kernels(
    proto: onnx.ModelProto, layers: list[LayerSpec], genome: Genome, samples: Mapping[str, np.ndarray],
    result: QuantResult, learned: Mapping[str, LearnedScales],
) -> None:
    """MatMulNBits, GatherBlockQuantized and block-wise QDQ layers (``harness.quant.kernels``), all
    weight-only (``harness.core.genome`` says why). A layer with ``learned`` weight scales (a fine-tune's
    grid, ``[C, n_blocks]``) rounds to nearest on them, whatever the gene's rounding."""
    for layer in layers:
        gene = genome[layer.name]
        x = samples.get(layer.name)
        mine = learned.get(layer.name)
        fixed = None if mine is None or mine.weight_scale is None else (mine.weight_scale, mine.weight_zero_point)
        if gene.kernel == "matmulnbits":
            kernels.matmul_nbits(proto, layer, gene, x, fixed)
        elif gene.kernel == "gather_block":
            kernels.gather_block(proto, layer, gene, fixed)
        else:
            kernels.block_dequantize(proto, layer, gene, x, fixed)
            result.nominal_bits[layer.weight] = int(gene.weight_bits)
        if gene.emulated:
            result.emulated_layers.append(layer.name)


def _stamp(proto: onnx.ModelProto, result: QuantResult, model: ModelInfo) -> None:
    """Record the genome and nominal widths in the file: the file alone cannot tell int8 from 3-bit."""
    import json

    meta = {
        "qae.genome": result.genome.canonical_json(),
        "qae.genome_hash": result.genome.hash,
        "qae.nominal_bits": json.dumps(result.nominal_bits, sort_keys=True),
        "qae.emulated_layers": json.dumps(result.emulated_layers),
        "qae.base_model": f"builtin:{model.builtin}" if model.builtin else f"sha256:{model.sha256}",
    }
    kept = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in meta.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


def read_stamp(proto: onnx.ModelProto) -> tuple[dict[str, int], list[str]]:
    """(nominal bits by initializer, emulated layers) from a file qae wrote; empty for others."""
    import json

    props = {p.key: p.value for p in proto.metadata_props}
    bits = json.loads(props.get("qae.nominal_bits", "{}"))
    emulated = json.loads(props.get("qae.emulated_layers", "[]"))
    return {str(k): int(v) for k, v in bits.items()}, [str(e) for e in emulated]


def _jsonable(overrides: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for tensor, entries in overrides.items():
        out[tensor] = [
            {k: (v.name if hasattr(v, "name") else v.item() if hasattr(v, "item") else v) for k, v in e.items()}
            for e in entries
        ]
    return out


def _np_storage(storage: str) -> type:
    return {
        "QInt8": np.int8,
        "QUInt8": np.uint8,
        "QInt16": np.int16,
        "QUInt16": np.uint16,
        "QInt4": np.int8,
        "QUInt4": np.uint8,
    }[storage]


def _ensure_opset(proto: onnx.ModelProto) -> None:
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            if op.version < OPSET:
                try:
                    converted = onnx.version_converter.convert_version(proto, OPSET)
                except Exception as exc:
                    raise ModelError(
                        f"the model's opset {op.version} cannot be raised to {OPSET} ({type(exc).__name__}): "
                        f"re-export it with opset_version={OPSET}"
                    ) from None
                proto.CopyFrom(converted)
            return


def static_nd_matmuls(model: ModelInfo) -> set[str]:
    """Names of the MatMul layers whose input has rank >= 3 in a graph whose inputs are all fixed, and whose
    output only feeds an Add of a constant: ONNX Runtime's MatMulAddFusion turns such a
    pair into Reshape + Gemm + Reshape at load time and, with a QDQ uint8 input, writes a QuantizeLinear it
    then rejects (``output_dtype INT8 does not match y_zero_point type UINT8``): the model does not load."""
    cached = getattr(model, "_static_nd_matmuls", None)
    if cached is None:
        cached = _static_nd_matmuls(model)
        model._static_nd_matmuls = cached  # type: ignore[attr-defined]  # once per model: shape inference
    return set(cached)


def _static_nd_matmuls(model: ModelInfo) -> frozenset[str]:
    # ONNX Runtime resolves every shape of a graph whose inputs are all fixed (its own inference folds the
    # computed Reshape shapes ONNX's leaves symbolic): that is when it fuses an N-D MatMul with its Add
    if not any(layer.op_type == "MatMul" for layer in model.layers):
        return frozenset()
    inits = {t.name for t in model.proto.graph.initializer}
    for vi in model.proto.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not vi.type.tensor_type.HasField("shape") or not all(d.HasField("dim_value") and d.dim_value > 0
                                                                 for d in dims):
            return frozenset()
    consts = inits
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    nodes = {n.name: n for n in model.proto.graph.node}
    out: set[str] = set()
    for layer in model.layers:
        node = nodes.get(layer.node_name)
        shape = model.known_shapes.get(layer.activation or "")  # unknown here (a computed Reshape): ORT may know it
        if layer.op_type != "MatMul" or node is None or (shape is not None and len(shape) < 3):
            continue
        after = readers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add" and any(i in consts for i in after[0].input):
            out.add(layer.name)
    return frozenset(out)


def _matmuls_on_rows(proto: onnx.ModelProto, model: ModelInfo, layers: list[LayerSpec], act_tensor: dict[str, str],
                     ranges: Ranges) -> dict[str, str]:
    """For the static-activation MatMul layers of ``static_nd_matmuls``: feed the MatMul its input as rows
    ``[-1, K]`` and give the bias Add's result its shape back (Shape, Slice, Concat, Reshape), so ONNX
    Runtime's MatMulAddFusion has a 2-D MatMul and writes a plain Gemm. The same numbers, computed on the
    same rows. Returns layer -> its new (2-D) activation tensor, whose range is the 3-D tensor's."""
    chosen = static_nd_matmuls(model) & {lay.name for lay in layers}
    if not chosen:
        return {}
    nodes = {n.name: n for n in proto.graph.node}
    inits = {t.name: t for t in proto.graph.initializer}
    out: dict[str, str] = {}
    for layer in [lay for lay in layers if lay.name in chosen]:
        mm = nodes[layer.node_name]
        add = next(n for n in proto.graph.node if n.op_type == "Add" and mm.output[0] in n.input)
        k, n_out = (int(d) for d in inits[layer.weight].dims)  # a MatMul layer's weight is a 2-D initializer
        src, prefix = act_tensor[layer.name], f"qae_rows/{layer.name}"
        rows, shape, lead, back = f"{src}__rows", f"{prefix}/shape", f"{prefix}/lead", f"{prefix}/back"
        proto.graph.initializer.extend([
            numpy_helper.from_array(np.array([-1, k], np.int64), f"{prefix}/rows_shape"),
            numpy_helper.from_array(np.array([n_out], np.int64), f"{prefix}/n"),
            numpy_helper.from_array(np.array([0], np.int64), f"{prefix}/start"),
            numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}/end"),
        ])
        mm.input[list(mm.input).index(src)] = rows
        result = add.output[0]
        add.output[0] = f"{result}__rows"
        at = list(proto.graph.node).index(mm)
        proto.graph.node.insert(at, helper.make_node("Reshape", [src, f"{prefix}/rows_shape"], [rows],
                                                     name=f"{prefix}/to_rows"))
        at = list(proto.graph.node).index(add) + 1
        for node in (helper.make_node("Shape", [src], [shape], name=f"{prefix}/shape"),
                     helper.make_node("Slice", [shape, f"{prefix}/start", f"{prefix}/end"], [lead],
                                      name=f"{prefix}/lead"),
                     helper.make_node("Concat", [lead, f"{prefix}/n"], [back], name=f"{prefix}/back_shape", axis=0),
                     helper.make_node("Reshape", [add.output[0], back], [result], name=f"{prefix}/back")):
            proto.graph.node.insert(at, node)
            at += 1
        if src in ranges:
            ranges[rows] = ranges[src]
        out[layer.name] = rows
    return out


def _split_activations(
    proto: onnx.ModelProto, layers: list[LayerSpec], node_names: dict[str, str], ranges: Ranges
) -> dict[str, str]:
    """Give each layer its own activation tensor through an Identity; returns layer -> tensor."""
    nodes = {n.name: n for n in proto.graph.node}
    out: dict[str, str] = {}
    new_nodes: list[tuple[int, onnx.NodeProto]] = []
    position = {n.name: i for i, n in enumerate(proto.graph.node)}
    for layer in layers:
        assert layer.activation is not None
        node = nodes[node_names[layer.name]]
        tensor = f"{layer.activation}__qae_{layer.name}"
        ident = helper.make_node("Identity", [layer.activation], [tensor], name=f"qae_act/{layer.name}")
        for i, name in enumerate(node.input):
            if name == layer.activation:
                node.input[i] = tensor
                break
        if layer.activation in ranges:
            ranges[tensor] = ranges[layer.activation]
        new_nodes.append((position[node.name], ident))
        out[layer.name] = tensor
    for index, ident in sorted(new_nodes, key=lambda t: -t[0]):
        proto.graph.node.insert(index, ident)
    return out


def _hold_gemms(proto: onnx.ModelProto, keep: set[str]) -> list[onnx.NodeProto]:
    """Hide Gemm nodes from the dynamic quantizer, which turns every Gemm into MatMul+Add."""
    held = []
    for node in proto.graph.node:
        if node.op_type == "Gemm" and node.name not in keep:
            node.domain, node.op_type = _HOLD_DOMAIN, "HeldGemm"
            held.append(node)
    if held:
        proto.opset_import.append(helper.make_opsetid(_HOLD_DOMAIN, 1))
    return held


def _release_gemms(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        if node.domain == _HOLD_DOMAIN:
            node.domain, node.op_type = "", "Gemm"
    kept = [op for op in proto.opset_import if op.domain != _HOLD_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)


def _dynamic_pass(
    proto: onnx.ModelProto, layers: list[LayerSpec], genome: Genome, overrides: dict[str, list[dict[str, Any]]]
) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantizationMode, QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

    # The dynamic quantizer reads per-channel overrides only when per_channel is on for the whole
    # run, so per-channel and per-tensor layers go through it in two runs.
    for per_channel in (True, False):
        group = [lay for lay in layers if (genome[lay.name].granularity == "per_channel") == per_channel]
        if not group:
            continue
        names = {lay.node_name for lay in group}
        mine = {lay.weight: overrides[lay.weight] for lay in group}
        for lay in group:
            if lay.op_type == "Gemm":
                mine[lay.weight] = _gemm_as_matmul(proto, lay, mine[lay.weight])
        held = _hold_gemms(proto, names)
        quantizer = ONNXQuantizer(
            proto,
            per_channel,
            False,
            QuantizationMode.IntegerOps,
            False,
            QuantType.QInt8,
            QuantType.QUInt8,
            None,
            sorted(names),
            [],
            sorted({"MatMul" if lay.op_type == "Gemm" else lay.op_type for lay in group}),
            {"TensorQuantOverrides": mine, "MatMulConstBOnly": True},
        )
        with _Quiet():
            proto = quantizer.quantize_model()
        if held:
            _release_gemms(proto)
    return proto


def _gemm_as_matmul(proto: onnx.ModelProto, layer: LayerSpec, override: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite a Gemm layer with dynamic activations as MatMul (its weight ``[K, N]``, under the layer's
    node name) + Add (the bias), in place; returns the weight's override with its axis moved to match.

    ONNX Runtime's dynamic quantizer rewrites every Gemm it meets to MatMul + Add under new names and
    then quantizes neither (the rewritten MatMul is not among the nodes it was asked for): the layer
    ran with a float input and float weights. Done here first, the MatMul is the node it quantizes
    (DynamicQuantizeLinear + MatMulInteger, int8 weights per output channel)."""
    index, node = next((i, n) for i, n in enumerate(proto.graph.node) if n.name == layer.node_name)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    has_bias = len(node.input) > 2 and bool(node.input[2])
    scaled = float(attrs.get("alpha", 1.0)) != 1.0 or (has_bias and float(attrs.get("beta", 1.0)) != 1.0)
    if attrs.get("transA", 0) or scaled:
        raise ModelError(f"layer {layer.name}: a Gemm with transA, alpha or beta takes no dynamic activations in qae: "
                         "give it static or fp activations")
    if sum(name == layer.weight for n in proto.graph.node for name in n.input) != 1:
        raise ModelError(f"layer {layer.name}: its weight {layer.weight} feeds other nodes too, so it cannot be "
                         "transposed for dynamic activations: give it static or fp activations")
    if attrs.get("transB", 0):
        init = next(t for t in proto.graph.initializer if t.name == layer.weight)
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), layer.weight))
        override = [{**entry, "axis": 1} if "axis" in entry else entry for entry in override]
        # a shape stated for the weight elsewhere (value_info, as exporters such as torch.export write
        # it, or a graph input listing the initializer) is the old [N, K]: it would fail shape inference
        _restate_weight_shape(proto, layer.weight, w.T.shape)
    out = node.output[0]
    mid = f"{out}__qae_matmul" if has_bias else out
    nodes = [helper.make_node("MatMul", [node.input[0], layer.weight], [mid], name=layer.node_name)]
    if has_bias:
        nodes.append(helper.make_node("Add", [mid, node.input[2]], [out], name=f"{layer.node_name}__qae_bias"))
    del proto.graph.node[index]
    for offset, new in enumerate(nodes):
        proto.graph.node.insert(index + offset, new)
    return override


def _restate_weight_shape(proto: onnx.ModelProto, name: str, shape: tuple[int, ...]) -> None:
    """Drop ``name``'s value_info (shape inference restates it) and give a graph input of that name ``shape``."""
    kept = [vi for vi in proto.graph.value_info if vi.name != name]
    if len(kept) != len(proto.graph.value_info):
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(kept)
    for vi in proto.graph.input:
        if vi.name == name and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
            for d in shape:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)


def _untie_shared_weights(proto: onnx.ModelProto, layers: Sequence[LayerSpec], genome: Genome) -> list[LayerSpec]:
    """``layers`` with their own copy of a weight that several layers read (a tied or siamese weight)
    wherever the genome gives those layers different genes: each such layer's node reads
    ``<weight>__qae_<layer>``, so every layer is built as its gene says (else the one quantized weight
    served them all, and the float layer ran at another's width). Layers of one gene keep sharing one
    weight, stored once."""
    by_weight: dict[str, list[LayerSpec]] = {}
    for layer in layers:
        if layer.weight:
            by_weight.setdefault(layer.weight, []).append(layer)
    split = {lay.name for group in by_weight.values() if len({genome[lay.name] for lay in group}) > 1
             for lay in group}
    if not split:
        return list(layers)
    inits = {t.name: t for t in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    out = []
    for layer in layers:
        if layer.name not in split:
            out.append(layer)
            continue
        own = f"{layer.weight}__qae_{layer.name}"
        copy_ = onnx.TensorProto()
        copy_.CopyFrom(inits[layer.weight])
        copy_.name = own
        proto.graph.initializer.append(copy_)
        node = nodes[layer.node_name]
        for i, name in enumerate(node.input):
            if name == layer.weight:
                node.input[i] = own
        out.append(replace(layer, weight=own))
    _drop_unused_initializers(proto)
    return out


def _fold_gemm_beta(proto: onnx.ModelProto, gemms: set[str]) -> None:
    """Give each of these Gemm nodes with a constant bias and ``beta`` != 1 the bias ``beta * C`` (a new
    initializer: C may have other readers) and ``beta`` 1. ONNX Runtime's QDQ quantizer stores the bias as
    int32 dequantizing to C and then sets ``beta`` to 1, so without this the built model adds C where the
    float model adds ``beta * C`` (a Gemm exported with alpha and beta, e.g. by a hand-written graph)."""
    folded = False
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "Gemm" or node.name not in gemms or len(node.input) < 3 or node.input[2] not in inits:
            continue
        beta = next((a for a in node.attribute if a.name == "beta"), None)
        if beta is None or beta.f == 1.0:
            continue
        c = numpy_helper.to_array(inits[node.input[2]])
        name = f"{node.input[2]}__qae_beta_{node.name}"
        proto.graph.initializer.append(numpy_helper.from_array((c * np.asarray(beta.f, c.dtype)).astype(c.dtype), name))
        node.input[2] = name
        beta.f = 1.0
        folded = True
    if folded:  # the plain C, if nothing else reads it (a graph walk: only when something changed)
        _drop_unused_initializers(proto)


def _static_pass(
    proto: onnx.ModelProto, layers: list[LayerSpec], overrides: dict[str, list[dict[str, Any]]], ranges: Ranges
) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    tensors = TensorsData(
        CalibrationMethod.MinMax, {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()}
    )
    quantizer = QDQQuantizer(
        proto,
        False,
        False,
        QuantType.QInt8,
        QuantType.QUInt8,
        tensors,
        sorted({lay.node_name for lay in layers}),
        [],
        sorted({lay.op_type for lay in layers}),
        # Outputs stay float: a layer's precision is that of its inputs, and the next layer
        # quantizes what it reads (otherwise a 16-bit layer would get an 8-bit output for free).
        {
            "TensorQuantOverrides": overrides,
            "ActivationSymmetric": False,
            "OpTypesToExcludeOutputQuantization": sorted({lay.op_type for lay in layers}),
        },
    )
    with _Quiet():
        return quantizer.quantize_model()


def _constant_of(proto: onnx.ModelProto, name: str) -> float | None:
    """The scalar value of an initializer or Constant node output, else None."""
    for init in proto.graph.initializer:
        if init.name == name:
            return float(numpy_helper.to_array(init).reshape(-1)[0])
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute:
            return float(numpy_helper.to_array(node.attribute[0].t).reshape(-1)[0])
    return None


def _quantize_conv_outputs(
    proto: onnx.ModelProto, convs: list[LayerSpec], genome: Genome, ranges: Ranges, float_readers: set[str]
) -> None:
    """Give a static Conv stored in 8 bits whose never-negative output reaches no quantized layer (a
    pooling head, a residual Add, a dynamic layer) an output Q/DQ on the 8-bit grid.

    ONNX Runtime has no integer Conv kernel with a float output: without a QuantizeLinear after it
    (a Relu/Clip in between is dropped when the grid already clips), DQ -> Conv runs as a float
    Conv on dequantized tensors. A Conv feeding the next layer gets that Q from the next layer's
    input; this gives it to the others. The range is the Conv output's calibrated range, clipped by
    the Relu/Clip chain after it.

    Never where a float or weight-only layer (``float_readers``: their node names) reads the output
    (build 9): its input would be on the 8-bit grid, and where a quantized layer reads its output in
    turn, ONNX Runtime's WeightBiasQuantization / QDQ fusion runs that float Conv or Gemm as an int8
    QLinearConv (per-tensor int8 weights it made itself): the gene said float."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    for layer in convs:
        gene = genome[layer.name]
        # 8-bit storage: 8 bits, and the emulated 5-7 (their output grid is 8-bit: finer than the layer's
        # own input grid, which stays the gene's; what it buys is ORT's integer kernel)
        if not gene.static_activation or not 4 < int(gene.activation_bits) <= 8 or layer.output not in ranges:
            continue
        tensor, (lo, hi) = layer.output, ranges[layer.output]
        while len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in ("Relu", "Clip"):
            act = consumers[tensor][0]
            if act.op_type == "Relu":
                lo, hi = max(lo, 0.0), max(hi, 0.0)
            else:  # Clip(x, min, max), either bound optional
                bounds = [_constant_of(proto, name) if name else None for name in (*act.input[1:3], "", "")[:2]]
                lo = lo if bounds[0] is None else max(lo, bounds[0])
                hi = hi if bounds[1] is None else min(hi, bounds[1])
            tensor = act.output[0]
        users = consumers.get(tensor, [])
        # Whether a quantized layer reads it: its QuantizeLinear, maybe after an Identity and the Clip
        # of an emulated width; an Identity before a float or weight-only layer does not count.
        after = users
        while len(after) == 1 and after[0].op_type in ("Identity", "Clip"):
            after = consumers.get(after[0].output[0], [])
        feeds_a_layer = any(n.op_type == "QuantizeLinear" for n in after)
        # Never-negative outputs only (a Conv + ReLU block), on the unsigned grid: an int8 Q/DQ that
        # ORT propagates through a Reshape fails to load in ORT 1.32 ("output_dtype INT8 does not match
        # y_zero_point type UINT8", its S8->U8 rewrite; benchmarks/PEERS.md has NNCF hitting it).
        read_as_float = any(n.name in float_readers for n in [*users, *after])
        if tensor in outputs or not users or feeds_a_layer or read_as_float or not 0.0 <= lo <= hi:
            continue
        qp = activation_qparams((lo, hi), gene if int(gene.activation_bits) == 8 else replace(gene, activation_bits=8))
        prefix = f"{tensor}__qae_out"
        proto.graph.initializer.extend([
            numpy_helper.from_array(np.array(qp.scale, np.float32), f"{prefix}_scale"),
            numpy_helper.from_array(np.array(qp.zero_point, _np_storage(qp.storage)), f"{prefix}_zero_point"),
        ])
        for node in users:
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = f"{prefix}_dq"
        proto.graph.node.extend([
            helper.make_node("QuantizeLinear", [tensor, f"{prefix}_scale", f"{prefix}_zero_point"], [f"{prefix}_q"],
                             name=f"{prefix}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zero_point"],
                             [f"{prefix}_dq"], name=f"{prefix}_DequantizeLinear"),
        ])


def _drop_zero_points(proto: onnx.ModelProto, convs: set[str]) -> None:
    """Leave out the all-zero zero points of the DequantizeLinear of a Conv's weight and bias.

    The input is optional and defaults to 0 of the stored type, so the model computes the same;
    ORT's quantizer writes them anyway (an int32 zero per output channel for the bias: as many bytes
    as the bias itself). ORT still fuses the Conv into QLinearConv without them; its QGemm fusion
    needs them, so Gemm and MatMul keep theirs."""
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    users: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for node in proto.graph.node:
        if node.name not in convs:
            continue
        for name in node.input[1:3]:  # weight, bias
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or dq.input[0] not in inits:
                continue
            zero = inits.get(dq.input[2])
            if zero is not None and users[dq.input[2]] == 1 and not numpy_helper.to_array(zero).any():
                del dq.input[2]
    _drop_unused_initializers(proto)


_FUSABLE = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def _float_bias_where_unfused(proto: onnx.ModelProto, convs: set[str]) -> None:
    """A Conv that ORT cannot run as QLinearConv (4- or 16-bit weights or activations, float
    activations) gets its int32 bias back as float: the same values its DequantizeLinear computes,
    without a scale per output channel (4 bytes a channel). A fusable Conv keeps the int32 bias its
    fusion needs."""
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}

    def stored(tensor: str) -> int | None:
        """The element type of the quantized tensor a DequantizeLinear reads, else None."""
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        src = dq.input[0]
        if src in inits:
            return int(inits[src].data_type)
        q = producer.get(src)
        if q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 2 and q.input[2] in inits:
            return int(inits[q.input[2]].data_type)
        return None

    drop: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.name not in convs or len(node.input) < 3:
            continue
        dq = producer.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        if stored(node.input[0]) in _FUSABLE and stored(node.input[1]) in _FUSABLE:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.int64) if len(dq.input) > 2 else 0
        # exactly what DequantizeLinear computes: float(q - zero) * scale, in float32
        proto.graph.initializer.append(numpy_helper.from_array((q - zero).astype(np.float32) * scale, dq.output[0]))
        drop.append(dq)
    for dq in drop:
        proto.graph.node.remove(dq)
    _drop_unused_initializers(proto)


def _strip_activation_qdq(proto: onnx.ModelProto, tensors: list[str]) -> None:
    """Remove the Q/DQ pair on each tensor, reconnecting its consumers to the float tensor."""
    if not tensors:
        return
    targets = set(tensors)
    q_nodes = {n.input[0]: n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in targets}
    remove = []
    for tensor, qnode in q_nodes.items():
        dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == qnode.output[0]]
        for dnode in dq:
            for node in proto.graph.node:
                for i, name in enumerate(node.input):
                    if name == dnode.output[0]:
                        node.input[i] = tensor
            remove.append(dnode)
        remove.append(qnode)
    # A tensor that is a graph output keeps its name: ONNX Runtime renames its producer's output
    # (``y_QuantizeLinear_Input``) and lets the DequantizeLinear write ``y``. Give the name back.
    producers = {out: n for n in proto.graph.node for out in n.output}
    for dnode in [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in targets]:
        qnode = producers.get(dnode.input[0])
        if qnode is None or qnode.op_type != "QuantizeLinear" or qnode in remove or dnode in remove:
            continue
        source = qnode.input[0]
        for node in proto.graph.node:
            for i, name in enumerate(node.output):
                if name == source:
                    node.output[i] = dnode.output[0]
            for i, name in enumerate(node.input):
                if name == source:
                    node.input[i] = dnode.output[0]
        remove += [qnode, dnode]
    for node in remove:
        proto.graph.node.remove(node)
    _drop_unused_initializers(proto)


_GATHERABLE = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16)


def _gather_then_dequantize(proto: onnx.ModelProto, gather_nodes: set[str]) -> None:
    """Gather the integer rows first, then dequantize only those: DequantizeLinear -> Gather would
    dequantize the whole embedding table on every inference (30k x 384 values for MiniLM).

    Per-tensor: Gather(Wq) -> DequantizeLinear. Per-row (axis 0): the rows' scales and zero points
    are gathered too and applied as (q - zp) * scale. ONNX Runtime's Gather takes no int4 data, so a
    4-bit table of even width becomes one GatherBlockQuantized node instead (``_gather_block_int4``),
    which computes the same values; an odd-width table keeps the plain path.
    """
    if not gather_nodes:
        return
    inits = {t.name: t for t in proto.graph.initializer}
    producers = {out: n for n in proto.graph.node for out in n.output}
    nodes = list(proto.graph.node)
    new_nodes: list[onnx.NodeProto] = []
    dropped: set[str] = set()
    retired: set[str] = set()
    uses = Counter(name for n in nodes for name in n.input)
    for node in nodes:
        dq = producers.get(node.input[0]) if node.name in gather_nodes and node.op_type == "Gather" else None
        q = inits.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if dq is None or q is None or dq.input[1] not in inits:
            new_nodes.append(node)
            continue
        scale = inits[dq.input[1]]
        zp = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
        alone = uses[dq.output[0]] == 1 and uses[q.name] == 1  # a table shared (tied weights) stays as it is
        if q.data_type in _INT4 and alone and (block := _gather_block_int4(proto, node, q, scale,
                                                                           inits.get(zp or ""), axis)):
            new_nodes.append(block)
            dropped.add(dq.output[0])
            retired.update(name for name in dq.input[1:] if name)
            continue
        if q.data_type not in _GATHERABLE:
            new_nodes.append(node)
            continue
        ids, out, tag = node.input[1], node.output[0], node.name
        rows = f"{out}__qae_rows"
        new_nodes.append(helper.make_node("Gather", [q.name, ids], [rows], name=f"{tag}/gather_q", axis=0))
        per_row = len(scale.dims) == 1 and scale.dims[0] > 1
        if not per_row:
            new_nodes.append(helper.make_node("DequantizeLinear", [rows, scale.name] + ([zp] if zp else []), [out],
                                              name=f"{tag}/dequantize"))
        elif axis == 0:
            axes = f"{out}__qae_axes"
            proto.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
            to = scale.data_type
            new_nodes += [
                helper.make_node("Cast", [rows], [f"{rows}_f"], name=f"{tag}/cast", to=to),
                helper.make_node("Gather", [scale.name, ids], [f"{out}__qae_s"], name=f"{tag}/gather_s", axis=0),
                helper.make_node("Unsqueeze", [f"{out}__qae_s", axes], [f"{out}__qae_s1"], name=f"{tag}/unsqueeze_s"),
            ]
            centred = f"{rows}_f"
            if zp:
                new_nodes += [
                    helper.make_node("Gather", [zp, ids], [f"{out}__qae_z"], name=f"{tag}/gather_z", axis=0),
                    helper.make_node("Cast", [f"{out}__qae_z"], [f"{out}__qae_zf"], name=f"{tag}/cast_z", to=to),
                    helper.make_node("Unsqueeze", [f"{out}__qae_zf", axes], [f"{out}__qae_z1"],
                                     name=f"{tag}/unsqueeze_z"),
                    helper.make_node("Sub", [f"{rows}_f", f"{out}__qae_z1"], [f"{rows}_c"], name=f"{tag}/centre"),
                ]
                centred = f"{rows}_c"
            new_nodes.append(helper.make_node("Mul", [centred, f"{out}__qae_s1"], [out], name=f"{tag}/scale"))
        else:  # scales along another axis: not an embedding layout, keep the plain path
            new_nodes.pop()
            new_nodes.append(node)
            continue
        dropped.add(dq.output[0])
    still_used = {name for n in new_nodes for name in n.input}
    kept = [n for n in new_nodes if not (n.op_type == "DequantizeLinear" and n.output[0] in dropped
                                         and n.output[0] not in still_used)]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    if retired:  # the DequantizeLinear's scale and zero point a GatherBlockQuantized replaced
        used = {name for n in kept for name in n.input}
        keep = [t for t in proto.graph.initializer if t.name not in retired or t.name in used]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)


_INT4 = (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


def _gather_block_int4(proto: onnx.ModelProto, node: onnx.NodeProto, q: onnx.TensorProto, scale: onnx.TensorProto,
                       zp: onnx.TensorProto | None, axis: int) -> onnx.NodeProto | None:
    """The Gather of a 4-bit table ``[V, H]`` (per-tensor or per-row scales) as a GatherBlockQuantized
    node of the same name and output, or None where that node cannot hold it (odd width, scales along
    the width). One block spans a whole row (``block_size``: the power of two >= H; the row is its
    one, partial, block), so each row keeps its one scale and zero point; a per-tensor scale is
    repeated per row. Values are stored unsigned (an int4 table offset by 8), packed two to a byte
    low nibble first (``kernels.pack``); the table's initializer keeps its name, so its nominal width
    still applies (``evaluate.sizes`` counts two values a byte). The values it computes are
    DequantizeLinear's, bit for bit (tests/quant)."""
    if len(q.dims) != 2 or q.dims[1] % 2 or (scale.dims and not (len(scale.dims) == 1 and axis == 0)):
        return None
    n_rows, width = int(q.dims[0]), int(q.dims[1])
    values = numpy_helper.to_array(q).astype(np.int16)
    zero = numpy_helper.to_array(zp).astype(np.int16) if zp is not None else np.zeros((), np.int16)
    if q.data_type == onnx.TensorProto.INT4:  # signed -> unsigned: both offset by 8, the difference kept
        values, zero = values + 8, zero + 8
    s = numpy_helper.to_array(scale)
    scales = np.broadcast_to(s.reshape(-1, 1) if s.ndim else s, (n_rows, 1))
    zeros = np.broadcast_to(zero.reshape(-1, 1) if zero.ndim else zero, (n_rows, 1))
    data = kernels.pack(values, 4)
    tag = node.name or node.output[0]
    inits = [numpy_helper.from_array(data, q.name),
             numpy_helper.from_array(np.ascontiguousarray(scales), f"{q.name}__qae_row_scales")]
    inputs = [q.name, node.input[1], f"{q.name}__qae_row_scales"]
    if not np.all(zeros == 8):  # GatherBlockQuantized's default zero point for 4 bits is 8
        inits.append(numpy_helper.from_array(kernels.pack(np.ascontiguousarray(zeros), 4), f"{q.name}__qae_row_zeros"))
        inputs.append(f"{q.name}__qae_row_zeros")
    block = max(16, 1 << (width - 1).bit_length())
    replaced = {t.name for t in inits}
    keep = [t for t in proto.graph.initializer if t.name not in replaced]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep + inits)
    kernels.ensure_ms_domain(proto)
    return kernels.gather_block_node(inputs, list(node.output), tag, block, 4)


def _dequantized_weights(proto: onnx.ModelProto, layer: LayerSpec, gene: Gene, result: QuantResult) -> None:
    """Store an LSTM's/GRU's W and R as integers, each dequantized by a DequantizeLinear feeding the op.

    Scales are per gate row (axis 1 of [directions, gates*hidden, inputs], shared across directions),
    since each row is one gate unit's weights; the widths are the gene's, emulated ones in int8.
    """
    inits = {t.name: t for t in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.name == layer.node_name)
    position = list(proto.graph.node).index(node)
    signed = gene.scheme != "asymmetric"
    elem = INT_TYPES[(gene.weight_storage_bits, signed)]
    for slot, weight in ((1, layer.weight), (2, layer.extra_weights[0])):
        w = numpy_helper.to_array(inits[weight]).astype(np.float32)
        qp = weight_qparams(w, gene, 1)
        scale, zero = qp.scale.astype(np.float32), qp.zero_point.astype(np.int64)
        shaped = (scale.reshape(1, -1, 1), zero.reshape(1, -1, 1)) if scale.ndim == 1 else (scale, zero)
        q = np.clip(np.round(w / shaped[0]) + shaped[1], qp.qlo, qp.qhi).astype(np.int64)
        qname, sname, zname = f"{weight}_quantized", f"{weight}_scale", f"{weight}_zero_point"
        proto.graph.initializer.extend(
            [
                integer_tensor(qname, elem, q),
                numpy_helper.from_array(scale, sname),
                integer_tensor(zname, elem, zero),
            ]
        )
        dq = helper.make_node(
            "DequantizeLinear", [qname, sname, zname], [f"{weight}_dequantized"], name=f"qae_dq/{weight}"
        )
        if scale.ndim == 1:
            dq.attribute.append(helper.make_attribute("axis", 1))
        proto.graph.node.insert(position, dq)
        position += 1
        node.input[slot] = dq.output[0]
        result.nominal_bits[weight] = int(gene.weight_bits)
    if gene.emulated:
        result.emulated_layers.append(layer.name)
    _drop_unused_initializers(proto)


def _insert_clips(proto: onnx.ModelProto, clips: dict[str, tuple[float, float]]) -> None:
    """Clip(x, lo, hi) before the QuantizeLinear of each emulated-width activation."""
    for tensor, (lo, hi) in clips.items():
        for index, node in enumerate(proto.graph.node):
            if node.op_type == "QuantizeLinear" and node.input[0] == tensor:
                clipped = f"{tensor}__clip"
                lo_name, hi_name = f"{tensor}__clip_lo", f"{tensor}__clip_hi"
                proto.graph.initializer.extend(
                    [
                        numpy_helper.from_array(np.array(lo, np.float32), lo_name),
                        numpy_helper.from_array(np.array(hi, np.float32), hi_name),
                    ]
                )
                clip = helper.make_node("Clip", [tensor, lo_name, hi_name], [clipped], name=f"qae_clip/{tensor}")
                node.input[0] = clipped
                proto.graph.node.insert(index, clip)
                break


def _drop_unused_initializers(proto: onnx.ModelProto) -> None:
    used = {name for n in proto.graph.node for name in n.input}
    used |= {o.name for o in proto.graph.output}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


def _map_quantized_names(proto: onnx.ModelProto, result: QuantResult) -> None:
    """The quantizers rename weights (``W_quantized``, ``W_Transposed_quantized``): follow them."""
    bits = {}
    names = {t.name for t in proto.graph.initializer}
    for weight, nominal in result.nominal_bits.items():
        for candidate in (f"{weight}_quantized", f"{weight}_Transposed_quantized", weight):
            if candidate in names:
                bits[candidate] = nominal
                break
    result.nominal_bits = bits


class _Quiet:
    """ONNX Runtime's quantizers log warnings qae handles itself; keep the user's terminal clean."""

    def __enter__(self) -> None:
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().setLevel(self._level)


def model_suffix(result: Any) -> str:
    """The file suffix of a built candidate: ``.onnx``, or ``.tflite`` for a LiteRT one (``LiteResult``)."""
    return str(getattr(result, "suffix", ".onnx"))


def save_model(result: QuantResult, out: str | Path) -> Path:
    """Write atomically: a failed or interrupted write leaves no file behind. A LiteRT result
    (``harness.quant.litert_quant.LiteResult``) is written as its .tflite bytes."""
    out = Path(out)
    content = getattr(result, "content", None)
    if isinstance(content, bytes):
        from harness.core.atomic import atomic_write_bytes

        atomic_write_bytes(out, content)
        return out
    with atomic_path(out) as tmp:
        onnx.save(result.proto, str(tmp))
    return out
