"""The metrics on hand-computed arrays, and how the default is chosen from the outputs and the data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness.core.errors import InputError, ModelError
from harness.quant import metrics
from harness.quant.metrics import plan, score


def test_sqnr_is_hand_computed_and_capped() -> None:
    ref = np.array([[3.0], [4.0]])
    out = np.array([[3.0], [3.0]])  # signal 25, noise 1
    assert metrics.sqnr_db(out, ref) == pytest.approx(10 * math.log10(25.0))
    assert metrics.sqnr_db(ref, ref) == metrics.SQNR_CAP_DB == 100.0  # FP32 against itself is finite
    assert metrics.sqnr_db(ref + 1e-30, ref) == 100.0
    assert metrics.sqnr_db(np.ones(3), np.zeros(3)) == -100.0


def test_whole_tensor_cosine_sees_what_per_sample_cosine_of_n1_cannot() -> None:
    ref = np.array([[0.9], [0.1], [0.6]])
    out = np.array([[0.2], [0.8], [0.6]])  # every probability moved, none changed sign
    assert metrics.mean_row_cosine(out, ref) == 1.0  # the old score of an [N, 1] output: blind
    expected = float(ref.ravel() @ out.ravel() / (np.linalg.norm(ref) * np.linalg.norm(out)))
    assert metrics.cosine(out, ref) == pytest.approx(expected) and expected < 0.8
    assert metrics.cosine(np.zeros(2), np.zeros(2)) == 1.0
    assert metrics.cosine(np.zeros(2), np.ones(2)) == 0.0


def test_error_metrics_are_negatives_so_higher_is_better() -> None:
    ref = np.array([1.0, 2.0, 3.0])
    out = np.array([1.0, 2.5, 1.0])
    assert metrics.neg_mse(out, ref) == pytest.approx(-(0.25 + 4.0) / 3)
    assert metrics.neg_max_abs(out, ref) == -2.0
    assert metrics.neg_mse(ref, ref) == 0.0


def _shapes(**kw: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return dict(kw)


@pytest.mark.parametrize(
    ("shape", "chosen"),
    [
        ((32, 10), "agreement"),  # class scores
        ((32, 1), "sqnr"),  # a probability
        ((32,), "sqnr"),  # 1-D
        ((32, 4, 16, 16), "sqnr"),  # a dense map
        ((32, 7, 5), "sqnr"),  # a sequence [N, T, C]
    ],
)
def test_auto_without_labels_never_argmaxes_a_non_class_output(shape: tuple[int, ...], chosen: str) -> None:
    p = plan("auto", {"y": shape}, None, True, n=32)
    assert p.metric == chosen
    assert p.outputs == ("y",)
    assert p.note.startswith("metric: ") and "\n" not in p.note
    if chosen == "sqnr":
        assert "never argmaxed" in p.note


def test_auto_with_labels_is_top1_on_the_class_output_others_reported() -> None:
    labels = np.array([0, 4, 2])
    p = plan("auto", _shapes(scores=(3, 5), boxes=(3, 4)), labels, True, n=3)
    assert (p.metric, p.outputs, p.reported) == ("top1", ("scores",), ("boxes",))
    assert "'boxes' [N, 4] reported" in p.note
    # Labels that fit no output ([N, 1] cannot hold label 1) are not used: sqnr, and the note says why.
    p = plan("auto", {"prob": (3, 1)}, np.array([0, 1, 1]), True, n=3)
    assert p.metric == "sqnr" and "labels unused" in p.note


def test_two_outputs_without_labels_score_both_worst_wins() -> None:
    p = plan("auto", _shapes(scores=(4, 5), boxes=(4, 4)), None, True, n=4)
    assert p.metric == "sqnr" and "none argmaxed" in p.note  # a box head [N, 4] looks like class scores
    assert plan("agreement", _shapes(scores=(4, 5), boxes=(4, 4)), None, True).outputs == ("scores", "boxes")
    p = plan("auto", _shapes(scores=(4, 5), boxes=(4, 4, 2)), None, True, n=4)
    assert p.metric == "sqnr" and p.outputs == ("scores", "boxes")
    ref = {"scores": np.ones((4, 5)), "boxes": np.ones((4, 4, 2))}
    got = {"scores": ref["scores"] * 1.001, "boxes": ref["boxes"] * 1.5}
    s = score(p, got, ref, None)
    assert s.accuracy == pytest.approx(metrics.sqnr_db(got["boxes"], ref["boxes"]))
    assert s.per_output["scores"]["sqnr"] == pytest.approx(60.0)
    assert s.sqnr_db == s.accuracy and "top1_agreement" not in s.per_output["scores"]


@pytest.mark.parametrize(
    ("metric", "shapes", "labels", "needle"),
    [
        ("top1", {"y": (4, 10)}, None, "use --metric agreement or sqnr"),
        ("top1", {"y": (4, 3)}, np.array([0, 5, 1, 1]), "use --metric sqnr or agreement"),
        ("agreement", {"prob": (4, 1)}, None, "use --metric sqnr or cosine"),
        ("agreement", {"y": (4,)}, None, "use --metric sqnr or cosine"),
        ("embedding", {"y": (4, 10)}, None, "no token embeddings"),
        ("f1", {"y": (4, 10)}, None, "not supported"),
    ],
)
def test_a_metric_that_cannot_apply_names_one_that_can(
    metric: str, shapes: dict[str, tuple[int, ...]], labels: np.ndarray | None, needle: str
) -> None:
    with pytest.raises(InputError, match=needle):
        plan(metric, shapes, labels, True, n=4)


def test_outputs_option_is_checked_and_restricts_scoring() -> None:
    with pytest.raises(InputError, match="no model output: the outputs are a, b"):
        plan("auto", {"a": (2, 3), "b": (2,)}, None, True, outputs=["c"])
    p = plan("auto", {"a": (2, 3), "b": (2,)}, None, True, outputs=["a"])
    assert p.metric == "agreement" and p.outputs == ("a",)


def test_no_reference_needs_labels() -> None:
    with pytest.raises(ModelError, match="pass --reference"):
        plan("auto", {"y": (4, 1)}, None, False)
    with pytest.raises(ModelError, match="pass --reference"):
        plan("sqnr", {"y": (4, 1)}, None, False)
    assert plan("auto", {"y": (4, 3)}, np.array([0, 1, 2, 2]), False).metric == "top1"


def test_non_finite_output_scores_the_floor() -> None:
    p = plan("sqnr", {"y": (3,)}, None, True)
    s = score(p, {"y": np.array([1.0, np.nan, 0.0])}, {"y": np.ones(3)}, None)
    assert s.accuracy == -100.0 and s.mean_cosine == -1.0


def test_user_metric_from_a_file_and_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymetric.py").write_text(
        "import numpy as np\n"
        "def worst_abs(outputs, reference, labels):\n"
        "    return -max(float(np.abs(outputs[k] - reference[k]).max()) for k in outputs)\n"
        "def text(outputs, reference, labels):\n"
        "    return 'good'\n"
        "def nan(outputs, reference, labels):\n"
        "    return float('nan')\n"
    )
    ref = {"a": np.zeros(3), "b": np.zeros((3, 2))}
    got = {"a": np.array([0.0, 0.5, 0.0]), "b": np.full((3, 2), 0.25)}
    p = plan(f"{tmp_path / 'mymetric.py'}:worst_abs", {"a": (3,), "b": (3, 2)}, None, True)
    assert p.user and p.key.endswith(":worst_abs")
    assert score(p, got, ref, None).accuracy == -0.5
    monkeypatch.syspath_prepend(str(tmp_path))
    assert score(plan("mymetric:worst_abs", {"a": (3,)}, None, True), got, ref, None).accuracy == -0.5
    for bad, needle in (("text", "must return one finite float"), ("nan", "must return a finite float")):
        with pytest.raises(InputError, match=needle):
            score(plan(f"mymetric:{bad}", {"a": (3,)}, None, True), got, ref, None)
    with pytest.raises(InputError, match="has no function 'absent'"):
        plan("mymetric:absent", {"a": (3,)}, None, True)
    with pytest.raises(InputError, match="cannot be imported"):
        plan("no_such_module_qae:f", {"a": (3,)}, None, True)
