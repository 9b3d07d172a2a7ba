"""Models from the wild, scored end to end with ONNX Runtime: every number is checked against one
computed here straight from ONNX Runtime, never through qae."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.quant.data import DataOptions
from harness.quant.workload import Workload, evaluate_file
from tests.quant import tiny_models as tm


def _x(path: Path, shape: tuple[int, ...], seed: int = 0, **extra: Any) -> Path:
    np.savez(path, x=np.random.default_rng(seed).standard_normal(shape).astype(np.float32), **extra)
    return path


def _direct(model: Path | Any, data: Path) -> dict[str, np.ndarray]:
    """All outputs of ``model`` (a path or a proto) on the whole ``x`` of ``data``, in one batch."""
    if not isinstance(model, Path):
        path = Path(str(data) + ".model.onnx")
        path.write_bytes(model.SerializeToString())
        model = path
    with np.load(data) as npz:
        return tm.run(model, [{"x": npz["x"]}])


def test_probability_n1_is_not_blind(tmp_path: Path) -> None:
    fp32 = tm.sigmoid_n1(tmp_path / "fp32.onnx")
    moved = tm.sigmoid_n1(tmp_path / "moved.onnx", shift=0.6)  # a hand-perturbed last weight
    labels = np.arange(32, dtype=np.int64) % 2
    data = _x(tmp_path / "d.npz", (32, 16), labels=labels)
    ref, got = _direct(fp32, data)["prob"], _direct(moved, data)["prob"]
    assert np.abs(got - ref).max() >= 0.3
    report = evaluate_file(str(moved), str(data), reference=str(fp32))
    assert report["metric"] == "sqnr"
    assert report["accuracy"] != 1.0 and report["accuracy"] == pytest.approx(tm.sqnr(got, ref), rel=1e-6)
    assert report["mean_cosine"] == pytest.approx(tm.cosine(got, ref), rel=1e-6) and report["mean_cosine"] < 0.99
    assert report["top1_agreement"] is None  # a probability is never argmaxed
    assert "labels unused" in report["metric_note"]


def test_w4a8_of_a_probability_scores_its_real_sqnr(tmp_path: Path) -> None:
    data = _x(tmp_path / "d.npz", (32, 16))
    work = Workload.open(tm.sigmoid_n1(tmp_path / "fp32.onnx"), calib=data, eval_data=data)
    assert work.metric_note.startswith("metric: sqnr") and "'prob' [N, 1]" in work.metric_note
    result = work.build(work.uniform(weight_bits=4, activation_bits=8))
    report = work.evaluate(result)
    ref, got = work.references["prob"], _direct(result.proto, data)["prob"]
    assert report.accuracy == pytest.approx(tm.sqnr(got, ref), rel=1e-6) and report.accuracy < 100.0
    assert work.evaluate(None).accuracy == 100.0  # FP32 against itself: the cap, finite


@pytest.mark.parametrize(
    ("build", "shape", "name"), [(tm.output_1d, (32, 16), "y"), (tm.dense_map, (8, 3, 8, 8), "seg")]
)
def test_1d_and_dense_outputs_score_sqnr_never_argmax(tmp_path: Path, build: Any, shape: tuple[int, ...],
                                                       name: str) -> None:
    data = _x(tmp_path / "d.npz", shape)
    work = Workload.open(build(tmp_path / "m.onnx"), calib=data, eval_data=data)
    result = work.build(work.uniform(weight_bits=4, activation_bits=8))
    report = work.evaluate(result)
    got = _direct(result.proto, data)[name]
    assert report.metric == "sqnr"
    assert report.accuracy == pytest.approx(tm.sqnr(got, work.references[name]), rel=1e-6)
    assert report.mean_cosine == pytest.approx(tm.cosine(got, work.references[name]), rel=1e-6)
    assert set(report.scores[name]) == {"cosine", "sqnr"}  # no argmax of a regression or a map


def test_both_outputs_are_scored_and_the_worst_wins(tmp_path: Path) -> None:
    fp32 = tm.two_outputs(tmp_path / "fp32.onnx")
    broken = tm.two_outputs(tmp_path / "broken.onnx", box_scale=-1.0)  # the box head collapses, classes intact
    data = _x(tmp_path / "d.npz", (32, 8))
    ref, got = _direct(fp32, data), _direct(broken, data)
    report = evaluate_file(str(broken), str(data), reference=str(fp32))
    assert report["metric"] == "sqnr" and set(report["scores"]) == {"scores", "boxes"}
    assert report["scores"]["scores"]["sqnr"] == 100.0
    assert report["accuracy"] == pytest.approx(tm.sqnr(got["boxes"], ref["boxes"]), rel=1e-6)
    assert "accuracy is the worst of them" in report["metric_note"]
    # With labels, top-1 scores the class head; the box head is still reported, its collapse visible.
    labels = ref["scores"].argmax(1)
    labelled = _x(tmp_path / "l.npz", (32, 8), labels=labels)
    report = evaluate_file(str(broken), str(labelled), reference=str(fp32))
    assert report["metric"] == "top1" and report["accuracy"] == 1.0
    assert report["scores"]["boxes"]["sqnr"] == pytest.approx(tm.sqnr(got["boxes"], ref["boxes"]), rel=1e-6)
    assert report["sqnr_db"] == report["scores"]["boxes"]["sqnr"]
    # Named outputs: only those.
    only = evaluate_file(str(broken), str(data), reference=str(fp32), options=DataOptions(outputs=("scores",)))
    assert set(only["scores"]) == {"scores"} and only["metric"] == "top1_agreement" and only["accuracy"] == 1.0


def test_a_fixed_batch_of_one_calibrates_and_evaluates(tmp_path: Path) -> None:
    data = _x(tmp_path / "d.npz", (12, 16))
    work = Workload.open(tm.fixed_batch(tmp_path / "b1.onnx", batch=1), calib=data, eval_data=data)
    assert work.calib.batch == 1 and not work.ranges_from_cache and work.ranges
    assert work.model.shapes_used == {"x": [1, 16]}
    report = work.evaluate(work.build(work.uniform(weight_bits=8, activation_bits=8)))
    assert report.n == 12 and report.metric == "top1_agreement" and report.accuracy > 0.8


def _cell_data(path: Path, n: int, layout: str | None = None) -> Path:
    rng = np.random.default_rng(7)
    arrays: dict[str, Any] = {
        "chunk": rng.standard_normal((n, 16)).astype(np.float32),
        "state": (0.5 * rng.standard_normal((2, 1, tm.HIDDEN))).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
    if layout:
        arrays["qae_inputs"] = np.array(layout)
    np.savez(path, **arrays)
    return path


def _cell_direct(model: Path | Any, data: Path, tmp: Path) -> dict[str, np.ndarray]:
    if not isinstance(model, Path):
        (tmp / "q.onnx").write_bytes(model.SerializeToString())
        model = tmp / "q.onnx"
    with np.load(data) as npz:
        chunks = npz["chunk"]
        feeds = [{"chunk": chunks[i : i + 1], "state": npz["state"], "sr": npz["sr"]} for i in range(len(chunks))]
    return tm.run(model, feeds)


@pytest.mark.parametrize("declared", ["flag", "npz"])
def test_a_streaming_cell_with_state_and_a_scalar(tmp_path: Path, declared: str) -> None:
    model = tm.streaming_cell(tmp_path / "cell.onnx")
    layout = '{"constant": ["state"]}' if declared == "npz" else None
    data = _cell_data(tmp_path / "d.npz", 10, layout)
    options = DataOptions(constant_inputs=("state",)) if declared == "flag" else None
    work = Workload.open(model, calib=data, eval_data=data, options=options)
    assert work.model.shapes_used == {"chunk": [1, 16], "state": [2, 1, tm.HIDDEN], "sr": []}
    ref = _cell_direct(model, data, tmp_path)
    for name in ("prob", "stateN"):
        np.testing.assert_allclose(work.references[name], ref[name], rtol=1e-6)
    result = work.build(work.uniform(weight_bits=4, activation_bits=8))
    report = work.evaluate(result)
    got = _cell_direct(result.proto, data, tmp_path)
    expected = min(tm.sqnr(got[n], ref[n]) for n in ("prob", "stateN"))
    assert report.metric == "sqnr" and report.accuracy == pytest.approx(expected, rel=1e-6)
    assert set(report.scores) == {"prob", "stateN"}


def test_a_user_metric_scores_a_workload(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(
        "import numpy as np\n"
        "def mean_abs(outputs, reference, labels):\n"
        "    return -float(np.mean(np.abs(outputs['y'] - reference['y'])))\n"
    )
    data = _x(tmp_path / "d.npz", (32, 16))
    options = DataOptions(metric=f"{tmp_path / 'mine.py'}:mean_abs")
    work = Workload.open(tm.output_1d(tmp_path / "m.onnx"), calib=data, eval_data=data, options=options)
    result = work.build(work.uniform(weight_bits=4, activation_bits=8))
    report = work.evaluate(result)
    got = _direct(result.proto, data)["y"]
    assert report.metric.endswith("mine.py:mean_abs")
    assert report.accuracy == pytest.approx(-float(np.mean(np.abs(got - work.references["y"]))), rel=1e-6)
    assert report.sqnr_db == pytest.approx(tm.sqnr(got, work.references["y"]), rel=1e-6)  # reported beside it


def test_shapes_come_from_the_data_unless_given(tmp_path: Path) -> None:
    model = tm.time_major(tmp_path / "tm.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((3, 10, 4)).astype(np.float32))
    options = DataOptions(sample_axes=(("x", 1),))
    work = Workload.open(model, calib=data, eval_data=data, options=options)
    assert work.model.shapes_used == {"x": [3, 1, 4]}  # one sample along axis 1
    assert work.model.layers[0].macs == 3 * 4 * 2
    given = Workload.open(model, calib=data, eval_data=data, input_shapes={"x": [3, 8, 4]}, options=options)
    assert given.model.shapes_used == {"x": [3, 8, 4]} and given.model.layers[0].macs == 8 * 3 * 4 * 2
    report = work.evaluate(work.build(work.uniform(weight_bits=8, activation_bits=8)))
    assert report.n == 10 and report.metric == "sqnr" and 20.0 < report.accuracy < 100.0
