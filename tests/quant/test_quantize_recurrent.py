"""LSTM and GRU layers are quantized weight-only: integer W and R dequantized into the float op."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.core.genome import Gene, Genome
from harness.quant.quantize import save_model

T, N, F, H = 7, 6, 12, 16  # steps, samples, features, hidden size


def _rnn_model(path: Path, op: str, dirs: int = 1) -> Path:
    rng = np.random.default_rng(1)
    gates = {"LSTM": 4, "GRU": 3}[op]
    inits = [
        numpy_helper.from_array((rng.standard_normal((dirs, gates * H, F)) / np.sqrt(F)).astype(np.float32), "rnn.W"),
        numpy_helper.from_array((rng.standard_normal((dirs, gates * H, H)) / np.sqrt(H)).astype(np.float32), "rnn.R"),
        numpy_helper.from_array((0.1 * rng.standard_normal((dirs, 2 * gates * H))).astype(np.float32), "rnn.B"),
        numpy_helper.from_array((rng.standard_normal((dirs * H, 5)) / np.sqrt(H)).astype(np.float32), "head.W"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
    ]
    nodes = [
        # ONNX Runtime's CPU LSTM/GRU run time-major only (layout 0): transpose the batch-first input
        helper.make_node("Transpose", ["x"], ["x_t"], name="to_time_major", perm=[1, 0, 2]),
        helper.make_node(op, ["x_t", "rnn.W", "rnn.R", "rnn.B"], ["Y", "Y_h"], name="rnn", hidden_size=H,
                         direction="bidirectional" if dirs == 2 else "forward"),
        helper.make_node("Transpose", ["Y_h"], ["h_t"], name="to_batch", perm=[1, 0, 2]),
        helper.make_node("Reshape", ["h_t", "flat"], ["h"], name="flatten"),
        helper.make_node("MatMul", ["h", "head.W"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("op", "dirs"), [("LSTM", 1), ("LSTM", 2), ("GRU", 1)])
def test_recurrent_weights_are_integer_and_the_model_runs_close_to_fp32(tmp_path: Path, op: str, dirs: int) -> None:
    from harness.quant.workload import Workload

    path = _rnn_model(tmp_path / "m.onnx", op, dirs)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(2).standard_normal((N, T, F)).astype(np.float32))
    work = Workload.open(path, calib=tmp_path / "d.npz", eval_data=tmp_path / "d.npz")
    layer = work.model.at_shapes({"x": [1, T, F]}).layer("rnn")
    assert layer.op_type == op and layer.extra_weights == ("rnn.R",)
    assert layer.macs == T * {"LSTM": 4, "GRU": 3}[op] * H * (F + H) * dirs
    genome = work.genome({"default": {"weight_bits": 8, "activation_bits": 8}})
    assert genome["rnn"] == Gene(8, "fp")  # weight-only whatever the default asks
    fp32 = work.evaluate(None)
    for bits, min_cosine in ((8, 0.999), (4, 0.95)):
        result = work.build(work.genome({"default": {"weight_bits": bits, "activation_bits": 8}}))
        out = save_model(result, tmp_path / f"q{bits}.onnx")
        proto = onnx.load(str(out))
        inits = {t.name: t for t in proto.graph.initializer}
        rnn = next(n for n in proto.graph.node if n.op_type == op)
        for slot, weight in ((1, "rnn.W"), (2, "rnn.R")):
            dq = next(n for n in proto.graph.node if n.output and n.output[0] == rnn.input[slot])
            assert dq.op_type == "DequantizeLinear" and dq.input[0] == f"{weight}_quantized"
            elem = inits[f"{weight}_quantized"].data_type
            assert elem == (TensorProto.INT8 if bits == 8 else TensorProto.INT4)
            assert result.nominal_bits[f"{weight}_quantized"] == bits
            # stored as raw bytes (4-bit packed two to a byte), not one varint per value in int32_data
            stored = inits[f"{weight}_quantized"]
            values = int(np.prod(stored.dims))
            assert not stored.int32_data and len(stored.raw_data) == (values if bits == 8 else (values + 1) // 2)
        assert "rnn.W" not in inits and "rnn.R" not in inits  # no float copy left behind
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert sess.run(None, {"x": work.eval_data.inputs["x"]})[0].shape == (N, 5)
        report = work.evaluate(result)
        assert report.mean_cosine is not None and report.mean_cosine > min_cosine
        assert report.weight_bytes < fp32.weight_bytes
        # the file shrinks too: the recurrent weights are most of this model
        assert out.stat().st_size < 0.75 * path.stat().st_size


def test_emulated_and_fp_genes_on_an_lstm(tmp_path: Path) -> None:
    from harness.quant.workload import Workload

    path = _rnn_model(tmp_path / "m.onnx", "LSTM")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(2).standard_normal((N, T, F)).astype(np.float32))
    work = Workload.open(path, calib=tmp_path / "d.npz", eval_data=tmp_path / "d.npz")
    three = work.build(work.genome({"layers": {"rnn": {"weight_bits": 3, "scheme": "asymmetric"}}}))
    assert "rnn" in three.emulated_layers
    q = numpy_helper.to_array(next(t for t in three.proto.graph.initializer if t.name == "rnn.W_quantized"))
    assert q.dtype == np.uint8 and q.max() <= 7  # 3-bit asymmetric grid in uint8 storage
    fp = work.build(work.genome({"layers": {"rnn": {"weight_bits": "fp"}}}))
    assert any(t.name == "rnn.W" and t.data_type == TensorProto.FLOAT for t in fp.proto.graph.initializer)


def test_genome_normalises_recurrent_layers_to_weight_only() -> None:
    layers = {"lstm": "LSTM", "gru": "GRU", "fc": "Gemm"}
    g = Genome.from_dict({"default": {"weight_bits": 4, "activation_bits": "dynamic"}}, layers)
    assert g["lstm"] == g["gru"] == Gene(4, "fp") and g["fc"].activation_bits == "dynamic"
    assert Genome.from_dict({"default": {"weight_bits": 16, "activation_bits": "dynamic"},
                             "layers": {"fc": {"weight_bits": 8}}}, layers)["lstm"] == Gene(16, "fp")
