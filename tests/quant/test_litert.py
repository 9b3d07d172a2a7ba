"""The LiteRT backend (issue 21), end to end on a .tflite made here: a small torch module converted with
litert-torch, quantized by ai-edge-quantizer from a mixed genome, read back with LiteRT's schema, run
with LiteRT's interpreter and scored; then the CLI: layers, quantize, evaluate, predict, a two-generation
search with the local device measuring, and export. Nothing is downloaded; one conversion per session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.extras import require_litert

# litert-torch is never imported here (it brings JAX, which must not be in a process that forks): qae and the
# fixture convert in child processes.
require_litert()

from harness.cli.main import main  # noqa: E402
from harness.core.errors import GenomeError, ModelError  # noqa: E402
from harness.quant import litert_quant  # noqa: E402
from harness.quant.litert_model import load_tflite  # noqa: E402
from harness.quant.litert_workload import open_workload  # noqa: E402


def test_inventory_names_ops_and_macs(lite: dict[str, Any]) -> None:
    with_names = load_tflite(lite["model"], names=lite["naming"]["names"])
    by = {layer.name: layer for layer in with_names.layers}
    # torch module paths when the converter's locations are mapped back (nested block included)
    assert set(by) == {"conv", "dw", "proj", "block.fc1", "block.fc2", "head"}
    assert {by[n].node_name.split(":")[0] for n in by} >= {"FULLY_CONNECTED", "DEPTHWISE_CONV_2D"}
    assert by["block.fc1"].op_type == "Gemm" and by["block.fc1"].weight_shape == (32, 48)
    assert by["block.fc1"].macs == 48 * 32 and by["head"].params == 64
    assert by["dw"].macs == 6 * 6 * 8 * 9  # depthwise: each output sums kh * kw products
    # without the map: the attribute path read from the converter's location
    plain = {layer.name for layer in load_tflite(lite["model"]).layers}
    assert {"fc1", "fc2", "head", "proj"} <= {n.split(".")[-1] for n in plain}


def test_mixed_genome_is_what_the_file_says(lite: dict[str, Any]) -> None:
    work = open_workload(lite["model"], None, calib=lite["calib"], eval_data=lite["eval"], test_data=lite["test"])
    names = {layer.name.split(".")[-1]: layer.name for layer in work.model.layers}
    genome = work.genome({"default": {"weight_bits": "fp"}, "layers": {
        names["fc1"]: {"weight_bits": 8, "activation_bits": "dynamic"},                     # dynamic range, channelwise
        names["fc2"]: {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_tensor"},  # weight-only int4
        names["head"]: {"weight_bits": 8, "activation_bits": 8},                           # static int8
    }})
    result = work.build(genome)
    assert [e["operation"] for e in result.recipe] == ["FULLY_CONNECTED"] * 3
    assert all(e["regex"].startswith("^") and e["regex"].endswith("$") for e in result.recipe)
    written = {w["name"]: w for w in litert_quant.layer_weight_ops(result.content).values()}
    layer = {n: work.model.layer(names[n]) for n in ("fc1", "fc2", "head", "proj")}
    fc1, fc2, head = (written[layer[n].weight] for n in ("fc1", "fc2", "head"))
    assert fc1["type"] == "INT8" and fc1["scales"] == 32 and fc1["axis"] == 0 and fc1["via"] is None
    assert fc2["type"] == "INT4" and fc2["scales"] == 1 and fc2["via"] == "DEQUANTIZE"
    assert head["type"] == "INT8" and head["scales"] == 4 and head["input_type"] == "INT8"
    assert written[layer["proj"].weight]["type"] == "FLOAT32"  # fp layers are left alone
    report = work.evaluate(result, threads=1, with_stats=True)
    fp32 = work.evaluate(None)
    assert fp32.accuracy == 1.0 and 0.5 <= report.accuracy <= 1.0 and report.sample_stats is not None
    assert report.file_bytes == len(result.content) < fp32.file_bytes and not report.emulated
    assert work.evaluate(result, split="test").n == 32


def test_genes_litert_cannot_build_are_one_line_errors(lite: dict[str, Any]) -> None:
    open_workload(lite["model"], None, calib=lite["calib"])
    work = open_workload(lite["model"], None, calib=lite["calib"], eval_data=lite["eval"])
    assert work.ranges_from_cache  # calibrated once per model and data, then read back from the cache
    dw = next(layer.name for layer in work.model.layers if layer.node_name.startswith("DEPTHWISE"))
    for gene, words in (({"weight_bits": 4, "activation_bits": 8}, "allowed"),
                        ({"weight_bits": 8, "scheme": "power_of_two"}, "power-of-two"),
                        ({"weight_bits": 3}, "allowed")):
        with pytest.raises(GenomeError) as err:
            work.build(work.genome({"default": {"weight_bits": "fp"}, "layers": {dw: gene}}))
        text = str(err.value)
        assert "\n" not in text and f"layer {dw} (DEPTHWISE_CONV_2D)" in text and words in text
        assert "w8/8/symmetric/per_channel" in text
    fc = next(layer for layer in work.model.layers if layer.node_name.startswith("FULLY"))
    with pytest.raises(GenomeError, match="block-wise weights only with dynamic"):
        work.build(work.genome({"layers": {fc.name: {"weight_bits": 4, "activation_bits": "fp",
                                                     "granularity": "per_block", "block_size": 32}},
                                "default": {"weight_bits": "fp"}}))


def test_missing_extra_is_one_line(lite: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)  # the import fails, as without the extra
    assert main(["layers", str(lite["model"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'qae[litert]'" in err
    with pytest.raises(ModelError, match="litert extra"):
        load_tflite(lite["model"])


def test_cli_layers_quantize_evaluate_predict(lite: dict[str, Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model = str(lite["model"])
    assert main(["layers", model, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and {r["kernels"][0] for r in rows} == {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"}
    genome = tmp_path / "g.yaml"
    genome.write_text("default: {weight_bits: 8, activation_bits: 8}\n")
    out = tmp_path / "q.tflite"
    assert main(["quantize", model, "--genome", str(genome), "--calib", str(lite["calib"]), "-o", str(out),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["file_bytes"] == out.stat().st_size and out.read_bytes()[4:8] == b"TFL3"
    assert main(["evaluate", str(out), "--data", str(lite["eval"]), "--reference", model, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["metric"] == "top1" and rep["n"] == 32 and rep["mean_cosine"] > 0.9
    assert main(["predict", model, "--profile", "litert-xnnpack", "--genome", str(genome), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["latency_ms"] > 0 and {row["layer"] for row in pred["layers"]} == {r["name"] for r in rows}


def test_search_measures_on_the_local_agent_and_exports(lite: dict[str, Any], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["search", str(lite["model"]), "--calib", str(lite["calib"]), "--data", str(lite["eval"]),
                 "--test", str(lite["test"]), "--device", "local", "--generations", "2", "--population", "6",
                 "--measure-per-gen", "2", "--measure-runs", "5", "--measure-seconds", "0.05", "--out", str(out)])
    assert code == 0
    front = json.loads((out / "front.json").read_text())["targets"]
    assert list(front) == ["local"]
    points = front["local"]["points"]
    assert points and all(p["objectives"]["accuracy"]["runtime"] == "litert" for p in points)
    measured = [p for p in points if p["objectives"]["latency"]["source"] == "measured"]
    assert measured, "the local agent measured no .tflite candidate"
    assert all(p["objectives"]["latency"]["device"] == "local" for p in measured)
    capsys.readouterr()
    assert main(["export", str(out), "-o", str(tmp_path / "exp")]) == 0
    exp = tmp_path / "exp"
    assert (exp / "model.tflite").read_bytes()[4:8] == b"TFL3" and json.loads((exp / "recipe.json").read_text()) \
        is not None and (exp / "genome.yaml").is_file()


def test_torch_module_and_builtin_convert_once(lite: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    # --torch module:function: converted with the first calibration sample, layers named by module path
    assert main(["layers", "--runtime", "litert", "--torch", "tests.litert_models:tiny", "--calib",
                 str(lite["calib"]), "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} == {"conv", "dw", "proj", "block.fc1",
                                                                         "block.fc2", "head"}
    assert main(["layers", "--torch", "tests.litert_models:tiny"]) == 2
    assert "--runtime litert" in capsys.readouterr().err
    # a built-in: converted from its torch definition with the shipped ONNX weights, named as on ONNX, cached
    from harness.core.model import load_model
    from harness.quant.litert_convert import builtin_dir, ensure_builtin

    first = ensure_builtin("digits-vit")
    stamp = (builtin_dir("digits-vit") / "litert.json").stat().st_mtime_ns
    assert [layer.name for layer in first.layers] == load_model("builtin:digits-vit").layer_names
    again = ensure_builtin("digits-vit")
    assert again.sha256 == first.sha256 and (builtin_dir("digits-vit") / "litert.json").stat().st_mtime_ns == stamp


def test_no_jax_in_this_process() -> None:
    """litert-torch loads JAX, which must not be in a process that forks: qae converts in a child only.

    The suite's process may hold JAX for other reasons (BoTorch, a benchmark peer, imports it when it is
    installed), so JAX itself is checked in a fresh interpreter that runs qae's LiteRT paths."""
    assert "litert_torch" not in sys.modules
    code = ("import sys\n"
            "from harness.quant import litert_convert, litert_model, litert_quant, litert_workload\n"
            "litert_convert.ensure_builtin('digits-vit')\n"
            "print(sorted(m for m in ('jax', 'litert_torch') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
