"""Layer inventory: names from module paths for both torch exporters, MACs, and bad models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.cli.main import main
from harness.core.errors import ModelError
from harness.core.model import load_model

TINY_LAYERS = (
    ["patch_embed"]
    + [
        f"blocks.{b}.{m}"
        for b in (0, 1)
        for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "ffn.fc1", "ffn.fc2")
    ]
    + ["head"]
)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_layer_names_come_from_module_paths(tiny_models: dict[str, Path], exporter: str) -> None:
    unresolved = load_model(tiny_models[exporter])
    assert unresolved.unresolved_inputs() == {"pixels": (None, 1, 8, 8)}
    assert all(lay.macs is None for lay in unresolved.layers)  # a symbolic batch is never silently 1
    model = load_model(tiny_models[exporter], {"pixels": [1, 1, 8, 8]})
    assert [lay.name for lay in model.layers] == TINY_LAYERS == unresolved.layer_names
    q = model.layer("blocks.0.attn.q_proj")
    assert q.op_type == "MatMul" and q.weight_shape == (16, 16) and q.params == 256
    assert q.macs == 16 * 16 * 16  # 16 tokens x 16 in x 16 out, batch 1
    conv = model.layer("patch_embed")
    assert conv.op_type == "Conv" and conv.macs == 16 * 16 * 4  # 16 positions x 16 out x (1x2x2)
    assert conv.input_elements == 64 and conv.output_elements == 16 * 16
    assert unresolved.at_shapes({"pixels": [1, 1, 8, 8]}).layers == model.layers


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_cli_layers_and_quantize_on_both_exporters(
    tiny_models: dict[str, Path], exporter: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["layers", str(tiny_models[exporter]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == TINY_LAYERS
    assert {"name", "op_type", "weight_shape", "params", "macs"} <= set(rows[0])
    calib = tmp_path / "calib.npz"
    np.savez(calib, pixels=np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32))
    genome = tmp_path / "g.yaml"
    genome.write_text("default: {weight_bits: 8, activation_bits: 8}\nlayers:\n  blocks.1.ffn.fc1: {weight_bits: 4}\n")
    out = tmp_path / "q.onnx"
    assert (
        main(
            [
                "quantize",
                str(tiny_models[exporter]),
                "--genome",
                str(genome),
                "--calib",
                str(calib),
                "-o",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["file_bytes"] == out.stat().st_size
    onnx.checker.check_model(onnx.load(str(out)))


def test_model_nobody_here_made(tmp_path: Path) -> None:
    """Unnamed nodes, Gemm with transB, an embedding Gather: names fall back, nothing breaks."""
    rng = np.random.default_rng(0)
    emb = helper.make_tensor("E", TensorProto.FLOAT, [10, 4], rng.standard_normal(40).astype(np.float32).tolist())
    w = helper.make_tensor("W", TensorProto.FLOAT, [3, 4], rng.standard_normal(12).astype(np.float32).tolist())
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "ids"], ["h"]),
            helper.make_node("Gemm", ["h", "W"], ["y"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [emb, w],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    model = load_model(path)
    assert [(lay.name, lay.op_type, lay.channel_axis) for lay in model.layers] == [
        ("gather_0", "Gather", 0),
        ("gemm_1", "Gemm", 0),
    ]
    assert model.layers[1].macs is None  # "n" ids: unknown until given
    assert model.at_shapes({"ids": [1]}).layers[1].macs == 12
    # And it quantizes: a 4-bit embedding table, a Gemm with dynamic activations.
    from harness.quant.workload import Workload

    data = tmp_path / "ids.npz"
    np.savez(data, ids=rng.integers(0, 10, size=32).astype(np.int64))
    work = Workload.open(path, calib=data, eval_data=data)
    genome = work.genome({"layers": {"gather_0": {"weight_bits": 4}, "gemm_1": {"activation_bits": "dynamic"}}})
    report = work.evaluate(work.build(genome))
    assert report.mean_cosine is not None and report.mean_cosine > 0.95


def no_layer_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_bytes(b"\x08\x07garbage\xff\xfe" * 50) and p, "not a readable ONNX model"),
        (lambda p: p.write_text("hello, I am a text file\n") and p, "not a readable ONNX model"),
        (no_layer_model, "has no quantizable layer"),
    ],
)
def test_bad_models_are_one_line_errors(tmp_path: Path, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.onnx"
    make(path)
    with pytest.raises(ModelError, match=needle) as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_cli_layers_prints_every_name_whole_and_says_which_shape_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped output (not a TTY) is plain columns: long names that differ only at the end stay distinct."""
    rng = np.random.default_rng(0)
    scope = "/" + "/".join(f"very_long_module_name_{i}" for i in range(6))
    names = [f"{scope}/attention_projection_alpha/MatMul", f"{scope}/attention_projection_beta/MatMul"]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), f"w{i}") for i in range(2)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"], name=names[0]),
         helper.make_node("MatMul", ["h", "w1"], ["y"], name=names[1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    assert main(["layers", str(path)]) == 0
    out, err = capsys.readouterr()
    layer_names = [lay.name for lay in load_model(path).layers]
    assert all(len(n) > 100 for n in layer_names)
    rows = [line for line in out.splitlines() if line.startswith(tuple(layer_names))]
    assert len(rows) == 2 and len(set(rows)) == 2 and "…" not in out
    assert all(row.split()[0] in layer_names and row.rstrip().endswith("?") for row in rows)
    assert err.count("\n") == 1 and "input 'x' [batch, 4]" in err and "--input-shape x=<batch>x4" in err
    assert main(["layers", str(path), "--input-shape", "x=2x4"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "?" not in out and "32" in out
