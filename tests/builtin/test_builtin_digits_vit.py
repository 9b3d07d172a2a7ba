"""Checks on the shipped ``builtin:digits-vit`` workload (harness/builtin/digits_vit/).

Runs on the committed files only, with onnx, onnxruntime and scikit-learn: no torch, no training.
Rebuild the files with ``python -m harness.builtin.train_digits_vit`` (``--data-only`` for the splits
alone) if these fail after a deliberate change.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from harness.builtin import digits_data

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


SPLITS = ("calib.npz", "eval.npz", "test.npz")


def test_files_present() -> None:
    for name in ("model.onnx", *SPLITS, "meta.json"):
        assert (DIGITS_VIT / name).is_file(), name
        # Package data: world-readable whatever umask the build ran under.
        assert stat.S_IMODE((DIGITS_VIT / name).stat().st_mode) & 0o444 == 0o444, name
    assert (DIGITS_VIT / "model.onnx").stat().st_size < 300_000


@pytest.mark.parametrize(("name", "key"), [("eval.npz", "fp32_eval_accuracy"), ("test.npz", "fp32_test_accuracy")])
def test_fp32_accuracy_matches_meta(meta: dict[str, Any], name: str, key: str) -> None:
    """Validation (eval.npz) and test (test.npz) each score what meta.json says, on the shipped model."""
    pixels, labels = _load_npz(name)
    acc = _top1(pixels, labels)
    assert acc >= 0.95
    assert abs(acc - meta[key]) <= 1e-9


def test_split_shapes_and_types(meta: dict[str, Any]) -> None:
    sizes = meta["splits"]
    assert (sizes["calib"], sizes["eval"], sizes["test"]) == (128, 270, 270)
    assert sizes["train"] + sizes["calib"] + sizes["eval"] + sizes["test"] == sizes["total"] == 1797
    for name in SPLITS:
        x, y = _load_npz(name)
        n = sizes[name.removesuffix(".npz")]
        assert x.shape == (n, 1, 8, 8) and y.shape == (n,), name
        assert x.dtype == np.float32 and y.dtype == np.int64, name
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0, name
        # Stratified splits: every class is present in each.
        assert set(np.unique(y).tolist()) == set(range(10)), name


def test_splits_are_disjoint_by_image_bytes() -> None:
    rows = {}
    for name in SPLITS:
        x, _ = _load_npz(name)
        rows[name] = {row.tobytes() for row in x.reshape(len(x), -1)}
        # Row sets as large as the splits: no duplicate sample inside a split either.
        assert len(rows[name]) == len(x), name
    assert not rows["calib.npz"] & rows["eval.npz"]
    assert not rows["calib.npz"] & rows["test.npz"]
    assert not rows["eval.npz"] & rows["test.npz"]


def test_make_splits_indices_are_disjoint_and_are_the_shipped_files() -> None:
    splits = digits_data.make_splits()
    idx = splits.indices
    every = np.concatenate(list(idx.values()))
    assert len(every) == len(set(every.tolist())) == 1797  # disjoint, and together every image once
    assert splits.sizes() == {"train": 1129, "calib": 128, "eval": 270, "test": 270}
    # Validation and test are the two halves of the 540 images held out from training.
    assert len(np.intersect1d(np.concatenate([idx["eval"], idx["test"]]), idx["train"])) == 0
    for kind, x, y in (
        ("calib", splits.calib_x, splits.calib_y),
        ("eval", splits.eval_x, splits.eval_y),
        ("test", splits.test_x, splits.test_y),
    ):
        shipped_x, shipped_y = _load_npz(f"{kind}.npz")
        assert np.array_equal(shipped_x, x) and np.array_equal(shipped_y, y), kind


def test_data_only_rewrite_reproduces_the_shipped_files(tmp_path: Path, meta: dict[str, Any]) -> None:
    """``train_digits_vit --data-only`` keeps the model and rewrites the same splits and accuracies."""
    for name in ("model.onnx", "meta.json"):
        shutil.copy(DIGITS_VIT / name, tmp_path / name)
    written = digits_data.rewrite_data(tmp_path)
    for name in SPLITS:
        assert (tmp_path / name).read_bytes() == (DIGITS_VIT / name).read_bytes(), name
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert written["splits"] == meta["splits"]
    for key in ("fp32_eval_accuracy", "fp32_test_accuracy", "fp32_calib_accuracy"):
        assert written[key] == meta[key], key
    assert (tmp_path / "model.onnx").read_bytes() == (DIGITS_VIT / "model.onnx").read_bytes()


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
