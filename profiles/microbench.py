"""Models for calibration: single-layer micro-benchmarks and a larger transformer, built with onnx.helper.

Every model here is a float ONNX model with a symbolic ``batch`` first dimension and a matching
random calibration set, so that it goes through the same quantizer (``harness.quant.workload.Workload``)
as a user's model: what the calibration measures is what the search will build. Seeds are fixed:
the same call gives byte-identical models, which is what makes a calibration resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21


@dataclass(frozen=True)
class LayerShape:
    """One MatMul micro-benchmark: ``[tokens, k] x [k, n]``."""

    tokens: int
    k: int
    n: int

    @property
    def tag(self) -> str:
        return f"mm{self.tokens}x{self.k}x{self.n}"


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list[int | str],
           y_shape: list[int | str], name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def single_layer(shape: LayerShape, seed: int = 0) -> onnx.ModelProto:
    """One MatMul with a constant weight: the smallest model a per-layer cost can be read from."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((shape.k, shape.n)) / np.sqrt(shape.k)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/layer/MatMul")
    return _model([node], [numpy_helper.from_array(w, "w")], ["batch", shape.tokens, shape.k],
                  ["batch", shape.tokens, shape.n], shape.tag)


def transformer(dim: int = 384, tokens: int = 16, blocks: int = 2, heads: int = 4, ffn: int = 4,
                seed: int = 0) -> onnx.ModelProto:
    """Pre-norm transformer blocks (q/k/v/out projections, GELU FFN) on ``[batch, tokens, dim]``.

    At the defaults every projection is 2.4 M MACs and every FFN layer 9.4 M MACs per inference:
    the "larger model" of the calibration benchmark, next to the tiny builtin digits-vit.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr.astype(np.float32) if arr.dtype.kind == "f" else arr, name))
        return name

    def linear(scope: str, x: str, k: int, n: int) -> str:
        w = const(f"{scope}.weight", rng.standard_normal((k, n)) / np.sqrt(k))
        b = const(f"{scope}.bias", rng.standard_normal(n) * 0.02)
        path = "/" + scope.replace(".", "/")
        nodes.append(helper.make_node("MatMul", [x, w], [f"{scope}.mm"], name=f"{path}/MatMul"))
        nodes.append(helper.make_node("Add", [f"{scope}.mm", b], [f"{scope}.out"], name=f"{path}/Add"))
        return f"{scope}.out"

    def norm(scope: str, x: str) -> str:
        g = const(f"{scope}.g", np.ones(dim))
        b = const(f"{scope}.b", np.zeros(dim))
        nodes.append(helper.make_node("LayerNormalization", [x, g, b], [f"{scope}.out"], axis=-1,
                                      name=f"/{scope.replace('.', '/')}/LayerNorm"))
        return f"{scope}.out"

    hd = dim // heads
    split_shape = const("shape.split", np.array([0, tokens, heads, hd], np.int64))
    merge_shape = const("shape.merge", np.array([0, tokens, dim], np.int64))
    scale = const("attn.scale", np.array(1.0 / np.sqrt(hd)))
    x = "x"
    for i in range(blocks):
        s = f"blocks.{i}"
        h = norm(f"{s}.norm1", x)
        qkv = []
        for proj in ("q_proj", "k_proj", "v_proj"):
            y = linear(f"{s}.attn.{proj}", h, dim, dim)
            nodes.append(helper.make_node("Reshape", [y, split_shape], [f"{y}.r"]))
            perm = [0, 2, 3, 1] if proj == "k_proj" else [0, 2, 1, 3]
            nodes.append(helper.make_node("Transpose", [f"{y}.r"], [f"{y}.t"], perm=perm))
            qkv.append(f"{y}.t")
        nodes.append(helper.make_node("MatMul", [qkv[0], qkv[1]], [f"{s}.att"]))
        nodes.append(helper.make_node("Mul", [f"{s}.att", scale], [f"{s}.att.s"]))
        nodes.append(helper.make_node("Softmax", [f"{s}.att.s"], [f"{s}.att.p"], axis=-1))
        nodes.append(helper.make_node("MatMul", [f"{s}.att.p", qkv[2]], [f"{s}.ctx"]))
        nodes.append(helper.make_node("Transpose", [f"{s}.ctx"], [f"{s}.ctx.t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"{s}.ctx.t", merge_shape], [f"{s}.ctx.m"]))
        o = linear(f"{s}.attn.out_proj", f"{s}.ctx.m", dim, dim)
        nodes.append(helper.make_node("Add", [x, o], [f"{s}.res1"]))
        h = norm(f"{s}.norm2", f"{s}.res1")
        f1 = linear(f"{s}.ffn.fc1", h, dim, ffn * dim)
        nodes.append(helper.make_node("Gelu", [f1], [f"{f1}.gelu"]))
        f2 = linear(f"{s}.ffn.fc2", f"{f1}.gelu", ffn * dim, dim)
        nodes.append(helper.make_node("Add", [f"{s}.res1", f2], [f"{s}.res2"]))
        x = f"{s}.res2"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return _model(nodes, inits, ["batch", tokens, dim], ["batch", tokens, dim], f"transformer{dim}")


def save_with_calib(model: onnx.ModelProto, folder: Path, stem: str, samples: int = 8,
                    seed: int = 0, ids_below: int | None = None) -> tuple[Path, Path]:
    """Write ``stem.onnx`` and a random ``stem.calib.npz`` for its one input (``x``, or int64 ``ids``
    below ``ids_below`` for an embedding Gather); returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    rng = np.random.default_rng(seed)
    if ids_below is not None:
        data = rng.integers(0, ids_below, [samples, *dims]).astype(np.int64)
    else:
        data = rng.standard_normal([samples, *dims]).astype(np.float32)
    onnx_path, calib_path = folder / f"{stem}.onnx", folder / f"{stem}.calib.npz"
    if not onnx_path.exists():
        onnx.save(model, str(onnx_path))
    if not calib_path.exists():
        arrays: dict[str, Any] = {inp.name: data}
        np.savez(calib_path, **arrays)
    return onnx_path, calib_path


# -- single-kernel models of ONNX Runtime's block-quantized contrib ops (com.microsoft) -------------
#: ORT 1.32's MatMulNBits takes bits 2..8 (its schema; the CPU provider's MLAS kernels run 2, 4 and 8)
#: and a power-of-two block_size >= 16; GatherBlockQuantized takes uint8 data packed at bits 2, 4 or 8
#: (low-order bits first along the last axis, which is then the quantize axis), or int4/uint4 data.
MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class KernelShape:
    """One block-quantized kernel micro-benchmark.

    ``kernel`` is ``matmulnbits`` (``[m, k] x [k, n]``, weights ``bits`` wide in blocks of ``block``
    along K, ``accuracy`` its accuracy_level) or ``gather_block`` (``m`` indices into a ``[k, n]``
    table of ``k`` rows, blocks along the row).
    """

    kernel: str
    m: int
    k: int
    n: int
    bits: int = 4
    block: int = 32
    accuracy: int = 0

    @property
    def tag(self) -> str:
        if self.kernel == "gather_block":
            return f"gbq{self.m}x{self.k}x{self.n}b{self.bits}g{self.block}"
        return f"mnb{self.m}x{self.k}x{self.n}b{self.bits}g{self.block}a{self.accuracy}"


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-wide integers along the last axis, low-order bits first, into uint8."""
    per = 8 // bits
    q = q.astype(np.uint8).reshape(*q.shape[:-1], q.shape[-1] // per, per)
    out = np.zeros(q.shape[:-1], dtype=np.uint8)
    for i in range(per):
        out |= (q[..., i] << (i * bits)).astype(np.uint8)
    return out


def block_quantize(w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest over blocks of the last axis: unsigned codes (zero point 2^(bits-1),
    ORT's default when zero_points is omitted) and one float scale per block."""
    rows, cols = w.shape
    wb = w.reshape(rows, cols // block, block)
    half = 1 << (bits - 1)
    scale = np.maximum(np.abs(wb).max(axis=-1), 1e-8) / (half - 1)
    q = np.clip(np.rint(wb / scale[..., None]) + half, 0, 2 * half - 1).astype(np.uint8)
    return q.reshape(rows, cols), scale.astype(np.float32)


def block_dequantize(q: np.ndarray, scale: np.ndarray, bits: int, block: int) -> np.ndarray:
    half = 1 << (bits - 1)
    rows, cols = q.shape
    qb = q.reshape(rows, cols // block, block).astype(np.float32) - half
    return (qb * scale[..., None]).reshape(rows, cols)


def _kernel_model(node: onnx.NodeProto, inits: list[onnx.TensorProto], x: onnx.ValueInfoProto,
                  y_shape: list[int | str], name: str) -> onnx.ModelProto:
    graph = helper.make_graph([node], name, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 10
    return model


def kernel_weights(shape: KernelShape, seed: int = 0) -> np.ndarray:
    """The float weight (``[k, n]``) or table (``[k rows, n]``) a kernel model quantizes."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((shape.k, shape.n)) / np.sqrt(shape.k)).astype(np.float32)


def kernel_model(shape: KernelShape, seed: int = 0) -> onnx.ModelProto:
    """One MatMulNBits or GatherBlockQuantized node (com.microsoft, as ORT 1.32 documents them).

    The input is ``x`` ``[1, m, k]`` float (MatMulNBits) or ``ids`` ``[1, m]`` int64 (the gather);
    the output ``y`` is ``[1, m, n]``. Weights are symmetric round-to-nearest codes from
    ``block_quantize``; zero points are left out (ORT's default 2^(bits-1)).
    """
    w = kernel_weights(shape, seed)
    if shape.kernel == "matmulnbits":
        if shape.k % shape.block:
            raise ValueError(f"K={shape.k} is not a multiple of block {shape.block}")
        q, scale = block_quantize(w.T.copy(), shape.bits, shape.block)  # [n, k]: blocks along K
        blob = _pack(q, shape.bits).reshape(shape.n, shape.k // shape.block, shape.block * shape.bits // 8)
        attrs: dict[str, Any] = {"K": shape.k, "N": shape.n, "bits": shape.bits, "block_size": shape.block}
        if shape.accuracy:
            attrs["accuracy_level"] = shape.accuracy
        node = helper.make_node("MatMulNBits", ["x", "w.q", "w.scale"], ["y"], name="/layer/MatMulNBits",
                                domain=MS_DOMAIN, **attrs)
        inits = [numpy_helper.from_array(blob, "w.q"), numpy_helper.from_array(scale, "w.scale")]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shape.m, shape.k])
        return _kernel_model(node, inits, x, [1, shape.m, shape.n], shape.tag)
    if shape.kernel == "gather_block":
        q, scale = block_quantize(w, shape.bits, shape.block)  # [rows, dim]: blocks along the row
        spread = spread_ids(shape.k, shape.m, seed)
        add = helper.make_node("Add", ["ids", "ids.offset"], ["ids.spread"], name="/ids/Add")
        node = helper.make_node("GatherBlockQuantized", ["w.q", "ids.spread", "w.scale"], ["y"],
                                name="/layer/GatherBlockQuantized", domain=MS_DOMAIN, bits=shape.bits,
                                block_size=shape.block, gather_axis=0, quantize_axis=1)
        inits = [numpy_helper.from_array(_pack(q, shape.bits), "w.q"), numpy_helper.from_array(scale, "w.scale"),
                 numpy_helper.from_array(spread, "ids.offset")]
        x = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, shape.m])
        graph = helper.make_graph([add, node], shape.tag, [x],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, shape.m, shape.n])],
                                  initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(MS_DOMAIN, 1)])
        model.ir_version = 10
        return model
    raise ValueError(f"unknown kernel {shape.kernel!r}: use matmulnbits or gather_block")


@dataclass(frozen=True)
class GatherShape:
    """One embedding-Gather micro-benchmark: ``tokens`` ids into a ``[rows, dim]`` table."""

    tokens: int
    rows: int
    dim: int

    @property
    def tag(self) -> str:
        return f"gather{self.tokens}x{self.rows}x{self.dim}"


def spread_ids(rows: int, tokens: int, seed: int = 0) -> np.ndarray:
    """``[1, tokens]`` int64 row offsets spread over a table of ``rows`` (leaving room for +1).

    A device agent feeds random ids in {0, 1}: gathering the same two rows measures hot cache lines,
    not a sentence's tokens spread over the vocabulary. The gather models add these offsets to the
    fed ids (one Add of ``tokens`` elements, costed as the rest of the graph), so each run reads
    ``tokens`` rows spread over the table as a real input does."""
    return np.random.default_rng(seed + 1).integers(0, max(rows - 2, 1), (1, tokens)).astype(np.int64)


def single_gather(shape: GatherShape, seed: int = 0) -> onnx.ModelProto:
    """One float embedding Gather (``[rows, dim]`` table) of ``[batch, tokens]`` int64 ``ids``
    plus ``spread_ids`` offsets."""
    rows, dim, tokens = shape.rows, shape.dim, shape.tokens
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, dim)) / np.sqrt(dim)).astype(np.float32)
    add = helper.make_node("Add", ["ids", "ids.offset"], ["ids.spread"], name="/ids/Add")
    node = helper.make_node("Gather", ["w", "ids.spread"], ["y"], name="/layer/Gather", axis=0)
    graph = helper.make_graph(
        [add, node], shape.tag,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", tokens])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", tokens, dim])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(spread_ids(rows, tokens, seed),
                                                                             "ids.offset")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model
