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
    st.sampled_from([g for g in GRANULARITIES if g != "per_block"]),  # per_block: test_genome_kernels.py
)


@given(default=genes, overrides=st.dictionaries(st.sampled_from(sorted(LAYERS)), genes, max_size=5))
def test_canonical_form_is_a_fixed_point(default: dict, overrides: dict) -> None:
    g = Genome.from_dict({"default": default, "layers": overrides}, LAYERS)
    again = Genome.from_dict(g.to_dict(), LAYERS)
    assert again.canonical_json() == g.canonical_json()
    assert set(g.genes) == set(LAYERS)


# -- hostile genome files (issue 13): one clean line, fast ------------------------------------------
def _load_error(path: Path) -> tuple[str, float]:
    import time

    start = time.perf_counter()
    with pytest.raises(GenomeError) as err:
        Genome.load(path, LAYERS)
    return str(err.value), time.perf_counter() - start


def test_non_utf8_genome_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_bytes(b"default:\n  weight_bits: 8\n  scheme: \xff\xfe sym\n")
    msg, _ = _load_error(path)
    assert "not UTF-8" in msg and str(path) in msg and "line 3" in msg and "\n" not in msg


@pytest.mark.parametrize("style", ["flow", "block", "json"])
def test_deeply_nested_genome_is_refused_fast(tmp_path: Path, style: str) -> None:
    path = tmp_path / "g.yaml"
    depth = 100_000
    if style == "flow":
        path.write_text("layers: " + "[" * depth + "]" * depth + "\n")
    elif style == "json":
        path.write_text('{"layers": ' + '{"a": ' * depth + "1" + "}" * depth + "}")
    else:
        path.write_text("".join(" " * i + "a:\n" for i in range(1200)))  # ~700 kB, under the size cap
    msg, took = _load_error(path)
    assert "nested more than" in msg and "\n" not in msg
    assert took < 1.0


def test_huge_genome_is_refused_by_size_before_reading(tmp_path: Path) -> None:
    from harness.core.genome import GENOME_MAX_BYTES

    path = tmp_path / "g.yaml"
    line = b"  blocks.0.q: {weight_bits: 4, activation_bits: 8, scheme: symmetric, granularity: per_channel}\n"
    with path.open("wb") as fh:
        fh.write(b"layers:\n")
        fh.write(line * (54_000_000 // len(line)))
    msg, took = _load_error(path)
    assert "over the 2.0 MB a genome file may have" in msg and "\n" not in msg
    assert took < 1.0 and GENOME_MAX_BYTES == 2 * 1024 * 1024


def test_a_genome_of_ten_thousand_layers_fits_the_cap(tmp_path: Path) -> None:
    layers = {f"/model/layers.{i // 8}/self_attn/proj_{i % 8}/MatMul": "MatMul" for i in range(10_000)}
    genome = Genome.from_dict(
        {"layers": {name: {"weight_bits": 4 if i % 2 else 8, "scheme": "asymmetric"}
                    for i, name in enumerate(layers)}},
        layers,
    )
    path = tmp_path / "g.yaml"
    path.write_text(genome.to_yaml())
    assert path.stat().st_size < 2 * 1024 * 1024
    assert Genome.load(path, layers) == genome


def test_missing_genome_file_is_one_line(tmp_path: Path) -> None:
    msg, _ = _load_error(tmp_path / "nope.yaml")
    assert "cannot be read" in msg and "nope.yaml" in msg
