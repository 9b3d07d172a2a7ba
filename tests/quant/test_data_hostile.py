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
