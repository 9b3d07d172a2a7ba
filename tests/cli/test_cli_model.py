"""The CLI as a user meets it: real processes, exit codes, one-line errors, no half-written files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.core.test_model import no_layer_model

W8 = "default: {weight_bits: 8, activation_bits: 8}\n"


def qae(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qae: error: "), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_quantize_and_evaluate_the_builtin(tmp_path: Path) -> None:
    genome = tmp_path / "g.yaml"
    genome.write_text(W8 + "layers:\n  blocks.0.ffn.fc1: {weight_bits: 3}\n")
    out = tmp_path / "q.onnx"
    proc = qae("quantize", "builtin:digits-vit", "--genome", str(genome), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    proc = qae("evaluate", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert 0.9 <= report["accuracy"] <= 1.0
    assert report["file_bytes"] == out.stat().st_size
    assert report["emulated"] is True and report["emulated_layers"] == ["blocks.0.ffn.fc1"]
    assert report["weight_bytes"] < report["stored_weight_bytes"]  # 3 bits counted, 8 stored
    assert report["mean_cosine"] > 0.9  # found the builtin FP32 reference from the file's stamp


def _bad_data(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.npz"
    x = np.zeros((4, 1, 8, 8), np.float32)
    if kind == "missing":
        np.savez(path, images=x)
    elif kind == "shape":
        np.savez(path, pixels=np.zeros((4, 1, 7, 8), np.float32))
    elif kind == "dtype":
        np.savez(path, pixels=x.astype(np.int32))
    return path


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("corrupt", "not a readable ONNX model"),
        ("text", "not a readable ONNX model"),
        ("nolayer", "has no quantizable layer"),
        ("missing", "has no array for model input 'pixels'"),
        ("shape", "dimension 2 must be 8"),
        ("dtype", "is int32 but the model input is float32"),
        ("unknown_layer", "unknown layer 'blocks.9.ffn.fc1'"),
        ("width", "weight_bits 7 is not supported"),
        ("no_genome_file", "cannot be read"),
    ],
)
def test_bad_input_is_a_one_line_error_and_leaves_no_file(tmp_path: Path, case: str, needle: str) -> None:
    model, calib = "builtin:digits-vit", None
    genome = tmp_path / "g.yaml"
    genome.write_text(W8)
    if case == "corrupt":
        model = str(tmp_path / "m.onnx")
        Path(model).write_bytes(bytes(range(256)) * 20)
    elif case == "text":
        model = str(tmp_path / "m.onnx")
        Path(model).write_text("not a model\n")
    elif case == "nolayer":
        model = str(no_layer_model(tmp_path / "m.onnx"))
    elif case in ("missing", "shape", "dtype"):
        calib = str(_bad_data(tmp_path, case))
    elif case == "unknown_layer":
        genome.write_text(W8 + "layers:\n  blocks.9.ffn.fc1: {weight_bits: 4}\n")
    elif case == "width":
        genome.write_text("default: {weight_bits: 7}\n")
    elif case == "no_genome_file":
        genome = tmp_path / "absent.yaml"
    out = tmp_path / "out.onnx"
    args = ["quantize", model, "--genome", str(genome), "-o", str(out)]
    if calib:
        args += ["--calib", calib]
    assert_one_line_error(qae(*args), needle)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")] == []


def test_evaluate_rejects_data_that_does_not_fit(tmp_path: Path) -> None:
    assert_one_line_error(
        qae("evaluate", "builtin:digits-vit", "--data", str(_bad_data(tmp_path, "shape"))), "dimension 2 must be 8"
    )


def test_layers_json_lists_the_builtin() -> None:
    proc = qae("layers", "builtin:digits-vit", "--input-shape", "pixels=1x1x8x8", "--json")
    rows = json.loads(proc.stdout)
    assert len(rows) == 14 and rows[-1]["name"] == "head" and rows[1]["macs"] == 16 * 32 * 32


def test_layers_takes_the_shapes_of_symbolic_inputs_from_calib(tmp_path: Path) -> None:
    """Without --input-shape, a symbolic input's MACs are '?'; --calib's first inference sets them, as in
    predict and search."""
    from tests.core.test_forms import _cnn

    model = _cnn(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 3, 12, 12), np.float32))
    unknown = qae("layers", str(model), "--json")
    assert unknown.returncode == 0 and "MACs marked ? need the shape" in unknown.stderr
    assert any(row["macs"] is None for row in json.loads(unknown.stdout))
    given = qae("layers", str(model), "--calib", str(tmp_path / "calib.npz"), "--json")
    assert given.returncode == 0, given.stderr
    flagged = qae("layers", str(model), "--input-shape", "x=1x3x12x12", "--json")
    assert json.loads(given.stdout) == json.loads(flagged.stdout)
    assert all(row["macs"] for row in json.loads(given.stdout))


def test_a_written_model_onnx_runtime_cannot_load_is_removed_with_a_one_line_error(tmp_path: Path) -> None:
    """qae quantize checks that ONNX Runtime (all graph optimizations, as a user's session) loads what it
    wrote; a model it cannot load is removed, never reported as written."""
    import onnx
    from onnx import TensorProto, helper

    from harness.cli.common import loads_or_removed
    from harness.core.errors import ModelError

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], name="odd", domain="ai.qae.test")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    bad = tmp_path / "q.onnx"
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.qae.test", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(bad))
    with pytest.raises(ModelError, match=r"cannot load the quantized model built for this genome .* was removed"):
        loads_or_removed(bad)
    assert not bad.exists()
    good = tmp_path / "good.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(good))
    loads_or_removed(good)
    assert good.exists()


def test_a_calibrated_profiles_energy_keeps_its_base_profiles_error(tmp_path: Path) -> None:
    """A calibration fits latency only (no energy sensor): the energy and memory of a prediction keep the base
    profile's error, in `qae predict` and in a search's values, not the fitted latency's few percent."""
    from harness.cli.profiles import _error_text
    from harness.core.genome import Gene, Genome
    from harness.core.model import load_model
    from harness.run.evaluation import prediction_values
    from profiles import load_profile
    from profiles.costmodel import CostTable

    calibrated = load_profile("host-cpu-local")
    base = load_profile(calibrated.calibration["base_profile"]).num("uncertainty")
    assert calibrated.uncalibrated_uncertainty == base != calibrated.num("uncertainty")
    plain = load_profile("arm-neon-a76")
    assert plain.uncalibrated_uncertainty == plain.num("uncertainty")
    model = load_model("builtin:digits-vit", {"pixels": [1, 1, 8, 8]})
    genome = Genome.uniform(Gene(8, 8), {layer.name: layer.op_type for layer in model.layers})
    values = prediction_values(genome, CostTable(model.layers, calibrated))
    assert values["latency"].detail["expected_error"] == calibrated.num("uncertainty")
    assert values["energy"].detail["expected_error"] == values["memory"].detail["expected_error"] == base
    pred = CostTable(model.layers, calibrated).predict(genome)
    assert _error_text(pred) == f"+- {base * 100:.0f} % (energy not calibrated: the base profile's estimates)"
    assert _error_text(CostTable(model.layers, plain).predict(genome)) == f"+- {plain.num('uncertainty') * 100:.0f} %"
