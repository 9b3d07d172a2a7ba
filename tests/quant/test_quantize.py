"""Quantized files are what the genome says: read back from the written ONNX files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from harness.quant.quantize import save_model

LAYER = "blocks.0.ffn.fc1"
W8A8 = {"weight_bits": 8, "activation_bits": 8, "scheme": "symmetric", "granularity": "per_channel"}


def _write(work, data: dict, path: Path) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    save_model(work.build(work.genome(data)), path)
    return onnx.load(str(path))


def _init(proto: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in proto.graph.initializer if t.name == name)


def _weight_of(proto: onnx.ModelProto, work, layer: str) -> onnx.TensorProto:  # type: ignore[no-untyped-def]
    return _init(proto, work.model.layer(layer).weight + "_quantized")


def _dq_of(proto: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == tensor)


def test_int4_weight_takes_half_the_bytes_of_int8(digits_workload, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w8 = _write(digits_workload, {"default": W8A8}, tmp_path / "w8.onnx")
    w4 = _write(digits_workload, {"default": W8A8, "layers": {LAYER: {"weight_bits": 4}}}, tmp_path / "w4.onnx")
    t8, t4 = _weight_of(w8, digits_workload, LAYER), _weight_of(w4, digits_workload, LAYER)
    assert t8.data_type == onnx.TensorProto.INT8 and t4.data_type == onnx.TensorProto.INT4
    assert len(t4.raw_data) * 2 == len(t8.raw_data) == digits_workload.model.layer(LAYER).params


def test_emulated_3bit_weights_have_at_most_7_levels_per_channel(digits_workload, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proto = _write(digits_workload, {"default": W8A8, "layers": {LAYER: {"weight_bits": 3}}}, tmp_path / "w3.onnx")
    q = numpy_helper.to_array(_weight_of(proto, digits_workload, LAYER))
    axis = digits_workload.model.layer(LAYER).channel_axis
    assert q.dtype == np.int8 and q.min() >= -3 and q.max() <= 3
    per_channel = [len(np.unique(np.take(q, c, axis=axis))) for c in range(q.shape[axis])]
    assert max(per_channel) <= 7
    props = {p.key: p.value for p in proto.metadata_props}
    assert LAYER in props["qae.emulated_layers"]


def test_power_of_two_scales_are_exact_powers_of_two(digits_workload, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proto = _write(digits_workload, {"default": {**W8A8, "scheme": "power_of_two"}}, tmp_path / "p2.onnx")
    scales = [
        numpy_helper.to_array(_init(proto, n.input[1]))
        for n in proto.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1]
    ]
    assert len(scales) >= 2 * len(digits_workload.model.layers)
    for s in scales:
        exps = np.log2(s.astype(np.float64))
        assert np.all(exps == np.round(exps)), s


def _capture(proto: onnx.ModelProto, tensor: str, elem: int, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    proto.graph.output.append(helper.make_tensor_value_info(tensor, elem, None))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([tensor], feed)[0]


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
def test_6bit_activation_never_exceeds_its_levels(digits_workload, tmp_path: Path, scheme: str) -> None:  # type: ignore[no-untyped-def]
    layer = "blocks.0.ffn.fc2"  # reads the GELU output, the widest-ranged activation
    data = {"default": W8A8, "layers": {layer: {"activation_bits": 6, "scheme": scheme}}}
    proto = _write(digits_workload, data, tmp_path / "a6.onnx")
    act = digits_workload.model.layer(layer).activation + f"__qae_{layer}"
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith(act))
    assert any(n.op_type == "Clip" and n.output[0] == q.input[0] for n in proto.graph.node)
    elem = onnx.TensorProto.UINT8 if scheme == "asymmetric" else onnx.TensorProto.INT8
    values = _capture(proto, q.output[0], elem, {"pixels": digits_workload.eval_data.inputs["pixels"]})
    if scheme == "asymmetric":
        assert values.min() >= 0 and values.max() <= 63
    else:
        assert values.min() >= -31 and values.max() <= 31
    assert len(np.unique(values)) <= 64


def test_a_genome_mixing_static_dynamic_fp_4_and_8_bits_builds_and_runs(digits_workload, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = {
        "default": W8A8,
        "layers": {
            "blocks.0.attn.q_proj": {"activation_bits": "dynamic"},
            "blocks.0.attn.k_proj": {"weight_bits": 4, "activation_bits": "fp"},
            "blocks.0.attn.v_proj": {"weight_bits": 4, "activation_bits": 16},
            "blocks.0.ffn.fc1": {"weight_bits": 4, "activation_bits": 8},
            "blocks.1.ffn.fc2": {"weight_bits": "fp"},
            "head": {"activation_bits": "dynamic", "granularity": "per_tensor"},
        },
    }
    path = tmp_path / "mixed.onnx"
    proto = _write(digits_workload, data, path)
    ops = {n.op_type for n in proto.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear", "DequantizeLinear"} <= ops
    report = digits_workload.evaluate(digits_workload.build(digits_workload.genome(data)))
    fp32 = digits_workload.evaluate(None)
    assert 0 <= report.accuracy <= 1 and report.mean_cosine > 0.9
    assert report.weight_bytes < fp32.weight_bytes
    # The fp layer keeps its float weight; the k_proj weight-only layer has no activation Q/DQ.
    assert _init(proto, digits_workload.model.layer("blocks.1.ffn.fc2").weight).data_type == onnx.TensorProto.FLOAT
    k_act = digits_workload.model.layer("blocks.0.attn.k_proj").activation + "__qae_blocks.0.attn.k_proj"
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == k_act for n in proto.graph.node)


def test_uniform_baselines_on_digits_vit(digits_workload) -> None:  # type: ignore[no-untyped-def]
    fp32 = digits_workload.evaluate(None).accuracy
    assert fp32 >= 0.95
    w8a8 = digits_workload.evaluate(digits_workload.build(digits_workload.uniform(**W8A8))).accuracy
    assert abs(w8a8 - fp32) <= 0.01
    for fields in ({"weight_bits": 4, "activation_bits": 8}, {"weight_bits": 8, "activation_bits": "dynamic"}):
        acc = digits_workload.evaluate(digits_workload.build(digits_workload.uniform(**fields))).accuracy
        assert 0.5 < acc <= 1.0


def test_nominal_weight_bytes_count_emulated_bits_at_their_width(digits_workload) -> None:  # type: ignore[no-untyped-def]
    base = digits_workload.evaluate(digits_workload.build(digits_workload.uniform(**W8A8)))
    three = digits_workload.evaluate(
        digits_workload.build(digits_workload.genome({"default": W8A8, "layers": {LAYER: {"weight_bits": 3}}}))
    )
    params = digits_workload.model.layer(LAYER).params
    assert base.weight_bytes - three.weight_bytes == params - math.ceil(params * 3 / 8)
    assert three.stored_weight_bytes == base.stored_weight_bytes  # int8 storage either way
    assert three.emulated and not base.emulated


def test_cached_ranges_are_reused(digits_workload) -> None:  # type: ignore[no-untyped-def]
    from harness.quant.workload import Workload

    again = Workload.open("builtin:digits-vit")
    assert again.ranges_from_cache and again.ranges == digits_workload.ranges
    g = digits_workload.uniform(**W8A8)
    a = digits_workload.build(g).proto.SerializeToString()
    assert again.build(g).proto.SerializeToString() == a


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_embedding_rows_are_gathered_before_dequantizing(tmp_path: Path, granularity: str) -> None:
    """An 8-bit embedding table is gathered as integers and only the rows used are dequantized;
    the values equal dequantizing the whole table and gathering from it."""
    import onnxruntime as ort

    from harness.quant.workload import Workload

    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "ids"], ["h"], name="emb"),
            helper.make_node("MatMul", ["h", "W"], ["y"], name="head"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4, 3])],
        [
            numpy_helper.from_array(table, "E"),
            numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "W"),
        ],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    ids = rng.integers(0, 50, size=(16, 4)).astype(np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    work = Workload.open(path, calib=tmp_path / "ids.npz", eval_data=tmp_path / "ids.npz")
    genome = work.genome(
        {"default": {"weight_bits": 8, "granularity": granularity}, "layers": {"head": {"weight_bits": "fp"}}}
    )
    proto = work.build(genome).proto
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    gather = next(n for n in proto.graph.node if n.op_type == "Gather" and n.input[1] == "ids")
    assert inits[gather.input[0]].dtype == np.int8  # integer rows are gathered, no whole-table dequantize
    q, scale = inits["E_quantized"].astype(np.float64), inits["E_scale"].astype(np.float64)
    whole = q * (scale[:, None] if scale.ndim == 1 else scale)  # symmetric: zero points are 0
    proto.graph.output.append(helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = sess.run(["h"], {"ids": ids})[0]
    assert np.allclose(rows, whole[ids].astype(np.float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_a_4bit_embedding_table_is_indexed_not_dequantized_whole(tmp_path: Path, scheme: str, granularity: str) -> None:
    """ONNX Runtime's Gather takes no int4 table, and DequantizeLinear -> Gather dequantizes all of it on
    every run (MiniLM's 30k x 384 table: ~9 ms of a ~10 ms model). qae writes one GatherBlockQuantized
    (a block per row) instead: it computes exactly what DequantizeLinear computes from the same stored
    values, each row is within half a step of the float table, and the weight bytes stay nominal."""
    import onnxruntime as ort

    from harness.quant.kernels import unpack
    from harness.quant.workload import Workload

    bits = 4  # narrower widths are stored in int8, which Gather indexes (the test above)
    rng = np.random.default_rng(0)
    n_rows, width = 50, 24  # width not a power of two: the row is one partial block
    table = rng.standard_normal((n_rows, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["h"], name="emb"),
         helper.make_node("MatMul", ["h", "W"], ["y"], name="head")], "g",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4, 3])],
        [numpy_helper.from_array(table, "E"),
         numpy_helper.from_array(rng.standard_normal((width, 3)).astype(np.float32), "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(tmp_path / "m.onnx"))
    ids = rng.integers(0, n_rows, size=(16, 4)).astype(np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    work = Workload.open(tmp_path / "m.onnx", calib=tmp_path / "ids.npz", eval_data=tmp_path / "ids.npz")
    gene = {"weight_bits": bits, "scheme": scheme, "granularity": granularity, "activation_bits": "fp"}
    result = work.build(work.genome({"default": {"weight_bits": "fp"}, "layers": {"emb": gene}}))
    proto = result.proto
    (node,) = [n for n in proto.graph.node if n.input[1:2] == ["ids"]]
    assert node.op_type == "GatherBlockQuantized" and node.name == "emb"
    assert not any(n.op_type == "DequantizeLinear" for n in proto.graph.node)  # nothing dequantized whole
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    values = unpack(inits[node.input[0]], 4, width).astype(np.float64)
    scale = inits[node.input[2]].astype(np.float64)  # [V, 1]: one block per row
    zero = unpack(inits[node.input[3]], 4, 1).astype(np.float64) if len(node.input) > 3 else np.full((n_rows, 1), 8.0)
    proto.graph.output.append(helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = session.run(["h"], {"ids": ids})[0]
    # DequantizeLinear of the same stored values on ONNX Runtime, gathered: bit for bit the same
    plain = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0),
         helper.make_node("Gather", ["w", "ids"], ["h"], axis=0)], "p",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor("q", onnx.TensorProto.UINT4, [n_rows, width], values.astype(int).ravel().tolist()),
         numpy_helper.from_array(scale[:, 0].astype(np.float32), "s"),
         helper.make_tensor("z", onnx.TensorProto.UINT4, [n_rows], zero[:, 0].astype(int).tolist())],
    )
    expected = ort.InferenceSession(helper.make_model(plain, opset_imports=[helper.make_opsetid("", 21)])
                                    .SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    assert np.array_equal(rows, expected)
    step = scale[ids][..., 0]
    assert np.all(np.abs(rows - table[ids]) <= 0.5 * step[..., None] * (1 + 1e-5))  # round to nearest, no clipping
    if granularity == "per_tensor":
        assert np.unique(scale).size == 1
    report = work.evaluate(result)  # the values at 4 bits, a float scale and a packed zero point per row; the head
    table_bytes = n_rows * width * bits // 8 + n_rows * 4 + (n_rows if len(node.input) > 3 else 0)
    assert report.weight_bytes == table_bytes + width * 3 * 4


@pytest.mark.parametrize(("width", "indexed"), [(24, True), (25, False)])
def test_the_cost_model_prices_a_4bit_table_as_what_was_built(tmp_path: Path, width: int, indexed: bool) -> None:
    """An odd-width 4-bit table cannot be packed two values a byte: it keeps DequantizeLinear -> Gather
    and runs; the cost model's path for the layer follows what the build wrote, either way."""
    import onnxruntime as ort

    from harness.quant.workload import Workload
    from profiles import load_profile
    from profiles.costmodel import cost_of, precision_tokens

    rng = np.random.default_rng(1)
    table = rng.standard_normal((40, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["y"], name="emb")], "g",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4, width])],
        [numpy_helper.from_array(table, "E")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(tmp_path / "m.onnx"))
    ids = rng.integers(0, 40, size=(2, 4)).astype(np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    work = Workload.open(tmp_path / "m.onnx", calib=tmp_path / "ids.npz", eval_data=tmp_path / "ids.npz")
    genome = work.genome({"default": {"weight_bits": 4, "granularity": "per_channel", "activation_bits": "fp"}})
    proto = work.build(genome).proto
    ops = {n.op_type for n in proto.graph.node}
    assert ("GatherBlockQuantized" in ops) is indexed and ("DequantizeLinear" in ops) is not indexed
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = session.run(None, {"ids": ids})[0]
    assert np.abs(rows - table[ids]).max() < np.abs(table).max() / 7  # a 4-bit grid of each row's range
    layer = work.model.layer("emb")
    path = cost_of(layer, precision_tokens(genome["emb"]), load_profile("host-cpu")).path
    assert (path == "qdq->gather_block") is indexed


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_an_embedding_table_whose_rows_are_the_graph_output_builds_and_runs(tmp_path: Path, granularity: str) -> None:
    """ONNX Runtime quantizes a Gather's output that is a graph output with the table's own (per-row)
    scales, which its QuantizeLinear then refuses; the Gather reads no activation, so qae removes
    that pair and gives the output its name back."""
    import onnx
    from onnx import TensorProto, helper

    from harness.quant.workload import Workload

    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["y"], name="emb")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor("E", TensorProto.FLOAT, [50, 64], table.ravel())],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "ids.npz", ids=rng.integers(0, 50, size=32).astype(np.int64))
    work = Workload.open(tmp_path / "m.onnx", calib=tmp_path / "ids.npz", eval_data=tmp_path / "ids.npz")
    result = work.build(work.uniform(weight_bits=8, activation_bits=8, granularity=granularity))
    assert [o.name for o in result.proto.graph.output] == ["y"]
    assert not any(n.op_type == "QuantizeLinear" for n in result.proto.graph.node)
    report = work.evaluate(result)
    assert report.sqnr_db is not None and report.sqnr_db > 30  # int8 rows, dequantized: close to the table


def test_never_negative_activations_take_the_unsigned_grid_and_fuse_into_qlinearconv(tmp_path: Path) -> None:
    """ReLU6 outputs are never negative: a symmetric gene gives them zero point 0 on uint8 (twice
    the resolution of int8's half grid), so ORT drops the Clip and runs QLinearConv, not float Conv."""
    import onnxruntime as ort

    from harness.quant.workload import Workload

    work = Workload.open("builtin:digits-cnn")
    proto = _write(work, {"default": W8A8, "layers": {}}, tmp_path / "w8a8.onnx")
    layer = work.model.layer("blocks.1.pw")  # reads a ReLU6 output
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear"
             and n.input[0] == f"{layer.activation}__qae_{layer.name}")
    zero = numpy_helper.to_array(_init(proto, q.input[2]))
    assert zero.dtype == np.uint8 and int(zero) == 0
    values = _capture(proto, q.output[0], onnx.TensorProto.UINT8, {"pixels": work.eval_data.inputs["pixels"]})
    assert values.max() > 127  # the upper half of the grid is in use

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "w8a8.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    convs = [lay for lay in work.model.layers if lay.op_type == "Conv"]
    # every Conv runs as QLinearConv: the last one, which feeds the pooling head, gets its own output Q
    assert ops.count("QLinearConv") == len(convs), ops
    for conv in convs:  # the weight's and the bias's all-zero zero points are left out (0 is the default)
        node = next(n for n in proto.graph.node if n.name == conv.node_name)
        dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in node.input[1:]]
        assert len(dqs) == 2 and all(len(dq.input) == 2 for dq in dqs), conv.name
    last = convs[-1].output
    assert any(n.op_type == "QuantizeLinear" and n.name.endswith("__qae_out_QuantizeLinear") for n in proto.graph.node)
    assert last in {n.input[0] for n in proto.graph.node if n.op_type == "Clip"}


def test_a_signed_conv_output_feeding_a_reshape_gets_no_output_qdq(digits_workload, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """digits-vit's patch embedding (a Conv into a Reshape, negative values): an int8 output Q there
    trips ORT 1.32's S8->U8 rewrite, so it is left alone and the model loads."""
    proto = _write(digits_workload, {"default": W8A8, "layers": {}}, tmp_path / "vit.onnx")
    assert not any(n.name.endswith("__qae_out_QuantizeLinear") for n in proto.graph.node)
    import onnxruntime as ort

    ort.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])


def test_a_conv_ort_cannot_fuse_keeps_its_bias_float_on_the_int32_grid(tmp_path: Path) -> None:
    """4-bit weights: no QLinearConv, so the bias needs no int32 + scale per channel; it is stored
    as the float values the int32 bias dequantizes to. An 8-bit Conv keeps its int32 bias."""
    from harness.quant.workload import Workload

    work = Workload.open("builtin:digits-cnn")
    data = {"default": {**W8A8, "weight_bits": 4}, "layers": {"blocks.1.pw": {"weight_bits": 8}}}
    proto = _write(work, data, tmp_path / "mixed.onnx")
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    for layer in (lay for lay in work.model.layers if lay.op_type == "Conv"):
        bias = next(n for n in proto.graph.node if n.name == layer.node_name).input[2]
        if layer.name == "blocks.1.pw":
            dq = producer[bias]
            assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == onnx.TensorProto.INT32
            continue
        assert bias in inits and inits[bias].data_type == onnx.TensorProto.FLOAT and bias not in producer
        w_dq = producer[next(n for n in proto.graph.node if n.name == layer.node_name).input[1]]
        x_dq = producer[next(n for n in proto.graph.node if n.name == layer.node_name).input[0]]
        step = numpy_helper.to_array(inits[w_dq.input[1]]) * numpy_helper.to_array(inits[x_dq.input[1]])
        ratio = numpy_helper.to_array(inits[bias]) / step
        assert np.allclose(ratio, np.round(ratio), atol=1e-3), layer.name  # still on the int32 bias grid


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_a_dynamic_gemm_is_quantized(digits_workload, granularity) -> None:  # type: ignore[no-untyped-def]
    """ONNX Runtime's dynamic quantizer rewrites a Gemm to MatMul + Add and quantized neither: qae hands
    it the MatMul itself, so digits-vit's head (a Gemm with transB) runs DynamicQuantizeLinear +
    MatMulInteger on int8 weights, counted at one byte each, and computes x @ W^T + b on that grid."""
    from harness.quant.evaluate import session

    work = digits_workload
    head = work.model.layer("head")
    assert head.op_type == "Gemm"
    gene = {"weight_bits": 8, "activation_bits": "dynamic", "granularity": granularity}
    genome = work.genome({"default": {"weight_bits": "fp"}, "layers": {"head": gene}})
    built = work.build(genome)
    proto = built.proto
    ops = [n.op_type for n in proto.graph.node]
    assert "Gemm" not in ops and "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    weight = next(t for t in proto.graph.initializer if t.name == f"{head.weight}_quantized")
    assert weight.data_type == onnx.TensorProto.INT8
    assert list(weight.dims) == [head.weight_shape[1], head.weight_shape[0]]
    fp_bytes = work.evaluate(None).weight_bytes
    assert fp_bytes - work.evaluate(built).weight_bytes >= 3 * head.params - 8 * head.weight_shape[0]
    x = work.eval_data.inputs["pixels"]
    ref = session(work.model.proto).run(None, {"pixels": x})[0]
    got = session(proto).run(None, {"pixels": x})[0]
    assert 0 < np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98


def test_a_build_change_scoped_to_one_layer_kind_leaves_other_models_cached_scores_valid() -> None:
    """The fitness cache keys on the build version of the model's own layer kinds: writing 4-bit tables
    as GatherBlockQuantized (build 7) changes the key of a model with a Gather layer only, the Conv
    output Q/DQ of builds 8 and 9 that of a model with a Conv only."""
    from harness.quant.quantize import BUILD_VERSION, SCOPED_BUILD_CHANGES, build_version

    latest = max(v for v, _ in SCOPED_BUILD_CHANGES)
    assert latest > BUILD_VERSION and build_version() == latest == 13
    assert build_version(["MatMul", "Gemm"]) == BUILD_VERSION
    assert build_version(["MatMul", "Gather"]) == 7
    assert build_version(["MatMul", "Conv"]) == 9 and build_version(["Gather", "Conv"]) == 9
    assert build_version(["MatMul", "LSTM"]) == build_version(["GRU"]) == 10
    assert build_version(["Gemm", "Gemm(beta)"]) == 11


def _gemm_model(path: Path, beta: float, shared_bias: bool = False) -> Path:
    """x [N, 32] -> Gemm(alpha 0.5, beta, transB 0) -> y [N, 6]; with ``shared_bias`` an Add reads C too."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((32, 6)) / 4).astype(np.float32)
    c = (2.0 * rng.standard_normal(6)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["g"], name="gemm0", alpha=0.5, beta=beta, transB=0)]
    nodes.append(helper.make_node("Add", ["g", "C"], ["y"], name="plus_c") if shared_bias
                 else helper.make_node("Identity", ["g"], ["y"], name="out"))
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 6])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("shared_bias", [False, True])
@pytest.mark.parametrize("gene", [{"weight_bits": 8, "activation_bits": "fp"}, {"weight_bits": 8, "activation_bits": 8},
                                  {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_block",
                                   "block_size": 16}])
def test_a_gemm_with_beta_keeps_beta_times_its_bias(tmp_path: Path, gene: dict, shared_bias: bool) -> None:
    """ONNX Runtime's QDQ quantizer stores a Gemm's bias dequantizing to C and sets beta to 1: qae hands
    it beta * C first, so the quantized model still adds what the float model adds."""
    from harness.quant.quantize import GEMM_BETA, build_kinds, build_version
    from harness.quant.workload import Workload

    path = _gemm_model(tmp_path / "g.onnx", beta=2.0, shared_bias=shared_bias)
    x = np.random.default_rng(4).standard_normal((64, 32)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    work = Workload.open(path, calib=tmp_path / "d.npz", eval_data=tmp_path / "d.npz")
    assert GEMM_BETA in build_kinds(work.model) and build_version(build_kinds(work.model)) == 11
    result = work.build(work.genome({"default": gene}))
    proto = onnx.load(str(save_model(result, tmp_path / "q.onnx")))
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    # beta folded into the bias where ORT's quantizer handles the Gemm; a block-wise weight leaves both as they were
    assert attrs["alpha"] == 0.5 and attrs.get("beta", 1.0) == (2.0 if gene.get("granularity") else 1.0)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sqnr = 10 * np.log10((ref ** 2).sum() / ((got - ref) ** 2).sum())
    assert sqnr > (25.0 if gene["weight_bits"] == 4 or gene["activation_bits"] == 8 else 40.0)
    # the float model is untouched, and a bias another node reads keeps its own values there
    float_gemm = next(n for n in work.model.proto.graph.node if n.op_type == "Gemm")
    assert {a.name: a.f for a in float_gemm.attribute if a.name == "beta"} == {"beta": 2.0}
    if shared_bias:  # the Add still reads C itself, with its float values (beta * C went to a copy)
        plus = next(n for n in proto.graph.node if n.name == "plus_c")
        c = numpy_helper.to_array(next(t for t in work.model.proto.graph.initializer if t.name == "C"))
        stored = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        assert plus.input[1] == "C" and np.array_equal(stored["C"], c)


def test_a_gemm_with_beta_one_keeps_its_build_version(tmp_path: Path) -> None:
    from harness.quant.quantize import BUILD_VERSION, build_kinds, build_version
    from harness.quant.workload import Workload

    path = _gemm_model(tmp_path / "g.onnx", beta=1.0)
    np.savez(tmp_path / "d.npz", x=np.ones((4, 32), np.float32))
    work = Workload.open(path, calib=tmp_path / "d.npz", eval_data=tmp_path / "d.npz")
    assert build_kinds(work.model) == ["Gemm"] and build_version(build_kinds(work.model)) == BUILD_VERSION


def _conv_kernels(work: Any, genome: Any, tmp_path: Path) -> dict[str, list[str]]:
    """The op types ONNX Runtime runs each Conv layer's node as, after its graph optimisations."""
    import onnxruntime as ort

    _write(work, genome, tmp_path / "m.onnx")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(tmp_path / "m.onnx"), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    plumbing = {"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "Cast", "Mul", "Add", "Clip", "Relu"}
    return {lay.name: [n.op_type for n in optimized if n.name.startswith(lay.node_name) and n.op_type not in plumbing]
            for lay in work.model.layers if lay.op_type == "Conv"}


def test_a_static_conv_runs_as_qlinearconv_where_its_output_is_quantized_and_a_float_layer_stays_float(
        tmp_path: Path) -> None:
    """A static Conv runs as ORT's integer kernel only where a QuantizeLinear follows it. One whose
    output reaches a dynamic layer, or a pool, gets its own output Q/DQ on the 8-bit grid (build 8;
    without it ORT ran a float Conv on dequantized tensors, and a depthwise one the slow per-group
    path). Not where a float or weight-only layer reads it (build 9): ORT then ran that layer, between
    a DequantizeLinear and the next layer's QuantizeLinear, as an int8 QLinearConv."""
    from harness.quant.workload import Workload

    work = Workload.open("builtin:digits-cnn")
    genome = {"default": {"weight_bits": "fp", "activation_bits": "fp"}, "layers": {
        "blocks.1.dw": {"weight_bits": 8, "activation_bits": 8, "granularity": "per_tensor"},
        "blocks.1.pw": {"weight_bits": 8, "activation_bits": "fp"},  # weight-only: no Q of its input
        "blocks.2.dw": {"weight_bits": 6, "activation_bits": 6},  # emulated, next layer dynamic
        "blocks.2.pw": {"weight_bits": 8, "activation_bits": "dynamic"},
        "blocks.3.pw": {"weight_bits": 8, "activation_bits": 8}}}  # blocks.3.dw: float, between
    kernels = _conv_kernels(work, genome, tmp_path)
    assert kernels["blocks.2.dw"] == ["QLinearConv"] and kernels["blocks.3.pw"] == ["QLinearConv"]
    assert kernels["blocks.2.pw"] == ["ConvInteger"]
    assert kernels["blocks.1.dw"] in (["Conv"], ["FusedConv"])  # a weight-only layer reads it
    assert kernels["blocks.1.pw"] in (["Conv"], ["FusedConv"]) and kernels["blocks.3.dw"] in (["Conv"], ["FusedConv"])
    report = work.evaluate(work.build(work.genome(genome)))
    assert report.accuracy is not None and report.accuracy > 0.9  # still the model it was


def test_the_cost_model_costs_the_kernel_each_conv_runs_as_on_random_mixes(tmp_path: Path) -> None:
    """What a Conv runs as depends on who reads it (``profiles.costmodel.genome_classes``): over random
    mixed genomes of the convolutional built-in, every Conv the host-cpu model costs as native runs as
    an integer kernel after ORT's optimisations, and every other one as a float Conv (an unfused static
    Conv, a fallback, a weight-only or float layer: never an integer kernel ORT made up)."""
    from harness.quant.workload import Workload
    from harness.run.calibrate import mixed_genome
    from profiles import load_profile
    from profiles.costmodel import predict_model

    work = Workload.open("builtin:digits-cnn")
    profile = load_profile("host-cpu")
    names = [lay.name for lay in work.model.layers]
    seen: set[str] = set()
    for seed in range(24):
        mix = mixed_genome(names, 900 + seed)
        kernels = _conv_kernels(work, mix, tmp_path)
        paths = {row["layer"]: row["path"] for row in predict_model(work.model, work.genome(mix), profile).layers}
        for name, ops in kernels.items():
            kind = paths[name].split()[0]
            seen.add(kind)
            integer = {"native": [["QLinearConv"], ["ConvInteger"]]}.get(kind, [["Conv"], ["FusedConv"]])
            assert ops in integer, (seed, name, paths[name], ops)
    assert {"native", "unfused", "float", "weight_only", "dequantize"} <= seen  # every path was tried


def test_the_cost_model_counts_the_ops_ort_adds_around_convs_on_random_mixes(tmp_path: Path) -> None:
    """ONNX Runtime adds ops the quantized graph does not hold, depending on the neighbours: NCHWc
    reorders between a float Conv of constant weights and a Conv layer that is not one, NHWC Transposes
    into and out of each run of QLinearConvs, and the Relu / Clip after a dynamic Conv where no
    QuantizeLinear of the next layer absorbs it. Over random mixes of the convolutional built-in, the
    classes ``genome_classes`` gives (``reorders_in`` / ``reorders_out`` / ``activations``) count them
    exactly in ORT's fully optimised graph (plus the one reorder after the pool when the last Conv runs
    NCHWc, which is the same for every genome that keeps it float)."""
    import onnxruntime as ort

    from harness.quant.workload import Workload
    from harness.run.calibrate import mixed_genome
    from profiles import load_profile
    from profiles.costmodel import GraphStats, cost_of, genome_classes

    work = Workload.open("builtin:digits-cnn")
    profile = load_profile("host-cpu")
    graph = GraphStats.of(work.model)
    names = [lay.name for lay in work.model.layers]
    counted = {"reorders": 0, "transposes": 0, "activations": 0}
    for seed in range(24):
        mix = mixed_genome(names, 1900 + seed)
        _write(work, mix, tmp_path / "m.onnx")
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / "all.onnx")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # it warns that an NCHWc graph is hardware-specific
        ort.InferenceSession(str(tmp_path / "m.onnx"), opts, providers=["CPUExecutionProvider"])
        nodes = onnx.load(str(tmp_path / "all.onnx")).graph.node
        classes = genome_classes(work.model.layers, work.genome(mix), profile, graph)
        last_float = classes[names.index("blocks.3.pw")].weight == "fp32"
        reorders = sum(c.reorders_in + c.reorders_out for c in classes)
        layout_ops = sum(n.op_type in ("ReorderInput", "ReorderOutput", "Transpose") for n in nodes)
        assert layout_ops == reorders + last_float, seed
        own = sum(n.op_type in ("Relu", "Clip") and not n.name.startswith("qae_clip") for n in nodes)
        assert own == sum(c.activations for c in classes), seed
        for layer, c in zip(work.model.layers, classes):  # a profile cannot attribute the reorders
            assert (cost_of(layer, c, profile).unattributed_us > 0) == bool(c.reorders_in + c.reorders_out)
        counted["reorders"] += sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in nodes)
        counted["transposes"] += sum(n.op_type == "Transpose" for n in nodes)
        counted["activations"] += sum(c.activations for c in classes)
    assert min(counted.values()) > 5  # both kinds occurred


def test_a_weight_only_matmul_is_costed_as_the_matmulnbits_ort_makes_of_it(tmp_path: Path) -> None:
    """ONNX Runtime 1.32 rewrites a per-channel or per-tensor DequantizeLinear -> MatMul of float
    activations into MatMulNBits (block size 32): the host-cpu cost model costs that kernel
    (``qdq->matmulnbits``, the profile's ``qdq_weight_only_block``), not a float MatMul."""
    import onnxruntime as ort

    from harness.quant.workload import Workload
    from profiles import load_profile
    from profiles.costmodel import predict_model

    work = Workload.open("builtin:digits-vit")
    profile = load_profile("host-cpu")
    block = profile.data["kernels"]["matmulnbits"]["qdq_weight_only_block"]["value"]
    for gene in ({"weight_bits": 8, "activation_bits": "fp"},
                 {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_tensor", "scheme": "asymmetric"}):
        spec = {"default": gene, "layers": {}}
        _write(work, spec, tmp_path / "m.onnx")
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ort.InferenceSession(str(tmp_path / "m.onnx"), opts, providers=["CPUExecutionProvider"])
        fused = [n for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node if n.op_type == "MatMulNBits"]
        matmuls = [lay.name for lay in work.model.layers if lay.op_type == "MatMul"]
        assert len(fused) == len(matmuls) > 0
        assert {helper.get_attribute_value(a) for n in fused for a in n.attribute if a.name == "block_size"} == {block}
        paths = {row["layer"]: row["path"] for row in predict_model(work.model, work.genome(spec), profile).layers}
        assert {paths[name] for name in matmuls} == {"qdq->matmulnbits"}


def _siamese_model(path: Path) -> Path:
    """Two images through one Conv weight (``enc``, read by two Conv nodes), outputs added."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((4, 1, 3, 3)) / 3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["a", "enc.weight"], ["fa"], name="enc", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "enc.weight"], ["fb"], name="enc_1", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "siam", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 1, 6, 6])
                                              for n in ("a", "b")],
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 4, 6, 6])
                               for n in ("fa", "fb")], [numpy_helper.from_array(w, "enc.weight")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_layers_sharing_a_weight_are_built_as_each_gene_says(tmp_path: Path) -> None:
    """A tied weight whose layers get different genes: each layer gets its own copy, so the float layer
    stays float and the bytes count both; with one gene the weight stays shared and is stored once."""
    import onnxruntime as ort

    from harness.quant.quantize import SHARED_WEIGHT, build_kinds, build_version
    from harness.quant.workload import Workload

    path = _siamese_model(tmp_path / "s.onnx")
    rng = np.random.default_rng(6)
    feed = {n: rng.standard_normal((8, 1, 6, 6)).astype(np.float32) for n in ("a", "b")}
    np.savez(tmp_path / "d.npz", **feed)
    work = Workload.open(path, calib=tmp_path / "d.npz", eval_data=tmp_path / "d.npz")
    assert [lay.name for lay in work.model.layers] == ["enc", "enc_1"]
    assert SHARED_WEIGHT in build_kinds(work.model) and build_version(build_kinds(work.model)) == 12
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    mixed = work.build(work.genome({"default": {"weight_bits": 8, "activation_bits": 8},
                                    "layers": {"enc": {"weight_bits": 4}, "enc_1": {"weight_bits": "fp"}}}))
    proto = onnx.load(str(save_model(mixed, tmp_path / "mixed.onnx")))
    got = ort.InferenceSession(str(tmp_path / "mixed.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)
    assert np.array_equal(got[1], ref[1])  # the float layer computes what the float model computes
    assert not np.array_equal(got[0], ref[0])  # the 4-bit one does not
    float_copy = next(t for t in proto.graph.initializer if t.name == "enc.weight__qae_enc_1")
    assert numpy_helper.to_array(float_copy).dtype == np.float32
    report = work.evaluate(mixed)
    assert report.weight_bytes >= 4 * 9 * 4 + 4 * 9 // 2  # the float copy and the 4-bit one
    uniform = work.build(work.genome({"default": {"weight_bits": 8, "activation_bits": 8}}))
    one = onnx.load(str(save_model(uniform, tmp_path / "uniform.onnx")))
    assert not any(t.name.startswith("enc.weight__qae_") for t in one.graph.initializer)  # one weight, stored once
    assert work.evaluate(uniform).weight_bytes < 4 * 9 * 2


def _token_mlp(path: Path, batch: object) -> Path:
    """x [batch, 6, 8] -> MatMul + Add(bias) -> Relu -> MatMul + Add(bias) -> y [batch, 6, 4] (torch's Linear
    over tokens, exported without dynamic axes when ``batch`` is a number)."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 16)) / 3).astype(np.float32), "fc1.weight"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "fc1.bias"),
             numpy_helper.from_array((rng.standard_normal((16, 4)) / 4).astype(np.float32), "fc2.weight"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc2.bias")]
    nodes = [helper.make_node("MatMul", ["x", "fc1.weight"], ["m1"], name="fc1"),
             helper.make_node("Add", ["fc1.bias", "m1"], ["a1"], name="fc1_bias"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
             helper.make_node("MatMul", ["r1", "fc2.weight"], ["m2"], name="fc2"),
             helper.make_node("Add", ["fc2.bias", "m2"], ["y"], name="fc2_bias")]
    graph = helper.make_graph(nodes, "tok", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 6, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 6, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("batch", [1, "N"])
def test_a_static_matmul_over_fixed_tokens_builds_a_model_onnx_runtime_loads(tmp_path: Path, batch: object) -> None:
    """With every input dimension fixed, ONNX Runtime's MatMulAddFusion rewrites an N-D QDQ MatMul + bias Add
    into Reshape + Gemm and writes a QuantizeLinear it then rejects: the model did not load. qae feeds such a
    MatMul its rows ([-1, K]) and reshapes the sum back, so the fusion sees a 2-D MatMul."""
    import onnxruntime as ort

    from harness.quant.quantize import MATMUL_ROWS, build_kinds, static_nd_matmuls
    from harness.quant.workload import Workload

    path = _token_mlp(tmp_path / "m.onnx", batch)
    x = np.random.default_rng(8).standard_normal((16, 6, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    work = Workload.open(path, calib=tmp_path / "d.npz", eval_data=tmp_path / "d.npz")
    fixed = batch == 1
    assert static_nd_matmuls(work.model) == ({"fc1", "fc2"} if fixed else set())
    assert (MATMUL_ROWS in build_kinds(work.model)) == fixed
    result = work.build(work.genome({"default": {"weight_bits": 8, "activation_bits": 8}}))
    out = save_model(result, tmp_path / "q.onnx")
    rows = [n.name for n in onnx.load(str(out)).graph.node if n.name.startswith("qae_rows/")]
    assert bool(rows) == fixed
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # all graph optimizations
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for sample in x[:3]:
        got, want = sess.run(None, {"x": sample[None]})[0], ref.run(None, {"x": sample[None]})[0]
        assert got.shape == want.shape == (1, 6, 4)
        assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    assert work.evaluate(result).mean_cosine > 0.99
