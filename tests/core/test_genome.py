from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.core.errors import GenomeError
from harness.core.genome import ACTIVATION_BITS, GRANULARITIES, SCHEMES, WEIGHT_BITS, Gene, Genome

LAYERS = {"embed": "Gather", "blocks.0.q": "MatMul", "blocks.0.k": "MatMul", "conv": "Conv", "head": "Gemm"}


def test_omitted_fields_take_the_default() -> None:
    g = Genome.from_dict(
        {
            "default": {"weight_bits": 8, "activation_bits": 8, "scheme": "symmetric", "granularity": "per_channel"},
            "layers": {"blocks.0.q": {"weight_bits": 4}},
        },
        LAYERS,
    )
    assert g["blocks.0.q"] == Gene(4, 8, "symmetric", "per_channel")
    assert g["blocks.0.k"] == Gene(8, 8, "symmetric", "per_channel")
    assert g["embed"].activation_bits == "fp"  # a Gather reads indices, not activations


def test_same_meaning_same_hash() -> None:
    a = Genome.from_dict({"default": {"weight_bits": 8}}, LAYERS)
    b = Genome.from_dict(
        {"default": {"weight_bits": "8", "activation_bits": 8}, "layers": {"head": {"scheme": "symmetric"}}}, LAYERS
    )
    assert a.hash == b.hash and a.canonical_json() == b.canonical_json()
    c = Genome.from_dict({"default": {"weight_bits": 8}, "layers": {"head": {"weight_bits": 4}}}, LAYERS)
    assert c.hash != a.hash


def test_fp_weight_means_unquantized_layer() -> None:
    a = Genome.from_dict({"layers": {"head": {"weight_bits": "fp"}}}, LAYERS)
    b = Genome.from_dict(
        {"layers": {"head": {"weight_bits": "fp", "activation_bits": 16, "scheme": "asymmetric"}}}, LAYERS
    )
    assert a.hash == b.hash and not a["head"].quantized


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    g = Genome.from_dict(
        {
            "default": {"weight_bits": 4, "activation_bits": "dynamic"},
            "layers": {"conv": {"weight_bits": 3, "activation_bits": 6}},
        },
        LAYERS,
    )
    path = tmp_path / "g.yaml"
    path.write_text(g.to_yaml())
    assert Genome.load(path, LAYERS) == g


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"layers": {"blocks.0.z": {"weight_bits": 4}}}, "unknown layer 'blocks.0.z'"),
        ({"default": {"weight_bits": 7}}, "weight_bits 7 is not supported"),
        ({"default": {"activation_bits": 12}}, "activation_bits 12 is not supported"),
        ({"default": {"scheme": "log"}}, "scheme 'log' is not supported"),
        ({"default": {"bits": 4}}, "unknown field 'bits'"),
        ({"default": {"weight_bits": 16, "activation_bits": "dynamic"}}, "dynamic needs weight_bits of 8 or fewer"),
        ({"defaults": {}}, "unknown key 'defaults'"),
    ],
)
def test_errors_name_the_problem(data: dict, needle: str) -> None:
    with pytest.raises(GenomeError, match=re.escape(needle)) as err:
        Genome.from_dict(data, LAYERS)
    assert "\n" not in str(err.value)


def test_unknown_layer_suggests_the_nearest() -> None:
    with pytest.raises(GenomeError, match=re.escape("did you mean 'blocks.0.q'")):
        Genome.from_dict({"layers": {"blocks.0.qq": {}}}, LAYERS)


genes = st.builds(
    lambda w, a, s, g: {"weight_bits": w, "activation_bits": a, "scheme": s, "granularity": g},
    st.sampled_from([b for b in WEIGHT_BITS if b != 16]),
    st.sampled_from(ACTIVATION_BITS),
    st.sampled_from(SCHEMES),
    st.sampled_from(GRANULARITIES),
)


@given(default=genes, overrides=st.dictionaries(st.sampled_from(sorted(LAYERS)), genes, max_size=5))
def test_canonical_form_is_a_fixed_point(default: dict, overrides: dict) -> None:
    g = Genome.from_dict({"default": default, "layers": overrides}, LAYERS)
    again = Genome.from_dict(g.to_dict(), LAYERS)
    assert again.canonical_json() == g.canonical_json()
    assert set(g.genes) == set(LAYERS)
