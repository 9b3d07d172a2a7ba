"""``qae search`` on models from the wild: shapes from the data or ``--input-shape`` (never a silent
1), stored so a resumed run and worker processes rebuild the same workload; failures that are
visible (a summary, exit 3); and front.json values labelled with what they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.run.archive import Archive
from tests.cli.test_cli_model import assert_one_line_error, qae

SMALL = ["--generations", "2", "--population", "6", "--seed", "1"]




def test_search_without_shapes_or_data_names_the_input(symbolic: tuple[Path, Path], tmp_path: Path) -> None:
    proc = qae("search", str(symbolic[0]), "--profile", "hexagon-htp", "--out", str(tmp_path / "r"))
    assert_one_line_error(proc, "'x'")
    assert "--input-shape" in proc.stderr and "[N, 3, H, W]" in proc.stderr
    assert not (tmp_path / "r" / "archive.sqlite").exists()


def test_shapes_and_data_options_survive_workers_and_resume(symbolic: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = symbolic
    out = tmp_path / "run"
    # A shape other than the data's (16x16, the data is 32x32) shows the flag is what is stored and used.
    args = ["--calib", str(data), "--data", str(data), "--metric", "cosine", "--input-shape", "x=1x3x16x16"]
    proc = qae("search", str(model), "--profile", "hexagon-htp", *args, *SMALL, "--workers", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "input x: 1x3x16x16 (from --input-shape)" in proc.stderr
    assert "metric: cosine" in proc.stderr

    archive = Archive.open_existing(out / "archive.sqlite")
    cfg = archive.config()
    assert cfg["input_shapes"] == {"x": [1, 3, 16, 16]} and cfg["shapes_used"] == {"x": [1, 3, 16, 16]}
    assert cfg["data_options"]["metric"] == "cosine"
    cands = archive.candidates("hexagon-htp")
    # Every accuracy (most computed in the two worker processes) is the cosine the options asked for.
    assert cands and {c.values["accuracy"].detail["metric"] for c in cands if c.values} == {"cosine"}
    archive.close()

    resumed = qae("search", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "input x: 1x3x16x16 (from --input-shape)" in resumed.stderr
    assert "metric: cosine" in resumed.stderr

    front = json.loads((out / "front.json").read_text())["targets"]["hexagon-htp"]
    assert front["accuracy_metric"] == "cosine" and front["accuracy_unit"] == "fraction"
    assert front["candidates"] == len(cands) and front["failed"] == 0
    for point in front["points"]:
        objectives = point["objectives"]
        assert objectives["accuracy"]["metric"] == "cosine"
        assert "metric" not in objectives["size"] and objectives["size"]["unit"] == "bytes"
        assert objectives["mean_cosine"]["metric"] == "mean_cosine"
    # Latency was predicted at the flag's 16x16, not at the data's 32x32 (nor at 1x1).
    point = front["points"][0]
    at = {hw: _predicted(model, point["genome"], hw) for hw in (16, 32)}
    assert point["objectives"]["latency"]["value"] == pytest.approx(at[16], rel=1e-9)
    assert at[16] != pytest.approx(at[32], rel=1e-3)


def _predicted(model: Path, genome: dict[str, object], hw: int) -> float:
    from harness.core.genome import Genome
    from harness.run.shapes import resolve_shapes
    from profiles import load_profile
    from profiles.costmodel import predict_model

    info = resolve_shapes(model, {"x": [1, 3, hw, hw]}).model
    ops = {lay.name: lay.op_type for lay in info.layers}
    return predict_model(info, Genome.from_dict(genome, ops), load_profile("hexagon-htp")).latency_ms


def test_sqnr_accuracy_is_labelled_in_db(symbolic: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = symbolic
    out = tmp_path / "run"
    proc = qae("search", str(model), "--profile", "arm-neon-a76", "--calib", str(data), "--data", str(data),
               *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "input x: 1x3x32x32 (from data" in proc.stderr  # no flag: the data's shape
    front = json.loads((out / "front.json").read_text())["targets"]["arm-neon-a76"]
    # auto on a [N, 4, 16, 16] map: SQNR, in dB (never a fraction, never argmaxed)
    assert front["accuracy_metric"].startswith("sqnr") and front["accuracy_unit"] == "dB"
    assert all(p["objectives"]["accuracy"]["unit"] == "dB" for p in front["points"])
    page = (out / "report.html").read_text()
    assert "SQNR vs FP32 (dB)" in page and "accuracy (%)" not in page


def old_detector(path: Path) -> Path:
    """A tiny-YOLOv2-style opset-8 file (the ONNX model zoo's has the same op): ImageScaler, an
    experimental op ONNX Runtime still runs, but which no later opset has, so the quantizer's
    opset 21 can never be reached and every candidate fails to build."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal((4, 5)) * 0.3).astype(np.float32), "fw"),
        numpy_helper.from_array(np.zeros(5, np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("ImageScaler", ["x"], ["s"], name="scale", scale=0.5, bias=[0.1, 0.2, 0.3]),
        helper.make_node("Conv", ["s", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolo_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 4
    onnx.save(model, str(path))
    return path


def test_failed_candidates_are_summarised_and_exit_3(tmp_path: Path) -> None:
    model = old_detector(tmp_path / "old.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "run"
    proc = qae("search", str(model), "--profile", "hexagon-htp", "--calib", str(data), "--data", str(data),
               *SMALL, "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("qae: error: hexagon-htp: ") and "candidates failed" in last
    assert "most common" in last and "BUILD" in last and "opset" in last
    # per target during the run and at the end, then the one-line error: the terminal says it all
    assert proc.stderr.count("candidates failed") >= 3
    # Nothing is lost: the archive, the report and front.json are written before the exit.
    assert (out / "report.html").is_file() and (out / "archive.sqlite").is_file()
    front = json.loads((out / "front.json").read_text())["targets"]["hexagon-htp"]
    assert front["failed"] == front["candidates"] > 0 and front["points"] == []
    assert front["most_common_error"]["error_kind"] == "BUILD"
    assert front["most_common_error"]["count"] == front["failed"]
    page = (out / "report.html").read_text()
    assert f"{front['failed']} of {front['candidates']} candidates failed" in page
    assert "not to be trusted" in page
    # `qae report` rebuilds the same and exits 0: the failure is the search's verdict, kept in the archive
    assert qae("report", str(out)).returncode == 0
