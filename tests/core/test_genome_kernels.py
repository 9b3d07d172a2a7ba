"""Issue 15's gene fields: per_block + block_size, kernel, accuracy_level, rounding."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.core.errors import GenomeError
from harness.core.genome import BLOCK_SIZES, ROUNDINGS, Gene, Genome

LAYERS = {"embed": "Gather", "blocks.0.q": "MatMul", "blocks.0.k": "MatMul", "conv": "Conv", "head": "Gemm",
          "rnn": "LSTM"}
NBITS = {"kernel": "matmulnbits", "granularity": "per_block", "block_size": 32, "weight_bits": 4}
TABLE = {"kernel": "gather_block", "granularity": "per_block", "block_size": 32, "weight_bits": 4}


def test_old_genomes_keep_their_hash() -> None:
    """Hash of a genome with no issue-15 field, computed by the code before those fields existed."""
    layers = {"a/MatMul": "MatMul", "b/Gather": "Gather", "c/Conv": "Conv", "d/LSTM": "LSTM", "e/Gemm": "Gemm"}
    data = {
        "default": {"weight_bits": 4, "activation_bits": 8, "scheme": "asymmetric", "granularity": "per_channel"},
        "layers": {"b/Gather": {"weight_bits": 8}, "c/Conv": {"activation_bits": "dynamic"},
                   "e/Gemm": {"weight_bits": "fp"}},
    }
    g = Genome.from_dict(data, layers)
    assert g.hash == "efb9b6557dffd12b"
    assert "kernel" not in g.canonical_json() and "block_size" not in g.canonical_json()
    # the same genome with the new fields spelled at their defaults means the same thing
    spelled = {"default": {**data["default"], "kernel": "qdq", "rounding": "rtn", "block_size": None,
                           "accuracy_level": None}, "layers": data["layers"]}
    assert Genome.from_dict(spelled, layers).hash == "efb9b6557dffd12b"


def test_digits_vit_uniform_hashes_unchanged() -> None:
    from harness.quant.workload import Workload

    layers = Workload.open("builtin:digits-vit").layer_ops
    assert Genome.uniform(Gene(), layers).hash == "9e9650bb25db4114"
    assert Genome.uniform(Gene(4, "dynamic", "asymmetric", "per_tensor"), layers).hash == "dd12c3488200ac5c"


def test_new_fields_parse_normalise_and_round_trip() -> None:
    g = Genome.from_dict({"layers": {"blocks.0.q": {**NBITS, "accuracy_level": 4, "activation_bits": 8},
                                     "blocks.0.k": {**NBITS, "accuracy_level": 0},
                                     "embed": {**TABLE, "scheme": "asymmetric", "rounding": "mse"},
                                     "head": {"granularity": "per_block", "block_size": "64", "rounding": "hqq"}}},
                         LAYERS)
    q = g["blocks.0.q"]
    assert (q.kernel, q.block_size, q.accuracy_level, q.activation_bits) == ("matmulnbits", 32, 4, "fp")
    assert g["blocks.0.k"].accuracy_level is None  # 0 is MatMulNBits' "unset"
    assert g["embed"] == Gene(4, "fp", "asymmetric", "per_block", 32, "gather_block", None, "mse")
    assert g["head"] == Gene(8, "fp", "symmetric", "per_block", 64, "qdq", None, "hqq")  # weight-only
    again = Genome.from_dict(g.to_dict(), LAYERS)
    assert again.canonical_json() == g.canonical_json() and again.hash == g.hash
    import yaml

    assert Genome.from_dict(yaml.safe_load(g.to_yaml()), LAYERS).hash == g.hash
    assert g["conv"].to_dict() == {"weight_bits": 8, "activation_bits": 8, "scheme": "symmetric",
                                   "granularity": "per_channel"}


def test_default_gene_with_a_kernel_still_round_trips() -> None:
    """A layer back at a field's default (kernel qdq) under a default gene that is not is written out."""
    layers = {"a": "MatMul", "b": "MatMul", "c": "MatMul"}
    g = Genome.from_dict({"default": NBITS, "layers": {"c": {"kernel": "qdq", "granularity": "per_channel",
                                                             "block_size": None, "weight_bits": 8}}}, layers)
    d = g.to_dict()
    assert d["default"]["kernel"] == "matmulnbits"
    assert d["layers"]["c"]["kernel"] == "qdq" and d["layers"]["c"]["block_size"] is None
    assert Genome.from_dict(d, layers).hash == g.hash


def test_block_wise_weights_are_weight_only() -> None:
    for act in (8, 16, "dynamic", "fp"):
        g = Genome.from_dict({"default": {"granularity": "per_block", "block_size": 32, "activation_bits": act}},
                             {"q": "MatMul", "h": "Gemm"})
        assert g["q"].activation_bits == g["h"].activation_bits == "fp"


def test_fp_layer_drops_the_new_fields() -> None:
    g = Genome.from_dict({"layers": {"blocks.0.q": {**NBITS, "weight_bits": "fp", "rounding": "mse"}}}, LAYERS)
    assert g["blocks.0.q"] == Gene("fp", "fp")


def test_emulation_and_storage_of_packed_kernels() -> None:
    for bits in (2, 4, 8):
        gene = Gene(bits, "fp", "symmetric", "per_block", 32, "matmulnbits")
        assert gene.weight_storage_bits == bits and not gene.emulated
    assert Gene(2, "fp", "symmetric", "per_block", 32, "gather_block").weight_storage_bits == 2
    qdq = Gene(2, "fp", "symmetric", "per_block", 32)  # QDQ has no int2: stored in int8
    assert qdq.weight_storage_bits == 8 and qdq.emulated
    assert not Gene(4, "fp", "symmetric", "per_block", 32).emulated


@pytest.mark.parametrize(
    ("layer", "gene", "needle"),
    [
        ("conv", NBITS, "kernel matmulnbits cannot run a Conv layer: it is for MatMul"),
        ("head", NBITS, "kernel matmulnbits cannot run a Gemm layer"),
        ("blocks.0.q", TABLE, "kernel gather_block cannot run a MatMul layer: it is for Gather"),
        ("blocks.0.q", {**NBITS, "weight_bits": 3}, "kernel matmulnbits on MatMul runs weight_bits 2, 4, 8, got 3"),
        ("embed", {**TABLE, "weight_bits": 6}, "kernel gather_block on Gather runs weight_bits 2, 4, 8"),
        ("blocks.0.q", {**NBITS, "granularity": "per_channel", "block_size": None}, "needs granularity per_block"),
        ("blocks.0.q", {"granularity": "per_block"}, "per_block needs a block_size: use one of 16, 32, 64, 128"),
        ("blocks.0.q", {"block_size": 32}, "block_size 32 needs granularity per_block"),
        ("blocks.0.q", {**NBITS, "block_size": 48}, "block_size 48 is not supported: use one of 16, 32, 64, 128"),
        ("blocks.0.q", {"kernel": "nbits"}, "kernel 'nbits' is not supported: use one of qdq, matmulnbits, "
                                            "gather_block"),
        ("blocks.0.q", {"rounding": "awq"}, "rounding 'awq' is not supported: use one of rtn, mse, hqq, gptq"),
        ("blocks.0.q", {**NBITS, "accuracy_level": 3}, "accuracy_level 3 is not supported: use one of 0, 1, 2, 4"),
        ("blocks.0.q", {"accuracy_level": 4}, "accuracy_level is MatMulNBits'"),
        ("conv", {"granularity": "per_block", "block_size": 32}, "per_block with kernel qdq is for MatMul and Gemm"),
        ("embed", {"granularity": "per_block", "block_size": 32}, "takes kernel gather_block"),
        ("rnn", {"rounding": "mse"}, "rounding mse is not available for LSTM weights"),
        ("head", {"rounding": "gptq", "granularity": "per_tensor"}, "gptq needs granularity per_channel or per_block"),
        ("conv", {"rounding": "gptq"}, "rounding gptq is for MatMul and Gemm weights (it needs their inputs)"),
        ("head", {"rounding": "mse", "weight_bits": 16}, "rounding mse is for weights of 2 to 8 bits, got 16"),
        ("head", {"rounding": "gptq", "scheme": "power_of_two"}, "use scheme symmetric or asymmetric"),
        ("embed", {**TABLE, "rounding": "gptq"}, "rounding gptq is for MatMul and Gemm weights"),
    ],
)
def test_bad_genes_are_one_line_errors(layer: str, gene: dict, needle: str) -> None:
    with pytest.raises(GenomeError, match=re.escape(needle)) as err:
        Genome.from_dict({"layers": {layer: gene}}, LAYERS)
    assert "\n" not in str(err.value) and layer in str(err.value)


# full genes: a partial override inherits the default's fields, which need not combine with its own
matmul_genes = st.one_of(
    st.builds(lambda w, s, b, lvl, r: {**NBITS, "weight_bits": w, "scheme": s, "block_size": b,
                                       "accuracy_level": lvl, "rounding": r},
              st.sampled_from([2, 4, 8]), st.sampled_from(["symmetric", "asymmetric"]), st.sampled_from(BLOCK_SIZES),
              st.sampled_from([None, 0, 1, 2, 4]), st.sampled_from(ROUNDINGS)),
    st.builds(lambda w, a, b, r: {"weight_bits": w, "activation_bits": a, "granularity": "per_block",
                                  "block_size": b, "rounding": r, "kernel": "qdq", "accuracy_level": None},
              st.sampled_from([2, 3, 4, 8]), st.sampled_from([8, 16, "fp"]), st.sampled_from(BLOCK_SIZES),
              st.sampled_from(ROUNDINGS)),
    st.builds(lambda w, a: {"weight_bits": w, "activation_bits": a, "granularity": "per_channel", "kernel": "qdq",
                            "block_size": None, "accuracy_level": None}, st.sampled_from([4, 8, "fp"]),
              st.sampled_from([8, "dynamic", "fp"])),
)


@given(q=matmul_genes, k=matmul_genes)
def test_canonical_form_is_a_fixed_point_with_new_fields(q: dict, k: dict) -> None:
    layers = {"q": "MatMul", "k": "MatMul", "e": "Gather"}
    table = {**TABLE, "rounding": "rtn", "accuracy_level": None}
    g = Genome.from_dict({"default": q, "layers": {"k": k, "e": table}}, layers)
    again = Genome.from_dict(g.to_dict(), layers)
    assert again.canonical_json() == g.canonical_json()


def test_layer_kernels_say_what_each_op_takes() -> None:
    from harness.core.genome import layer_kernels

    assert layer_kernels("MatMul") == ("qdq", "qdq per_block", "matmulnbits")
    assert layer_kernels("Gemm") == ("qdq", "qdq per_block")
    assert layer_kernels("Gather") == ("qdq", "gather_block")
    assert layer_kernels("Conv") == layer_kernels("LSTM") == ("qdq",)


def test_rounding_goes_with_per_tensor_and_dynamic() -> None:
    layers = {k: v for k, v in LAYERS.items() if v != "LSTM"}
    g = Genome.from_dict({"default": {"weight_bits": 4, "activation_bits": "dynamic", "rounding": "mse"}}, layers)
    assert g["conv"].granularity == "per_tensor" and g["conv"].rounding == "mse"
