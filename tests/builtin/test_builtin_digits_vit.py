"""Checks on the shipped ``builtin:digits-vit`` workload (harness/builtin/digits_vit/).

Runs on the committed files only, with onnx and onnxruntime: no torch, no training. Rebuild the
files with ``python -m harness.builtin.train_digits_vit`` if these fail after a deliberate change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

DIGITS_VIT = Path(__file__).resolve().parents[2] / "harness" / "builtin" / "digits_vit"


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    return json.loads((DIGITS_VIT / "meta.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(DIGITS_VIT / "model.onnx"))


def _load_npz(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(DIGITS_VIT / name) as data:
        return data["pixels"], data["labels"]


def _top1(pixels: np.ndarray, labels: np.ndarray) -> float:
    # Same single-threaded CPU session as the build script, so the argmax of every sample, and
    # hence the accuracy, is reproduced exactly rather than approximately.
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(DIGITS_VIT / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"pixels": pixels})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def test_files_present() -> None:
    for name in ("model.onnx", "calib.npz", "eval.npz", "meta.json"):
        assert (DIGITS_VIT / name).is_file(), name
    assert (DIGITS_VIT / "model.onnx").stat().st_size < 300_000


def test_eval_accuracy_matches_meta(meta: dict[str, Any]) -> None:
    pixels, labels = _load_npz("eval.npz")
    acc = _top1(pixels, labels)
    assert acc >= 0.95
    assert abs(acc - meta["fp32_eval_accuracy"]) <= 1e-9


def test_split_shapes_and_types(meta: dict[str, Any]) -> None:
    calib_x, calib_y = _load_npz("calib.npz")
    eval_x, eval_y = _load_npz("eval.npz")
    sizes = meta["splits"]
    assert calib_x.shape == (sizes["calib"], 1, 8, 8) == (128, 1, 8, 8)
    assert eval_x.shape == (sizes["eval"], 1, 8, 8)
    assert calib_y.shape == (sizes["calib"],) and eval_y.shape == (sizes["eval"],)
    assert sizes["train"] + sizes["calib"] + sizes["eval"] == sizes["total"] == 1797
    assert calib_x.dtype == eval_x.dtype == np.float32
    assert calib_y.dtype == eval_y.dtype == np.int64
    for x in (calib_x, eval_x):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    for y in (calib_y, eval_y):
        # Stratified splits: every class is present in both.
        assert set(np.unique(y).tolist()) == set(range(10))


def test_calib_and_eval_are_disjoint() -> None:
    calib_x, _ = _load_npz("calib.npz")
    eval_x, _ = _load_npz("eval.npz")
    calib_rows = {row.tobytes() for row in calib_x.reshape(len(calib_x), -1)}
    eval_rows = {row.tobytes() for row in eval_x.reshape(len(eval_x), -1)}
    # Row sets as large as the splits: no duplicate sample inside either split either.
    assert len(calib_rows) == len(calib_x)
    assert len(eval_rows) == len(eval_x)
    assert not calib_rows & eval_rows


def test_graph_io(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["logits"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"


@pytest.mark.parametrize(
    ("fragment", "op_types"),
    [
        ("patch_embed", {"Conv"}),
        ("blocks.0/attn/q_proj", {"MatMul", "Gemm"}),
        ("blocks.0/attn/k_proj", {"MatMul", "Gemm"}),
        ("blocks.0/attn/v_proj", {"MatMul", "Gemm"}),
        ("blocks.0/attn/out_proj", {"MatMul", "Gemm"}),
        ("blocks.0/ffn/fc1", {"MatMul", "Gemm"}),
        ("blocks.1/attn/q_proj", {"MatMul", "Gemm"}),
        ("blocks.1/ffn/fc2", {"MatMul", "Gemm"}),
        ("head", {"MatMul", "Gemm"}),
    ],
)
def test_layer_names_survive_export(model: onnx.ModelProto, fragment: str, op_types: set[str]) -> None:
    names = [n.name for n in model.graph.node if n.op_type in op_types]
    assert any(fragment in name for name in names), (fragment, names)
