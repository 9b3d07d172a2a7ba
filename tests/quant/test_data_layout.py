"""The data convention: per-sample inputs along a sample axis, constant inputs fed as stored, the
model's fixed batch respected, and the self-describing ``qae_inputs`` array. Real models, real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.core.errors import DataError, InputError
from harness.core.model import load_model
from harness.quant.calibration import cache_path
from harness.quant.data import DataOptions, load_dataset
from tests.quant import tiny_models as tm


def _cell_data(path: Path, n: int = 6, layout: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "chunk": rng.standard_normal((n, 16)).astype(np.float32),
        "state": rng.standard_normal((2, 1, tm.HIDDEN)).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
    if layout is not None:
        arrays["qae_inputs"] = np.array(layout)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_options_round_trip_through_json() -> None:
    opts = DataOptions(("state", "sr"), (("x", 1),), "sqnr", ("prob",))
    assert DataOptions.from_dict(opts.to_dict()) == opts
    assert opts.to_dict() == {"constant_inputs": ["state", "sr"], "sample_axes": {"x": 1}, "metric": "sqnr",
                              "outputs": ["prob"]}
    assert DataOptions.from_dict({}) == DataOptions()


def test_constant_inputs_go_with_every_batch_of_a_fixed_batch_model(tmp_path: Path) -> None:
    model = load_model(tm.streaming_cell(tmp_path / "cell.onnx"))
    data = load_dataset(_cell_data(tmp_path / "d.npz"), model, DataOptions(constant_inputs=("state",)))
    assert data.n == 6 and data.batch == 1 and data.constant == {"state", "sr"}  # a 0-d array is constant
    assert data.inference_shapes() == {"chunk": [1, 16], "state": [2, 1, tm.HIDDEN], "sr": []}
    feeds = list(data.batches(32))  # the model's batch of 1 wins over the 32 asked for
    assert len(feeds) == 6 and all(f["chunk"].shape == (1, 16) and f["sr"].shape == () for f in feeds)
    np.testing.assert_array_equal(feeds[3]["chunk"], data.inputs["chunk"][3:4])
    first = data.first_feed()
    assert first["state"] is data.inputs["state"]


def test_state_without_its_declaration_is_a_clean_error(tmp_path: Path) -> None:
    model = load_model(tm.streaming_cell(tmp_path / "cell.onnx"))
    with pytest.raises(DataError, match="name the others with --constant-input"):
        load_dataset(_cell_data(tmp_path / "d.npz"), model)


def test_the_npz_describes_itself_and_flags_win(tmp_path: Path) -> None:
    model = load_model(tm.streaming_cell(tmp_path / "cell.onnx"))
    path = _cell_data(tmp_path / "d.npz", layout='{"constant": ["state"]}')
    assert load_dataset(path, model).constant == {"state", "sr"}
    # A flag that says otherwise wins: state as per-sample along axis 1 (size 1: one sample) no longer fits.
    with pytest.raises(DataError, match="different sample counts"):
        load_dataset(path, model, DataOptions(sample_axes=(("state", 1),)))


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        ("{not json", "is not valid JSON"),
        ('{"constant": "state"}', "does not fit its schema at constant"),
        ('{"sample_axis": {"chunk": -1}}', "does not fit its schema at sample_axis/chunk"),
        ('{"constants": ["state"]}', "does not fit its schema"),
        ('{"constant": ["nope"]}', "'nope', which is no model input"),
    ],
)
def test_a_bad_qae_inputs_is_one_line(tmp_path: Path, layout: str, needle: str) -> None:
    model = load_model(tm.streaming_cell(tmp_path / "cell.onnx"))
    with pytest.raises(DataError, match=needle) as err:
        load_dataset(_cell_data(tmp_path / "d.npz", layout=layout), model)
    assert "\n" not in str(err.value)


def test_flag_names_are_checked(tmp_path: Path) -> None:
    model = load_model(tm.streaming_cell(tmp_path / "cell.onnx"))
    path = _cell_data(tmp_path / "d.npz")
    with pytest.raises(InputError, match="--constant-input names 'states', which is no model input"):
        load_dataset(path, model, DataOptions(constant_inputs=("states",)))
    with pytest.raises(InputError, match="both --constant-input and --sample-axis"):
        load_dataset(path, model, DataOptions(constant_inputs=("state",), sample_axes=(("state", 0),)))


def test_sample_axis_one(tmp_path: Path) -> None:
    model = load_model(tm.time_major(tmp_path / "tm.onnx"))
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 10, 4), np.float32))
    assert load_dataset(path, model).n == 3  # along axis 0, T=3 would pass for 3 samples: say the axis
    data = load_dataset(path, model, DataOptions(sample_axes=(("x", 1),)))
    assert data.n == 10 and data.inference_shapes() == {"x": [3, 1, 4]}
    assert [f["x"].shape for f in data.batches(4)] == [(3, 4, 4), (3, 4, 4), (3, 2, 4)]
    with pytest.raises(DataError, match="no sample axis 3"):
        load_dataset(path, model, DataOptions(sample_axes=(("x", 3),)))


def test_fixed_batch_needs_a_multiple(tmp_path: Path) -> None:
    model = load_model(tm.fixed_batch(tmp_path / "b4.onnx", batch=4))
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, x=np.zeros((12, 16), np.float32))
    np.savez(bad, x=np.zeros((10, 16), np.float32))
    assert [f["x"].shape[0] for f in load_dataset(good, model).batches()] == [4, 4, 4]
    with pytest.raises(DataError, match=r"holds 10 samples but the model takes exactly 4 per run .*multiple of 4"):
        load_dataset(bad, model)


def test_labels_must_count_samples_not_rows(tmp_path: Path) -> None:
    model = load_model(tm.time_major(tmp_path / "tm.onnx"))
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 10, 4), np.float32), labels=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="1-D integer array of 10 class indices"):
        load_dataset(path, model, DataOptions(sample_axes=(("x", 1),)))


def test_layout_changes_the_calibration_key(tmp_path: Path) -> None:
    model = load_model(tm.streaming_cell(tmp_path / "cell.onnx"))
    path = _cell_data(tmp_path / "d.npz", layout='{"constant": ["state"]}')
    plain = load_dataset(path, model)
    flagged = load_dataset(path, model, DataOptions(constant_inputs=("state",)))
    assert plain.key == flagged.key  # the same layout, however it was said
    other_model = load_model(tm.time_major(tmp_path / "tm.onnx"))
    np.savez(tmp_path / "t.npz", x=np.zeros((3, 10, 4), np.float32))
    a = load_dataset(tmp_path / "t.npz", other_model, DataOptions(sample_axes=(("x", 1),)))
    b = load_dataset(tmp_path / "t.npz", other_model, DataOptions(constant_inputs=("x",)))
    assert a.sha256 == b.sha256 and a.key != b.key
    assert cache_path(other_model, a, "minmax") != cache_path(other_model, b, "minmax")
