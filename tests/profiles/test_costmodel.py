"""The cost model reproduces the facts its profiles encode, and its fast path agrees with the slow one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli.main import main
from harness.core.genome import Gene, Genome
from harness.core.model import ModelInfo
from harness.run.shapes import resolve_shapes
from profiles import load_profile
from profiles.costmodel import CostTable, GraphStats, predict, predict_model
from profiles.microbench import save_with_calib, transformer

PROFILES = ["arm-neon-a76", "hexagon-htp", "apple-ane", "host-cpu"]


@pytest.fixture(scope="module")
def digits() -> ModelInfo:
    return resolve_shapes("builtin:digits-vit").model  # at its data's shapes: one image


@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    """The calibration benchmark's larger model: 2.4 M to 9.4 M MACs per layer."""
    path, calib = save_with_calib(transformer(), tmp_path_factory.mktemp("tr"), "tr")
    return resolve_shapes(path, data=calib).model


def _uniform(model: ModelInfo, gene: Gene) -> Genome:
    return Genome.uniform(gene, {lay.name: lay.op_type for lay in model.layers})


@pytest.mark.parametrize("which", ["digits", "larger"])
def test_host_cpu_int4_qdq_predicts_slower_than_int8(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    p = load_profile("host-cpu")
    w8 = predict_model(model, _uniform(model, Gene(8, 8)), p)
    w4 = predict_model(model, _uniform(model, Gene(4, 8)), p)
    assert w4.latency_ms > w8.latency_ms
    assert {row["path"] for row in w4.layers} == {"dequantize"}  # ORT dequantises int4 QDQ weights


def test_hexagon_int4_predicts_faster_and_lower_energy_than_int8(larger: ModelInfo, digits: ModelInfo) -> None:
    p = load_profile("hexagon-htp")
    w8 = predict_model(larger, _uniform(larger, Gene(8, 8)), p)
    w4 = predict_model(larger, _uniform(larger, Gene(4, 8)), p)
    assert w4.latency_ms < w8.latency_ms
    assert w4.energy_j < w8.energy_j
    assert w4.memory_bytes < w8.memory_bytes
    d8 = predict_model(digits, _uniform(digits, Gene(8, 8)), p)
    d4 = predict_model(digits, _uniform(digits, Gene(4, 8)), p)
    assert d4.latency_ms <= d8.latency_ms and d4.energy_j < d8.energy_j


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("bits", [2, 3, 5, 6])
def test_emulated_widths_never_predict_faster_than_int8(name: str, bits: int, larger: ModelInfo) -> None:
    p = load_profile(name)
    w8 = predict_model(larger, _uniform(larger, Gene(8, 8)), p)
    emu = predict_model(larger, _uniform(larger, Gene(bits, bits)), p)
    assert emu.latency_ms >= w8.latency_ms
    assert emu.energy_j >= w8.energy_j
    assert emu.emulated_layers


@pytest.mark.parametrize("name", PROFILES)
def test_population_path_matches_single_predictions(name: str, digits: ModelInfo) -> None:
    p = load_profile(name)
    ops = {lay.name: lay.op_type for lay in digits.layers}
    rng = np.random.default_rng(1)
    genes = [Gene(8, 8), Gene(4, 8), Gene("fp", "fp"), Gene(8, "dynamic"), Gene(16, 16), Gene(6, 6),
             Gene(8, "fp"), Gene(4, "fp"), Gene(8, 16)]
    genomes = [Genome.from_dict({"layers": {n: genes[int(rng.integers(len(genes)))].to_dict() for n in ops}}, ops)
               for _ in range(100)]
    table = CostTable(digits.layers, p, GraphStats.of(digits))
    many = table.predict_many(genomes)
    assert many.shape == (100, 3)
    for g, row in zip(genomes[:10], many[:10]):
        one = predict(digits.layers, g, p, GraphStats.of(digits))
        assert row == pytest.approx([one.latency_ms, one.energy_j, one.memory_bytes])
        assert sum(r["latency_ms"] for r in one.layers) < one.latency_ms


def test_prediction_record(digits: ModelInfo) -> None:
    p = load_profile("host-cpu")
    pred = predict(digits.layers, _uniform(digits, Gene(8, 8)), p)
    d = pred.to_dict()
    assert d["source"] == "predicted" and d["profile"] == "host-cpu"
    assert d["uncertainty"] == p.num("uncertainty") > 0
    assert len(d["layers"]) == len(digits.layers)
    assert {"latency_ms", "energy_j", "memory_bytes", "calibration_id"} <= set(d)
    json.dumps(d)


@pytest.mark.parametrize("name", PROFILES)
def test_more_bits_cost_more_memory_and_fp_costs_most(name: str, larger: ModelInfo) -> None:
    p = load_profile(name)
    mem = {g: predict_model(larger, _uniform(larger, g), p).memory_bytes
           for g in (Gene(4, "fp"), Gene(8, "fp"), Gene("fp", "fp"))}
    assert mem[Gene(4, "fp")] < mem[Gene(8, "fp")] < mem[Gene("fp", "fp")]


def test_slower_unit_fallback_for_dynamic_on_npus(larger: ModelInfo) -> None:
    for name in ("hexagon-htp", "apple-ane"):
        p = load_profile(name)
        dyn = predict_model(larger, _uniform(larger, Gene(8, "dynamic")), p)
        static = predict_model(larger, _uniform(larger, Gene(8, 8)), p)
        assert {r["path"] for r in dyn.layers} == {"slower_unit"}
        assert dyn.latency_ms > static.latency_ms


def test_cli_predict_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    genome = tmp_path / "g.yaml"
    genome.write_text("default: {weight_bits: 4, activation_bits: 8}\n")
    assert main(["predict", "builtin:digits-vit", "--profile", "hexagon-htp", "--genome", str(genome), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "predicted" and out["profile"] == "hexagon-htp"
    assert out["latency_ms"] > 0 and out["energy_j"] > 0 and out["memory_bytes"] > 0
    assert out["uncertainty"] > 0 and len(out["layers"]) == 14
    assert main(["predict", "builtin:digits-vit", "--profile", "host-cpu"]) == 0
    text = capsys.readouterr().out
    assert "latency (predicted)" in text and "blocks.0.ffn.fc1" in text


def test_attention_matmuls_between_activations_are_costed_at_the_float_rate(larger: ModelInfo) -> None:
    # the transformer's Q K^T and its weighting of V read no weight: no layer, but GEMMs all the same
    stats = GraphStats.of(larger)
    assert stats.other_macs > 0
    profile = load_profile("host-cpu")
    fast = profile.copy()
    fast.data["throughput_gmacs"]["fp32"]["value"] *= 2
    no_macs = dataclasses.replace(stats, other_macs=0)
    gained = stats.fixed_us(profile) - no_macs.fixed_us(profile)
    assert gained == pytest.approx(stats.other_macs / (profile.num("throughput_gmacs", "fp32") * 1e3))
    assert stats.fixed_us(fast) - no_macs.fixed_us(fast) == pytest.approx(gained / 2)


def _gather_layer(rows: int = 30522, dim: int = 384, ids: int = 64):  # type: ignore[no-untyped-def]
    from harness.core.model import LayerSpec

    return LayerSpec("emb", "/emb/Gather", "Gather", "w", (rows, dim), rows * dim, 0, None, "y", 0,
                     input_elements=ids, output_elements=ids * dim)


def test_a_table_the_runtime_cannot_index_is_dequantized_whole_on_every_run() -> None:
    """ONNX Runtime's Gather takes no int4 table: one of odd width (qae cannot pack it two values a byte)
    stays DequantizeLinear -> Gather, the whole table dequantized every run; one of even width is written
    as GatherBlockQuantized and costed as that kernel, by the rows it reads."""
    from profiles.costmodel import cost_of

    profile = load_profile("host-cpu")
    odd = _gather_layer(dim=385)
    int4 = cost_of(odd, ("int4", "fp32", "channel"), profile)
    int8 = cost_of(odd, ("int8", "fp32", "channel"), profile)
    per_el = profile.num("gather_table_ns_per_element", "int4")
    assert int4.latency_us >= odd.params * per_el / 1e3  # every element of the table, every run
    assert int8.latency_us < int4.latency_us / 100  # int8 gathers its 64 rows, then dequantizes them
    assert int4.transient_bytes == odd.params * 4  # the float table it makes each run
    even = _gather_layer()
    for gran in ("channel", "tensor"):
        indexed = cost_of(even, ("int4", "fp32", gran), profile)
        assert indexed.path == "qdq->gather_block" and indexed.transient_bytes == 0
        block = cost_of(even, ("int4", "fp32", "block", "gather_block", 512), profile)
        assert indexed.latency_us == pytest.approx(block.latency_us)
        assert indexed.latency_us < int4.latency_us / 100


def test_op_factors_scale_one_op_type_and_path_and_bad_keys_are_refused() -> None:
    from harness.core.model import LayerSpec
    from profiles.costmodel import cost_of, dynamic_rescale_us, spatial_conv_us
    from profiles.errors import ProfileError
    from profiles.schema import parse

    profile = load_profile("host-cpu")

    conv = LayerSpec("c", "/c/Conv", "Conv", "w", (16, 8, 3, 3), 1152, 1152 * 196, "x", "y", 0,
                     input_elements=8 * 16 * 16, output_elements=16 * 14 * 14)
    mm = _gather_layer()
    base_conv = cost_of(conv, ("int8", "dynamic", "channel"), profile).latency_us
    base_native = cost_of(conv, ("int8", "int8", "channel"), profile).latency_us
    scaled = profile.copy()
    scaled.data["op_factors"] = {"Conv": {"native_dynamic": {"value": 3.0, "source": "test"}}}
    # the factor scales the layer's formula; its im2col pass (a 3x3 kernel) and the elementwise ops
    # rescaling ConvInteger's int32 output are costed apart, as the rest of the graph's ops
    rescale = 4 * (profile.num("overhead", "other_op_us")
                   + 16 * 14 * 14 * profile.num("overhead", "other_ns_per_element") / 1e3)
    assert dynamic_rescale_us(conv, profile) == pytest.approx(rescale)  # host-cpu: ConvInteger + 4 ops
    extra = spatial_conv_us(conv, "native_dynamic", profile) + rescale
    assert cost_of(conv, ("int8", "dynamic", "channel"), scaled).latency_us == pytest.approx(
        3 * (base_conv - extra) + extra)
    assert cost_of(conv, ("int8", "int8", "channel"), scaled).latency_us == pytest.approx(base_native)
    assert cost_of(mm, ("fp32", "fp32", "channel"), scaled).latency_us == pytest.approx(
        cost_of(mm, ("fp32", "fp32", "channel"), profile).latency_us)
    assert profile.path is not None
    text = Path(profile.path).read_text() + "op_factors: {Conv: {warp: {value: 2, source: x}}}\n"
    with pytest.raises(ProfileError, match="warp"):
        parse(text, "bad.yaml")


def test_weights_beyond_the_last_level_cache_stream_from_dram_on_every_run(larger: ModelInfo) -> None:
    from profiles.costmodel import beyond_cache_us, cost_of, precision_tokens

    profile = load_profile("host-cpu").copy()
    ops = {lay.name: lay.op_type for lay in larger.layers}
    fp, w8 = Genome.uniform(Gene("fp", "fp"), ops), Genome.uniform(Gene(8, 8), ops)
    w4 = Genome.uniform(Gene(4, 8), ops)  # dequantized to fp32 every run: read as stored, written and read as fp32

    def read(g: Genome) -> float:
        return sum(cost_of(lay, precision_tokens(g[lay.name]), profile).read_bytes for lay in larger.layers)

    params = sum(lay.params for lay in larger.layers)
    assert read(fp) == 4 * params and read(w8) == params and read(w4) == params / 2 + 2 * 4 * params
    # the cache between the int8 and the float weights: only the float model pays, per byte read
    profile.data["memory"]["cache_bytes"]["value"] = 2 * params
    per_byte = profile.num("memory", "beyond_cache_ns_per_byte")
    assert beyond_cache_us(read(w8), profile) == 0.0
    assert beyond_cache_us(read(fp), profile) == pytest.approx(4 * params * per_byte / 1e3)
    table = CostTable(larger.layers, profile, GraphStats.of(larger))
    bigger = profile.copy()
    bigger.data["memory"]["cache_bytes"]["value"] = 10 * params
    roomy = CostTable(larger.layers, bigger, GraphStats.of(larger))
    gap = table.predict(fp).latency_ms - roomy.predict(fp).latency_ms
    assert gap == pytest.approx(4 * params * per_byte / 1e6)
    assert table.predict(w8).latency_ms == pytest.approx(roomy.predict(w8).latency_ms)


def _conv(groups: int, channels: int = 64, side: int = 4, name: str = "dw", kernel: int = 3) -> object:
    """A ``kernel`` x ``kernel`` Conv with ``channels`` in and out and ``groups`` groups (depthwise:
    groups = channels)."""
    from harness.core.model import LayerSpec

    area = kernel * kernel
    params = channels * channels // groups * area
    out = channels * side * side
    return LayerSpec(name, f"/{name}/Conv", "Conv", "w", (channels, channels // groups, kernel, kernel), params,
                     out * channels // groups * area, "x", "y", 0, input_elements=out, output_elements=out,
                     groups=groups)


def test_a_grouped_conv_pays_per_group_only_on_paths_without_a_depthwise_kernel() -> None:
    """ONNX Runtime's CPU provider has depthwise kernels for a float Conv and for QLinearConv of
    symmetric or per-tensor weights; ConvInteger, QLinearConv with per-channel zero points and a float
    Conv of dequantized weights run a GEMM per group (measured: up to 9x). host-cpu says which paths
    pay; a profile without ``grouped_conv`` (and any ungrouped Conv) costs as before."""
    from profiles.costmodel import ExecClass, cost_of, grouped_path

    profile = load_profile("host-cpu")
    plain = profile.copy()
    plain.data.pop("grouped_conv")
    plain.data.pop("asymmetric_weight_factor")
    dw, pw = _conv(64), _conv(1, name="pw")
    sym = ExecClass("int8", "int8", "channel")
    asym = ExecClass("int8", "int8", "channel", zero_points=True)
    asym_tensor = ExecClass("int8", "int8", "tensor", zero_points=True)
    dynamic = ExecClass("int8", "dynamic", "channel")
    weight_only = ExecClass("int8", "fp32", "channel")
    fp = ExecClass("fp32", "fp32", "channel")
    assert grouped_path(dw, "native", "int8", "channel", True) == "native_asymmetric"
    assert grouped_path(dw, "native", "int8", "tensor", True) == "native"
    assert grouped_path(dw, "native", "dynamic", "channel", False) == "native_dynamic"
    assert grouped_path(pw, "native", "dynamic", "channel", False) is None
    for c in (sym, asym_tensor, fp):
        assert cost_of(dw, c, profile).latency_us == pytest.approx(cost_of(dw, c, plain).latency_us)
        assert "grouped" not in cost_of(dw, c, profile).path
    for c, key in ((asym, "native_asymmetric"), (dynamic, "native_dynamic"), (weight_only, "weight_only")):
        node = profile.data["grouped_conv"][key]
        extra = (node["us_per_layer"]["value"] + 64 * node["us_per_group"]["value"]
                 + 64 * 16 * node["ns_per_output_element"]["value"] / 1e3)
        assert extra > 0
        got = cost_of(dw, c, profile)
        assert got.latency_us == pytest.approx(cost_of(dw, c, plain).latency_us + extra)
        assert got.path.endswith(" grouped")
        if not c.zero_points:  # (a pointwise Conv of asymmetric weights takes the asymmetric factor)
            assert cost_of(pw, c, profile).latency_us == pytest.approx(cost_of(pw, c, plain).latency_us)
    # the asymmetric class comes from the gene's scheme, and only the depthwise layer tells them apart
    from profiles.costmodel import precision_tokens

    assert precision_tokens(Gene(weight_bits=8, activation_bits=8, scheme="asymmetric")) == asym
    assert precision_tokens(Gene(weight_bits=8, activation_bits=8)) == sym
    assert cost_of(dw, asym, profile).latency_us > 3 * cost_of(dw, sym, profile).latency_us


def test_a_dynamic_depthwise_conv_of_asymmetric_weights_has_a_path_of_its_own() -> None:
    """ONNX Runtime's ConvInteger runs a grouped Conv as per-group GEMMs of unsigned (asymmetric) or
    signed weights, at other costs (digits-cnn's depthwise layers here: 7-14 us against 11-22 us).
    host-cpu costs ``native_dynamic_asymmetric`` on its own; a profile without that entry costs the
    layer as ``native_dynamic`` (the same GEMMs), and the fit frees whichever entry the data runs."""
    from profiles.costmodel import ExecClass, cost_of, grouped_conv_us, grouped_entry, grouped_path
    from profiles.fit import LayerSample, grouped_params

    profile = load_profile("host-cpu")
    dw, pw = _conv(64), _conv(1, name="pw")
    assert grouped_path(dw, "native", "dynamic", "tensor", True) == "native_dynamic_asymmetric"
    assert grouped_path(dw, "native", "dynamic", "channel", True) == "native_dynamic_asymmetric"
    assert grouped_path(dw, "native", "dynamic", "tensor", False) == "native_dynamic"
    assert grouped_path(pw, "native", "dynamic", "tensor", True) is None
    sym = ExecClass("int8", "dynamic", "tensor")
    asym = ExecClass("int8", "dynamic", "tensor", zero_points=True)
    assert grouped_entry("native_dynamic_asymmetric", profile) == "native_dynamic_asymmetric"
    own = grouped_conv_us(dw, "native_dynamic_asymmetric", profile)
    assert own != pytest.approx(grouped_conv_us(dw, "native_dynamic", profile))
    older = profile.copy()
    older.data["grouped_conv"].pop("native_dynamic_asymmetric")
    assert grouped_entry("native_dynamic_asymmetric", older) == "native_dynamic"
    assert grouped_entry("native_asymmetric", older) == "native_asymmetric"  # static: no fallback
    assert grouped_conv_us(dw, "native_dynamic_asymmetric", older) == pytest.approx(
        grouped_conv_us(dw, "native_dynamic", older))
    # the whole layer: the same cost but for the grouped term (and the pointwise asymmetric factor
    # does not apply to a grouped layer)
    assert cost_of(dw, asym, profile).latency_us - own == pytest.approx(
        cost_of(dw, sym, profile).latency_us - grouped_conv_us(dw, "native_dynamic", profile))
    assert cost_of(dw, asym, older).latency_us == pytest.approx(cost_of(dw, sym, older).latency_us)

    def sample(c: ExecClass) -> LayerSample:
        return LayerSample("m", "w", "fit", dw, tuple(c), 0.01)

    assert {p.keys[1] for p in grouped_params(profile, [sample(asym)])} == {"native_dynamic_asymmetric"}
    assert {p.keys[1] for p in grouped_params(older, [sample(asym)])} == {"native_dynamic"}


def test_per_channel_zero_points_slow_a_dequantized_layer_by_the_profile_s_rate() -> None:
    """A layer whose int4 / int16 weights are dequantized every run pays
    ``dequantize_asymmetric_ns_per_element`` per weight when they have a zero point per channel (MiniLM
    and the transformer here: +0.3 ns a weight at int4); per-tensor zero points, symmetric weights,
    other paths and a profile without the table cost as before."""
    from profiles.costmodel import ExecClass, cost_of

    profile = load_profile("host-cpu")
    plain = profile.copy()
    plain.data.pop("dequantize_asymmetric_ns_per_element")
    mm = _conv(1, channels=384, side=8, name="mm", kernel=1)
    rate = profile.table("dequantize_asymmetric_ns_per_element")
    for wt, at in (("int4", "int8"), ("int16", "int16")):
        sym, asym = ExecClass(wt, at, "channel"), ExecClass(wt, at, "channel", zero_points=True)
        assert cost_of(mm, sym, profile).path == "dequantize"
        assert cost_of(mm, asym, profile).latency_us == pytest.approx(
            cost_of(mm, sym, profile).latency_us + 384 * 384 * rate[wt] / 1e3)
        assert cost_of(mm, asym, plain).latency_us == pytest.approx(cost_of(mm, sym, plain).latency_us)
        tensor = ExecClass(wt, at, "tensor", zero_points=True)
        assert cost_of(mm, tensor, profile).latency_us == pytest.approx(
            cost_of(mm, ExecClass(wt, at, "tensor"), profile).latency_us)
    wo = ExecClass("int4", "fp32", "channel", zero_points=True)
    assert cost_of(mm, wo, profile).latency_us == pytest.approx(cost_of(mm, wo, plain).latency_us)


def test_model_layers_carry_their_conv_groups() -> None:
    """digits-cnn's depthwise Convs have a group per channel; its stem and pointwise Convs one."""
    model = resolve_shapes("builtin:digits-cnn").model
    groups = {lay.name: lay.groups for lay in model.layers}
    assert groups["stem"] == 1 and groups["blocks.0.pw"] == 1 and groups["head"] == 1
    for lay in model.layers:
        if lay.name.endswith(".dw"):
            assert lay.groups == lay.weight_shape[0] > 1, lay


def test_asymmetric_weights_slow_an_integer_layer_by_the_profile_s_factor() -> None:
    """ONNX Runtime stores asymmetric weights unsigned, and its u8u8 GEMM lacks the u8s8 VNNI path:
    MiniLM's 384x1536 int8 MatMuls ran 2.0x (static) and 2.3x (dynamic) slower asymmetric. Weight-only
    and float layers, and a profile without the factor, cost as before. A Conv takes its op type's own
    entry where the profile has one (``Conv:native_dynamic``: ConvInteger is the other way round)."""
    from profiles.costmodel import ExecClass, asymmetric_factor, cost_of, dynamic_rescale_us

    profile = load_profile("host-cpu")
    plain = profile.copy()
    plain.data.pop("asymmetric_weight_factor")
    mm = _conv(1, channels=384, side=8, name="mm", kernel=1)  # a 1x1 Conv is a GEMM; any op type takes it
    for act, key in (("int8", "native"), ("dynamic", "native_dynamic")):
        sym, asym = ExecClass("int8", act, "channel"), ExecClass("int8", act, "channel", zero_points=True)
        assert profile.num("asymmetric_weight_factor", key) > 1.5  # a MatMul's
        factor = float(asymmetric_factor(profile, "Conv", key)["value"])
        # the ops rescaling a dynamic Conv's int32 output do not read the weights: not scaled
        rescale = dynamic_rescale_us(mm, profile) if act == "dynamic" else 0.0
        assert cost_of(mm, asym, profile).latency_us - rescale == pytest.approx(
            factor * (cost_of(mm, sym, profile).latency_us - rescale))
        assert cost_of(mm, asym, plain).latency_us == pytest.approx(cost_of(mm, sym, plain).latency_us)
    wo = ExecClass("int8", "fp32", "channel", zero_points=True)
    assert cost_of(mm, wo, profile).latency_us == pytest.approx(cost_of(mm, ExecClass("int8", "fp32", "channel"),
                                                                        profile).latency_us)


def test_a_spatial_conv_pays_its_im2col_pass_and_only_it() -> None:
    """ONNX Runtime's integer Convs unfold a k x k kernel's input before the GEMM: a 3x3 Conv of one
    group pays ``spatial_conv`` on its path (per call, and per im2col element: output positions x 9 x
    input channels); a 1x1 or a depthwise Conv, or a MatMul, does not. The fit frees the coefficients
    of the paths some sample's spatial Conv runs on, and only those."""
    from profiles.costmodel import ExecClass, cost_of, spatial_conv_us
    from profiles.fit import Sample, fit_params

    profile = load_profile("host-cpu")
    stem, pw, dw = _conv(1, channels=16, side=8, name="stem"), _conv(1, 16, 8, "pw", kernel=1), _conv(16, 16, 8)
    node = profile.data["spatial_conv"]["native"]
    im2col = 8 * 8 * 9 * 16
    assert spatial_conv_us(stem, "native", profile) == pytest.approx(
        node["us_per_layer"]["value"] + im2col * node["ns_per_element"]["value"] / 1e3)
    assert spatial_conv_us(pw, "native", profile) == 0.0 and spatial_conv_us(dw, "native", profile) == 0.0
    plain = profile.copy()
    plain.data.pop("spatial_conv")
    static = ExecClass("int8", "int8", "channel")
    assert cost_of(stem, static, profile).latency_us == pytest.approx(
        cost_of(stem, static, plain).latency_us + spatial_conv_us(stem, "native", profile))
    assert cost_of(pw, static, profile).latency_us == pytest.approx(cost_of(pw, static, plain).latency_us)
    keys = {".".join(p.keys) for p in fit_params(profile.copy(), [
        Sample("a", "cnn", "fit", [stem, pw], [static, ExecClass("fp32", "fp32", "channel")], GraphStats(), 1.0)])}
    assert {"spatial_conv.native.us_per_layer", "spatial_conv.native.ns_per_element"} <= keys
    assert not any(k.startswith("spatial_conv.float") or k.startswith("spatial_conv.native_dynamic") for k in keys)


def test_the_rest_of_the_graph_pays_more_per_element_for_outputs_beyond_l1() -> None:
    """Elementwise ops on tensors larger than the L1 data cache (MiniLM at 64 tokens) cost more per
    element than on small ones (the transformer at 16 tokens): the outputs above ``memory.l1_bytes``
    pay ``other_ns_per_element_beyond_l1`` too; a profile without it costs them all alike."""
    from profiles.costmodel import GraphStats

    profile = load_profile("host-cpu")
    limit = int(profile.num("memory", "l1_bytes") / 4)  # fp32 elements
    small, large = GraphStats(2, 2 * 100, 0, (), (100, 100)), GraphStats(2, 2 * 4 * limit, 0, (), (4 * limit,) * 2)
    plain = profile.copy()
    plain.data["overhead"].pop("other_ns_per_element_beyond_l1")
    assert small.fixed_us(profile) == pytest.approx(small.fixed_us(plain))
    assert large.fixed_us(profile) - large.fixed_us(plain) == pytest.approx(
        8 * limit * profile.num("overhead", "other_ns_per_element_beyond_l1") / 1e3)
    assert large.fixed_us(profile) > large.fixed_us(plain) > 0


def test_a_dynamic_conv_of_asymmetric_weights_is_costed_cheaper_a_matmul_dearer() -> None:
    """ORT's ConvInteger runs unsigned (asymmetric) weights faster than signed ones, its dynamic
    MatMul the other way round: the profile's ``Conv:native_dynamic`` entry overrides the path's."""
    from harness.core.model import LayerSpec
    from profiles.costmodel import layer_cost

    profile = load_profile("host-cpu")
    factors = profile.data["asymmetric_weight_factor"]
    assert factors["Conv:native_dynamic"]["value"] < 1 < factors["native_dynamic"]["value"]
    conv = LayerSpec("c", "/c/Conv", "Conv", "w", (64, 64, 1, 1), 4096, 4096 * 16, "x", "y", 0,
                     input_elements=1024, output_elements=1024)
    matmul = LayerSpec("m", "/m/MatMul", "MatMul", "w", (384, 384), 384 * 384, 16 * 384 * 384, "x", "y", 1)
    for layer, cheaper in ((conv, True), (matmul, False)):
        sym = layer_cost(layer, "int8", "dynamic", profile).latency_us
        asym = layer_cost(layer, "int8", "dynamic", profile, asymmetric=True).latency_us
        assert (asym < sym) == cheaper, layer.op_type


def test_dequantized_weights_pay_the_spill_rate_beyond_the_profile_s_spill_bytes_only() -> None:
    """A dequantizing layer pays ``dequantize_spill_ns_per_element`` on the weights whose float copy
    exceeds ``memory.dequantize_spill_bytes`` (the L1 cache on host-cpu; ``onchip_bytes`` where a
    profile names none): digits-cnn's 8k-weight Convs dequantize far faster per element than MiniLM's."""
    from harness.core.model import LayerSpec
    from profiles.costmodel import layer_cost

    profile = load_profile("host-cpu")
    start = profile.num("memory", "dequantize_spill_bytes") / 4  # fp32 elements
    spill = profile.num("dequantize_spill_ns_per_element", "int16")

    def cost(n: int, prof=profile) -> float:  # type: ignore[no-untyped-def]
        layer = LayerSpec("m", "/m/MatMul", "MatMul", "w", (n, 64), n * 64, n * 64, "x", "y", 1)
        return layer_cost(layer, "int16", "int16", prof).latency_us

    small, large = int(start) // 64, int(start) // 64 * 4
    base = profile.num("dequantize_ns_per_element", "int16")
    grow = cost(large) - cost(small)
    assert grow == pytest.approx((large - small) * 64 * base / 1e3 + (large * 64 - start) * spill / 1e3, rel=0.05)
    without = profile.copy()
    del without.data["memory"]["dequantize_spill_bytes"]  # from onchip_bytes (1 MB): no spill at this size
    assert cost(large, without) < cost(large)


def test_a_matmul_bias_add_is_costed_only_where_the_kernel_leaves_it_to_an_op_of_its_own(digits: ModelInfo) -> None:
    # ONNX Runtime folds a MatMul's bias Add into DynamicQuantizeMatMul and MatMulNBits; after any
    # other MatMul it is an Add of its own (or inside BiasGelu / SkipLayerNormalization), so it is
    # the layer's class, not the genome-independent rest of the graph, that says whether it costs
    from profiles.costmodel import ExecClass, cost_of, genome_classes, layer_io, rest_op_us

    stats = GraphStats.of(digits)
    matmuls = {lay.name for lay in digits.layers if lay.op_type == "MatMul"}
    assert stats.bias_layers and set(stats.bias_layers) <= matmuls
    profile = load_profile("host-cpu")
    classes = genome_classes(digits.layers, _uniform(digits, Gene(8, 8)), profile, stats)
    assert {lay.name for lay, c in zip(digits.layers, classes) if c.bias_add} == set(stats.bias_layers)
    layer = next(lay for lay in digits.layers if lay.name == stats.bias_layers[0])
    bias = rest_op_us(profile, layer_io(layer)[1])
    assert bias > 0
    for c in (ExecClass("fp32", "fp32", "channel"), ExecClass("int8", "int8", "channel")):
        without, with_ = cost_of(layer, c, profile), cost_of(layer, c._replace(bias_add=1), profile)
        assert with_.latency_us - without.latency_us == pytest.approx(bias)
        assert with_.unattributed_us - without.unattributed_us == pytest.approx(bias)  # not the layer's node
    dynamic = ExecClass("int8", "dynamic", "channel")
    assert cost_of(layer, dynamic._replace(bias_add=1), profile).latency_us == pytest.approx(
        cost_of(layer, dynamic, profile).latency_us)
    # a block kernel takes the bias after float activations; static ones are quantized before the Add
    block = ExecClass("int4", "fp32", "block", "matmulnbits", 32)
    assert cost_of(layer, block._replace(bias_add=1), profile).latency_us == pytest.approx(
        cost_of(layer, block, profile).latency_us)
    static16 = ExecClass("int8", "int16", "channel")
    assert cost_of(layer, static16._replace(bias_add=1), profile).latency_us - cost_of(
        layer, static16, profile).latency_us == pytest.approx(bias)


def test_a_profile_without_matmul_bias_keeps_the_bias_adds_in_the_rest_of_the_graph(digits: ModelInfo) -> None:
    # a profile fitted before ``matmul_bias`` (the shipped calibrations) predicts as it was fitted: the
    # bias Adds are genome-independent rest-of-graph ops, whatever the layers' kernels
    from profiles.costmodel import genome_classes, rest_op_us

    stats = GraphStats.of(digits)
    profile = load_profile("host-cpu")
    without = profile.copy()
    del without.data["matmul_bias"]
    for gene in (Gene(8, "dynamic"), Gene("fp", "fp"), Gene(8, 8)):
        classes = genome_classes(digits.layers, _uniform(digits, gene), without, stats)
        assert not any(c.bias_add for c in classes)
    assert len(stats.bias_outputs) == len(stats.bias_layers) and all(n > 0 for n in stats.bias_outputs)
    assert stats.fixed_us(without) - stats.fixed_us(profile) == pytest.approx(
        sum(rest_op_us(profile, n) for n in stats.bias_outputs))
    dynamic = CostTable(digits.layers, without, stats).predict(_uniform(digits, Gene(8, "dynamic")))
    fused = CostTable(digits.layers, profile, stats).predict(_uniform(digits, Gene(8, "dynamic")))
    assert fused.latency_ms < dynamic.latency_ms  # DynamicQuantizeMatMul took the Adds in


def test_dynamic_layers_reading_one_input_share_its_quantization(digits: ModelInfo, tmp_path: Path) -> None:
    # ONNX Runtime merges the identical DynamicQuantizeLinear nodes qae writes for query, key and value
    # (one per layer, each on its own Identity): the input is quantized once, read by a
    # MatMulIntegerToFloat each, while a layer that reads its input alone runs DynamicQuantizeMatMul
    import onnx
    import onnxruntime as ort

    from harness.quant.quantize import save_model
    from harness.quant.workload import Workload
    from profiles.costmodel import genome_classes, layer_cost, layer_io

    stats = GraphStats.of(digits)
    assert [len(g) for g in stats.input_groups] == [3, 3]  # q, k, v of two blocks
    work = Workload.open("builtin:digits-vit")
    dynamic = work.uniform(weight_bits=8, activation_bits="dynamic")
    save_model(work.build(dynamic), tmp_path / "d.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "d.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    matmuls = sum(lay.op_type in ("MatMul", "Gemm") for lay in digits.layers)  # a dynamic Gemm runs as MatMul
    convs = sum(lay.op_type == "Conv" for lay in digits.layers)  # ConvInteger: a quantization of its own
    assert ops.count("DynamicQuantizeLinear") == len(stats.input_groups) + convs
    assert ops.count("MatMulIntegerToFloat") == 6 and ops.count("DynamicQuantizeMatMul") == matmuls - 6

    profile = load_profile("host-cpu")
    assert "shared_dynamic_quantize" in profile.data
    q, k, v = stats.input_groups[0]
    classes = dict(zip([lay.name for lay in digits.layers], genome_classes(digits.layers, dynamic, profile, stats)))
    assert classes[q].shared_input == classes[k].shared_input == classes[v].shared_input == 3
    assert all(c.shared_input == 0 for n, c in classes.items() if not any(n in g for g in stats.input_groups))
    # a static reader keeps its own QuantizeLinear: the other two share theirs
    mixed = work.genome({"default": {"weight_bits": 8, "activation_bits": "dynamic"},
                         "layers": {q: {"weight_bits": 8, "activation_bits": 8}}})
    classes = dict(zip(classes, genome_classes(digits.layers, mixed, profile, stats)))
    assert (classes[q].shared_input, classes[k].shared_input, classes[v].shared_input) == (0, 2, 2)
    # each of k sharing layers pays 1/k of the per-op overhead and the per-element pass
    layer = next(lay for lay in digits.layers if lay.name == k)
    conv = profile.data["conversion"]
    per_element = float(conv["dynamic_ns_per_element"]["value"]) / 1e3
    entry = float(conv["per_op_us"]["value"]) + layer_io(layer)[0] * per_element
    plain = profile.copy()
    plain.data.pop("op_factors", None)
    alone = layer_cost(layer, "int8", "dynamic", plain).latency_us
    shared = layer_cost(layer, "int8", "dynamic", plain, shared_input=3).latency_us
    assert alone - shared == pytest.approx(entry * 2 / 3)
    # a profile without the field (a runtime that quantizes per layer, a calibration fitted before it)
    without = profile.copy()
    del without.data["shared_dynamic_quantize"]
    assert not any(c.shared_input for c in genome_classes(digits.layers, dynamic, without, stats))
    assert (CostTable(digits.layers, profile, stats).predict(dynamic).latency_ms
            < CostTable(digits.layers, without, stats).predict(dynamic).latency_ms)
