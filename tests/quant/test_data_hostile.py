"""Data that must be refused or flagged (issue 13): all-NaN inputs, some NaN samples, labels out of
range, pickled or object arrays. Real .npz files against the digits-vit builtin (input ``pixels``
[N, 1, 8, 8], output ``logits`` [N, 10])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.core.errors import DataError
from harness.core.model import builtin_data, load_model
from harness.quant.data import load_dataset
from harness.quant.workload import Workload


def _digits(kind: str = "eval") -> dict[str, np.ndarray]:
    with np.load(builtin_data("digits-vit", kind)) as npz:
        return {k: npz[k] for k in npz.files}


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize("kind", ["calib", "eval"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_all_nan_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, value: float) -> None:
    """Was: all-NaN eval data scored accuracy 0.1 with no warning; all-NaN calibration data gave a
    traceback and cached NaN ranges."""
    monkeypatch.setenv("QAE_CACHE_DIR", str(tmp_path / "cache"))
    arrays = _digits(kind)
    bad = _save(tmp_path / "bad.npz", pixels=np.full_like(arrays["pixels"], value), labels=arrays["labels"])
    with pytest.raises(DataError) as err:
        if kind == "calib":
            Workload.open("builtin:digits-vit", calib=bad)
        else:
            Workload.open("builtin:digits-vit", eval_data=bad)
    msg = str(err.value)
    assert "\n" not in msg and "'pixels'" in msg and "NaN or Inf" in msg and "bad.npz" in msg
    assert not list((tmp_path / "cache").glob("calib/*.json")) or kind == "eval"


def test_some_nan_samples_warn_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arrays = _digits()
    pixels = arrays["pixels"].copy()
    pixels[3, 0, 2, 2] = np.nan
    pixels[7] = np.inf
    path = _save(tmp_path / "some.npz", pixels=pixels, labels=arrays["labels"])
    load_dataset(path, load_model("builtin:digits-vit"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qae: warning:"), lines
    assert f"2 of {len(pixels)} samples" in lines[0] and "'pixels'" in lines[0]


@pytest.mark.parametrize(("labels_edit", "needle"), [
    (lambda y: np.where(y == 3, 10, y), "largest label is 10 but output 'logits' scores 10 classes"),
    (lambda y: np.where(y == 3, 57, y), "largest label is 57 but output 'logits' scores 10 classes"),
    (lambda y: np.where(y == 3, -1, y), "smallest label is -1"),
])
def test_labels_out_of_range_are_a_data_error(tmp_path: Path, labels_edit, needle: str) -> None:  # type: ignore[no-untyped-def]
    """Was: labels beyond the class count quietly switched the metric away from the labels."""
    arrays = _digits()
    path = _save(tmp_path / "labels.npz", pixels=arrays["pixels"], labels=labels_edit(arrays["labels"]))
    work = Workload.open("builtin:digits-vit", eval_data=path)
    with pytest.raises(DataError) as err:
        work.evaluate(None)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_pickled_and_object_arrays_are_refused(tmp_path: Path) -> None:
    model = load_model("builtin:digits-vit")
    arrays = _digits()
    obj = np.empty(len(arrays["pixels"]), dtype=object)
    obj[:] = [p for p in arrays["pixels"]]
    path = tmp_path / "pickled.npz"
    np.savez(path, pixels=obj, labels=arrays["labels"])  # object arrays are stored pickled
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_dataset(path, model)
    labels_obj = tmp_path / "labels_obj.npz"
    np.savez(labels_obj, pixels=arrays["pixels"], labels=np.array(list(arrays["labels"]), dtype=object))
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_dataset(labels_obj, model)


def test_token_ids_outside_the_embedding_table_are_a_data_error(tmp_path: Path) -> None:
    """An integer input a Gather looks up in a constant table must index its rows: ONNX Runtime's own error
    names neither the input nor the range."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
         helper.make_node("ReduceMean", ["e"], ["y"], name="pool", axes=[1], keepdims=0)], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [numpy_helper.from_array(table, "emb")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = load_model(path)
    ids = np.random.default_rng(1).integers(0, 50, (6, 5))
    assert load_dataset(_save(tmp_path / "ok.npz", ids=ids), model).inputs["ids"].max() < 50
    negative = ids.copy()
    negative[2, 1] = -50  # numpy-style from the end: still inside
    load_dataset(_save(tmp_path / "neg.npz", ids=negative), model)
    for bad in (50, 30522, -51):
        wrong = ids.copy()
        wrong[3, 4] = bad
        with pytest.raises(DataError, match=rf"input 'ids' holds index {bad}, outside the 50 rows of the table "
                                            r"'emb' it looks up \(valid: 0 to 49\)"):
            load_dataset(_save(tmp_path / f"bad{bad}.npz", ids=wrong), model)


def test_integer_data_outside_the_input_type_is_refused_not_wrapped(tmp_path: Path) -> None:
    """int64 pixels fed to a uint8 input: 300 would wrap to 44 in a cast; a one-line error instead."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["img"], ["f"], name="to_float", to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["f", "W"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("img", TensorProto.UINT8, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float32), "W")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = load_model(path)
    fine = load_dataset(_save(tmp_path / "ok.npz", img=np.array([[0, 255, 7, 1]], np.int64)), model)
    assert fine.inputs["img"].dtype == np.uint8 and fine.inputs["img"].tolist() == [[0, 255, 7, 1]]
    for bad in (300, -1):
        with pytest.raises(DataError, match=rf"array 'img' holds {bad}, outside the model input's uint8 range "
                                            r"\(0 to 255\)"):
            load_dataset(_save(tmp_path / "bad.npz", img=np.array([[0, bad, 7, 1]], np.int64)), model)
