"""Models from the wild: the forms a model file takes, each inventoried with correct numbers or refused
with a one-line reason. Every test builds its own tiny model with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.core.errors import InputError, ModelError
from harness.core.model import load_model

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17, domains: tuple[str, ...] = ()) -> Path:
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _run(model: str | Path | onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feed)


def _cnn(path: Path, dims: list[object]) -> Path:
    """conv (3->8, 3x3, pad 1), depthwise (8, 3x3, pad 1), global pool, Gemm (transB) to 10."""
    inits = [
        numpy_helper.from_array(_w(8, 3, 3, 3), "conv.w"),
        numpy_helper.from_array(_w(8, 1, 3, 3), "dw.w"),
        numpy_helper.from_array(_w(10, 8), "fc.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Conv", ["c", "dw.w"], ["d"], name="dw", pads=[1] * 4, group=8),
        helper.make_node("GlobalAveragePool", ["d"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", FLOAT, dims)],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 10])], inits,
    )
    return _save(graph, path)


# -- 1. shapes ---------------------------------------------------------------------------------
def test_symbolic_dims_stay_unknown_until_given(tmp_path: Path) -> None:
    model = load_model(_cnn(tmp_path / "m.onnx", ["N", 3, "H", "W"]))
    assert model.unresolved_inputs() == {"x": (None, 3, None, None)}
    assert [lay.macs for lay in model.layers] == [None, None, None]
    with pytest.raises(InputError, match=r"input 'x' has shape \[N, 3, H, W\].*--input-shape") as err:
        model.require_shapes()
    assert "\n" not in str(err.value)
    at = model.at_shapes({"x": [2, 3, 16, 16]})
    at.require_shapes()
    assert at.unresolved_inputs() == {} and at.layer_names == model.layer_names
    conv, dw, fc = at.layers
    assert conv.macs == 2 * 8 * 16 * 16 * 3 * 9 and conv.input_elements == 2 * 3 * 256
    assert dw.macs == 2 * 8 * 16 * 16 * 9  # depthwise: Cin/groups = 1
    assert dw.output_elements == 2 * 8 * 256
    assert fc.macs == 2 * 10 * 8 and fc.input_elements == 16 and fc.output_elements == 20


@pytest.mark.parametrize("literal", [-1, 0])
def test_a_literal_minus_one_or_zero_dim_is_symbolic(tmp_path: Path, literal: int) -> None:
    model = load_model(_cnn(tmp_path / "m.onnx", [literal, 3, 8, 8]))
    assert model.unresolved_inputs() == {"x": (None, 3, 8, 8)}
    assert all(lay.macs is None for lay in model.layers)
    at = load_model(tmp_path / "m.onnx", {"x": [1, 3, 8, 8]})
    assert all(lay.macs is not None and lay.macs > 0 for lay in at.layers)


def test_fixed_dims_are_used_and_checked(tmp_path: Path) -> None:
    path = _cnn(tmp_path / "m.onnx", [1, 3, 8, 8])
    model = load_model(path)
    assert model.shapes_used == {"x": [1, 3, 8, 8]} and model.layers[0].macs == 8 * 64 * 27
    with pytest.raises(InputError, match="contradicts the model's fixed dimension 0 = 1"):
        load_model(path, {"x": [4, 3, 8, 8]})
    with pytest.raises(InputError, match="has 3 dimensions but the model declares 4"):
        load_model(path, {"x": [3, 8, 8]})


def _contrib(path: Path) -> Path:
    """MatMul, com.microsoft Gelu (ONNX shape inference stops there), MatMul."""
    inits = [numpy_helper.from_array(_w(16, 32), "w1"), numpy_helper.from_array(_w(32, 10), "w2")]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Gelu", ["h"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "contrib", [helper.make_tensor_value_info("x", FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 10])], inits,
    )
    return _save(graph, path, domains=("com.microsoft",))


def test_shapes_inference_misses_come_from_one_ort_run(tmp_path: Path) -> None:
    model = load_model(_contrib(tmp_path / "m.onnx"))
    assert model.layers[1].macs is None  # N unknown: nothing is run
    at = model.at_shapes({"x": [3, 16]})
    assert [lay.macs for lay in at.layers] == [3 * 32 * 16, 3 * 10 * 32]
    assert at.layers[1].input_elements == 3 * 32 and at.layers[1].output_elements == 30
    assert at.tensor_shapes()["g"] == [3, 32]  # the cost model's GraphStats reads these
    sample = {"x": RNG.standard_normal((5, 16)).astype(np.float32)}
    assert model.at_shapes({"x": [5, 16]}, sample).layers[1].macs == 5 * 10 * 32


def test_tensor_shapes_are_complete_for_the_cost_model(tmp_path: Path) -> None:
    """Layers resolved by inference alone run nothing at load; the cost model's first
    ``tensor_shapes()`` call reads the rest (a tensor after a contrib op) from one ORT run."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("Gelu", ["h"], ["y"], name="gelu", domain="com.microsoft")],
        "g", [helper.make_tensor_value_info("x", FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 8])], [numpy_helper.from_array(_w(16, 8), "w")],
    )
    model = load_model(_save(graph, tmp_path / "m.onnx", domains=("com.microsoft",)), {"x": [2, 16]})
    assert model.layers[0].macs == 2 * 8 * 16 and "y" not in model.known_shapes
    assert model.tensor_shapes()["y"] == [2, 8]


# -- 2. constants ------------------------------------------------------------------------------
def test_constant_node_and_identity_weights_become_layers(tmp_path: Path) -> None:
    w1, w2, b = _w(16, 8), _w(8, 4), _w(4)
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1")),  # unnamed
        helper.make_node("MatMul", ["x", "w1"], ["h"]),  # unnamed: its name comes from its index in the file
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Identity", ["w2_src"], ["w2"], name="w2_identity"),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
        helper.make_node("Constant", [], ["b"], name="b_const", value_floats=b.tolist()),
        helper.make_node("Add", ["m", "b"], ["y"], name="bias"),
    ]
    graph = helper.make_graph(
        nodes, "consts", [helper.make_tensor_value_info("x", FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 4])], [numpy_helper.from_array(w2, "w2_src")],
    )
    path = _save(graph, tmp_path / "m.onnx")
    model = load_model(path)
    assert [(lay.name, lay.weight, lay.macs) for lay in model.layers] == [
        ("matmul_1", "w1", 2 * 8 * 16),
        ("fc2", "w2", 2 * 4 * 8),
    ]
    # weights are folded; a constant that is no weight (the Add's bias) stays a node
    assert [n.name for n in model.proto.graph.node if n.op_type in ("Constant", "Identity")] == ["b_const"]
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    assert np.allclose(_run(model.proto, {"x": x})[0], _run(path, {"x": x})[0])


def test_constant_weights_quantize(tmp_path: Path) -> None:
    from harness.quant.workload import Workload

    nodes = [
        helper.make_node("Constant", [], ["w"], name="w_const", value=numpy_helper.from_array(_w(16, 8), "w")),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "c", [helper.make_tensor_value_info("x", FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 8])],
    )
    path = _save(graph, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=RNG.standard_normal((16, 16)).astype(np.float32))
    work = Workload.open(path, calib=tmp_path / "d.npz", eval_data=tmp_path / "d.npz")
    report = work.evaluate(work.build(work.uniform(weight_bits=8, activation_bits=8)))
    assert report.mean_cosine is not None and report.mean_cosine > 0.99


# -- 3. control flow ---------------------------------------------------------------------------
def _if_model(path: Path, outside: bool, cond: bool | None = None) -> Path:
    """Layers inside an If; ``cond`` None: the condition is a graph input (decided at run time),
    else a Constant of that value."""
    inits = [numpy_helper.from_array(_w(16, 10), "then.w"), numpy_helper.from_array(_w(16, 10), "else.w")]
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "then.w"], ["t"], name="then_fc")], "then", [],
        [helper.make_tensor_value_info("t", FLOAT, ["N", 10])],
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "else.w"], ["e"], name="else_fc")], "else", [],
        [helper.make_tensor_value_info("e", FLOAT, ["N", 10])],
    )
    nodes = [helper.make_node("If", ["cond"], ["z"], name="head_if", then_branch=then_g, else_branch=else_g)]
    inputs = [helper.make_tensor_value_info("x", FLOAT, ["N", 16])]
    if cond is None:
        inputs.append(helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []))
    else:
        nodes.insert(0, helper.make_node("Constant", [], ["cond"], name="cond",
                                         value=numpy_helper.from_array(np.array(cond), "c")))
    if outside:
        inits.append(numpy_helper.from_array(_w(10, 4), "out.w"))
        nodes.append(helper.make_node("MatMul", ["z", "out.w"], ["y"], name="out"))
    else:
        nodes.append(helper.make_node("Identity", ["z"], ["y"], name="y"))
    graph = helper.make_graph(
        nodes, "if", inputs, [helper.make_tensor_value_info("y", FLOAT, ["N", 4 if outside else 10])], inits,
    )
    return _save(graph, path)


@pytest.mark.parametrize("cond", [True, False])
def test_an_if_with_a_constant_condition_is_inlined(tmp_path: Path, cond: bool) -> None:
    path = _if_model(tmp_path / "m.onnx", outside=True, cond=cond)
    model = load_model(path, {"x": [1, 16]})
    taken = "then_fc" if cond else "else_fc"
    assert model.layer_names == [taken, "out"]
    assert [la.macs for la in model.layers] == [16 * 10, 10 * 4]
    assert any(f"If 'head_if' has a constant condition ({str(cond).lower()})" in n for n in model.notes)
    # the branch never taken leaves no weight behind, and the inlined graph computes what the If did
    inits = {t.name for t in model.proto.graph.initializer}
    assert ("else.w" if cond else "then.w") not in inits
    x = RNG.standard_normal((3, 16)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_layers_only_inside_control_flow_are_a_precise_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"all 2 weighted ops sit inside control flow \(If 'head_if' \(2\)\)") as err:
        load_model(_if_model(tmp_path / "m.onnx", outside=False))
    assert "export the model without control flow" in str(err.value) and "\n" not in str(err.value)


def test_layers_inside_control_flow_are_a_note_when_others_are_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli.main import main

    path = _if_model(tmp_path / "m.onnx", outside=True)
    model = load_model(path)
    assert model.layer_names == ["out"]
    (note,) = model.notes
    assert "2 weighted ops inside control flow (If 'head_if' (2)) stay float" in note
    assert main(["layers", str(path)]) == 0
    err = capsys.readouterr().err
    assert "If 'head_if'" in err


# -- 5. float16 --------------------------------------------------------------------------------
def _fp16(path: Path) -> Path:
    half = TensorProto.FLOAT16
    inits = [
        numpy_helper.from_array(_w(8, 3, 3, 3).astype(np.float16), "conv.w"),
        numpy_helper.from_array(_w(10, 8).astype(np.float16), "fc.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w"], ["g"], name="fc", transB=1),
        helper.make_node("Cast", ["g"], ["g32"], name="to32", to=FLOAT),
        helper.make_node("Softmax", ["g32"], ["s"], name="softmax"),
        helper.make_node("Cast", ["s"], ["y"], name="to16", to=half),
    ]
    graph = helper.make_graph(
        nodes, "fp16", [helper.make_tensor_value_info("x", half, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", half, ["N", 10])], inits,
    )
    return _save(graph, path)


def test_float16_models_are_converted_to_float32_with_a_note(tmp_path: Path) -> None:
    path = _fp16(tmp_path / "m.onnx")
    model = load_model(path, {"x": [1, 3, 8, 8]})
    (note,) = model.notes
    assert note.startswith("converted float16 -> float32 for quantization")
    # computes in float32 inside, keeps the file's float16 inputs and outputs: a drop-in replacement
    assert model.inputs[0].dtype == "float16" and model.outputs[0].dtype == "float16"
    assert [lay.weight_dtype for lay in model.layers] == ["float32", "float32"]
    assert all(t.data_type != TensorProto.FLOAT16 for t in model.proto.graph.initializer)
    assert model.layers[0].macs == 8 * 64 * 27
    x = RNG.standard_normal((4, 3, 8, 8)).astype(np.float16)
    got, want = _run(model.proto, {"x": x})[0], _run(path, {"x": x})[0]
    assert got.dtype == np.float16 and np.allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)
    # qae evaluate runs a file as it is: float16 stays float16 inside too
    plain = load_model(path, require_layers=False)
    assert plain.notes == [] and plain.layers[0].weight_dtype == "float16"


def test_qae_quantize_on_a_float16_model_writes_a_loadable_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli.main import main

    path = _fp16(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 3, 8, 8)).astype(np.float16))
    (tmp_path / "g.yaml").write_text("default: {weight_bits: 8, activation_bits: 8}\n")
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(path), "--genome", str(tmp_path / "g.yaml"), "--calib", str(tmp_path / "calib.npz"),
                 "-o", str(out)])
    err = capsys.readouterr().err
    if code == 2:  # a clean refusal is allowed: one line, no file
        assert err.startswith("qae: error:") and err.count("\n") == 1 and not out.exists()
        return
    assert code == 0
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float16)
    got, want = _run(out, {"x": x})[0], _run(path, {"x": x})[0]  # the same float16 feed as the original
    assert got.dtype == np.float16 and np.abs(got.astype(np.float32) - want.astype(np.float32)).max() < 0.05


# -- 6. already quantized ----------------------------------------------------------------------
def _mlp(path: Path) -> Path:
    inits = [numpy_helper.from_array(_w(16, 32), "w1"), numpy_helper.from_array(_w(32, 10), "w2")]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 10])], inits,
    )
    return _save(graph, path)


def test_already_quantized_models_are_refused_with_what_was_found(tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static

    src = _mlp(tmp_path / "fp32.onnx")
    quantize_dynamic(str(src), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.rows = iter([{"x": RNG.standard_normal((4, 16)).astype(np.float32)} for _ in range(2)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    quantize_static(str(src), str(tmp_path / "qdq.onnx"), Reader())
    with pytest.raises(ModelError, match=r"already quantized \(2 DynamicQuantizeLinear, 2 MatMulInteger\)") as err:
        load_model(tmp_path / "dyn.onnx")
    assert "give the float model it was made from" in str(err.value)
    with pytest.raises(ModelError, match=r"already quantized \(\d+ QuantizeLinear/DequantizeLinear\)"):
        load_model(tmp_path / "qdq.onnx")
    for name in ("dyn.onnx", "qdq.onnx"):  # qae evaluate still loads them
        assert load_model(tmp_path / name, require_layers=False).layers == []


# -- 7. external data --------------------------------------------------------------------------
def test_external_data_counts_in_size_and_hash(tmp_path: Path) -> None:
    proto = onnx.load(str(_mlp(tmp_path / "src.onnx")))
    folder = tmp_path / "ext"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    model = load_model(path)
    data = folder / "weights.bin"
    assert model.file_bytes == path.stat().st_size + data.stat().st_size
    assert model.layer_names == ["fc1", "fc2"] and model.layers[0].params == 512
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    assert load_model(path).sha256 != model.sha256  # the hash covers the data file
    data.unlink()
    with pytest.raises(ModelError, match=r"external data file 'weights\.bin'.*is missing"):
        load_model(path)


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    proto = onnx.load(str(_mlp(tmp_path / "src.onnx")))
    (tmp_path / "inner").mkdir()
    onnx.save(proto, str(tmp_path / "inner" / "model.onnx"), save_as_external_data=True, location="w.bin",
              size_threshold=0)
    moved = onnx.load(str(tmp_path / "inner" / "model.onnx"), load_external_data=False)
    for t in moved.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../inner/w.bin"
    (tmp_path / "other").mkdir()
    onnx.save(moved, str(tmp_path / "other" / "model.onnx"))
    with pytest.raises(ModelError, match=r"points to external data '../inner/w.bin' outside the model's folder"):
        load_model(tmp_path / "other" / "model.onnx")


# -- 4. recurrent layers -----------------------------------------------------------------------
@pytest.mark.parametrize(("op", "gates", "layout", "dirs"), [("LSTM", 4, 0, 1), ("LSTM", 4, 1, 2), ("GRU", 3, 1, 1)])
def test_lstm_and_gru_are_layers(tmp_path: Path, op: str, gates: int, layout: int, dirs: int) -> None:
    t, b, i, h = 5, 2, 6, 4
    inits = [
        numpy_helper.from_array(_w(dirs, gates * h, i), "W"),
        numpy_helper.from_array(_w(dirs, gates * h, h), "R"),
    ]
    x_shape = [b, t, i] if layout else [t, b, i]
    node = helper.make_node(op, ["x", "W", "R"], ["Y", "Y_h"], name="rnn", hidden_size=h, layout=layout,
                            direction="bidirectional" if dirs == 2 else "forward")
    graph = helper.make_graph(
        [node], "rnn", [helper.make_tensor_value_info("x", FLOAT, ["A", "B", i])],
        [helper.make_tensor_value_info("Y_h", FLOAT, ["B", dirs, h] if layout else [dirs, "B", h])], inits,
    )
    path = _save(graph, tmp_path / "m.onnx")
    model = load_model(path)
    (layer,) = model.layers
    assert (layer.op_type, layer.weight, layer.extra_weights, layer.channel_axis) == (op, "W", ("R",), 1)
    assert layer.params == dirs * gates * h * (i + h) and layer.macs is None
    (layer,) = model.at_shapes({"x": x_shape}).layers
    assert layer.macs == t * gates * h * (i + h) * dirs * b
    assert layer.input_elements == t * b * i and layer.output_elements == t * dirs * b * h


def _left_float(path: Path, kind: str) -> Path:
    """x [N, 8] -> MatMul(x, W) -> then one op with a weight qae does not make a layer of (``kind``)."""
    w, v = _w(8, 8), _w(8, 4)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc")]
    inits = [numpy_helper.from_array(w, "W")]
    if kind == "transposed":  # an exporter without constant folding: the weight behind a Transpose
        inits.append(numpy_helper.from_array(np.ascontiguousarray(v.T), "Vt"))
        nodes += [helper.make_node("Transpose", ["Vt"], ["V"], name="t", perm=[1, 0]),
                  helper.make_node("MatMul", ["h", "V"], ["y"], name="tied_head")]
    elif kind == "einsum":
        inits.append(numpy_helper.from_array(v, "V"))
        nodes.append(helper.make_node("Einsum", ["h", "V"], ["y"], name="mix", equation="nk,kj->nj"))
    else:  # the weight on the left: W @ x^T
        inits.append(numpy_helper.from_array(np.ascontiguousarray(v.T), "Vt"))
        nodes += [helper.make_node("Transpose", ["h"], ["hT"], name="t", perm=[1, 0]),
                  helper.make_node("MatMul", ["Vt", "hT"], ["yT"], name="left"),
                  helper.make_node("Transpose", ["yT"], ["y"], name="back", perm=[1, 0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return _save(graph, path)


@pytest.mark.parametrize(("kind", "op", "why"), [
    ("transposed", "MatMul 'tied_head'", "passes through a Transpose/Reshape qae does not fold"),
    ("einsum", "Einsum 'mix'", "qae has no quantizer for Einsum"),
    ("left", "MatMul 'left'", "its constant is the first input"),
])
def test_a_weighted_op_left_float_gets_a_note_with_why(tmp_path: Path, kind: str, op: str, why: str) -> None:
    model = load_model(_left_float(tmp_path / "m.onnx", kind))
    assert [layer.name for layer in model.layers] == ["fc"]
    (note,) = model.notes
    assert note.startswith("1 weighted op(s) stay float in every quantized model (32 weights, 33 % of the model's")
    assert f"{op} (32 weights: " in note and why in note


def test_a_model_whose_only_weights_are_left_float_names_them(tmp_path: Path) -> None:
    v = _w(4, 8)
    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["xT"], name="t", perm=[1, 0]),
                               helper.make_node("MatMul", ["V", "xT"], ["y"], name="left")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])],
                              [numpy_helper.from_array(v, "V")])
    with pytest.raises(ModelError, match=r"weighted ops found: MatMul 'left': its constant is the first input"):
        load_model(_save(graph, tmp_path / "m.onnx"))


def _bn_model(path: Path, training: int, dropout_flag: bool | None = None) -> Path:
    """Conv -> BatchNormalization(training_mode) [-> Dropout(ratio, training_mode flag)] -> Flatten."""
    c = 4
    inits = [numpy_helper.from_array(_w(c, 1, 3, 3), "conv.w")]
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
              (("g", np.ones(c)), ("b", np.zeros(c)), ("m", np.zeros(c)), ("v", np.ones(c)))]
    outs = ["bn_y"] + (["rm", "rv"] if training else [])
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], outs, name="bn",
                              training_mode=training)]
    last = "bn_y"
    if dropout_flag is not None:
        inits += [numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
                  numpy_helper.from_array(np.array(dropout_flag), "train")]
        nodes.append(helper.make_node("Dropout", ["bn_y", "ratio", "train"], ["d"], name="drop"))
        last = "d"
    nodes.append(helper.make_node("Flatten", [last], ["y"], name="flat"))
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], inits)
    return _save(graph, path, opset=15)


def test_a_model_exported_in_training_mode_is_refused(tmp_path: Path) -> None:
    """Training-mode BatchNormalization normalises each batch by its own statistics, so a score would depend
    on how many samples ran together; a training-mode Dropout drops at random."""
    with pytest.raises(ModelError, match=r"BatchNormalization 'bn' runs in training mode .*export it after "
                                         r"model\.eval\(\)"):
        load_model(_bn_model(tmp_path / "t.onnx", training=1))
    with pytest.raises(ModelError, match=r"Dropout 'drop' runs in training mode"):
        load_model(_bn_model(tmp_path / "d.onnx", training=0, dropout_flag=True))
    assert [layer.name for layer in load_model(_bn_model(tmp_path / "e.onnx", training=0)).layers] == ["conv"]
    assert load_model(_bn_model(tmp_path / "f.onnx", training=0, dropout_flag=False)).layers


def test_a_batched_matmul_weight_is_named_as_the_reason(tmp_path: Path) -> None:
    w = np.stack([_w(8, 4)] * 3)  # [3, 8, 4]: one weight per batch entry
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="bmm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2, 4])],
                              [numpy_helper.from_array(w, "W")])
    with pytest.raises(ModelError, match=r"MatMul 'bmm': its weight is 3-D \(a batched MatMul; qae quantizes 2-D"):
        load_model(_save(graph, tmp_path / "m.onnx"))


def test_dynamo_nodes_without_scope_metadata_take_their_parameters_module_path(tmp_path: Path) -> None:
    """The dynamo exporter names nodes ``node_<op>_<n>``; without its scope metadata (an optimizer dropped it)
    a layer is named from its parameter (``emb.weight`` -> ``emb``), or, when the exporter renamed a transposed
    weight (``val_0``), from the bias the next Add reads (``q.bias`` -> ``q``). Other node names stay."""
    inits = [numpy_helper.from_array(_w(50, 8), "emb.weight"), numpy_helper.from_array(_w(8, 8), "val_0"),
             numpy_helper.from_array(np.zeros(8, np.float32), "q.bias"), numpy_helper.from_array(_w(8, 4), "val_9")]
    nodes = [helper.make_node("Gather", ["emb.weight", "ids"], ["e"], name="node_embedding"),
             helper.make_node("MatMul", ["e", "val_0"], ["m"], name="node_MatMul_1"),
             helper.make_node("Add", ["m", "q.bias"], ["a"], name="node_Add_2"),
             helper.make_node("MatMul", ["a", "val_9"], ["y"], name="node_linear_4")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4])], inits)
    model = load_model(_save(graph, tmp_path / "m.onnx"))
    assert [layer.name for layer in model.layers] == ["emb", "q", "node_linear_4"]
