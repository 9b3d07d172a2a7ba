"""Issue 15: profiles list the block-quantized kernels they run, and the cost model prices them by
kernel, width, block size, accuracy level and the GEMM's M as the profile says."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from harness.core.genome import Gene
from harness.core.model import LayerSpec
from profiles import kernel_options, kernels_of, load_profile
from profiles.costmodel import CostTable, ExecClass, cost_of, gemm_rows, precision_tokens
from profiles.errors import ProfileError
from profiles.fit import Sample, errors, fit, fit_params, predict_ms
from profiles.schema import CALIBRATED_DIR, PROFILES_DIR

BASE = ["arm-neon-a76", "hexagon-htp", "apple-ane", "host-cpu"]


def _mm(k: int, n: int, m: int, name: str = "mm") -> LayerSpec:
    return LayerSpec(name, f"/{name}/MatMul", "MatMul", "w", (k, n), k * n, m * k * n, "x", "y", 1,
                     input_elements=m * k, output_elements=m * n)


def _gather(rows: int, dim: int, m: int, name: str = "emb") -> LayerSpec:
    return LayerSpec(name, f"/{name}/Gather", "Gather", "w", (rows, dim), rows * dim, 0, None, "y", 0,
                     input_elements=m, output_elements=m * dim)


def _mnb(bits: int = 4, block: int = 32, acc: int | None = 4, scheme: str = "symmetric") -> Gene:
    return Gene(bits, "fp", scheme, "per_block", block_size=block, kernel="matmulnbits", accuracy_level=acc)


def _gbq(bits: int = 4, block: int = 32) -> Gene:
    return Gene(bits, "fp", "symmetric", "per_block", block_size=block, kernel="gather_block")


class _Genome(dict[str, Any]):
    emulated_layers: ClassVar[list[str]] = []


def _us(layer: LayerSpec, gene: Gene, profile: str = "host-cpu") -> float:
    return cost_of(layer, precision_tokens(gene), load_profile(profile)).latency_us


# -- which kernels a profile runs ------------------------------------------------------------------
def test_kernels_of_each_shipped_profile() -> None:
    assert kernels_of(load_profile("host-cpu")) == {"qdq", "matmulnbits", "gather_block"}
    assert load_profile("host-cpu").kernels == {"qdq", "matmulnbits", "gather_block"}
    assert kernels_of(load_profile("arm-neon-a76")) == {"qdq", "matmulnbits", "gather_block"}
    assert kernels_of(load_profile("hexagon-htp")) == {"qdq", "matmulnbits"}
    assert kernels_of(load_profile("apple-ane")) == {"qdq"}  # coremltools: per-channel on the NE
    opts = kernel_options(load_profile("host-cpu"), "matmulnbits")
    assert opts == {"bits": [2, 4, 8], "block_sizes": [16, 32, 64, 128], "accuracy_levels": [0, 4]}
    assert kernel_options(load_profile("hexagon-htp"), "matmulnbits")["bits"] == [2, 4]
    assert kernel_options(load_profile("apple-ane"), "matmulnbits") == {}
    assert kernel_options(load_profile("host-cpu"), "qdq") == {}


def test_old_profiles_without_kernels_still_load(tmp_path: Path) -> None:
    data = yaml.safe_load((PROFILES_DIR / "host-cpu.yaml").read_text())
    del data["kernels"]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data))
    old = load_profile(path)
    assert kernels_of(old) == {"qdq"}
    # A kernel gene on a profile that does not list the kernel: the QDQ path of the same precision.
    lc = cost_of(_mm(384, 384, 64), precision_tokens(_mnb()), old)
    assert "no matmulnbits" in lc.path
    for path in sorted(CALIBRATED_DIR.glob("*.yaml")):
        load_profile(path)  # user-calibrated profiles keep loading


def test_every_kernel_number_has_a_source_or_is_an_assumption() -> None:
    for name in BASE:
        kernels = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())["kernels"]
        for kname, spec in kernels.items():
            assert len(spec["source"]) >= 10, (name, kname)
            for key, rate in spec.get("rates", {}).items():
                for coef, num in rate.items():
                    assert len(num["source"]) >= 10, (name, kname, key, coef)
                    if num.get("assumption"):
                        assert "assum" in num["source"] or spec.get("assumption"), (name, kname, key, coef)


def _broken(tmp_path: Path, edit: Any) -> Path:
    data = yaml.safe_load((PROFILES_DIR / "host-cpu.yaml").read_text())
    edit(data["kernels"])
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda k: k.update(winograd={"source": "made up here"}), "kernels: unknown kernel 'winograd'"),
        (lambda k: k["matmulnbits"].update(bits=[3]), "kernels.matmulnbits.bits.0: unknown value 3"),
        (lambda k: k["matmulnbits"].update(block_sizes=[48]), "kernels.matmulnbits.block_sizes.0: unknown value 48"),
        (lambda k: k["matmulnbits"]["rates"].update(int5=k["matmulnbits"]["rates"]["int4"]),
         "kernels.matmulnbits.rates: unknown key 'int5'"),
        (lambda k: k["matmulnbits"]["rates"]["int4"]["throughput_gmacs"].update(value=0),
         "kernels.matmulnbits.rates.int4.throughput_gmacs must be > 0 (got 0)"),
        (lambda k: k["gather_block"]["rates"]["int8"]["ns_per_element"].pop("source"),
         "missing field kernels.gather_block.rates.int8.ns_per_element.source"),
        (lambda k: k["matmulnbits"].pop("accuracy_levels"), "missing field kernels.matmulnbits.accuracy_levels"),
        (lambda k: [k["matmulnbits"]["rates"].pop(r) for r in ("int8", "int8_acc4")],
         "missing field kernels.matmulnbits.rates.int8 (or int8_acc0)"),
        (lambda k: k["matmulnbits"]["rates"].update(int4_acc2=k["matmulnbits"]["rates"]["int4"]),
         "kernels.matmulnbits.rates.int4_acc2: accuracy_level 2 is not in kernels.matmulnbits.accuracy_levels"),
        (lambda k: k["gather_block"].update(bits=[2, 4]), "kernels.gather_block.rates.int8: int8 is not in"),
        (lambda k: k["matmulnbits"]["rates"]["int4"].update(ns_per_row={"value": 1, "source": "made up here"}),
         "kernels.matmulnbits.rates.int4: unknown field 'ns_per_row'"),
    ],
)
def test_bad_kernel_lists_are_one_line_errors(tmp_path: Path, edit: Any, expected: str) -> None:
    path = _broken(tmp_path, edit)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert expected in msg, msg


# -- what the cost model predicts ------------------------------------------------------------------
def test_gemm_rows_are_the_activation_over_k() -> None:
    assert gemm_rows(_mm(384, 1536, 64)) == 64
    assert gemm_rows(_mm(1536, 384, 1)) == 1
    assert gemm_rows(_gather(30522, 384, 64)) == 64
    with pytest.raises(ProfileError, match="unknown number of ids"):
        gemm_rows(replace(_gather(30522, 384, 64), input_elements=None, output_elements=None))


def test_old_genes_keep_their_classic_class() -> None:
    assert precision_tokens(Gene(8, 8)) == ExecClass("int8", "int8", "channel")
    assert tuple(precision_tokens(Gene(8, 8)))[:3] == ("int8", "int8", "channel")
    assert precision_tokens(Gene("fp", "fp")) == ExecClass("fp32", "fp32", "channel")
    assert precision_tokens(_mnb(4, 32, 4)) == ExecClass("int4", "fp32", "block", "matmulnbits", 32, 4, False)
    assert precision_tokens(_mnb(4, 32, None)).accuracy == 0


def test_host_cpu_matmulnbits_is_slow_at_m64_and_fast_at_m1() -> None:
    """Measured here (results/bench/kernels.json): MatMulNBits loses to dynamic int8 at M = 64 (even
    to fp32 MatMul), and beats fp32 at M = 1 where the weights' bytes dominate."""
    # host-cpu-local (issue 18's fit): 8-bit block 128 accuracy 4 at 64x384x384 is 1.7x dynamic int8 (the
    # suite measures that kernel at 1536x384 only, 2.3x there); every other variant is over 2x
    for profile, factor in (("host-cpu", 1.0), ("host-cpu-local", 1.5)):
        for k, n in ((384, 384), (384, 1536), (1536, 384)):
            big = _mm(k, n, 64)
            dyn = _us(big, Gene(8, "dynamic"), profile)
            for gene in (_mnb(4, 32, 4), _mnb(4, 32, None), _mnb(4, 128, 4), _mnb(8, 128, 4)):
                assert _us(big, gene, profile) > factor * dyn, (profile, k, n, gene)
        one = _mm(1536, 384, 1)
        assert _us(one, _mnb(4, 32, 4), profile) < 0.5 * _us(one, Gene("fp", "fp"), profile)


def test_predictions_differ_by_bits_block_accuracy_and_m() -> None:
    m1, m64 = _mm(384, 384, 1), _mm(384, 384, 64)
    # accuracy_level 4 (int8 A) is faster than the float path at M = 1
    assert _us(m1, _mnb(4, 32, 4)) < _us(m1, _mnb(4, 32, None))
    # 8-bit at accuracy 0 dequantizes every weight every run: far slower than 4-bit at M = 1
    assert _us(m1, _mnb(8, 32, None)) > 3 * _us(m1, _mnb(4, 32, None))
    # smaller blocks cost more per row at accuracy 4
    assert _us(m64, _mnb(4, 32, 4)) > _us(m64, _mnb(4, 128, 4))
    # M matters
    for gene in (_mnb(4, 32, 4), _mnb(8, 128, 4), _mnb(2, 32, 4)):
        assert _us(m64, gene) > 5 * _us(m1, gene)
    # accuracy levels 1-3 have no own rate on host-cpu: they cost as 0
    assert _us(m64, _mnb(4, 32, 1)) == _us(m64, _mnb(4, 32, None))
    g1, g64 = _gather(30522, 384, 1), _gather(30522, 384, 64)
    assert _us(g64, _gbq(4, 32)) > 2 * _us(g1, _gbq(4, 32))
    assert _us(g64, _gbq(4, 32)) != _us(g64, _gbq(8, 32))


def test_block_quantized_bytes_are_packed_weights_plus_a_scale_per_block() -> None:
    prof = load_profile("host-cpu")
    layer = _mm(384, 1536, 1)
    lc = cost_of(layer, precision_tokens(_mnb(4, 32, 4)), prof)
    assert lc.weight_bytes == layer.params / 2 + layer.params / 32 * 4
    lc = cost_of(layer, precision_tokens(_mnb(4, 32, 4, scheme="asymmetric")), prof)
    assert lc.weight_bytes == layer.params / 2 + layer.params / 32 * 4.5
    lc = cost_of(layer, precision_tokens(_mnb(2, 128, 4)), prof)
    assert lc.weight_bytes == layer.params / 4 + layer.params / 128 * 4
    emb = _gather(30522, 384, 64)
    lc = cost_of(emb, precision_tokens(_gbq(8, 32)), prof)
    assert lc.weight_bytes == emb.params + emb.params / 32 * 4
    # fp16 targets store fp16 scales
    lc = cost_of(layer, precision_tokens(_mnb(4, 32, None)), load_profile("hexagon-htp"))
    assert lc.weight_bytes == layer.params / 2 + layer.params / 32 * 2


def test_qdq_per_block_runs_as_matmulnbits_where_the_runtime_fuses_it() -> None:
    """ORT 1.32's CPU provider rewrites DequantizeLinear(block_size) -> MatMul into MatMulNBits at
    session.qdq_matmulnbits_accuracy_level (4): host-cpu says so; hexagon-htp does not fuse."""
    layer = _mm(384, 384, 64)
    qdq_block = Gene(4, "fp", "symmetric", "per_block", block_size=32)
    host = load_profile("host-cpu")
    fused = cost_of(layer, precision_tokens(qdq_block), host)
    assert fused.path == "qdq->matmulnbits"
    assert fused.latency_us == cost_of(layer, precision_tokens(_mnb(4, 32, 4)), host).latency_us
    htp = cost_of(layer, precision_tokens(qdq_block), load_profile("hexagon-htp"))
    assert htp.path != "qdq->matmulnbits"
    assert htp.weight_bytes == layer.params / 2 + layer.params / 32 * 2


def test_kernels_a_profile_does_not_list_fall_back_to_qdq() -> None:
    layer = _mm(384, 384, 64)
    htp = load_profile("hexagon-htp")
    assert "no matmulnbits" in cost_of(layer, precision_tokens(_mnb(8, 32, None)), htp).path  # 2/4 only
    assert cost_of(layer, precision_tokens(_mnb(4, 32, None)), htp).path == "matmulnbits"
    emb = _gather(30522, 384, 64)
    assert "no gather_block" in cost_of(emb, precision_tokens(_gbq(4, 32)), htp).path
    # a kernel on the wrong op (normalise refuses it; the cost model never crashes on it)
    assert "no gather_block" in cost_of(layer, precision_tokens(_gbq(4, 32)), load_profile("host-cpu")).path


def test_cost_table_adds_kernel_classes_and_agrees_with_single_predictions() -> None:
    layers = [_gather(30522, 384, 64), _mm(384, 384, 64, "q"), _mm(384, 1536, 64, "fc1"), _mm(1536, 384, 64, "fc2")]
    table = CostTable(layers, load_profile("host-cpu"))
    n0 = len(table.index)
    genomes = [
        _Genome({"emb": Gene(8, "fp"), "q": Gene(8, 8), "fc1": Gene(8, "dynamic"), "fc2": Gene("fp", "fp")}),
        _Genome({"emb": _gbq(4, 32), "q": _mnb(4, 32, 4), "fc1": _mnb(4, 128, None), "fc2": _mnb(8, 128, 4)}),
        _Genome({"emb": _gbq(8, 128), "q": Gene(4, "fp", "symmetric", "per_block", block_size=64),
                 "fc1": Gene(8, 8), "fc2": _mnb(2, 32, 4)}),
    ]
    many = table.predict_many(genomes)
    assert len(table.index) > n0
    for row, genome in zip(many, genomes):
        pred = CostTable(layers, load_profile("host-cpu")).predict(genome)
        assert row[0] == pytest.approx(pred.latency_ms) and row[2] == pytest.approx(pred.memory_bytes)
    pred = table.predict(genomes[1])
    assert [r["kernel"] for r in pred.layers] == ["gather_block", "matmulnbits", "matmulnbits", "matmulnbits"]
    assert [r["gemm_rows"] for r in pred.layers] == [64, 64, 64, 64]
    assert many[1][2] < many[0][2]  # 4-bit blocks are smaller than int8 in memory


def test_fit_learns_kernel_rates_only_from_samples_that_run_them() -> None:
    truth = load_profile("host-cpu")
    samples = []
    for k, n in ((384, 384), (384, 1536), (1536, 384)):
        for m in (1, 16, 64):
            for bits, block, acc in ((4, 32, 4), (4, 128, 4), (4, 32, 0), (8, 128, 0), (8, 32, 0)):
                c = ExecClass(f"int{bits}", "fp32", "block", "matmulnbits", block, acc)
                samples.append(Sample(f"{k}x{n}m{m}{c}", "micro", "fit", [_mm(k, n, m)], [c], _graph(), 1.0))
            samples.append(Sample(f"{k}x{n}m{m}fp", "micro", "fit", [_mm(k, n, m)],
                                  [("fp32", "fp32", "channel")], _graph(), 1.0))
    measured = predict_ms(samples, truth)
    samples = [replace(s, measured_ms=float(v)) for s, v in zip(samples, measured)]
    keys = {".".join(p.keys) for p in fit_params(truth, samples)}
    assert "kernels.matmulnbits.rates.int4_acc4.throughput_gmacs" in keys
    assert "kernels.matmulnbits.rates.int8.ns_per_block" in keys
    assert not any("int2" in k or "gather_block" in k for k in keys)
    assert not any("kernels" in ".".join(p.keys) for p in fit_params(truth))
    start = truth.copy()
    start.data["kernels"]["matmulnbits"]["rates"]["int4_acc4"]["throughput_gmacs"]["value"] *= 3
    start.data["kernels"]["matmulnbits"]["rates"]["int8"]["ns_per_weight"]["value"] *= 0.2
    assert errors(samples, start)["fit"]["mape"] > 0.1
    fitted, _ = fit(samples, start)
    assert errors(samples, fitted)["fit"]["mape"] < 0.02


def _graph() -> Any:
    from profiles.costmodel import GraphStats

    return GraphStats()


def test_an_embedding_gather_costs_the_rows_it_reads() -> None:
    """Measured (results/bench/kernels.json): a 30522x384 fp32 Gather of 64 ids takes ~5 us; costing
    the whole 47 MB table said 444 us on host-cpu-local and 1.9 ms on host-cpu."""
    for name in ("host-cpu", "host-cpu-local"):
        prof = load_profile(name)
        g1, g64 = _gather(30522, 384, 1), _gather(30522, 384, 64)
        fp64 = cost_of(g64, precision_tokens(Gene("fp", "fp")), prof)
        assert fp64.latency_us < 30, name
        assert fp64.weight_bytes == g64.params * 4  # memory still holds the whole table
        assert fp64.latency_us > cost_of(g1, precision_tokens(Gene("fp", "fp")), prof).latency_us
    # ids unknown: the whole table, as before
    blind = replace(_gather(30522, 384, 64), input_elements=None, output_elements=None)
    assert cost_of(blind, precision_tokens(Gene("fp", "fp")), load_profile("host-cpu")).latency_us > 1000
