"""Block-wise weights and ONNX Runtime's weight-only kernels, read back from the written files.

MatMulNBits on digits-vit's MatMul layers and on a one-MatMul model, GatherBlockQuantized on a tiny
embedding model, block-wise DequantizeLinear on MatMul and Gemm: the packed bytes are counted, the
integers and scales are unpacked and must reproduce the weights within half a step, and ONNX
Runtime's outputs must match a numpy reference of the same quantization within float tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.core.genome import Genome
from harness.core.model import load_model
from harness.quant.evaluate import session, sizes
from harness.quant.kernels import pack, unpack
from harness.quant.quantize import quantize, save_model

V, H = 50, 64  # vocabulary, embedding width of the tiny table


def _inits(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _run(proto: onnx.ModelProto, feed: dict[str, np.ndarray], level: str) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", level)
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def _written(result: Any, tmp_path: Path) -> onnx.ModelProto:
    path = save_model(result, tmp_path / "q.onnx")
    return onnx.load(str(path))


def _matmul_model(path: Path, k: int, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    w[3, :] *= 6.0  # an outlier row: blocks must not share its range
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def _embedding_model(path: Path, seed: int = 0) -> Path:
    """ids [N, 5] -> Gather(table [V, H]) -> MatMul [H, 8]: an embedding table and one projection."""
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((V, H)) * 0.3 + 0.2).astype(np.float32)  # off-centre, as word tables are
    proj = (rng.standard_normal((H, 8)) / np.sqrt(H)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed", axis=0),
             helper.make_node("MatMul", ["e", "proj"], ["y"], name="proj")]
    graph = helper.make_graph(
        nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 8])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(proj, "proj")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def _blocks_along_rows(values: np.ndarray, per: np.ndarray, span: int) -> np.ndarray:
    """A per-block array [C, n_blocks] spread over rows [C, L]."""
    return np.repeat(per, span, axis=1)[:, : values.shape[1]]


def _check_half_step(w_rows: np.ndarray, deq_rows: np.ndarray, scale_rows: np.ndarray) -> None:
    assert np.all(np.abs(w_rows - deq_rows) <= scale_rows / 2 * (1 + 1e-5) + 1e-7)


def _matmulnbits_readback(proto: onnx.ModelProto, node_name: str, w: np.ndarray, bits: int, block: int,
                          asymmetric: bool) -> np.ndarray:
    """Check a MatMulNBits node's packed tensors against ``w`` [K, N]; returns the dequantized weight."""
    k, n = w.shape
    node = next(nd for nd in proto.graph.node if nd.name == node_name)
    assert (node.op_type, node.domain) == ("MatMulNBits", "com.microsoft")
    attrs = _attrs(node)
    assert (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]) == (k, n, bits, block)
    inits = {t.name: t for t in proto.graph.initializer}
    b, s = inits[node.input[1]], inits[node.input[2]]
    n_blocks = -(-k // block)
    assert b.data_type == TensorProto.UINT8 and list(b.dims) == [n, n_blocks, block * bits // 8]
    assert len(b.raw_data) == n * n_blocks * block * bits // 8  # bits / 8 bytes a weight, blocks padded
    if k % block == 0:
        assert len(b.raw_data) == k * n * bits // 8
    assert s.data_type == TensorProto.FLOAT and list(s.dims) == [n, n_blocks]  # one scale per block
    packed = numpy_helper.to_array(b)
    scale = numpy_helper.to_array(s)
    q = unpack(packed, bits, block).reshape(n, n_blocks * block)[:, :k].astype(np.int64)
    if asymmetric:
        assert len(node.input) == 4
        z = inits[node.input[3]]
        assert z.data_type == TensorProto.UINT8 and list(z.dims) == [n, -(-n_blocks * bits // 8)]
        zero = unpack(numpy_helper.to_array(z), bits, n_blocks).astype(np.int64)  # one zero point per block
    else:
        assert len(node.input) == 3  # ONNX Runtime's default zero point 2^(bits-1)
        zero = np.full((n, n_blocks), 2 ** (bits - 1), np.int64)
    deq = (q - _blocks_along_rows(q, zero, block)) * _blocks_along_rows(q, scale, block)
    _check_half_step(w.T, deq, _blocks_along_rows(q, scale, block))
    return deq.T.astype(np.float32)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize(("k", "block"), [(64, 16), (64, 32), (40, 16), (48, 128)])
def test_matmulnbits_packs_and_matches_numpy(tmp_path: Path, bits: int, scheme: str, k: int, block: int) -> None:
    model = load_model(_matmul_model(tmp_path / "m.onnx", k, 24))
    genome = Genome.from_dict({"default": {"kernel": "matmulnbits", "granularity": "per_block", "block_size": block,
                                           "weight_bits": bits, "scheme": scheme}}, {"proj": "MatMul"})
    result = quantize(model, genome, {})
    assert not result.emulated and not result.nominal_bits
    proto = _written(result, tmp_path)
    w = numpy_helper.to_array(model.proto.graph.initializer[0])
    deq = _matmulnbits_readback(proto, "proj", w, bits, block, scheme == "asymmetric")
    assert "w" not in _inits(proto)  # the float weight is gone
    x = np.random.default_rng(3).standard_normal((7, k)).astype(np.float32)
    y = session(proto).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ deq, rtol=1e-4, atol=1e-5)
    # exact bytes: packed weights + scales (+ zero points), nothing else
    n_blocks = -(-k // block)
    expect = 24 * n_blocks * block * bits // 8 + 24 * n_blocks * 4
    expect += 24 * -(-n_blocks * bits // 8) if scheme == "asymmetric" else 0
    assert sizes(proto, 0, result.nominal_bits).weight_bytes == expect


def test_accuracy_level_is_written_and_runs(tmp_path: Path) -> None:
    model = load_model(_matmul_model(tmp_path / "m.onnx", 64, 24))
    layers = {"proj": "MatMul"}
    base = {"kernel": "matmulnbits", "granularity": "per_block", "block_size": 32, "weight_bits": 4}
    outs = {}
    for level in (None, 4):
        genome = Genome.from_dict({"default": {**base, "accuracy_level": level}}, layers)
        proto = quantize(model, genome, {}).proto
        node = next(nd for nd in proto.graph.node if nd.op_type == "MatMulNBits")
        assert _attrs(node).get("accuracy_level") == level
        outs[level] = session(proto).run(None, {"x": np.ones((2, 64), np.float32)})[0]
    np.testing.assert_allclose(outs[4], outs[None], rtol=0.05, atol=0.05)  # int8 A: close, not equal


def test_digits_vit_mixed_kernels_build_run_and_match(digits_workload: Any, tmp_path: Path) -> None:
    """MatMulNBits, block-wise QDQ (MatMul and Gemm), static QDQ and dynamic layers in one graph."""
    work = digits_workload
    nbits = {"kernel": "matmulnbits", "granularity": "per_block", "block_size": 16, "weight_bits": 4}
    genome = work.genome({"default": {"weight_bits": "fp"}, "layers": {
        "blocks.0.attn.q_proj": nbits,
        "blocks.0.attn.k_proj": {**nbits, "scheme": "asymmetric", "weight_bits": 2, "block_size": 32},
        "blocks.0.ffn.fc2": {**nbits, "weight_bits": 8, "block_size": 128},
        "blocks.0.ffn.fc1": {"granularity": "per_block", "block_size": 16, "weight_bits": 4},
        "blocks.1.ffn.fc1": {"granularity": "per_block", "block_size": 32, "weight_bits": 3, "scheme": "asymmetric"},
        "head": {"granularity": "per_block", "block_size": 16, "weight_bits": 4},
    }})
    result = work.build(genome)
    proto = _written(result, tmp_path)
    ops = [(nd.domain, nd.op_type) for nd in proto.graph.node]
    assert ops.count(("com.microsoft", "MatMulNBits")) == 3
    assert result.emulated_layers == ["blocks.1.ffn.fc1"]  # 3 bits in int8 storage
    float_inits = _inits(work.model.proto)
    reference = onnx.ModelProto()
    reference.CopyFrom(work.model.proto)
    subst: dict[str, np.ndarray] = {}
    for name, block, bits, asym in (("blocks.0.attn.q_proj", 16, 4, False), ("blocks.0.attn.k_proj", 32, 2, True),
                                    ("blocks.0.ffn.fc2", 128, 8, False)):
        layer = work.model.layer(name)
        subst[layer.weight] = _matmulnbits_readback(proto, layer.node_name, float_inits[layer.weight], bits, block,
                                                    asym)
    written = _inits(proto)
    for name, block in (("blocks.0.ffn.fc1", 16), ("blocks.1.ffn.fc1", 32), ("head", 16)):
        layer = work.model.layer(name)
        dq = next(nd for nd in proto.graph.node if nd.name == f"qae_dq/{name}")
        attrs = _attrs(dq)
        k_axis = 1 - layer.channel_axis
        assert attrs == {"axis": k_axis, "block_size": block}
        q, scale = written[dq.input[0]].astype(np.int64), written[dq.input[1]]
        symmetric = name != "blocks.1.ffn.fc1"
        assert len(dq.input) == (2 if symmetric else 3)  # a symmetric grid's zero point is left at 0
        zero = np.zeros(scale.shape, np.int64) if symmetric else written[dq.input[2]].astype(np.int64)
        tensor = next(t for t in proto.graph.initializer if t.name == dq.input[0])
        stored = tensor.data_type
        assert stored == (TensorProto.INT4 if symmetric else TensorProto.UINT8)  # 3 bits: emulated in uint8
        # raw bytes, 4-bit packed two to a byte: never one varint per value in int32_data
        assert not tensor.int32_data and len(tensor.raw_data) == -(-q.size // 2 if symmetric else -q.size)
        w = float_inits[layer.weight]
        assert scale.shape[k_axis] == -(-w.shape[k_axis] // block) and scale.shape[1 - k_axis] == w.shape[1 - k_axis]
        spread = np.repeat(scale, block, axis=k_axis).take(range(w.shape[k_axis]), axis=k_axis)
        zspread = np.repeat(zero, block, axis=k_axis).take(range(w.shape[k_axis]), axis=k_axis)
        deq = (q - zspread) * spread
        assert np.all(np.abs(w - deq) <= spread / 2 * (1 + 1e-5) + 1e-7)  # within half a step
        subst[layer.weight] = deq.astype(np.float32)
    nominal = {f"{work.model.layer(n).weight}_quantized": b for n, b in
               (("blocks.0.ffn.fc1", 4), ("blocks.1.ffn.fc1", 3), ("head", 4))}
    assert result.nominal_bits == nominal
    for init in reference.graph.initializer:
        if init.name in subst:
            init.CopyFrom(numpy_helper.from_array(subst[init.name], init.name))
    feed = next(work.eval_data.batches(64))
    want = session(reference).run(None, feed)[0]
    # ONNX Runtime 1.32 fuses a block-wise DequantizeLinear -> MatMul into MatMulNBits with
    # session.qdq_matmulnbits_accuracy_level 4 by default (A quantized to int8): level 0 keeps A float
    np.testing.assert_allclose(_run(proto, feed, level="0"), want, rtol=1e-4, atol=1e-4)
    default = session(proto).run(None, feed)[0]
    assert 1e-3 < float(np.abs(default - want).max()) < 0.2  # the fusion's int8 A: close, not equal
    # and it mixes with ONNX Runtime's own passes
    extra = {"blocks.1.attn.q_proj": {"weight_bits": 8, "activation_bits": 8},
             "blocks.1.attn.k_proj": {"weight_bits": 8, "activation_bits": "dynamic"}}
    mixed = work.genome({**genome.to_dict(), "layers": {**genome.to_dict()["layers"], **extra}})
    report = work.evaluate(work.build(mixed))
    assert report.accuracy > 0.5  # runs and still classifies (2-bit k_proj costs some; chance is 0.1)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("block", [16, 32, 128])
def test_gather_block_table_packs_and_matches_numpy(tmp_path: Path, bits: int, scheme: str, block: int) -> None:
    model = load_model(_embedding_model(tmp_path / "e.onnx"))
    genome = Genome.from_dict({"layers": {"embed": {"kernel": "gather_block", "granularity": "per_block",
                                                    "block_size": block, "weight_bits": bits, "scheme": scheme}},
                               "default": {"weight_bits": "fp"}}, {"embed": "Gather", "proj": "MatMul"})
    result = quantize(model, genome, {})
    proto = _written(result, tmp_path)
    node = next(nd for nd in proto.graph.node if nd.name == "embed")
    assert (node.op_type, node.domain) == ("GatherBlockQuantized", "com.microsoft")
    attrs = _attrs(node)
    assert attrs == {"gather_axis": 0, "quantize_axis": 1, "block_size": block, "bits": bits}
    inits = {t.name: t for t in proto.graph.initializer}
    data, s = inits[node.input[0]], inits[node.input[2]]
    n_blocks = -(-H // block)
    assert data.data_type == TensorProto.UINT8 and list(data.dims) == [V, H * bits // 8]
    assert len(data.raw_data) == V * H * bits // 8  # bits / 8 bytes a weight
    assert list(s.dims) == [V, n_blocks]  # one scale per block
    q = unpack(numpy_helper.to_array(data), bits, H).astype(np.int64) if bits < 8 else \
        numpy_helper.to_array(data).astype(np.int64)
    scale = numpy_helper.to_array(s)
    zp_bytes = 0
    if scheme == "asymmetric":
        z = inits[node.input[3]]
        zp_bytes = len(z.raw_data)
        assert list(z.dims) == [V, -(-n_blocks * bits // 8)]
        zero = unpack(numpy_helper.to_array(z), bits, n_blocks).astype(np.int64) if bits < 8 else \
            numpy_helper.to_array(z).astype(np.int64)
    else:
        assert len(node.input) == 3  # uint8 data: ONNX Runtime's default zero point 2^(bits-1)
        zero = np.full((V, n_blocks), 2 ** (bits - 1), np.int64)
    table = numpy_helper.to_array(model.proto.graph.initializer[0])
    deq = (q - _blocks_along_rows(q, zero, block)) * _blocks_along_rows(q, scale, block)
    _check_half_step(table, deq, _blocks_along_rows(q, scale, block))
    assert sizes(proto, 0).weight_bytes == V * H * bits // 8 + V * n_blocks * 4 + zp_bytes + H * 8 * 4
    ids = np.random.default_rng(4).integers(0, V, (6, 5)).astype(np.int64)
    y = session(proto).run(None, {"ids": ids})[0]
    proj = _inits(model.proto)["proj"]
    np.testing.assert_allclose(y, deq.astype(np.float32)[ids] @ proj, rtol=1e-4, atol=1e-5)


def test_gather_block_refuses_a_width_it_cannot_pack(tmp_path: Path) -> None:
    from harness.core.errors import ModelError

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")], "odd",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 33])],
        [numpy_helper.from_array(rng.standard_normal((10, 33)).astype(np.float32), "table")])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    model = load_model(path)
    genome = Genome.from_dict({"default": {"kernel": "gather_block", "granularity": "per_block", "block_size": 16,
                                           "weight_bits": 4}}, {"embed": "Gather"})
    with pytest.raises(ModelError, match="packs 2 values to a byte along its width, which is 33") as err:
        quantize(model, genome, {})
    assert "\n" not in str(err.value)


def test_pack_is_low_bits_first() -> None:
    assert pack(np.array([[1, 2, 3, 4]]), 4).tolist() == [[0x21, 0x43]]
    assert pack(np.array([[1, 2, 3, 0, 1]]), 2).tolist() == [[0b00111001, 0b00000001]]
    values = np.random.default_rng(0).integers(0, 16, (3, 37))
    assert (unpack(pack(values, 4), 4, 37) == values).all()


@pytest.mark.parametrize("method", ["mse", "hqq"])
def test_rounding_methods_reach_the_written_weights(tmp_path: Path, method: str) -> None:
    pytest.importorskip("harness.quant.rounding")
    model = load_model(_matmul_model(tmp_path / "m.onnx", 64, 24))
    layers = {"proj": "MatMul"}
    w = _inits(model.proto)["w"]
    errors = {}
    for rounding in ("rtn", method):
        genome = Genome.from_dict({"default": {"kernel": "matmulnbits", "granularity": "per_block", "block_size": 32,
                                               "weight_bits": 4, "rounding": rounding}}, layers)
        proto = quantize(model, genome, {}).proto
        node = next(nd for nd in proto.graph.node if nd.op_type == "MatMulNBits")
        inits = _inits(proto)
        q = unpack(inits[node.input[1]], 4, 32).reshape(24, -1)[:, :64].astype(np.int64)
        deq = ((q - 8) * np.repeat(inits[node.input[2]], 32, axis=1)).T
        errors[rounding] = float(np.sum((w - deq) ** 2))
    assert errors[method] < errors["rtn"]


def test_gptq_takes_the_layers_inputs_and_lowers_the_output_error(tmp_path: Path) -> None:
    pytest.importorskip("harness.quant.rounding")
    from harness.core.errors import ModelError

    model = load_model(_matmul_model(tmp_path / "m.onnx", 64, 24))
    layers = {"proj": "MatMul"}
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((256, 64)) * np.linspace(0.2, 3.0, 64)).astype(np.float32)  # uneven input scales
    w = _inits(model.proto)["w"]
    errors = {}
    for kernel in ("matmulnbits", "qdq"):
        for rounding in ("rtn", "gptq"):
            gene = {"kernel": kernel, "granularity": "per_block", "block_size": 32, "weight_bits": 4,
                    "rounding": rounding}
            genome = Genome.from_dict({"default": gene}, layers)
            proto = quantize(model, genome, {}, samples={"proj": x}).proto
            errors[kernel, rounding] = float(np.sum((_run(proto, {"x": x}, level="0") - x @ w) ** 2))
        assert errors[kernel, "gptq"] < errors[kernel, "rtn"]
    genome = Genome.from_dict({"default": {"weight_bits": 4, "rounding": "gptq"}}, layers)  # per-channel QDQ
    proto = quantize(model, genome, {"x": (-9.0, 9.0)}, samples={"proj": x}).proto
    assert session(proto).run(None, {"x": x})[0].shape == (256, 24)
    with pytest.raises(ModelError, match="rounding gptq needs the layer's calibration inputs"):
        quantize(model, genome, {"x": (-9.0, 9.0)})


@pytest.mark.parametrize(("granularity", "activation"), [("per_channel", 8), ("per_tensor", 8),
                                                         ("per_channel", "dynamic")])
def test_rounding_reaches_qdq_and_dynamic_weights(digits_workload: Any, granularity: str, activation: Any) -> None:
    """Per-channel / per-tensor weights built by ONNX Runtime's quantizers carry qae's rounding."""
    pytest.importorskip("harness.quant.rounding")
    work = digits_workload
    layer = work.model.layer("blocks.0.ffn.fc1")
    w = _inits(work.model.proto)[layer.weight]
    errors = {}
    for rounding in ("rtn", "mse"):
        gene = {"weight_bits": 4, "activation_bits": activation, "granularity": granularity, "rounding": rounding,
                "scheme": "asymmetric"}
        result = work.build(work.genome({"default": {"weight_bits": "fp"}, "layers": {layer.name: gene}}))
        inits = _inits(result.proto)
        q = inits[f"{layer.weight}_quantized"].astype(np.int64)
        scale = inits[f"{layer.weight}_scale"]
        zero = inits[f"{layer.weight}_zero_point"].astype(np.int64)
        errors[rounding] = float(np.sum((w - (q - zero) * scale) ** 2))
        assert work.evaluate(result).accuracy > 0.9
    assert errors["mse"] < errors["rtn"]


def test_a_fixed_grid_of_the_wrong_size_is_a_one_line_error() -> None:
    """A fine-tune's grid comes from its scales.json: one that does not fit the weight is refused, not reshaped."""
    from harness.core.errors import ModelError
    from harness.quant.kernels import on_grid

    rows = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    got = on_grid(rows, 4, False, 32, (np.full((4, 2), 0.1, np.float32), np.full((4, 2), 8)))
    assert got.q.shape == (4, 64) and got.q.min() >= 0 and got.q.max() <= 15
    with pytest.raises(ModelError, match="4 rows x 2 blocks") as err:
        on_grid(rows, 4, False, 32, (np.full((4, 3), 0.1, np.float32), np.full((4, 2), 8)))
    assert "\n" not in str(err.value)


def test_learned_per_channel_scales_of_the_wrong_count_are_a_one_line_error(digits_workload) -> None:  # type: ignore[no-untyped-def]
    """A per-channel gene's learned scales (a fine-tune's scales.json) must hold one per output channel."""
    from harness.core.errors import ModelError
    from harness.quant.quantize import LearnedScales, quantize

    work = digits_workload
    layer = work.model.layer("blocks.0.ffn.fc1")
    genome = work.genome({"default": {"weight_bits": "fp"},
                          "layers": {layer.name: {"weight_bits": 4, "activation_bits": 8}}})
    channels = _inits(work.build(genome).proto)[f"{layer.weight}_scale"].size
    fits = LearnedScales(weight_scale=np.full(channels, 0.05, np.float32), weight_zero_point=np.zeros(channels))
    got = _inits(quantize(work.model, genome, work.ranges, learned={layer.name: fits}).proto)
    assert np.allclose(got[f"{layer.weight}_scale"], 0.05)
    for bad in (LearnedScales(weight_scale=np.full(channels + 1, 0.05, np.float32)),
                LearnedScales(weight_scale=np.full(channels, np.nan, np.float32)),
                LearnedScales(weight_scale=np.zeros(channels, np.float32))):
        with pytest.raises(ModelError, match="fine-tune this one again") as err:
            quantize(work.model, genome, work.ranges, learned={layer.name: bad})
        assert "\n" not in str(err.value)
