"""The search's seeded genomes and per-layer menus, on a small real model (Gather -> MatMul -> MatMul)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from harness.quant.workload import Workload
from harness.run.config import BASELINES, SearchConfig
from harness.run.seeds import baseline_values, choice_distance, layer_choices, per_layer, per_tensor_seed
from search.space import PerLayer, SearchSpace


def _gather_matmuls(tmp: Path, rows: int, width: int, hidden: int, seed: int) -> Workload:
    """Gather (a table of ``rows`` x ``width``) -> MatMul -> MatMul, with ids to calibrate and score."""
    rng = np.random.default_rng(seed)

    def init(name: str, shape: list[int]) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.standard_normal(shape).astype(np.float32).ravel())

    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "ids"], ["h"], name="emb"),
            helper.make_node("MatMul", ["h", "W1"], ["h1"], name="fc1"),
            helper.make_node("MatMul", ["h1", "W2"], ["y"], name="fc2"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [init("E", [rows, width]), init("W1", [width, hidden]), init("W2", [hidden, 4])],
    )
    path = tmp / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    data = tmp / "ids.npz"
    np.savez(data, ids=rng.integers(0, rows, size=32).astype(np.int64))
    return Workload.open(path, calib=data, eval_data=data)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    return _gather_matmuls(tmp_path_factory.mktemp("seeds"), 20, 8, 8, 0)


def _space(work: Workload, cfg: SearchConfig) -> SearchSpace:
    genes = layer_choices(work, cfg)
    return SearchSpace([lay.name for lay in work.model.layers],
                       [[(g.weight_bits, g.activation_bits, g.scheme, g.granularity) for g in gs] for gs in genes],
                       distance=choice_distance)


def test_embedding_tables_offer_asymmetric_per_tensor(work: Workload) -> None:
    cfg = SearchConfig(model="m", profiles=["host-cpu"])
    emb, fc1, _ = layer_choices(work, cfg)
    assert {(g.scheme, g.granularity) for g in emb} == {("symmetric", "per_channel"), ("symmetric", "per_tensor"),
                                                        ("asymmetric", "per_channel"), ("asymmetric", "per_tensor")}
    assert {g.scheme for g in fc1} == {"symmetric"}  # matmuls keep the run's scheme
    assert {g.granularity for g in fc1} == {"per_channel"}  # and its granularity


def test_convolutions_offer_per_tensor_weights() -> None:
    cnn = Workload.open("builtin:digits-cnn")
    cfg = SearchConfig(model="builtin:digits-cnn", profiles=["host-cpu"])
    for layer, genes in zip(cnn.model.layers, layer_choices(cnn, cfg)):
        want = {"per_channel", "per_tensor"} if layer.op_type == "Conv" else {"per_channel"}
        assert {g.granularity for g in genes if g.quantized} == want, layer.name
    # and the initial population holds the per-tensor int8 CNN (w8a8 with per-tensor convs)
    plain = [per_layer(v, len(cnn.model.layers)) for v in baseline_values(cnn, cfg)]
    (seed,) = per_tensor_seed(plain[0], layer_choices(cnn, cfg))
    want = [(8, 8, "symmetric", "per_tensor" if lay.op_type == "Conv" else "per_channel") for lay in cnn.model.layers]
    assert [v[:4] for v in seed.values] == want
    assert per_tensor_seed(plain[0], [[g for g in genes if g.granularity != "per_tensor"]
                                      for genes in layer_choices(cnn, cfg)]) == []


def test_dynamic_baseline_and_fallbacks_follow_sensitivity(work: Workload) -> None:
    cfg = SearchConfig(model="m", profiles=["host-cpu"])
    space = _space(work, cfg)
    plain = baseline_values(work, cfg)
    assert len(plain) == len(BASELINES)
    seeded = baseline_values(work, cfg, sensitivity=[0.5, 0.1, 0.9])
    assert seeded[: len(BASELINES)] == plain
    dynamic = plain[list(BASELINES).index("w8-dynamic")]
    assert isinstance(dynamic, PerLayer)
    assert dynamic.values == ((8, "fp", "asymmetric", "per_tensor"), (8, "dynamic", "symmetric", "per_channel"),
                              (8, "dynamic", "symmetric", "per_channel"))
    fallbacks: list[Any] = seeded[len(BASELINES):]
    # The Gather has no activation to keep in float: the two matmuls fall back, most sensitive first.
    assert [f.values[1:] for f in fallbacks] == [
        ((8, "dynamic", "symmetric", "per_channel"), (8, "fp", "symmetric", "per_channel")),
        ((8, "fp", "symmetric", "per_channel"), (8, "fp", "symmetric", "per_channel")),
    ]
    genomes = [space.uniform(v) for v in seeded]
    assert all(g is not None for g in genomes) and len(set(genomes)) == len(genomes)
    # Each builds and runs, and a fallback genome holds the same weight bytes as the dynamic one.
    reports = []
    for g in genomes[len(BASELINES) - 1:]:
        assert g is not None
        decoded = space.decode(g)
        genome = work.genome({"layers": {n: dict(zip(("weight_bits", "activation_bits", "scheme", "granularity"), v))
                                         for n, v in decoded.items()}})
        reports.append(work.evaluate(work.build(genome)))
    assert len({r.weight_bytes for r in reports}) == 1


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """The same graph with widths block kernels take (64 columns)."""
    return _gather_matmuls(tmp_path_factory.mktemp("wide"), 50, 64, 128, 1)


def test_block_kernels_are_offered_only_where_the_profile_runs_them(wide: Workload) -> None:
    from harness.run.config import KERNEL_MENU
    from profiles import kernel_options, kernels_of, load_profile

    cfg = SearchConfig(model="m", profiles=[], rounding="hqq")
    assert all(g.kernel == "qdq" for genes in layer_choices(wide, cfg) for g in genes)
    ane = load_profile("apple-ane")
    assert kernels_of(ane) == {"qdq"}
    assert all(g.kernel == "qdq" for genes in layer_choices(wide, cfg, ane) for g in genes)
    host = load_profile("host-cpu")
    emb, fc1, fc2 = layer_choices(wide, cfg, host)
    assert {g.kernel for g in emb} - {"qdq"} == {"gather_block"}
    assert {g.kernel for g in fc1} - {"qdq"} == {"matmulnbits"}
    for layer, genes in zip(wide.model.layers, (emb, fc1, fc2)):
        for gene in (g for g in genes if g.kernel != "qdq"):
            options = kernel_options(host, gene.kernel)
            assert gene.weight_bits in options["bits"] and gene.weight_bits in KERNEL_MENU[gene.kernel]["bits"]
            assert gene.block_size in options["block_sizes"] and gene.granularity == "per_block"
            assert gene.rounding == ("hqq" if int(gene.weight_bits) < 8 else "rtn")
            # every gene offered builds, loads in ONNX Runtime and scores
            genome = wide.genome({"default": {"weight_bits": "fp"}, "layers": {layer.name: gene.to_dict()}})
            report = wide.evaluate(wide.build(genome))
            assert 0.0 <= report.accuracy <= 1.0


def test_kernel_seeds_include_onnx_runtimes_matmulnbits_quantizer(wide: Workload) -> None:
    """Dynamic int8 with block-quantized tables (then MatMulNBits too), and float with 4-bit
    MatMulNBits matmuls: ONNX Runtime's MatMulNBitsQuantizer as a user runs it."""
    from harness.run.seeds import gene_value, kernel_seeds
    from profiles import load_profile

    cfg = SearchConfig(model="m", profiles=[])
    choices = layer_choices(wide, cfg, load_profile("host-cpu"))
    fp = [next(gene_value(g) for g in genes if g.weight_bits == "fp") for genes in choices]
    (seed,) = kernel_seeds(fp, choices, kernels=("matmulnbits",))
    emb, fc1, fc2 = seed.values
    mnb = ("kernel", "matmulnbits")
    assert emb == fp[0] and mnb in fc1 and mnb in fc2 and fc1[0] == fc2[0] == 4
    assert ("kernel", "gather_block") in kernel_seeds(fp, choices)[0].values[0]
    assert kernel_seeds(fp, [[g for g in genes if g.kernel == "qdq"] for genes in choices]) == []
