"""Quantized models are scored in exact integer arithmetic on every host (``harness.quant.exact``).

The inputs are chosen so that ONNX Runtime's u8s8 kernels saturate on x86 without VNNI (uint8
activations near 255 times int8 weights near 127): the scores must still equal numpy's exact
integer result, whichever CPU runs the suite.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.quant.evaluate import session
from harness.quant.exact import exact_int8

M, K, N, C = 8, 64, 16, 4
A_SCALE, W_SCALE = 0.01, 0.02


def _opset(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # mostly +-127 of one sign per output, so pairs of products add up past int16
    return np.where(rng.random(shape) < 0.9, 127, rng.integers(-127, 128, shape)).astype(np.int8)


def _qdq_matmul(w: np.ndarray, per_channel: bool) -> onnx.ModelProto:
    w_scale = np.full((N,), W_SCALE, np.float32) if per_channel else np.array(W_SCALE, np.float32)
    w_zp = np.zeros_like(w_scale, np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w_scale, "w_s"),
             numpy_helper.from_array(w_zp, "w_z"), numpy_helper.from_array(np.array(A_SCALE, np.float32), "a_s"),
             numpy_helper.from_array(np.array(0, np.uint8), "a_z")]
    return _opset(helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])], inits))


def _matmul_integer(w: np.ndarray) -> onnx.ModelProto:
    # as ORT's dynamic quantizer writes it, without a weight zero point
    nodes = [helper.make_node("MatMulInteger", ["a", "w"], ["y"])]
    return _opset(helper.make_graph(nodes, "int", [helper.make_tensor_value_info("a", TensorProto.UINT8, [M, K])],
                                    [helper.make_tensor_value_info("y", TensorProto.INT32, [M, N])],
                                    [numpy_helper.from_array(w, "w")]))


def _qdq_conv(w: np.ndarray) -> onnx.ModelProto:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "c_s", "c_z"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "c_s", "c_z"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full((N,), W_SCALE, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros((N,), np.int8), "w_z"),
             numpy_helper.from_array(np.array(A_SCALE, np.float32), "a_s"),
             numpy_helper.from_array(np.array(0, np.uint8), "a_z"),
             numpy_helper.from_array(np.array(8.0, np.float32), "c_s"),
             numpy_helper.from_array(np.array(0, np.uint8), "c_z")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 6, 6])
    return _opset(helper.make_graph(nodes, "conv", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                    inits))


def _unoptimized(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The model run op by op (no QDQ fusion): float products of dequantized values, no int16 step."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_qdq_matmul_scores_exactly_where_u8s8_would_saturate(per_channel: bool) -> None:
    rng = np.random.default_rng(0)
    w = _weights(rng, (K, N))
    a = rng.integers(230, 256, (M, K)).astype(np.uint8)
    x = a.astype(np.float32) * A_SCALE
    exact = (a.astype(np.int64) @ w.astype(np.int64)).astype(np.float64) * A_SCALE * W_SCALE
    y = session(_qdq_matmul(w, per_channel)).run(None, {"x": x})[0]
    assert np.abs(y - exact).max() <= 1e-5 * np.abs(exact).max()


def test_a_dynamic_matmul_integer_scores_exactly() -> None:
    rng = np.random.default_rng(1)
    w = _weights(rng, (K, N))
    a = rng.integers(200, 256, (M, K)).astype(np.uint8)
    y = session(_matmul_integer(w)).run(None, {"a": a})[0]
    assert np.array_equal(y, a.astype(np.int64) @ w.astype(np.int64))


def test_a_qdq_conv_scores_as_its_ops_say() -> None:
    rng = np.random.default_rng(2)
    w = _weights(rng, (N, C, 3, 3))
    x = rng.integers(230, 256, (1, C, 6, 6)).astype(np.float32) * A_SCALE
    model = _qdq_conv(w)
    assert np.array_equal(session(model).run(None, {"x": x})[0], _unoptimized(model, {"x": x}))


def test_the_rewrite_is_the_same_function_with_uint8_weights() -> None:
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)  # -128 too: it maps to 0, not below
    x = rng.random((M, K)).astype(np.float32)
    a = rng.integers(0, 256, (M, K)).astype(np.uint8)
    cases = (
        # run op by op, a QDQ model multiplies dequantized floats: exact whatever the CPU
        (_qdq_matmul(w, True), {"x": x}, _unoptimized(_qdq_matmul(w, True), {"x": x})),
        # MatMulInteger always runs ORT's integer kernel (u8s8, which may saturate): numpy says what is exact
        (_matmul_integer(w), {"a": a}, a.astype(np.int64) @ w.astype(np.int64)),
    )
    for model, feed, expected in cases:
        exact = exact_int8(model)
        assert exact is not None
        onnx.checker.check_model(exact)
        inits = {t.name: t for t in exact.graph.initializer}
        weight = next(n for n in exact.graph.node if n.op_type in ("DequantizeLinear", "MatMulInteger")
                      and n.input[0 if n.op_type == "DequantizeLinear" else 1] in inits)
        slot, zp_slot = (0, 2) if weight.op_type == "DequantizeLinear" else (1, 3)
        shifted = numpy_helper.to_array(inits[weight.input[slot]])
        assert shifted.dtype == np.uint8 and np.array_equal(shifted.astype(np.int16) - 128, w)
        assert np.all(numpy_helper.to_array(inits[weight.input[zp_slot]]) == 128)
        assert np.array_equal(_unoptimized(exact, feed), expected)
        assert model.graph.initializer[0].data_type == TensorProto.INT8  # the rewrite changed a copy only


def test_a_float_model_is_left_alone() -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = _opset(helper.make_graph(nodes, "fp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
                                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
                                     [numpy_helper.from_array(np.ones((K, N), np.float32), "w")]))
    assert exact_int8(model) is None
