"""Models from the wild: every model form of the corpus goes through every step of qae with correct
numbers or a clean one-line error (issue 12).

The corpus (``tests/wild/corpus.py``) builds each form itself and knows, independently of qae, its
layers, its MACs at the data's shape and how to feed it. Here each case goes through ``layers``,
``quantize`` (w8a8 and w4a8), ``evaluate``, ``predict`` and a two-generation ``search`` + ``export``,
and qae's numbers are checked against ONNX Runtime run directly on the same files: a probability
moved by 0.3 cannot score a perfect agreement, the score qae reports for an output is the one computed
here, and MACs match the hand count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml

from harness.cli.main import main
from harness.quant.exact import exact_int8, u8s8_saturates
from tests.wild import corpus

pytestmark = pytest.mark.slow

#: Cases qae must refuse, with words the one-line error must hold.
REFUSED = {"quantized_qdq": "already quantized", "quantized_dynamic": "already quantized"}
#: Cases where a clean error is as good as working: the error must name what it cannot handle.
MAY_REFUSE: dict[str, str] = {}
#: Layers a case keeps when qae resolves part of the graph (an If whose condition is a constant).
KEPT = {"if_subgraph": ["then_fc1", "then_fc2"]}
PERFECT = {"sqnr": 100.0}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, corpus.Case]:
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("wild")
    return {c.name: c for c in corpus.build_all(root)}


def qae(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def data_flags(case: corpus.Case) -> list[str]:
    flags: list[str] = []
    for name in case.const_inputs:
        flags += ["--constant-input", name]
    return flags


def shape_flags(case: corpus.Case) -> list[str]:
    flags: list[str] = []
    for name, dims in case.input_shapes.items():
        flags += ["--input-shape", f"{name}={'x'.join(str(d) for d in dims)}"]
    return flags


def assert_clean_error(code: int, err: str, words: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("qae: error:"), err
    assert "Traceback" not in err
    assert words.lower() in lines[0].lower(), lines[0]


def genome_file(folder: Path, w: Any, a: Any) -> Path:
    path = folder / f"w{w}a{a}.yaml"
    path.write_text(yaml.safe_dump({"default": {"weight_bits": w, "activation_bits": a}}))
    return path


def refused(case: corpus.Case, code: int, err: str) -> bool:
    """True when the case was refused as it may or must be; fails when it was refused otherwise."""
    if case.name in REFUSED:
        assert_clean_error(code, err, REFUSED[case.name])
        return True
    if code != 0 and case.name in MAY_REFUSE:
        assert_clean_error(code, err, MAY_REFUSE[case.name])
        return True
    assert code == 0, err
    return False


def direct_scores(case: corpus.Case, quantized: Path) -> dict[str, dict[str, float]]:
    """Per output: SQNR (dB, capped at 100 like qae), whole-tensor cosine and max abs change, with ORT.

    qae scores integer products exactly: where this CPU's u8s8 kernels saturate, ORT runs the file
    with its int8 weights as uint8 (``harness.quant.exact``, checked against numpy and op-by-op runs
    in tests/quant/test_exact_int8.py), and so does this check."""
    ref = corpus.run_model(case.model, case, case.data)
    exact = exact_int8(onnx.load(str(quantized))) if u8s8_saturates() else None
    if exact is not None:
        quantized = quantized.with_name(quantized.stem + "_exact.onnx")
        onnx.save(exact, str(quantized))
    got = corpus.run_model(quantized, case, case.data)
    out = {}
    for name, r in ref.items():
        r64, g64 = r.astype(np.float64).ravel(), got[name].astype(np.float64).ravel()
        err = float(np.sum((r64 - g64) ** 2))
        sqnr = 100.0 if err == 0 else min(100.0, 10 * np.log10(float(np.sum(r64**2)) / err))
        denom = np.linalg.norm(r64) * np.linalg.norm(g64)
        out[name] = {"sqnr": float(sqnr), "cosine": float(r64 @ g64 / denom) if denom else 1.0,
                     "max_abs": float(np.max(np.abs(r64 - g64)))}
    return out


@pytest.mark.parametrize("name", list(corpus.CASES))
def test_layers_names_and_macs(name: str, cases: dict[str, corpus.Case], capsys: pytest.CaptureFixture[str]) -> None:
    case = cases[name]
    code, out, err = qae(capsys, "layers", case.model, "--json", *shape_flags(case))
    if refused(case, code, err):
        return
    layers = json.loads(out)
    names = [la["name"] for la in layers]
    assert len(set(names)) == len(names)
    assert set(names) == set(KEPT.get(name, case.expected_layers)), names
    for layer in layers:
        assert layer["macs"] is not None and layer["macs"] > 0, layer
        assert layer["macs"] == case.expected_macs[layer["name"]], layer
    assert sum(la["macs"] for la in layers) == case.expected_macs["total"]
    # without shapes a symbolic model's MACs are unknown, never a silent 1, 0 or negative
    if case.symbolic_inputs:
        code, out, err = qae(capsys, "layers", case.model, "--json")
        assert code == 0, err
        for layer in json.loads(out):
            assert layer["macs"] is None or layer["macs"] == case.expected_macs[layer["name"]], layer


@pytest.mark.parametrize("name", list(corpus.CASES))
def test_quantize_and_evaluate_agree_with_onnxruntime(
    name: str, cases: dict[str, corpus.Case], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = cases[name]
    for w, a in ((8, 8), (4, 8)):
        q = tmp_path / f"q{w}.onnx"
        code, _, err = qae(capsys, "quantize", case.model, "--genome", genome_file(tmp_path, w, a),
                           "--calib", case.calib, "-o", q, *data_flags(case))
        if refused(case, code, err):
            return
        corpus.session(q)  # ONNX Runtime loads what qae wrote
        code, out, err = qae(capsys, "evaluate", q, "--data", case.data, "--reference", case.model, "--json",
                             *data_flags(case))
        assert code == 0, err
        report = json.loads(out)
        direct = direct_scores(case, q)
        metric = report["metric"]
        scored = report.get("scores") or {}
        assert set(scored) <= set(direct) and scored, report
        for output, values in scored.items():
            for key in ("sqnr", "cosine"):
                if key in values:
                    assert values[key] == pytest.approx(direct[output][key], abs=1e-3), (output, key, values)
        if metric == "sqnr":
            assert report["accuracy"] == pytest.approx(min(direct[o]["sqnr"] for o in scored), abs=1e-3)
        moved = max(d["max_abs"] for d in direct.values())
        if moved > 0.05 and metric in PERFECT:
            assert report["accuracy"] < PERFECT[metric]
        if moved > 0.05:  # something moved: no score can claim the outputs are identical
            assert report.get("mean_cosine") is None or report["mean_cosine"] < 1.0 - 1e-9
        if name == "sigmoid_n1":
            assert metric != "top1_agreement" and report["accuracy"] != 1.0


@pytest.mark.parametrize("name", list(corpus.CASES))
def test_predict_at_the_data_shape(
    name: str, cases: dict[str, corpus.Case], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = cases[name]
    genome = genome_file(tmp_path, 8, 8)
    code, out, err = qae(capsys, "predict", case.model, "--profile", "arm-neon-a76", "--genome", genome,
                         "--data", case.data, "--json", *data_flags(case))
    if refused(case, code, err):
        return
    pred = json.loads(out)
    assert sum(row["macs"] for row in pred["layers"]) == case.expected_macs["total"]
    assert pred["latency_ms"] > 0
    if case.symbolic_inputs:  # no data, no shapes: a one-line error naming the input and the flag
        code, _, err = qae(capsys, "predict", case.model, "--profile", "arm-neon-a76", "--genome", genome)
        assert_clean_error(code, err, "--input-shape")
        assert case.symbolic_inputs[0] in err


@pytest.mark.parametrize("name", list(corpus.CASES))
def test_search_and_export(
    name: str, cases: dict[str, corpus.Case], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = cases[name]
    run = tmp_path / "run"
    code, _, err = qae(capsys, "search", case.model, "--calib", case.calib, "--data", case.data,
                         "--profile", "arm-neon-a76", "--generations", "2", "--population", "4",
                         "--out", run, *data_flags(case))
    if refused(case, code, err):
        return
    target = json.loads((run / "front.json").read_text())["targets"]["arm-neon-a76"]
    assert target["failed"] == 0, target["most_common_error"]
    if name in ("sigmoid_n1", "output_1d", "dense_map"):  # regressions are never argmaxed
        assert (target["accuracy_metric"], target["accuracy_unit"]) == ("sqnr", "dB")
    for point in target["points"]:  # only accuracy carries the accuracy metric's name
        assert point["objectives"]["accuracy"]["metric"] == target["accuracy_metric"]
        for key, value in point["objectives"].items():
            if key != "accuracy":
                assert value.get("metric") != target["accuracy_metric"], (key, value)
    code, _, err = qae(capsys, "export", run, "--best", "-o", tmp_path / "export")
    assert code == 0, err
    corpus.session(tmp_path / "export" / "model.onnx")
