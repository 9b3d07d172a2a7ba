"""Small "models from the wild": one builder per model form that third-party ONNX files take.

Each builder writes ``FOLDER/<name>/model.onnx`` (plus ``model.onnx.data`` for external data),
``calib.npz`` (16 samples) and ``eval.npz`` (32 samples), checks the model with ``onnx.checker``
and runs it with ONNX Runtime (CPUExecutionProvider) on both data sets, and returns a ``Case``.

Conventions every case follows:

* Data: one array per model input, named like the input. Per-sample inputs hold the samples along
  axis 0 (for a model whose batch dimension is literally 1, each row is fed on its own as a batch
  of 1). Inputs listed in ``Case.const_inputs`` are *not* per sample: the array is fed whole, the
  same for every sample (a recurrent state [2, 1, H], a 0-d sample rate). ``feeds`` yields the
  ONNX Runtime feeds exactly this way and ``run_model`` runs a model on them.
* ``input_shapes``: the concrete shape of ONE inference (batch 1) at the data's other dimensions;
  what ``qae layers --input-shape`` / ``qae predict --input-shape`` would be given.
* ``expected_macs``: hand-counted multiply-accumulates of one inference at ``input_shapes``, per
  expected layer name, computed here from the dimensions the builder used (never from qae), plus
  ``"total"``: the MACs that actually run (for an ``If`` only the branch taken). Recurrent layers
  count T * gates * H * (I + H) (gates: 4 for LSTM, 3 for GRU).
* ``expected_layers``: the names a correct ``qae layers`` should print: the node names of the
  hand-built graphs, torch module paths (``layer1.0.conv1``) for torch exports.
* ``expect``: ``"works"``, or the gist of the clean error qae should give (``"already quantized"``).

Everything is seeded (numpy seed from the case name, torch.manual_seed) and tiny (< 100 kB).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_CALIB = 16
N_EVAL = 32
IR_VERSION = 9  # what torch 2.x and most converters of the last years write
FLOAT = TensorProto.FLOAT


@dataclass
class Case:
    """One built model form with its data and what a correct qae would report for it."""

    name: str
    model: Path
    calib: Path
    data: Path
    input_shapes: dict[str, list[int]]
    expected_macs: dict[str, int]
    expect: str
    notes: str
    labels: bool = False
    expected_layers: list[str] = field(default_factory=list)
    #: inputs with at least one symbolic dimension (qae needs --input-shape for them)
    symbolic_inputs: list[str] = field(default_factory=list)
    #: the model's batch dimension when it is a literal (1): the data is fed that many rows at a time
    fixed_batch: int | None = None
    #: inputs that are not per sample: their array is fed whole with every sample
    const_inputs: list[str] = field(default_factory=list)
    #: anything else a test may want (file sizes, opset, exporter...)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("model", "calib", "data"):
            d[key] = str(d[key])
        return d


# -- feeding and running ----------------------------------------------------------------------------
def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def feeds(case: Case, arrays: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """ONNX Runtime feeds for ``arrays`` under the case's conventions (see the module docstring)."""
    per_sample = [k for k in arrays if k != "labels" and k not in case.const_inputs]
    n = len(arrays[per_sample[0]])
    step = case.fixed_batch or (1 if case.const_inputs else n)
    for start in range(0, n, step):
        feed = {k: arrays[k][start : start + step] for k in per_sample}
        feed.update({k: arrays[k] for k in case.const_inputs})
        yield feed


def session(model: str | Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def run_model(model: str | Path, case: Case, data: str | Path) -> dict[str, np.ndarray]:
    """Every output of ``model`` on every sample of ``data``, batches concatenated along axis 0."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds(case, load_arrays(data)):
        for name, value in zip(names, sess.run(None, feed)):
            parts[name].append(np.atleast_1d(value))
    return {n: np.concatenate(v, axis=0) for n, v in parts.items()}


# -- building helpers --------------------------------------------------------------------------------
def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _w(rng: np.random.Generator, *shape: int, fan_in: int | None = None) -> np.ndarray:
    fan = fan_in if fan_in is not None else int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan)).astype(np.float32)


def _b(rng: np.random.Generator, n: int) -> np.ndarray:
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _vi(name: str, shape: list[Any] | None, elem: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _out_size(n: int, k: int, s: int = 1, p: int = 0) -> int:
    return (n + 2 * p - k) // s + 1


def _conv_macs(cout: int, hout: int, wout: int, cin_per_group: int, k: int) -> int:
    return cout * hout * wout * cin_per_group * k * k


def _dir(folder: Path, name: str) -> Path:
    d = Path(folder) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17, **save: Any) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qae-wild-corpus")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path), **save)
    return model


def _savez(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, *(), **arrays)  # type: ignore[arg-type]


def _write_data(d: Path, calib: dict[str, np.ndarray], evald: dict[str, np.ndarray]) -> tuple[Path, Path]:
    _savez(d / "calib.npz", **calib)
    _savez(d / "eval.npz", **evald)
    return d / "calib.npz", d / "eval.npz"


def _finish(case: Case, label: str | None = None) -> Case:
    """Check the saved model and run it on both data sets; add ``labels`` to the eval set if asked.

    ``label``: ``"argmax"`` (class scores, last axis of the first output) or ``"threshold"``
    (a sigmoid probability > 0.5). Labels are the FP32 model's own predictions: the models are
    untrained, so its accuracy is 100 % by construction and any loss is the quantization's.
    """
    onnx.checker.check_model(str(case.model), full_check=True)
    run_model(case.model, case, case.calib)
    outs = run_model(case.model, case, case.data)
    if label:
        first = next(iter(outs.values())).astype(np.float32)
        labels = first.argmax(-1) if label == "argmax" else (first.reshape(len(first), -1)[:, 0] > 0.5)
        arrays = load_arrays(case.data)
        arrays["labels"] = labels.astype(np.int64)
        _savez(case.data, **arrays)
        case.labels = True
    return case


def _cnn_nodes(
    rng: np.random.Generator, x: str, cin: int, convs: list[tuple[str, int, int, int, int]], hw: int
) -> tuple[list[onnx.NodeProto], list[TensorProto], dict[str, int], str, int, int]:
    """Conv(+Relu) chain; convs: (name, cout, k, stride, group). Returns nodes, inits, macs, out, C, HW."""
    nodes, inits, macs = [], [], {}
    cur, c = x, cin
    for name, cout, k, stride, group in convs:
        pad = k // 2
        inits += [_init(f"{name}.weight", _w(rng, cout, c // group, k, k)), _init(f"{name}.bias", _b(rng, cout))]
        nodes.append(
            helper.make_node(
                "Conv", [cur, f"{name}.weight", f"{name}.bias"], [f"{name}_out"], name=name,
                kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group,
            )
        )
        hw = _out_size(hw, k, stride, pad)
        macs[name] = _conv_macs(cout, hw, hw, c // group, k)
        nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"{name}_relu"))
        cur, c = f"{name}_relu", cout
    return nodes, inits, macs, cur, c, hw


def _gap_fc(
    rng: np.random.Generator, cur: str, c: int, heads: list[tuple[str, int, str]]
) -> tuple[list[onnx.NodeProto], list[TensorProto], dict[str, int]]:
    """GlobalAveragePool, Flatten, then one Gemm (transB) per head: (name, classes, output)."""
    nodes = [
        helper.make_node("GlobalAveragePool", [cur], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["feat"], name="flatten", axis=1),
    ]
    inits, macs = [], {}
    for name, k, out in heads:
        inits += [_init(f"{name}.weight", _w(rng, k, c)), _init(f"{name}.bias", _b(rng, k))]
        nodes.append(helper.make_node("Gemm", ["feat", f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1))
        macs[name] = k * c
    return nodes, inits, macs


def _images(rng: np.random.Generator, n: int, c: int, hw: int, dtype: Any = np.float32) -> np.ndarray:
    return rng.standard_normal((n, c, hw, hw)).astype(dtype)


def _total(macs: dict[str, int]) -> dict[str, int]:
    return {**macs, "total": int(sum(macs.values()))}


# -- the builders -------------------------------------------------------------------------------------
def build_fixed_batch1(folder: Path) -> Case:
    """A CNN classifier whose batch dimension is literally 1 (many exported files look like this)."""
    name, rng, d = "fixed_batch1", _rng("fixed_batch1"), _dir(folder, "fixed_batch1")
    hw = 16
    nodes, inits, macs, cur, c, _ = _cnn_nodes(rng, "x", 3, [("conv1", 8, 3, 1, 1)], hw)
    n2, i2, m2 = _gap_fc(rng, cur, c, [("fc", 10, "logits")])
    graph = helper.make_graph(nodes + n2, name, [_vi("x", [1, 3, hw, hw])], [_vi("logits", [1, 10])], inits + i2)
    _save(graph, d / "model.onnx", opset=13)
    calib, evald = _write_data(d, {"x": _images(rng, N_CALIB, 3, hw)}, {"x": _images(rng, N_EVAL, 3, hw)})
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 3, hw, hw]}, _total({**macs, **m2}), "works",
        "input x is [1,3,16,16] (literal 1); data rows are fed one at a time. qae calibrates in batches of 32.",
        expected_layers=["conv1", "fc"], fixed_batch=1, extra={"opset": 13},
    )
    return _finish(case, "argmax")


def build_symbolic_hw(folder: Path) -> Case:
    """A fully convolutional classifier with symbolic N, H and W; the data is 32x32."""
    name, rng, d = "symbolic_hw", _rng("symbolic_hw"), _dir(folder, "symbolic_hw")
    hw = 32
    nodes, inits, macs, cur, c, _ = _cnn_nodes(rng, "x", 3, [("conv1", 8, 3, 1, 1), ("conv2", 16, 3, 2, 1)], hw)
    n2, i2, m2 = _gap_fc(rng, cur, c, [("fc", 10, "logits")])
    graph = helper.make_graph(nodes + n2, name, [_vi("x", ["N", 3, "H", "W"])], [_vi("logits", ["N", 10])], inits + i2)
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(d, {"x": _images(rng, N_CALIB, 3, hw)}, {"x": _images(rng, N_EVAL, 3, hw)})
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 3, hw, hw]}, _total({**macs, **m2}), "works",
        "dims N, H, W symbolic; data at 32x32. Without --input-shape qae counts H=W=1 (expected MACs are at 32x32).",
        expected_layers=["conv1", "conv2", "fc"], symbolic_inputs=["x"],
    )
    return _finish(case, "argmax")


def _mlp(
    rng: np.random.Generator, x: str, sizes: list[tuple[str, int, int]], last: str
) -> tuple[list[onnx.NodeProto], list[TensorProto], dict[str, int]]:
    """Gemm (transB) layers with Relu between them; the last one writes ``last``."""
    nodes, inits, macs = [], [], {}
    cur = x
    for i, (name, cin, cout) in enumerate(sizes):
        out = last if i == len(sizes) - 1 else f"{name}_out"
        inits += [_init(f"{name}.weight", _w(rng, cout, cin)), _init(f"{name}.bias", _b(rng, cout))]
        nodes.append(helper.make_node("Gemm", [cur, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1))
        macs[name] = cin * cout
        if i < len(sizes) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"{name}_relu"], name=f"{name}_relu"))
            cur = f"{name}_relu"
    return nodes, inits, macs


def _centre_bias(inits: list[TensorProto], bias: str, logits: np.ndarray) -> None:
    """Shift a 1-unit head's bias so the FP32 logits straddle 0 (probabilities around 0.5)."""
    for i, t in enumerate(inits):
        if t.name == bias:
            b = numpy_helper.to_array(t) - np.float32(np.median(logits))
            inits[i] = _init(bias, b.astype(np.float32))


def _mlp_logits(inits: list[TensorProto], x: np.ndarray, names: list[str]) -> np.ndarray:
    arr = {t.name: numpy_helper.to_array(t) for t in inits}
    h = x
    for i, n in enumerate(names):
        h = h @ arr[f"{n}.weight"].T + arr[f"{n}.bias"]
        if i < len(names) - 1:
            h = np.maximum(h, 0)
    return h


def build_sigmoid_n1(folder: Path) -> Case:
    """A binary classifier: one sigmoid probability per sample, output [N, 1]."""
    name, rng, d = "sigmoid_n1", _rng("sigmoid_n1"), _dir(folder, "sigmoid_n1")
    nodes, inits, macs = _mlp(rng, "x", [("fc1", 16, 32), ("fc2", 32, 1)], "logit")
    xc = rng.standard_normal((N_CALIB, 16)).astype(np.float32)
    xe = rng.standard_normal((N_EVAL, 16)).astype(np.float32)
    _centre_bias(inits, "fc2.bias", _mlp_logits(inits, np.concatenate([xc, xe]), ["fc1", "fc2"]))
    nodes.append(helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"))
    graph = helper.make_graph(nodes, name, [_vi("x", ["N", 16])], [_vi("prob", ["N", 1])], inits)
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(d, {"x": xc}, {"x": xe})
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 16]}, _total(macs), "works",
        "output prob [N,1] in (0,1); labels = FP32 prob > 0.5. argmax over a size-1 axis and the cosine of "
        "1-element vectors are 1 whatever the outputs.",
        expected_layers=["fc1", "fc2"], symbolic_inputs=["x"],
    )
    return _finish(case, "threshold")


def build_output_1d(folder: Path) -> Case:
    """A regressor whose output is 1-D: shape [N]."""
    name, rng, d = "output_1d", _rng("output_1d"), _dir(folder, "output_1d")
    nodes, inits, macs = _mlp(rng, "x", [("fc1", 16, 32), ("fc2", 32, 1)], "y2d")
    inits.append(_init("squeeze_axes", np.array([1], np.int64)))
    nodes.append(helper.make_node("Squeeze", ["y2d", "squeeze_axes"], ["y"], name="squeeze"))
    graph = helper.make_graph(nodes, name, [_vi("x", ["N", 16])], [_vi("y", ["N"])], inits)
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(
        d, {"x": rng.standard_normal((N_CALIB, 16)).astype(np.float32)},
        {"x": rng.standard_normal((N_EVAL, 16)).astype(np.float32)},
    )
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 16]}, _total(macs), "works",
        "output y has shape [N] (one scalar per sample, no labels).",
        expected_layers=["fc1", "fc2"], symbolic_inputs=["x"],
    )
    return _finish(case)


def build_dense_map(folder: Path) -> Case:
    """A segmentation-like head: per-pixel class scores [N, C, H, W]."""
    name, rng, d = "dense_map", _rng("dense_map"), _dir(folder, "dense_map")
    hw = 16
    nodes, inits, macs, cur, c, _ = _cnn_nodes(rng, "x", 3, [("conv1", 8, 3, 1, 1)], hw)
    inits += [_init("head.weight", _w(rng, 4, c, 1, 1)), _init("head.bias", _b(rng, 4))]
    nodes.append(helper.make_node("Conv", [cur, "head.weight", "head.bias"], ["seg"], name="head", kernel_shape=[1, 1]))
    macs["head"] = _conv_macs(4, hw, hw, c, 1)
    graph = helper.make_graph(nodes, name, [_vi("x", ["N", 3, hw, hw])], [_vi("seg", ["N", 4, hw, hw])], inits)
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(d, {"x": _images(rng, N_CALIB, 3, hw)}, {"x": _images(rng, N_EVAL, 3, hw)})
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 3, hw, hw]}, _total(macs), "works",
        "output seg [N,4,16,16]: the class axis is 1; agreement should be per pixel over axis 1.",
        expected_layers=["conv1", "head"], symbolic_inputs=["x"],
    )
    return _finish(case)


def build_two_outputs(folder: Path) -> Case:
    """A detector-like model with two outputs: class scores [N, 5] and a box regression [N, 4]."""
    name, rng, d = "two_outputs", _rng("two_outputs"), _dir(folder, "two_outputs")
    hw = 16
    nodes, inits, macs, cur, c, _ = _cnn_nodes(rng, "x", 3, [("conv1", 8, 3, 2, 1)], hw)
    n2, i2, m2 = _gap_fc(rng, cur, c, [("cls", 5, "scores"), ("box", 4, "boxes")])
    # Feature channel 0 is a near-constant 3 (tiny conv weights, bias 3); the box head reads it with a large
    # weight that its bias cancels. The boxes' own signal then sits far below each row's largest weight, so
    # low-bit per-channel weights lose it while the class scores hardly change.
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in inits + i2}
    arrays["conv1.weight"][0] *= 0.01
    arrays["conv1.bias"][0] = 3.0
    arrays["box.weight"][:, 0] = 20.0
    arrays["box.bias"] = (arrays["box.bias"] - 20.0 * 3.0).astype(np.float32)
    inits = [_init(t.name, arrays[t.name]) for t in inits]
    i2 = [_init(t.name, arrays[t.name]) for t in i2]
    graph = helper.make_graph(
        nodes + n2, name, [_vi("x", ["N", 3, hw, hw])], [_vi("scores", ["N", 5]), _vi("boxes", ["N", 4])], inits + i2
    )
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(d, {"x": _images(rng, N_CALIB, 3, hw)}, {"x": _images(rng, N_EVAL, 3, hw)})
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 3, hw, hw]}, _total({**macs, **m2}), "works",
        "outputs scores [N,5] (labels = FP32 argmax) and boxes [N,4]; both should be scored. The box head reads a "
        "near-constant feature with a weight of 20 its bias cancels, so 4-bit weights hurt the boxes, not the scores.",
        expected_layers=["conv1", "cls", "box"], symbolic_inputs=["x"],
    )
    return _finish(case, "argmax")


def build_streaming_vad(folder: Path) -> Case:
    """A Silero-VAD-like streaming cell: chunk [1, 64], state [2, 1, 32], 0-d int64 sr; LSTM inside."""
    name, rng, d = "streaming_vad", _rng("streaming_vad"), _dir(folder, "streaming_vad")
    chunk, hid, enc = 64, 32, 32
    inits = [
        _init("sr_ref", np.array(16000.0, np.float32)),
        _init("encoder.weight", _w(rng, enc, chunk)),
        _init("encoder.bias", _b(rng, enc)),
        _init("axes0", np.array([0], np.int64)),
        _init("zero", np.array([0], np.int64)),
        _init("one", np.array([1], np.int64)),
        _init("two", np.array([2], np.int64)),
        _init("lstm.W", (0.5 * _w(rng, 1, 4 * hid, enc, fan_in=enc))),
        _init("lstm.R", (0.5 * _w(rng, 1, 4 * hid, hid, fan_in=hid))),
        _init("lstm.B", (0.1 * rng.standard_normal((1, 8 * hid))).astype(np.float32)),
        _init("decoder.weight", _w(rng, 1, hid)),
        _init("decoder.bias", np.zeros(1, np.float32)),
    ]
    nodes = [
        helper.make_node("Cast", ["sr"], ["sr_f"], name="sr_cast", to=FLOAT),
        helper.make_node("Div", ["sr_f", "sr_ref"], ["sr_scale"], name="sr_scale"),
        helper.make_node("Mul", ["input", "sr_scale"], ["xs"], name="sr_mul"),
        helper.make_node("Gemm", ["xs", "encoder.weight", "encoder.bias"], ["enc"], name="encoder", transB=1),
        helper.make_node("Relu", ["enc"], ["enc_r"], name="encoder_relu"),
        helper.make_node("Unsqueeze", ["enc_r", "axes0"], ["seq"], name="to_seq"),
        helper.make_node("Slice", ["state", "zero", "one", "axes0"], ["h0"], name="h0"),
        helper.make_node("Slice", ["state", "one", "two", "axes0"], ["c0"], name="c0"),
        helper.make_node(
            "LSTM", ["seq", "lstm.W", "lstm.R", "lstm.B", "", "h0", "c0"], ["Y", "Y_h", "Y_c"], name="lstm",
            hidden_size=hid,
        ),
        helper.make_node("Concat", ["Y_h", "Y_c"], ["stateN"], name="new_state", axis=0),
        helper.make_node("Squeeze", ["Y_h", "axes0"], ["h"], name="h_last"),
        helper.make_node("Relu", ["h"], ["h_r"], name="h_relu"),
        helper.make_node("Gemm", ["h_r", "decoder.weight", "decoder.bias"], ["logit"], name="decoder", transB=1),
        helper.make_node("Sigmoid", ["logit"], ["output"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, name,
        [_vi("input", [1, chunk]), _vi("state", [2, 1, hid]), _vi("sr", [], TensorProto.INT64)],
        [_vi("output", [1, 1]), _vi("stateN", [2, 1, hid])],
        inits,
    )
    _save(graph, d / "model.onnx", opset=16)
    state = np.tanh(0.5 * rng.standard_normal((2, 1, hid))).astype(np.float32)  # a mid-stream state
    sr = np.array(16000, np.int64)
    xc = (0.5 * rng.standard_normal((N_CALIB, chunk))).astype(np.float32)
    xe = (0.5 * rng.standard_normal((N_EVAL, chunk))).astype(np.float32)
    calib, evald = _write_data(d, {"input": xc, "state": state, "sr": sr}, {"input": xe, "state": state, "sr": sr})
    # centre the decoder so the FP32 probabilities straddle 0.5
    case = Case(
        name, d / "model.onnx", calib, evald, {"input": [1, chunk], "state": [2, 1, hid], "sr": []},
        _total({"encoder": enc * chunk, "lstm": 1 * 4 * hid * (enc + hid), "decoder": hid}), "works",
        "inputs: input [1,64] (rows of the npz array fed one at a time), state [2,1,32] and sr (0-d int64 16000) "
        "are per-stream constants stored once in the npz (const_inputs), not per sample. Each sample runs from the "
        "same stored state (no state carried between samples). Outputs: output [1,1] probability, stateN [2,1,32].",
        expected_layers=["encoder", "lstm", "decoder"], fixed_batch=1, const_inputs=["state", "sr"],
        extra={"opset": 16},
    )
    logits = []
    arrs = load_arrays(evald)
    sess = session(case.model)
    for feed in feeds(case, arrs):
        logits.append(float(sess.run(["output"], feed)[0].ravel()[0]))
    p = np.clip(np.array(logits), 1e-6, 1 - 1e-6)
    shift = float(np.median(np.log(p / (1 - p))))
    m = onnx.load(str(case.model))
    for t in m.graph.initializer:
        if t.name == "decoder.bias":
            t.CopyFrom(_init("decoder.bias", np.array([-shift], np.float32)))
    onnx.save(m, str(case.model))
    return _finish(case)


def build_gru(folder: Path) -> Case:
    """A sequence classifier: x [N, T=6, F=8] -> ONNX GRU (hidden 16) -> Gemm head [N, 5]."""
    name, rng, d = "gru", _rng("gru"), _dir(folder, "gru")
    t, f, hid = 6, 8, 16
    inits = [
        _init("gru.W", 0.7 * _w(rng, 1, 3 * hid, f, fan_in=f)),
        _init("gru.R", 0.7 * _w(rng, 1, 3 * hid, hid, fan_in=hid)),
        _init("gru.B", (0.1 * rng.standard_normal((1, 6 * hid))).astype(np.float32)),
        _init("axes0", np.array([0], np.int64)),
        _init("fc.weight", _w(rng, 5, hid)),
        _init("fc.bias", _b(rng, 5)),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_t"], name="to_time_major", perm=[1, 0, 2]),
        helper.make_node(
            "GRU", ["x_t", "gru.W", "gru.R", "gru.B"], ["Y", "Y_h"], name="gru", hidden_size=hid, linear_before_reset=1
        ),
        helper.make_node("Squeeze", ["Y_h", "axes0"], ["h"], name="h_last"),
        helper.make_node("Gemm", ["h", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, name, [_vi("x", ["N", t, f])], [_vi("logits", ["N", 5])], inits)
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(
        d, {"x": rng.standard_normal((N_CALIB, t, f)).astype(np.float32)},
        {"x": rng.standard_normal((N_EVAL, t, f)).astype(np.float32)},
    )
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, t, f]},
        _total({"gru": t * 3 * hid * (f + hid), "fc": 5 * hid}), "works",
        "ONNX GRU (W [1,48,8], R [1,48,16]) then a Gemm head; the GRU holds most of the MACs and weights.",
        expected_layers=["gru", "fc"], symbolic_inputs=["x"],
    )
    return _finish(case, "argmax")


def build_constant_weights(folder: Path) -> Case:
    """Conv and MatMul whose weights are ``Constant`` node outputs instead of initializers."""
    name, rng, d = "constant_weights", _rng("constant_weights"), _dir(folder, "constant_weights")
    hw, c1 = 8, 4
    consts = {
        "conv1_w": _w(rng, c1, 3, 3, 3),
        "conv1_b": _b(rng, c1),
        "fc_w": _w(rng, c1 * hw * hw, 10, fan_in=c1 * hw * hw),
        "fc_b": _b(rng, 10),
    }
    nodes = [
        helper.make_node("Constant", [], [k], name=f"{k}_const", value=_init(k, v)) for k, v in consts.items()
    ]
    nodes += [
        helper.make_node("Conv", ["x", "conv1_w", "conv1_b"], ["c"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["c_r"], name="conv1_relu"),
        helper.make_node("Flatten", ["c_r"], ["flat"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"], name="fc_bias"),
    ]
    graph = helper.make_graph(nodes, name, [_vi("x", ["N", 3, hw, hw])], [_vi("logits", ["N", 10])], [])
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(d, {"x": _images(rng, N_CALIB, 3, hw)}, {"x": _images(rng, N_EVAL, 3, hw)})
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 3, hw, hw]},
        _total({"conv1": _conv_macs(c1, hw, hw, 3, 3), "fc": c1 * hw * hw * 10}), "works",
        "no initializers at all: every weight and bias is a Constant node (tf2onnx / some optimizers write this).",
        expected_layers=["conv1", "fc"], symbolic_inputs=["x"],
    )
    return _finish(case, "argmax")


def build_if_subgraph(folder: Path) -> Case:
    """All weighted layers inside the branches of an ``If`` whose condition is a Constant (true)."""
    name, rng, d = "if_subgraph", _rng("if_subgraph"), _dir(folder, "if_subgraph")
    inits = [
        _init("then_fc1.weight", _w(rng, 32, 16)),
        _init("then_fc1.bias", _b(rng, 32)),
        _init("then_fc2.weight", _w(rng, 32, 10, fan_in=32)),
        _init("else_fc.weight", _w(rng, 16, 10, fan_in=16)),
    ]
    then_g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "then_fc1.weight", "then_fc1.bias"], ["t1"], name="then_fc1", transB=1),
            helper.make_node("Relu", ["t1"], ["t1r"], name="then_relu"),
            helper.make_node("MatMul", ["t1r", "then_fc2.weight"], ["then_out"], name="then_fc2"),
        ],
        "then_branch", [], [_vi("then_out", [None, 10])],
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "else_fc.weight"], ["else_out"], name="else_fc")],
        "else_branch", [], [_vi("else_out", [None, 10])],
    )
    nodes = [
        helper.make_node("Constant", [], ["use_big_head"], name="use_big_head",
                         value=_init("use_big_head", np.array(True))),
        helper.make_node("If", ["use_big_head"], ["logits"], name="head_if", then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(nodes, name, [_vi("x", ["N", 16])], [_vi("logits", ["N", 10])], inits)
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(
        d, {"x": rng.standard_normal((N_CALIB, 16)).astype(np.float32)},
        {"x": rng.standard_normal((N_EVAL, 16)).astype(np.float32)},
    )
    macs = {"then_fc1": 16 * 32, "then_fc2": 32 * 10, "else_fc": 16 * 10}
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 16]}, {**macs, "total": macs["then_fc1"] + macs["then_fc2"]},
        "works",
        "every weighted layer is inside the If branches (weights are outer-scope initializers); the condition is a "
        "Constant true, so total counts the then branch. Acceptable fallback: a clean error naming the If subgraph.",
        expected_layers=["then_fc1", "then_fc2", "else_fc"], symbolic_inputs=["x"],
    )
    return _finish(case, "argmax")


def build_fp16(folder: Path) -> Case:
    """A CNN with float16 weights, input and output throughout."""
    name, rng, d = "fp16", _rng("fp16"), _dir(folder, "fp16")
    hw = 8
    nodes, inits, macs, cur, c, _ = _cnn_nodes(rng, "x", 3, [("conv1", 8, 3, 1, 1)], hw)
    n2, i2, m2 = _gap_fc(rng, cur, c, [("fc", 10, "logits")])
    half = [_init(t.name, numpy_helper.to_array(t).astype(np.float16)) for t in inits + i2]
    graph = helper.make_graph(
        nodes + n2, name, [_vi("x", ["N", 3, hw, hw], TensorProto.FLOAT16)],
        [_vi("logits", ["N", 10], TensorProto.FLOAT16)], half,
    )
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(
        d, {"x": _images(rng, N_CALIB, 3, hw, np.float16)}, {"x": _images(rng, N_EVAL, 3, hw, np.float16)}
    )
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 3, hw, hw]}, _total({**macs, **m2}), "works",
        "all weights, input x and output logits are float16 (data arrays float16 too).",
        expected_layers=["conv1", "fc"], symbolic_inputs=["x"],
    )
    return _finish(case, "argmax")


def build_external_data(folder: Path) -> Case:
    """An MLP saved with its weights in one external file (model.onnx.data)."""
    name, rng, d = "external_data", _rng("external_data"), _dir(folder, "external_data")
    nodes, inits, macs = _mlp(rng, "x", [("fc1", 64, 128), ("fc2", 128, 10)], "logits")
    graph = helper.make_graph(nodes, name, [_vi("x", ["N", 64])], [_vi("logits", ["N", 10])], inits)
    for old in d.glob("model.onnx*"):
        old.unlink()
    _save(graph, d / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
          location="model.onnx.data", size_threshold=0)
    calib, evald = _write_data(
        d, {"x": rng.standard_normal((N_CALIB, 64)).astype(np.float32)},
        {"x": rng.standard_normal((N_EVAL, 64)).astype(np.float32)},
    )
    weight_bytes = sum(int(np.prod(t.dims)) * 4 for t in inits)
    onnx_bytes, data_bytes = (d / "model.onnx").stat().st_size, (d / "model.onnx.data").stat().st_size
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 64]}, _total(macs), "works",
        f"weights in model.onnx.data ({data_bytes} B) next to a {onnx_bytes} B model.onnx; sizes should count both.",
        expected_layers=["fc1", "fc2"], symbolic_inputs=["x"],
        extra={"onnx_bytes": onnx_bytes, "data_bytes": data_bytes, "total_bytes": onnx_bytes + data_bytes,
               "weight_bytes": weight_bytes, "external_files": ["model.onnx.data"]},
    )
    return _finish(case, "argmax")


def build_neg_dim(folder: Path) -> Case:
    """An MLP whose unknown batch dimension is written as a literal -1 (dim_value = -1), as some converters do."""
    name, rng, d = "neg_dim", _rng("neg_dim"), _dir(folder, "neg_dim")
    nodes, inits, macs = _mlp(rng, "x", [("fc1", 16, 32), ("fc2", 32, 10)], "logits")
    graph = helper.make_graph(nodes, name, [_vi("x", [-1, 16])], [_vi("logits", [-1, 10])], inits)
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(
        d, {"x": rng.standard_normal((N_CALIB, 16)).astype(np.float32)},
        {"x": rng.standard_normal((N_EVAL, 16)).astype(np.float32)},
    )
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 16]}, _total(macs), "works",
        "input x [-1,16] and output [-1,10] with dim_value -1 (ONNX Runtime reads -1 as unknown). MACs must not be "
        "negative.",
        expected_layers=["fc1", "fc2"], symbolic_inputs=["x"],
    )
    return _finish(case, "argmax")


def build_contrib_op(folder: Path) -> Case:
    """MatMul layers around a com.microsoft Gelu (ORT-optimized transformer files): ONNX shape inference stops."""
    name, rng, d = "contrib_op", _rng("contrib_op"), _dir(folder, "contrib_op")
    inits = [_init("fc1.weight", _w(rng, 16, 32, fan_in=16)), _init("fc2.weight", _w(rng, 32, 10, fan_in=32))]
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="fc1"),
        helper.make_node("Gelu", ["h"], ["hg"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["hg", "fc2.weight"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(nodes, name, [_vi("x", ["N", 16])], [_vi("logits", ["N", 10])], inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="qae-wild-corpus",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(d / "model.onnx"))
    calib, evald = _write_data(
        d, {"x": rng.standard_normal((N_CALIB, 16)).astype(np.float32)},
        {"x": rng.standard_normal((N_EVAL, 16)).astype(np.float32)},
    )
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 16]}, _total({"fc1": 16 * 32, "fc2": 32 * 10}), "works",
        "com.microsoft Gelu between the MatMuls: ONNX shape inference gives no shape after it, so fc2's output shape "
        "must come from elsewhere (ONNX Runtime, or the weight: [N,32] x [32,10]). MACs must not be 0.",
        expected_layers=["fc1", "fc2"], symbolic_inputs=["x"], extra={"domains": ["", "com.microsoft"]},
    )
    return _finish(case, "argmax")


def build_quantized_qdq(folder: Path) -> Case:
    """A CNN already quantized by onnxruntime.quantization.quantize_static (QDQ, int8)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name, d = "quantized_qdq", _dir(folder, "quantized_qdq")
    src = build_symbolic_hw(d / "fp32_source")
    xc = load_arrays(src.calib)["x"]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, x: np.ndarray, name: str) -> None:
            self._rows = iter([{name: x[i : i + 4]} for i in range(0, len(x), 4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._rows, None)

    quantize_static(
        str(src.model), str(d / "model.onnx"), Reader(xc, "x"), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
    )
    calib, evald = _write_data(d, load_arrays(src.calib), {"x": load_arrays(src.data)["x"]})
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 3, 32, 32]}, {}, "already quantized",
        "quantize_static QDQ (per-channel int8 weights, uint8 activations) of the symbolic_hw CNN: every Conv/Gemm "
        "weight comes out of a DequantizeLinear. qae should say it is already quantized.",
        symbolic_inputs=["x"], extra={"source": "symbolic_hw"},
    )
    return _finish(case)


def build_quantized_dynamic(folder: Path) -> Case:
    """An MLP already quantized by onnxruntime.quantization.quantize_dynamic (MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    name, d = "quantized_dynamic", _dir(folder, "quantized_dynamic")
    src = build_external_data(d / "fp32_source")
    inlined = onnx.load(str(src.model))  # quantize_dynamic reads external data itself, but keep it simple
    onnx.save(inlined, str(d / "fp32.onnx"))
    quantize_dynamic(str(d / "fp32.onnx"), str(d / "model.onnx"), weight_type=QuantType.QInt8)
    calib, evald = _write_data(d, load_arrays(src.calib), {"x": load_arrays(src.data)["x"]})
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 64]}, {}, "already quantized",
        "quantize_dynamic of an fp32 MLP: MatMulInteger/DynamicQuantizeLinear, int8 weights. qae should say it is "
        "already quantized.",
        symbolic_inputs=["x"], extra={"source": "external_data (inlined)"},
    )
    return _finish(case)


def build_depthwise(folder: Path) -> Case:
    """MobileNet-style: conv, depthwise 3x3 (group = C), pointwise 1x1, pooled Gemm head."""
    name, rng, d = "depthwise", _rng("depthwise"), _dir(folder, "depthwise")
    hw = 16
    nodes, inits, macs, cur, c, _ = _cnn_nodes(
        rng, "x", 3, [("conv1", 8, 3, 1, 1), ("dw", 8, 3, 1, 8), ("pw", 16, 1, 1, 1)], hw
    )
    n2, i2, m2 = _gap_fc(rng, cur, c, [("fc", 10, "logits")])
    graph = helper.make_graph(nodes + n2, name, [_vi("x", ["N", 3, hw, hw])], [_vi("logits", ["N", 10])], inits + i2)
    _save(graph, d / "model.onnx")
    calib, evald = _write_data(d, {"x": _images(rng, N_CALIB, 3, hw)}, {"x": _images(rng, N_EVAL, 3, hw)})
    case = Case(
        name, d / "model.onnx", calib, evald, {"x": [1, 3, hw, hw]}, _total({**macs, **m2}), "works",
        "dw is a depthwise Conv (weight [8,1,3,3], group=8): its MACs are 8*16*16*9.",
        expected_layers=["conv1", "dw", "pw", "fc"], symbolic_inputs=["x"],
    )
    return _finish(case, "argmax")


# -- torch exports --------------------------------------------------------------------------------------
TORCH_LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
                "layer2.0.downsample.0", "fc"]


def _tiny_resnet() -> tuple[Any, dict[str, int]]:
    """A ResNet-ish net (stem, two BasicBlocks, one with a downsample, Linear head) and its MACs at 16x16."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout else None
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            idt = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + idt)

    class TinyResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.relu = nn.ReLU()
            self.layer1 = nn.Sequential(BasicBlock(8, 8, 1))
            self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer2(self.layer1(x))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(0)
    net = TinyResNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them changes the weights
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                cast(torch.Tensor, m.running_mean).uniform_(-0.2, 0.2)
                cast(torch.Tensor, m.running_var).uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    hw, h2 = 16, 8
    macs = {
        "conv1": _conv_macs(8, hw, hw, 3, 3),
        "layer1.0.conv1": _conv_macs(8, hw, hw, 8, 3),
        "layer1.0.conv2": _conv_macs(8, hw, hw, 8, 3),
        "layer2.0.conv1": _conv_macs(16, h2, h2, 8, 3),
        "layer2.0.conv2": _conv_macs(16, h2, h2, 16, 3),
        "layer2.0.downsample.0": _conv_macs(16, h2, h2, 8, 1),
        "fc": 16 * 10,
    }
    return net.eval(), _total(macs)


def _torch_case(folder: Path, opset: int, dynamo: bool) -> Case:
    import torch

    name = f"torch_{'dynamo' if dynamo else 'legacy'}_op{opset}"
    d = _dir(folder, name)
    net, macs = _tiny_resnet()
    example = torch.randn(2, 3, 16, 16)
    path = d / "model.onnx"
    if dynamo:
        torch.onnx.export(
            net, (example,), str(path), dynamo=True, opset_version=opset, input_names=["x"], output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}}, verbose=False,
        )
    else:
        torch.onnx.export(
            net, (example,), str(path), dynamo=False, opset_version=opset, input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    rng = _rng(name)
    calib, evald = _write_data(d, {"x": _images(rng, N_CALIB, 3, 16)}, {"x": _images(rng, N_EVAL, 3, 16)})
    case = Case(
        name, path, calib, evald, {"x": [1, 3, 16, 16]}, macs, "works",
        f"torch {torch.__version__} {'dynamo' if dynamo else 'legacy (TorchScript)'} exporter, opset {opset}; "
        "BatchNorm folded or kept by the exporter; layer names should be the torch module paths.",
        expected_layers=list(TORCH_LAYERS), symbolic_inputs=["x"],
        extra={"opset": opset, "exporter": "dynamo" if dynamo else "legacy", "torch": torch.__version__},
    )
    return _finish(case, "argmax")


def _torch_builder(opset: int, dynamo: bool) -> Callable[[Path], Case]:
    def build(folder: Path) -> Case:
        return _torch_case(folder, opset, dynamo)

    build.__name__ = f"build_torch_{'dynamo' if dynamo else 'legacy'}_op{opset}"
    build.__doc__ = f"A tiny ResNet exported by torch ({'dynamo' if dynamo else 'legacy'} exporter) at opset {opset}."
    return build


CASES: dict[str, Callable[[Path], Case]] = {
    "fixed_batch1": build_fixed_batch1,
    "symbolic_hw": build_symbolic_hw,
    "sigmoid_n1": build_sigmoid_n1,
    "output_1d": build_output_1d,
    "dense_map": build_dense_map,
    "two_outputs": build_two_outputs,
    "streaming_vad": build_streaming_vad,
    "gru": build_gru,
    "constant_weights": build_constant_weights,
    "if_subgraph": build_if_subgraph,
    "fp16": build_fp16,
    "external_data": build_external_data,
    "neg_dim": build_neg_dim,
    "contrib_op": build_contrib_op,
    "quantized_qdq": build_quantized_qdq,
    "quantized_dynamic": build_quantized_dynamic,
    "depthwise": build_depthwise,
    "torch_legacy_op11": _torch_builder(11, False),
    "torch_legacy_op13": _torch_builder(13, False),
    "torch_legacy_op17": _torch_builder(17, False),
    "torch_legacy_op21": _torch_builder(21, False),
    "torch_dynamo_op21": _torch_builder(21, True),
}


def build_all(folder: str | Path, names: list[str] | None = None) -> list[Case]:
    """Build every case (or those named) into ``folder``; one sub-folder per case."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [CASES[n](folder) for n in (names or list(CASES))]


if __name__ == "__main__":  # python -m tests.wild.corpus OUTDIR [NAME...]
    import json
    import sys
    import time

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "wild-corpus")
    for n in sys.argv[2:] or list(CASES):
        t0 = time.time()
        c = CASES[n](out)
        size = sum(p.stat().st_size for p in c.model.parent.glob("model.onnx*"))
        print(json.dumps({"name": c.name, "seconds": round(time.time() - t0, 2), "model_bytes": size,
                          "macs_total": c.expected_macs.get("total"), "labels": c.labels}))
