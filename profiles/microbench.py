"""Models for calibration: single-layer micro-benchmarks and a larger transformer, built with onnx.helper.

Every model here is a float ONNX model with a symbolic ``batch`` first dimension and a matching
random calibration set, so that it goes through the same quantizer (``harness.quant.workload.Workload``)
as a user's model: what the calibration measures is what the search will build. Seeds are fixed:
the same call gives byte-identical models, which is what makes a calibration resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
                    seed: int = 0) -> tuple[Path, Path]:
    """Write ``stem.onnx`` and a random ``stem.calib.npz`` for its one input ``x``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    data = np.random.default_rng(seed).standard_normal([samples, *dims]).astype(np.float32)
    onnx_path, calib_path = folder / f"{stem}.onnx", folder / f"{stem}.calib.npz"
    if not onnx_path.exists():
        onnx.save(model, str(onnx_path))
    if not calib_path.exists():
        np.savez(calib_path, x=data)
    return onnx_path, calib_path
