"""``qae evaluate`` and ``qae quantize`` with the data options, as a user meets them: real processes,
the metric note, every scored output in the table and the JSON, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_cli_model import assert_one_line_error, qae
from tests.quant import tiny_models as tm

W8 = "default: {weight_bits: 8, activation_bits: 8}\n"


@pytest.fixture()
def two(tmp_path: Path) -> tuple[Path, Path, Path]:
    fp32 = tm.two_outputs(tmp_path / "fp32.onnx")
    broken = tm.two_outputs(tmp_path / "broken.onnx", box_scale=-1.0)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    return fp32, broken, data


def test_evaluate_prints_the_note_and_every_output(two: tuple[Path, Path, Path]) -> None:
    fp32, broken, data = two
    proc = qae("evaluate", str(broken), "--data", str(data), "--reference", str(fp32), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["metric"] == "sqnr" and set(report["scores"]) == {"scores", "boxes"}
    assert report["accuracy"] == report["scores"]["boxes"]["sqnr"] < report["scores"]["scores"]["sqnr"]
    assert report["metric_note"].startswith("metric: sqnr")
    proc = qae("evaluate", str(broken), "--data", str(data), "--reference", str(fp32))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == report["metric_note"]
    assert lines[1].startswith("SQNR against the reference: ") and lines[1].endswith(" dB on 16 samples")
    assert any(line.startswith("scores ") and "100.00 dB" in line for line in lines)
    assert any(line.startswith("boxes ") for line in lines)


def test_evaluate_with_a_named_output_and_metric(two: tuple[Path, Path, Path]) -> None:
    fp32, broken, data = two
    proc = qae("evaluate", str(broken), "--data", str(data), "--reference", str(fp32), "--outputs", "scores",
               "--metric", "cosine", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # the scores output is untouched: cosine 1 up to float rounding (CI saw 0.9999999999999999)
    assert report["metric"] == "cosine" and list(report["scores"]) == ["scores"]
    assert report["accuracy"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--metric", "top1"], "use --metric agreement or sqnr"),
        (["--outputs", "boxes,scores", "--outputs", "nope"], "'nope', which is no model output"),
        (["--metric", "bleu"], "metric 'bleu' is not supported"),
        (["--metric", "nomodule_qae_xyz:f"], "cannot be imported"),
        (["--sample-axis", "x=one"], "is not NAME=K"),
        (["--constant-input", "y"], "'y', which is no model input"),
    ],
)
def test_a_metric_or_layout_that_cannot_apply_is_one_line(
    two: tuple[Path, Path, Path], extra: list[str], needle: str
) -> None:
    fp32, broken, data = two
    assert_one_line_error(qae("evaluate", str(broken), "--data", str(data), "--reference", str(fp32), *extra), needle)


def test_a_streaming_cell_quantizes_and_evaluates_with_constant_inputs(tmp_path: Path) -> None:
    model = tm.streaming_cell(tmp_path / "cell.onnx")
    rng = np.random.default_rng(1)
    data = tmp_path / "d.npz"
    np.savez(data, chunk=rng.standard_normal((8, 16)).astype(np.float32),
             state=rng.standard_normal((2, 1, tm.HIDDEN)).astype(np.float32), sr=np.array(16000, np.int64))
    genome = tmp_path / "g.yaml"
    genome.write_text(W8)
    out = tmp_path / "q.onnx"
    assert_one_line_error(
        qae("quantize", str(model), "--genome", str(genome), "--calib", str(data), "-o", str(out)),
        "--constant-input",
    )
    assert not out.exists()
    proc = qae("quantize", str(model), "--genome", str(genome), "--calib", str(data), "--constant-input", "state",
               "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    proc = qae("evaluate", str(out), "--data", str(data), "--reference", str(model), "--constant-input", "state",
               "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n"] == 8 and report["metric"] == "sqnr" and set(report["scores"]) == {"prob", "stateN"}
    assert 10.0 < report["accuracy"] < 100.0


def test_a_user_metric_through_the_cli(two: tuple[Path, Path, Path], tmp_path: Path) -> None:
    fp32, broken, data = two
    (tmp_path / "m.py").write_text(
        "def boxes_ok(outputs, reference, labels):\n"
        "    return float((abs(outputs['boxes'] - reference['boxes']) < 0.1).mean())\n"
        "def broken(outputs, reference, labels):\n"
        "    raise ValueError('no boxes here')\n"
    )
    proc = qae("evaluate", str(broken), "--data", str(data), "--reference", str(fp32), "--metric",
               f"{tmp_path / 'm.py'}:boxes_ok", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["metric"].endswith("m.py:boxes_ok") and 0.0 <= report["accuracy"] < 0.5
    assert_one_line_error(
        qae("evaluate", str(broken), "--data", str(data), "--reference", str(fp32), "--metric",
            f"{tmp_path / 'm.py'}:broken"),
        "raised ValueError: no boxes here",
    )


def test_input_shape_of_a_scalar_and_malformed_ones() -> None:
    from harness.cli.common import parse_shapes
    from harness.core.errors import InputError

    assert parse_shapes(["sr=", "x=1X16"]) == {"sr": [], "x": [1, 16]}
    for bad in ("x", "x=1x0", "=3", "x=ax2"):
        with pytest.raises(InputError, match="is not NAME=D1xD2x"):
            parse_shapes([bad])
