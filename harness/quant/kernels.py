"""Block-wise weights and the weight-only kernels qae writes itself (issue 15).

Three node forms, each checked against ONNX Runtime 1.32's schemas and CPU kernels:

- ``MatMulNBits`` (com.microsoft): ``Y = A @ dequant(B)``. B is uint8 of shape
  ``[N, k_blocks, block_size * bits / 8]``: the weight transposed to ``[N, K]``, K padded to whole
  blocks, each block's values packed low bits first (two 4-bit values to a byte, the first in the
  low nibble). ``scales`` is ``[N, k_blocks]`` in A's type; ``zero_points`` is uint8
  ``[N, ceil(k_blocks * bits / 8)]`` packed the same way, and when absent ONNX Runtime uses
  ``2^(bits-1)``, which is how qae stores a symmetric grid (the signed value plus ``2^(bits-1)``).
  Attributes K, N, bits (the CPU kernel takes 2, 4, 8), block_size (a power of two >= 16) and
  ``accuracy_level`` (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8: A quantized per block), left out when
  unset as ONNX Runtime's own quantizer does.
- ``GatherBlockQuantized`` (com.microsoft) for an embedding table ``[V, H]``: qae writes uint8 data
  (the CPU kernel's types are uint8, int4, uint4 and fp8/fp4; uint8 with ``bits`` 2, 4 or 8 covers
  every width with one layout), gather_axis 0 (uint8 requires it), quantize_axis 1 with blocks of
  ``block_size`` along H (the last block may be partial), values packed along the last axis low bits
  first for bits < 8. ``scales`` ``[V, ceil(H / block_size)]`` float; ``zero_points`` uint8, packed
  like the data, or absent for a symmetric grid (default ``2^(bits-1)`` for uint8 data).
- ``DequantizeLinear`` with ``block_size`` (ONNX opset 21) feeding a MatMul or Gemm: the QDQ form of
  block-wise weights. Integer weights in their own type (int4/int8/int16, emulated widths in int8),
  scales with the weight's shape but ``ceil(K / block_size)`` along the K axis.

Quantization is row-wise on a 2-D view ``[C, L]``: C output channels (or table rows), L the
reduction axis the blocks run along. ``quantize_rows`` does round-to-nearest itself and hands every
other rounding method to ``harness.quant.rounding.quantize_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from harness.core.errors import ModelError
from harness.core.genome import Gene
from harness.core.model import LayerSpec
from harness.quant.rounding import INT_TYPES, grid, integer_tensor

MS_DOMAIN = "com.microsoft"



@dataclass(frozen=True)
class RowQuant:
    """A weight quantized row by row, in blocks along each row.

    ``q``: integers ``[C, L]``; ``scale``: float32 ``[C, n_blocks]``; ``zero_point``: integers
    ``[C, n_blocks]`` on ``q``'s grid, or None for a symmetric grid (signed ``q``, zero at 0).
    ``block_size`` None means one block spanning the row (per-channel).
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    block_size: int | None

    @property
    def span(self) -> int:
        return self.block_size or self.q.shape[1]

    def expand(self, a: np.ndarray) -> np.ndarray:
        """A per-block array ``[C, n_blocks]`` spread over the row ``[C, L]``."""
        return np.repeat(a, self.span, axis=1)[:, : self.q.shape[1]]

    def dequantize(self) -> np.ndarray:
        zero = 0 if self.zero_point is None else self.expand(self.zero_point)
        return ((self.q - zero) * self.expand(self.scale)).astype(np.float32)


def rows_view(w: np.ndarray, channel_axis: int) -> np.ndarray:
    """``w`` as ``[C, L]``: the channel axis first, everything else flattened (the reduction)."""
    moved = np.moveaxis(np.asarray(w, np.float32), channel_axis, 0)
    return moved.reshape(moved.shape[0], -1)


def from_rows(rows: np.ndarray, shape: tuple[int, ...], channel_axis: int) -> np.ndarray:
    moved = [shape[channel_axis]] + [d for i, d in enumerate(shape) if i != channel_axis]
    return np.moveaxis(rows.reshape(moved), 0, channel_axis)


#: A grid fixed beforehand: scale ``[C, n_blocks]`` and zero point (None for a symmetric grid), such as a
#: fine-tune trained on (``harness.quant.fakequant``); the weights round to nearest on it.
FixedGrid = tuple[np.ndarray, np.ndarray | None]


def quantize_rows(
    rows: np.ndarray, gene: Gene, *, block_size: int | None, x: np.ndarray | None = None,
    fixed: FixedGrid | None = None,
) -> RowQuant:
    """Quantize ``[C, L]`` at the gene's weight width and scheme, with its rounding method, or, with
    ``fixed``, round to nearest on that grid whatever the gene's rounding (a fine-tune's export)."""
    bits = int(gene.weight_bits)
    symmetric = gene.scheme != "asymmetric"
    if fixed is not None:
        return on_grid(rows, bits, symmetric, block_size, fixed)
    if gene.rounding != "rtn":
        return _rounded(rows, gene, bits, symmetric, block_size, x)
    qlo, qhi = grid(bits, symmetric)
    c, length = rows.shape
    span = block_size or length
    n_blocks = -(-length // span)
    padded = np.pad(rows.astype(np.float64), ((0, 0), (0, n_blocks * span - length)))  # zeros: inside every range
    blocks = padded.reshape(c, n_blocks, span)
    wmin = np.minimum(blocks.min(axis=2), 0)
    wmax = np.maximum(blocks.max(axis=2), 0)
    if symmetric:
        step = np.maximum(np.abs(wmin), np.abs(wmax)) / qhi
        scale = np.where(step > 0, step, 1.0).astype(np.float32)
        if gene.scheme == "power_of_two":
            scale = np.exp2(np.ceil(np.log2(scale))).astype(np.float32)
        zero = None
    else:
        step = (wmax - wmin) / (qhi - qlo)
        scale = np.where(step > 0, step, 1.0).astype(np.float32)
        zero = np.clip(np.round(qlo - wmin / scale), qlo, qhi).astype(np.int64)
    return on_grid(rows, bits, symmetric, block_size, (scale, zero))


def on_grid(rows: np.ndarray, bits: int, symmetric: bool, block_size: int | None, fixed: FixedGrid) -> RowQuant:
    """``rows`` rounded to nearest on a given grid (``FixedGrid``), clipped to qae's ``bits``-wide range."""
    c, length = rows.shape
    n_blocks = -(-length // (block_size or length))
    given = [np.asarray(fixed[0])] + ([] if symmetric or fixed[1] is None else [np.asarray(fixed[1])])
    if any(a.size != c * n_blocks for a in given):
        raise ModelError(f"a fixed weight grid holds {[a.size for a in given]} values where this weight has "
                         f"{c} rows x {n_blocks} blocks: fine-tune again")
    scale = np.asarray(fixed[0], np.float32).reshape(c, n_blocks)
    zero = None if symmetric or fixed[1] is None else np.asarray(fixed[1]).astype(np.int64).reshape(c, n_blocks)
    if not np.all(scale > 0):
        raise ModelError("a fixed weight grid has a scale that is not positive: fine-tune again")
    qlo, qhi = grid(bits, symmetric)
    out = RowQuant(np.zeros((c, length), np.int64), scale, zero, bits, block_size)
    z = 0 if zero is None else out.expand(zero)
    q = np.clip(np.round(rows / out.expand(scale)) + z, qlo, qhi).astype(np.int64)
    return RowQuant(q, scale, zero, bits, block_size)


def _rounded(
    rows: np.ndarray, gene: Gene, bits: int, symmetric: bool, block_size: int | None, x: np.ndarray | None
) -> RowQuant:
    """``harness.quant.rounding``'s methods, brought onto qae's grid conventions."""
    try:
        from harness.quant import rounding
    except ImportError:
        raise ModelError(
            f"rounding {gene.rounding} needs harness.quant.rounding, which this checkout lacks: use rounding rtn"
        ) from None
    if gene.rounding == "gptq" and x is None:
        raise ModelError("rounding gptq needs the layer's calibration inputs: pass activation samples to quantize()")
    got = rounding.quantize_weight(
        rows, bits, block_axis=1, block_size=block_size, symmetric=symmetric, method=gene.rounding, x=x
    )
    q = np.asarray(got.q).astype(np.int64).reshape(rows.shape)
    scale = np.asarray(got.scale, np.float32).reshape(rows.shape[0], -1)
    zero = None if symmetric or got.zero_point is None else np.asarray(got.zero_point).astype(np.int64)
    if zero is not None:
        zero = zero.reshape(scale.shape)
    if zero is not None and q.min() < 0:  # a signed asymmetric grid: shift it onto [0, 2^bits - 1]
        q, zero = q + 2 ** (bits - 1), zero + 2 ** (bits - 1)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    if q.min() < lo or q.max() > hi:
        raise ModelError(f"rounding {gene.rounding} returned values outside the {bits}-bit grid [{lo}, {hi}]")
    return RowQuant(q, scale, zero, bits, block_size)


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-wide values packed along the last axis, low bits first, zero-padded."""
    per = 8 // bits
    v = np.asarray(values, np.uint16)
    pad = (-v.shape[-1]) % per
    if pad:
        v = np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, pad)])
    v = v.reshape(*v.shape[:-1], -1, per)
    out = np.zeros(v.shape[:-1], np.uint16)
    for j in range(per):
        out |= (v[..., j] & (2**bits - 1)) << (bits * j)
    return out.astype(np.uint8)


def unpack(packed: np.ndarray, bits: int, length: int) -> np.ndarray:
    """The inverse of ``pack``: ``length`` values along the last axis (for tests and readers)."""
    per = 8 // bits
    p = np.asarray(packed, np.uint8)
    parts = [(p >> (bits * j)) & (2**bits - 1) for j in range(per)]
    return np.stack(parts, axis=-1).reshape(*p.shape[:-1], -1)[..., :length]


def _unsigned(rq: RowQuant) -> tuple[np.ndarray, np.ndarray | None]:
    """The stored unsigned values and zero points: a symmetric grid is offset by ``2^(bits-1)``,
    ONNX Runtime's default zero point, so no zero-point tensor is written for it."""
    if rq.zero_point is None:
        return rq.q + 2 ** (rq.bits - 1), None
    return rq.q, rq.zero_point


# -- graph edits -------------------------------------------------------------------------------------
def ensure_ms_domain(proto: onnx.ModelProto) -> None:
    if not any(op.domain == MS_DOMAIN for op in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _node(proto: onnx.ModelProto, name: str) -> tuple[int, onnx.NodeProto]:
    for index, node in enumerate(proto.graph.node):
        if node.name == name:
            return index, node
    raise ModelError(f"node {name!r} is no longer in the graph: quantize from the float model")


def _weight(proto: onnx.ModelProto, name: str) -> np.ndarray:
    for init in proto.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise ModelError(f"weight {name!r} is no initializer of the model: quantize from the float model")


def matmul_nbits(proto: onnx.ModelProto, layer: LayerSpec, gene: Gene, x: np.ndarray | None = None,
                 fixed: FixedGrid | None = None) -> RowQuant:
    """Replace the layer's MatMul by a MatMulNBits node of the same name and output."""
    w = _weight(proto, layer.weight)
    k, n = w.shape
    bits, block = int(gene.weight_bits), int(gene.block_size or 0)
    rq = quantize_rows(rows_view(w, 1), gene, block_size=block, x=x, fixed=fixed)  # [N, K]
    values, zero = _unsigned(rq)
    n_blocks = rq.scale.shape[1]
    fill = np.full((n, n_blocks * block - k), 2 ** (bits - 1) if zero is None else 0, np.int64)
    if zero is not None:  # padding dequantizes to 0 in its own block
        fill = np.repeat(zero[:, -1:], n_blocks * block - k, axis=1)
    blocks = np.concatenate([values, fill], axis=1).reshape(n, n_blocks, block)
    index, node = _node(proto, layer.node_name)
    dtype = w.dtype if w.dtype in (np.float16, np.float32) else np.float32
    prefix = f"{layer.weight}_Q{bits}"
    inits = [numpy_helper.from_array(pack(blocks, bits), prefix),
             numpy_helper.from_array(rq.scale.astype(dtype), f"{prefix}_scales")]
    inputs = [node.input[0], prefix, f"{prefix}_scales"]
    if zero is not None:
        inits.append(numpy_helper.from_array(pack(zero, bits), f"{prefix}_zero_points"))
        inputs.append(f"{prefix}_zero_points")
    new = helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name, domain=MS_DOMAIN,
                           K=int(k), N=int(n), bits=bits, block_size=block)
    if gene.accuracy_level:  # left out when unset, as ONNX Runtime's own quantizer does
        new.attribute.append(helper.make_attribute("accuracy_level", int(gene.accuracy_level)))
    _replace(proto, index, new, inits)
    return rq


def gather_block(proto: onnx.ModelProto, layer: LayerSpec, gene: Gene, fixed: FixedGrid | None = None) -> RowQuant:
    """Replace the layer's Gather by a GatherBlockQuantized node of the same name and output."""
    table = _weight(proto, layer.weight)
    width = table.shape[1]
    bits, block = int(gene.weight_bits), int(gene.block_size or 0)
    if width % (8 // bits):
        raise ModelError(
            f"layer {layer.name}: a {bits}-bit GatherBlockQuantized table packs {8 // bits} values to a byte "
            f"along its width, which is {width}: use weight_bits 8 or kernel qdq for this table"
        )
    rq = quantize_rows(rows_view(table, 0), gene, block_size=block, fixed=fixed)  # [V, H], blocks along H
    values, zero = _unsigned(rq)
    index, node = _node(proto, layer.node_name)
    dtype = table.dtype if table.dtype in (np.float16, np.float32) else np.float32
    prefix = f"{layer.weight}_Q{bits}"
    data = values.astype(np.uint8) if bits == 8 else pack(values, bits)
    inits = [numpy_helper.from_array(data, prefix), numpy_helper.from_array(rq.scale.astype(dtype), f"{prefix}_scales")]
    inputs = [prefix, node.input[1], f"{prefix}_scales"]
    if zero is not None:
        inits.append(numpy_helper.from_array(zero.astype(np.uint8) if bits == 8 else pack(zero, bits),
                                             f"{prefix}_zero_points"))
        inputs.append(f"{prefix}_zero_points")
    _replace(proto, index, gather_block_node(inputs, list(node.output), node.name, block, bits), inits)
    return rq


def gather_block_node(inputs: list[str], outputs: list[str], name: str, block: int, bits: int) -> onnx.NodeProto:
    """A GatherBlockQuantized node over a table ``[V, H]``: rows gathered (axis 0), blocks along H."""
    return helper.make_node("GatherBlockQuantized", inputs, outputs, name=name, domain=MS_DOMAIN,
                            gather_axis=0, quantize_axis=1, block_size=block, bits=bits)


def block_dequantize(proto: onnx.ModelProto, layer: LayerSpec, gene: Gene, x: np.ndarray | None = None,
                     fixed: FixedGrid | None = None) -> str:
    """Store a MatMul's/Gemm's weight as integers with a block-wise DequantizeLinear feeding the op;
    returns the integer initializer's name (what its nominal width is recorded under)."""
    w = _weight(proto, layer.weight)
    axis = layer.channel_axis
    block = int(gene.block_size or 0)
    rq = quantize_rows(rows_view(w, axis), gene, block_size=block, x=x, fixed=fixed)
    k_axis = 1 - axis
    symmetric = rq.zero_point is None
    elem = INT_TYPES[(gene.weight_storage_bits, symmetric)]
    q = from_rows(rq.q, w.shape, axis)
    # scales in the weight's layout: [n_blocks, N] for a MatMul's [K, N], [N, n_blocks] for a Gemm's [N, K]
    scale = rq.scale if axis == 0 else rq.scale.T
    qname, sname, zname = f"{layer.weight}_quantized", f"{layer.weight}_scale", f"{layer.weight}_zero_point"
    dtype = w.dtype if w.dtype in (np.float16, np.float32) else np.float32
    inits = [
        integer_tensor(qname, elem, q),
        numpy_helper.from_array(np.ascontiguousarray(scale).astype(dtype), sname),
    ]
    if rq.zero_point is not None:  # a symmetric grid's zero point is 0, DequantizeLinear's default
        zero = rq.zero_point if axis == 0 else rq.zero_point.T
        inits.append(integer_tensor(zname, elem, zero))
    index, node = _node(proto, layer.node_name)
    dq = helper.make_node("DequantizeLinear", [qname, sname] + ([zname] if len(inits) == 3 else []),
                          [f"{layer.weight}_dequantized"], name=f"qae_dq/{layer.name}", axis=k_axis, block_size=block)
    for i, name in enumerate(node.input):
        if name == layer.weight:
            node.input[i] = dq.output[0]
    proto.graph.initializer.extend(inits)
    proto.graph.node.insert(index, dq)
    _drop_unused(proto)
    return qname


def _replace(proto: onnx.ModelProto, index: int, node: onnx.NodeProto, inits: list[onnx.TensorProto]) -> None:
    ensure_ms_domain(proto)
    proto.graph.initializer.extend(inits)
    del proto.graph.node[index]
    proto.graph.node.insert(index, node)
    _drop_unused(proto)


def _drop_unused(proto: onnx.ModelProto) -> None:
    used = {name for n in proto.graph.node for name in n.input}
    used |= {o.name for o in proto.graph.output}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)

