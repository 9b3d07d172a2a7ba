"""Tiny ONNX models with the output and input forms third-party files have, built with onnx.helper,
and the reference numbers computed straight from ONNX Runtime (never through qae)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _vi(name: str, shape: list[Any], elem: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _save(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          inits: list[TensorProto], path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)


def sigmoid_n1(path: Path, seed: int = 0, shift: float = 0.0) -> Path:
    """x [N, 16] -> Gemm -> Relu -> Gemm -> Sigmoid -> prob [N, 1]; ``shift`` is added to the last weight."""
    rng = np.random.default_rng(seed)
    w2 = _w(rng, 1, 32) + np.float32(shift)
    inits = [_init("fc1.weight", _w(rng, 32, 16)), _init("fc1.bias", np.zeros(32, np.float32)),
             _init("fc2.weight", w2), _init("fc2.bias", np.array([-0.3], np.float32))]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "fc2.weight", "fc2.bias"], ["logit"], name="fc2", transB=1),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
    ]
    return _save(nodes, [_vi("x", ["N", 16])], [_vi("prob", ["N", 1])], inits, path)


def output_1d(path: Path, seed: int = 1) -> Path:
    """x [N, 16] -> Gemm -> Relu -> Gemm [N, 1] -> Squeeze -> y [N]."""
    rng = np.random.default_rng(seed)
    inits = [_init("fc1.weight", _w(rng, 32, 16)), _init("fc1.bias", np.zeros(32, np.float32)),
             _init("fc2.weight", _w(rng, 1, 32)), _init("fc2.bias", np.zeros(1, np.float32)),
             _init("axes", np.array([1], np.int64))]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "fc2.weight", "fc2.bias"], ["y2"], name="fc2", transB=1),
        helper.make_node("Squeeze", ["y2", "axes"], ["y"], name="squeeze"),
    ]
    return _save(nodes, [_vi("x", ["N", 16])], [_vi("y", ["N"])], inits, path)


def dense_map(path: Path, seed: int = 2) -> Path:
    """x [N, 3, 8, 8] -> Conv 3x3 -> Relu -> Conv 1x1 -> seg [N, 4, 8, 8] (a segmentation head)."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _w(rng, 8, 3, 3, 3)), _init("conv1.bias", np.zeros(8, np.float32)),
             _init("head.weight", _w(rng, 4, 8, 1, 1)), _init("head.bias", np.zeros(4, np.float32))]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["cr"], name="relu"),
        helper.make_node("Conv", ["cr", "head.weight", "head.bias"], ["seg"], name="head"),
    ]
    return _save(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("seg", ["N", 4, 8, 8])], inits, path)


def two_outputs(path: Path, seed: int = 3, box_scale: float = 1.0) -> Path:
    """x [N, 8] -> Gemm -> Relu -> class scores [N, 5] and boxes [N, 4]; ``box_scale`` scales the box weight."""
    rng = np.random.default_rng(seed)
    inits = [_init("fc.weight", _w(rng, 16, 8)), _init("fc.bias", np.zeros(16, np.float32)),
             _init("cls.weight", _w(rng, 5, 16)), _init("cls.bias", np.zeros(5, np.float32)),
             _init("box.weight", _w(rng, 4, 16) * np.float32(box_scale)), _init("box.bias", np.ones(4, np.float32))]
    nodes = [
        helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["h"], name="fc", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "cls.weight", "cls.bias"], ["scores"], name="cls", transB=1),
        helper.make_node("Gemm", ["hr", "box.weight", "box.bias"], ["boxes"], name="box", transB=1),
    ]
    return _save(nodes, [_vi("x", ["N", 8])], [_vi("scores", ["N", 5]), _vi("boxes", ["N", 4])], inits, path)


def fixed_batch(path: Path, batch: int = 1, seed: int = 4) -> Path:
    """x [batch, 16] (a literal batch size) -> Gemm -> Relu -> Gemm -> logits [batch, 10]."""
    rng = np.random.default_rng(seed)
    inits = [_init("fc1.weight", _w(rng, 32, 16)), _init("fc1.bias", np.zeros(32, np.float32)),
             _init("fc2.weight", _w(rng, 10, 32)), _init("fc2.bias", np.zeros(10, np.float32))]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
    ]
    return _save(nodes, [_vi("x", [batch, 16])], [_vi("logits", [batch, 10])], inits, path)


HIDDEN = 8


def streaming_cell(path: Path, seed: int = 5) -> Path:
    """A streaming cell like Silero VAD: chunk [1, 16], state [2, 1, 8], 0-d int64 sample rate.

    h = Relu(Gemm(chunk * sr / 16000) + sum(state)); prob [1, 1] = Sigmoid(Gemm(h)); stateN = [h, h].
    """
    rng = np.random.default_rng(seed)
    inits = [_init("sr_ref", np.array(16000.0, np.float32)), _init("enc.weight", _w(rng, HIDDEN, 16)),
             _init("enc.bias", np.zeros(HIDDEN, np.float32)), _init("dec.weight", _w(rng, 1, HIDDEN)),
             _init("dec.bias", np.zeros(1, np.float32)), _init("axis0", np.array([0], np.int64))]
    nodes = [
        helper.make_node("Cast", ["sr"], ["sr_f"], name="sr_cast", to=FLOAT),
        helper.make_node("Div", ["sr_f", "sr_ref"], ["scale"], name="sr_scale"),
        helper.make_node("Mul", ["chunk", "scale"], ["xs"], name="scale_mul"),
        helper.make_node("Gemm", ["xs", "enc.weight", "enc.bias"], ["e"], name="enc", transB=1),
        helper.make_node("ReduceSum", ["state", "axis0"], ["s3"], name="state_sum", keepdims=0),
        helper.make_node("Add", ["e", "s3"], ["es"], name="add_state"),
        helper.make_node("Relu", ["es"], ["h"], name="relu"),
        helper.make_node("Gemm", ["h", "dec.weight", "dec.bias"], ["logit"], name="dec", transB=1),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
        helper.make_node("Unsqueeze", ["h", "axis0"], ["h3"], name="h3"),
        helper.make_node("Concat", ["h3", "h3"], ["stateN"], name="new_state", axis=0),
    ]
    inputs = [_vi("chunk", [1, 16]), _vi("state", [2, 1, HIDDEN]), _vi("sr", [], TensorProto.INT64)]
    return _save(nodes, inputs, [_vi("prob", [1, 1]), _vi("stateN", [2, 1, HIDDEN])], inits, path)


def time_major(path: Path, seed: int = 6) -> Path:
    """x [T=3, N, 4] (samples along axis 1) -> MatMul -> y [3, N, 2]."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")]
    return _save(nodes, [_vi("x", [3, "N", 4])], [_vi("y", [3, "N", 2])], [_init("w", _w(rng, 4, 2))], path)


# -- running without qae ---------------------------------------------------------------------------
def session(path: Path) -> Any:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(path: Path, feeds: Iterator[dict[str, np.ndarray]] | list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output over ``feeds``, concatenated along axis 0."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, feed)):
            parts[name].append(value)
    return {n: np.concatenate(v, axis=0) for n, v in parts.items()}


def sqnr(out: np.ndarray, ref: np.ndarray) -> float:
    ref64 = ref.astype(np.float64)
    err = out.astype(np.float64) - ref64
    return float(10 * np.log10(np.sum(ref64**2) / np.sum(err**2)))


def cosine(out: np.ndarray, ref: np.ndarray) -> float:
    a, b = out.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def fcn(path: Path) -> Path:
    """A fully convolutional net with symbolic N, H and W (a detector backbone in miniature)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 3, 3)) * 0.3).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "fcn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H2", "W2"])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
