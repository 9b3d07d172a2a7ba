"""Checks on the shipped ``builtin:digits-cnn`` workload (harness/builtin/digits_cnn/).

Runs on the committed files only, with onnx, onnxruntime and scikit-learn: no torch, no training.
Rebuild the files with ``python -m harness.builtin.train_digits_cnn`` (``--data-only`` for the splits
alone) if these fail after a deliberate change.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from harness.builtin import digits_data
from harness.core.model import BUILTIN_DIR, builtin_data, resolve_model_path

DIGITS_CNN = BUILTIN_DIR / "digits_cnn"
DIGITS_VIT = BUILTIN_DIR / "digits_vit"
SPLITS = ("calib.npz", "eval.npz", "test.npz")
BLOCKS = 4  # depthwise-separable blocks (CnnConfig.blocks)
LAYERS = ["stem", *[f"blocks.{i}.{kind}" for i in range(BLOCKS) for kind in ("dw", "pw")], "head"]


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    return json.loads((DIGITS_CNN / "meta.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(DIGITS_CNN / "model.onnx"))


def _load_npz(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / name) as data:
        return data["pixels"], data["labels"]


def test_files_present_and_readable() -> None:
    for name in ("model.onnx", *SPLITS, "meta.json"):
        path = DIGITS_CNN / name
        assert path.is_file(), name
        # Package data: world-readable whatever umask the build ran under, written 0644.
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, name
    assert (DIGITS_CNN / "model.onnx").stat().st_size < 300_000
    assert resolve_model_path("builtin:digits-cnn") == (DIGITS_CNN / "model.onnx", "digits-cnn")
    assert [builtin_data("digits-cnn", k.removesuffix(".npz")) for k in SPLITS] == [DIGITS_CNN / n for n in SPLITS]


@pytest.mark.parametrize(("name", "key"), [("eval.npz", "fp32_eval_accuracy"), ("test.npz", "fp32_test_accuracy")])
def test_fp32_accuracy_matches_meta(meta: dict[str, Any], name: str, key: str) -> None:
    """Validation and test each score what meta.json says on the shipped model, and at least 97 %."""
    pixels, labels = _load_npz(DIGITS_CNN, name)
    # The build script's single-threaded CPU session: the same argmax for every sample.
    logits = digits_data.ort_session(DIGITS_CNN / "model.onnx").run(["logits"], {"pixels": pixels})[0]
    acc = float(np.mean(np.argmax(logits, axis=1) == labels))
    assert acc >= 0.97
    assert abs(acc - meta[key]) <= 1e-9
    assert meta["name"] == "builtin:digits-cnn" and meta["metric"] == "top1"


def test_splits_are_digits_vits(meta: dict[str, Any]) -> None:
    """Same seed, same split rule, byte for byte the same calib/eval/test files as builtin:digits-vit."""
    vit = json.loads((DIGITS_VIT / "meta.json").read_text(encoding="utf-8"))
    assert meta["seed"] == vit["seed"] == digits_data.SEED
    assert meta["splits"] == vit["splits"]
    for name in SPLITS:
        assert (DIGITS_CNN / name).read_bytes() == (DIGITS_VIT / name).read_bytes(), name
    splits = digits_data.make_splits()
    assert splits.sizes() == {k: meta["splits"][k] for k in ("train", "calib", "eval", "test")}
    for kind, x, y in (
        ("calib", splits.calib_x, splits.calib_y),
        ("eval", splits.eval_x, splits.eval_y),
        ("test", splits.test_x, splits.test_y),
    ):
        shipped_x, shipped_y = _load_npz(DIGITS_CNN, f"{kind}.npz")
        assert np.array_equal(shipped_x, x) and np.array_equal(shipped_y, y), kind


def test_data_only_rewrite_reproduces_the_shipped_files(tmp_path: Path, meta: dict[str, Any]) -> None:
    """``train_digits_cnn --data-only`` keeps the model and rewrites the same splits and accuracies."""
    for name in ("model.onnx", "meta.json"):
        shutil.copy(DIGITS_CNN / name, tmp_path / name)
    written = digits_data.rewrite_data(tmp_path)
    for name in SPLITS:
        assert (tmp_path / name).read_bytes() == (DIGITS_CNN / name).read_bytes(), name
    assert written["splits"] == meta["splits"]
    for key in ("fp32_eval_accuracy", "fp32_test_accuracy", "fp32_calib_accuracy"):
        assert written[key] == meta[key], key


def test_graph_is_a_folded_separable_cnn(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert {p.version for p in model.opset_import if p.domain in ("", "ai.onnx")} == {21}
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops  # folded into the Convs at export
    assert {"Conv", "Clip", "GlobalAveragePool", "Gemm"} <= ops
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == 1 + 2 * BLOCKS
    groups = {node.name: next((a.i for a in node.attribute if a.name == "group"), 1) for node in convs}
    depthwise = [name for name, g in groups.items() if g > 1]
    assert depthwise == [f"/blocks.{i}/dw/Conv" for i in range(BLOCKS)] == meta["depthwise_conv_nodes"]
    assert all(len(node.input) == 3 for node in convs)  # each carries its folded BatchNorm as a bias


def test_qae_layers_lists_every_conv_including_the_depthwise_ones() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli.main", "layers", "builtin:digits-cnn", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert list(rows) == LAYERS
    assert {rows[n]["op_type"] for n in LAYERS[:-1]} == {"Conv"} and rows["head"]["op_type"] == "Gemm"
    for i in range(BLOCKS):
        dw, pw = rows[f"blocks.{i}.dw"], rows[f"blocks.{i}.pw"]
        channels = dw["weight_shape"][0]
        assert dw["weight_shape"] == [channels, 1, 3, 3]  # one 3x3 filter per channel: depthwise
        assert dw["macs"] == dw["output_elements"] * 9  # each output reduces over its own 3x3 window only
        assert pw["weight_shape"][1:] == [channels, 1, 1]
        assert pw["macs"] == pw["output_elements"] * channels
    # meta.json's input_shapes (batch 1) gave every layer its cost without --input-shape.
    assert rows["stem"]["macs"] == 16 * 8 * 8 * 9


def test_uniform_w8a8_builds_and_runs() -> None:
    from harness.quant.workload import Workload

    work = Workload.open("builtin:digits-cnn")
    assert [layer.name for layer in work.model.layers] == LAYERS
    result = work.build(work.uniform(weight_bits=8, activation_bits=8))
    quantized = {node.name for node in result.proto.graph.node if node.op_type == "DequantizeLinear"}
    assert quantized  # Q/DQ pairs were inserted
    conv_inputs = {i for node in result.proto.graph.node if node.op_type == "Conv" for i in node.input}
    dq_outputs = {o for node in result.proto.graph.node if node.op_type == "DequantizeLinear" for o in node.output}
    assert sum(1 for node in result.proto.graph.node if node.op_type == "Conv" and node.input[1] in dq_outputs) == 9
    assert conv_inputs & dq_outputs
    fp32 = work.evaluate(None)
    report = work.evaluate(result)
    assert report.n == 270 and report.metric == "top1" and not report.emulated
    assert report.accuracy >= fp32.accuracy - 0.03
    test = work.evaluate(result, split="test")
    assert test.n == 270 and test.accuracy >= 0.94
