"""Calibration: the fit recovers known coefficients, and the real pipeline (local transport) runs
end to end, writes a valid calibrated profile, and resumes from its stored measurements."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.cli.main import main
from harness.core.model import LayerSpec
from profiles import load_profile
from profiles.costmodel import GraphStats
from profiles.fit import LayerSample, Sample, errors, fit, layer_errors, predict_layers_ms, predict_ms


def _layer(k: int, n: int, tokens: int) -> LayerSpec:
    return LayerSpec(f"l{k}x{n}", f"/l{k}x{n}/MatMul", "MatMul", "w", (k, n), k * n, tokens * k * n, "x", "y", 1)


def _samples(truth_name: str = "host-cpu") -> list[Sample]:
    truth = load_profile(truth_name)
    classes = [("fp32", "fp32", "channel"), ("int8", "int8", "channel"), ("int4", "int8", "channel"),
               ("int8", "dynamic", "channel"), ("int16", "int16", "channel"), ("int8", "fp32", "channel")]
    out = []
    for i, (k, n, t) in enumerate([(64, 64, 8), (256, 256, 16), (512, 512, 16), (384, 1536, 64), (1024, 1024, 4)]):
        for c in classes:
            out.append(Sample(f"m{i}{c}", f"micro{i}", "fit", [_layer(k, n, t)], [c], GraphStats(), 1.0))
    for w, g in (("a", GraphStats(80, 20000)), ("b", GraphStats(60, 400000))):
        layers = [_layer(128, 128, 16), _layer(128, 512, 16), _layer(512, 128, 16)]
        for j, mix in enumerate([[classes[0]] * 3, [classes[1]] * 3, [classes[1], classes[2], classes[3]],
                                 [classes[3], classes[1], classes[0]], [classes[4], classes[1], classes[5]]]):
            out.append(Sample(f"{w}{j}", w, "heldout" if j >= 3 else "fit", layers, mix, g, 1.0))
    measured = predict_ms(out, truth)
    return [replace(s, measured_ms=float(m)) for s, m in zip(out, measured)]


def test_fit_recovers_a_known_profile_from_a_perturbed_start() -> None:
    samples = _samples()
    start = load_profile("host-cpu").copy()
    for key in ("fp32", "int8"):
        start.data["throughput_gmacs"][key]["value"] *= 3.0
    start.data["overhead"]["other_op_us"]["value"] = 10.0
    start.data["dequantize_ns_per_element"]["int4"]["value"] = 0.1
    assert errors(samples, start)["heldout"]["within_10pct"] < 0.5
    fitted, report = fit(samples, start)
    errs = errors(samples, fitted)
    assert errs["heldout"]["within_10pct"] == 1.0
    assert errs["heldout"]["mape"] < 0.02
    for dotted in report["fitted"]:
        node = fitted.data
        for k in dotted.split("."):
            node = node[k]
        assert node["value"] >= 0, dotted  # physical coefficients


def _layer_samples(samples: list[Sample], truth_name: str = "host-cpu") -> list[LayerSample]:
    """Each whole model's layers with their true times, as a device's per-op profile gives them."""
    out = [LayerSample(s.id, s.workload, s.role, layer, tuple(c), 1.0)
           for s in samples for layer, c in zip(s.layers, s.classes)]
    truth = predict_layers_ms(out, load_profile(truth_name))
    return [replace(ls, measured_ms=float(t)) for ls, t in zip(out, truth)]


def test_per_layer_fit_recovers_known_coefficients_the_latencies_alone_cannot_separate() -> None:
    # Only whole models with several layers each, every class mixed with others: the whole-model
    # latencies are sums, the per-layer times say which class costs what.
    truth = load_profile("host-cpu")
    classes = [("fp32", "fp32", "channel"), ("int8", "int8", "channel"), ("int4", "int8", "channel"),
               ("int8", "dynamic", "channel"), ("int16", "int16", "channel")]
    layers = [_layer(128, 128, 16), _layer(128, 512, 16), _layer(512, 128, 16), _layer(256, 256, 32)]
    samples = []
    for j in range(12):
        mix = [classes[(j + i * (1 + j % 3)) % len(classes)] for i in range(len(layers))]
        samples.append(Sample(f"m{j}", "w", "heldout" if j >= 9 else "fit", layers, mix, GraphStats(40, 20000), 1.0))
    samples = [replace(s, measured_ms=float(m)) for s, m in zip(samples, predict_ms(samples, truth))]
    per_layer = _layer_samples(samples)
    start = truth.copy()
    start.data["throughput_gmacs"]["fp32"]["value"] *= 4.0
    start.data["throughput_gmacs"]["int8"]["value"] /= 3.0
    start.data["dequantize_ns_per_element"]["int4"]["value"] = 0.2
    start.data["dequantize_ns_per_element"]["int16"]["value"] = 20.0
    fitted, report = fit(samples, start, per_layer)
    assert report["layer_times"] == sum(len(layers) for s in samples if s.role == "fit")
    lay = layer_errors(per_layer, fitted, truth)
    # every layer kind is recovered, held-out models' layers included
    assert lay["heldout"]["n"] == 3 * len(layers) and lay["heldout"]["mape"] < 0.02
    assert all(k["mape"] < 0.03 for k in lay["fit"]["by_kind"].values()), lay["fit"]["by_kind"]
    assert errors(samples, fitted)["heldout"]["mape"] < 0.02
    for key in ("int4", "int16"):
        got = fitted.num("dequantize_ns_per_element", key)
        want = truth.num("dequantize_ns_per_element", key)
        assert abs(got / want - 1) < 0.05, (key, got, want)
    # the same latencies without the layer times fit as well as a whole, but split it wrongly
    whole_only, _ = fit(samples, start)
    assert errors(samples, whole_only)["heldout"]["mape"] < 0.02
    assert layer_errors(per_layer, whole_only, truth)["heldout"]["mape"] > 0.2
    # the kinds name op type, precision and execution path
    assert {"MatMul fp32/fp32 float", "MatMul int8/int8 native", "MatMul int4/int8 dequantize"} <= set(
        lay["fit"]["by_kind"])


def test_layer_errors_point_at_the_kernel_a_profile_gets_wrong() -> None:
    samples = _samples()
    per_layer = _layer_samples(samples)
    wrong = load_profile("host-cpu").copy()
    for table in ("dequantize_ns_per_element", "dequantize_spill_ns_per_element"):
        wrong.data[table]["int16"]["value"] *= 3.0  # only int16 layers move
    by_kind = layer_errors(per_layer, wrong)["fit"]["by_kind"]
    worst = max(by_kind, key=lambda k: by_kind[k]["mape"])
    assert worst == "MatMul int16/int16 dequantize" and by_kind[worst]["bias"] > 0.5
    assert by_kind["MatMul int8/int8 native"]["mape"] < 1e-9


def test_a_damaged_stored_measurement_is_measured_again_never_used(tmp_path: Path) -> None:
    from harness.run.calibrate import Store

    good = {"key": "a", "ok": True, "latency_ms": {"min": 0.1, "p50": 0.12},
            "op_profile": {"runs": 5, "nodes": [{"name": "n", "op_type": "MatMul", "ms": 0.05}]}}
    lines = [json.dumps(good), "5", json.dumps({"ok": True}), '{"key": "b", "ok": tr',
             json.dumps({**good, "key": "c", "latency_ms": {"min": "fast", "p50": 0.1}}),
             json.dumps({**good, "key": "d", "latency_ms": {"min": float("nan"), "p50": 0.1}}),
             json.dumps({**good, "key": "e", "op_profile": {"nodes": [{"name": "n", "ms": -1}]}}),
             json.dumps({**good, "key": "f", "ok": "yes"}), json.dumps({**good, "key": "g", "op_profile": None})]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    store = Store(path)  # no line crashes the load
    assert store.get("a") == good and store.get("g") is not None
    assert [store.get(k) for k in "bcdef"] == [None] * 5


def test_fit_needs_measurements() -> None:
    from profiles.errors import ProfileError

    with pytest.raises(ProfileError, match="at least 3"):
        fit(_samples()[:2], load_profile("host-cpu"))


@pytest.mark.slow
def test_calibrate_local_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cal" / "host-cpu-test.yaml"
    argv = ["calibrate", "--device", "local", "--profile", "host-cpu", "-o", str(out), "--quick",
            "--runs", "5", "--min-seconds", "0.05", "--drift", "0.2", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["models"] == 7 and first["passes"] == 2 and first["max_passes"] == 4
    assert first["drift"] == {"checked": False, "bound": 0.2}  # nothing stored yet: nothing to check
    store = out.with_name("host-cpu-test.measurements.jsonl")
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    # every model twice, and a third or fourth pass only for the models whose passes still disagree
    extra = first["noise"]["passes_used"]
    assert first["measured"] == len(lines) == 14 + sum(n - 2 for n in extra.values())
    assert first["reused"] == 0 and not first["failed"] and all(rec["ok"] for rec in lines)
    assert all(rec["op_profile"]["nodes"] for rec in lines)  # profiled by default
    assert all(isinstance(rec["environment"]["loadavg_1m_before"], float) for rec in lines)
    profile = load_profile(out)
    assert profile.name == "host-cpu-test"
    cal = profile.calibration
    assert cal is not None and cal["device"] == "local" and cal["models"] == 7
    assert profile.data["throughput_gmacs"]["int8"]["source"].startswith("calibrated on local at ")
    assert profile.data["uncertainty"]["source"].startswith("calibrated on local at ")
    # per-layer times entered the fit and the file says how each kind of layer is predicted
    assert cal["solver"]["layer_times"] == first["layers"]["fit"]["n"] > 7
    assert cal["layers"]["profiled_models"] == 7 and not cal["layers"]["unsplit"]
    assert "MatMul int8/int8 native" in cal["layers"]["fit"]["by_kind"]
    assert cal["noise"]["busy"] in (True, False) and cal["noise"]["verdict"].startswith(("busy", "quiet"))
    assert Path(first["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Interrupted mid-write: a torn last line is ignored and everything measured is reused.
    with open(store, "a") as f:
        f.write('{"key": "torn", "ok": tru')
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["measured"] == 0 and second["reused"] == first["measured"]
    again = yaml.safe_load(out.read_text())
    assert again["calibration"]["fit"]["n"] == 7

    # The text report: whole models per workload, per-layer kinds, noise verdict.
    assert main(argv[:-1]) == 0
    text = capsys.readouterr().out
    assert "Kendall tau" in text and "MatMul int8/int8 native" in text and "noise:" in text


@pytest.mark.slow
def test_calibrate_fits_candidates_of_the_users_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cnn.yaml"
    assert main(["calibrate", "--device", "local", "-o", str(out), "--quick", "--model", "builtin:digits-cnn",
                 "--model-candidates", "7", "--runs", "5", "--min-seconds", "0.02", "--max-passes", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"] == 7 + 7 and not report["failed"]
    assert report["fit"]["by_workload"]["builtin:digits-cnn"]["n"] == 7  # all seven fitted, none held out
    kinds = report["layers"]["fit"]["by_kind"]
    assert any(k.startswith("Conv ") for k in kinds) and any(k.startswith("Gemm ") for k in kinds)
    # the Conv layers' op factors were fitted from their per-layer times, relative to MatMul's rates
    factors = load_profile(out).data["op_factors"]
    assert "Conv" in factors and "MatMul" not in factors
    assert all(v["source"].startswith("calibrated on local") for v in factors["Conv"].values())


@pytest.mark.slow
def test_a_disturbed_pass_is_measured_again_until_the_passes_agree(tmp_path: Path) -> None:
    from harness.devices.transport import MeasureSettings
    from harness.run.calibrate import default_suite, run, transport_measure

    settings = MeasureSettings(runs=5, min_seconds=0.05, warmup_seconds=0.0, threads=1, profile_ops=False)
    gen = transport_measure("local", settings)
    real = next(gen)
    calls: list[str] = []

    def disturbed(path: Path) -> dict:
        # the real measurement; the first pass of one model as if another process had taken the core
        rec = real(path)
        calls.append(path.name)
        if path.name.startswith("micro-mm8x64x64-fp-") and calls.count(path.name) == 1:
            rec["latency_ms"] = {k: v * 3 if isinstance(v, float) else v for k, v in rec["latency_ms"].items()}
        return rec

    try:
        report = run("local", "host-cpu", tmp_path / "c.yaml", suite=default_suite(quick=True), settings=settings,
                     measure=disturbed, progress=False, plot=False, spread=0.5, max_passes=5)
    finally:
        gen.close()
    fp = [c for c in calls if c.startswith("micro-mm8x64x64-fp-")]
    assert len(fp) >= 3  # two passes disagreed by 3x: measured again
    assert report["noise"]["passes_used"]["micro-mm8x64x64-fp"] == len(fp)
    # the disturbed pass never sets the latency: the median of the passes does, which lies among the
    # undisturbed ones
    row = next(r for r in report["rows"] if r["id"] == "micro-mm8x64x64-fp")
    passes = [json.loads(line)["latency_ms"]["min"] for line in
              (tmp_path / "c.measurements.jsonl").read_text().splitlines()
              if json.loads(line)["id"] == "micro-mm8x64x64-fp"]
    assert row["measured_ms"] == pytest.approx(float(np.median(passes)))
    assert row["measured_ms"] <= sorted(passes)[-2]  # the 3x pass is the largest, never the median
    assert report["noise"]["verdict"].startswith(("busy", "quiet"))


def test_the_suite_fits_candidates_of_the_user_s_model_and_holds_the_rest_out() -> None:
    from harness.core.errors import InputError
    from harness.run.calibrate import DEFAULT_MODEL_CANDIDATES, default_suite

    plain = default_suite()
    roles = {r: sum(it.role == r for it in plain.items) for r in ("fit", "heldout")}
    assert roles["heldout"] == 18 and {it.workload for it in plain.items if it.role == "heldout"} == {
        "builtin:digits-vit", "transformer", "builtin:digits-cnn"}
    mine = default_suite(models=["builtin:digits-cnn"])
    extra = [it for it in mine.items if it.id not in {p.id for p in plain.items}]
    assert len(extra) == DEFAULT_MODEL_CANDIDATES
    assert all(it.role == "fit" and it.workload == "builtin:digits-cnn" for it in extra)
    assert [it.id for it in extra[:3]] == ["model-digits-cnn-fp", "model-digits-cnn-w8a8", "model-digits-cnn-w8dyn"]
    with pytest.raises(InputError, match="same file name"):
        default_suite(models=["a/net.onnx", "b/net.onnx"])


def test_calibrate_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--runs", "0", "-o", "x.yaml"]) == 2
    assert "--runs" in capsys.readouterr().err
    assert main(["calibrate", "-o", "x.txt"]) == 2
    assert main(["calibrate", "--profile", "nope", "-o", "/tmp/qae-never/x.yaml", "--quick"]) == 2
    capsys.readouterr()
    assert main(["calibrate", "--passes", "3", "--max-passes", "2", "-o", "x.yaml"]) == 2
    assert "--max-passes" in capsys.readouterr().err
    assert main(["calibrate", "--spread", "5", "-o", "x.yaml"]) == 2
    assert "--spread 5.0: give a fraction" in capsys.readouterr().err
    assert main(["calibrate", "--drift", "0", "-o", "x.yaml"]) == 2
    assert "--drift 0.0: give a fraction" in capsys.readouterr().err
    assert main(["calibrate", "--model", "net.tflite", "-o", "x.yaml"]) == 2
    assert "give builtin:NAME or an .onnx file" in capsys.readouterr().err
    assert main(["calibrate", "--model", "net.onnx", "-o", "x.yaml"]) == 2
    assert "--calib goes with exactly one --model FILE.onnx" in capsys.readouterr().err
    assert main(["calibrate", "--model", "builtin:digits-cnn", "--model-candidates", "2", "-o", "x.yaml"]) == 2
    assert "--model-candidates 2: give 3" in capsys.readouterr().err


def test_the_model_candidates_default_is_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's help states the default the suite uses, and the suite fits that many of a --model."""
    from harness.run.calibrate import DEFAULT_MODEL_CANDIDATES, default_suite

    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    assert f"(default {DEFAULT_MODEL_CANDIDATES}:" in " ".join(capsys.readouterr().out.split())
    items = [it for it in default_suite(models=["builtin:digits-cnn"]).items if it.id.startswith("model-")]
    assert len(items) == DEFAULT_MODEL_CANDIDATES and all(it.role == "fit" for it in items)


def test_per_layer_fit_recovers_the_grouped_conv_costs() -> None:
    """Depthwise and pointwise Convs mixed over the paths: the per-layer times identify what a grouped
    Conv pays per group and per output element on each path without a depthwise kernel."""
    from profiles.costmodel import ExecClass

    truth = load_profile("host-cpu").copy()
    truth.data["asymmetric_weight_factor"]["native"]["value"] = 2.6
    for key, (per_layer, per_group, per_el) in {"native_dynamic": (3.0, 0.4, 9.0),
                                                 "native_asymmetric": (1.0, 0.1, 60.0),
                                                 "weight_only": (2.5, 0.05, 20.0)}.items():
        truth.data["grouped_conv"][key]["us_per_layer"]["value"] = per_layer
        truth.data["grouped_conv"][key]["us_per_group"]["value"] = per_group
        truth.data["grouped_conv"][key]["ns_per_output_element"]["value"] = per_el

    def conv(name: str, ch: int, side: int, groups: int) -> LayerSpec:
        out, k = ch * side * side, 3 if groups > 1 else 1  # a depthwise 3x3, or a pointwise 1x1
        return LayerSpec(name, f"/{name}/Conv", "Conv", "w", (ch, ch // groups, k, k), ch * ch // groups * k * k,
                         out * ch // groups * k * k, "x", "y", 0, input_elements=out, output_elements=out,
                         groups=groups)

    layers = [conv("dw0", 16, 8, 16), conv("pw0", 16, 8, 1), conv("dw1", 64, 4, 64), conv("pw1", 64, 4, 1),
              conv("dw2", 128, 2, 128), conv("dw3", 32, 8, 32), conv("dw4", 48, 6, 48), conv("dw5", 96, 3, 96)]
    classes = [ExecClass("fp32", "fp32", "channel"), ExecClass("int8", "int8", "channel"),
               ExecClass("int8", "int8", "channel", zero_points=True), ExecClass("int8", "dynamic", "channel"),
               ExecClass("int8", "fp32", "channel"), ExecClass("int8", "int8", "tensor", zero_points=True)]
    samples = []
    for j in range(24):
        mix = [classes[(j + i * (1 + j % 5)) % len(classes)] for i in range(len(layers))]
        samples.append(Sample(f"c{j}", "cnn", "heldout" if j >= 19 else "fit", layers, mix, GraphStats(12, 4000), 1.0))
    samples = [replace(s, measured_ms=float(m)) for s, m in zip(samples, predict_ms(samples, truth))]
    per_layer = [LayerSample(s.id, s.workload, s.role, layer, tuple(c), 1.0)
                 for s in samples for layer, c in zip(s.layers, s.classes)]
    per_layer = [replace(ls, measured_ms=float(t)) for ls, t in zip(per_layer, predict_layers_ms(per_layer, truth))]
    start = load_profile("host-cpu")  # the shipped guesses, off by 0.3x-8x from the truth above
    fitted, report = fit(samples, start, per_layer)
    assert "grouped_conv.native_asymmetric.ns_per_output_element" in report["fitted"]
    # on the dynamic path, the per-call and per-element terms trade with the ops rescaling
    # ConvInteger's output (costed at the rest of the graph's shared rates): only the per-group
    # term is identified there, and the predictions below are what must hold
    identified = [(key, coef) for key in ("native_asymmetric", "weight_only")
                  for coef in ("us_per_layer", "us_per_group", "ns_per_output_element")]
    for key, coef in [*identified, ("native_dynamic", "us_per_group")]:
        got = fitted.num("grouped_conv", key, coef)
        want = truth.num("grouped_conv", key, coef)
        assert abs(got - want) <= 0.1 * want + 1e-3, (key, coef, got, want)
    lay = layer_errors(per_layer, fitted, truth)
    assert lay["heldout"]["mape"] < 0.03
    assert any(kind.endswith("native grouped") for kind in lay["fit"]["by_kind"]), lay["fit"]["by_kind"]
    # the asymmetric-weight factor of the static path is identified too (the pointwise Convs run it)
    got, want = fitted.num("asymmetric_weight_factor", "native"), truth.num("asymmetric_weight_factor", "native")
    assert "asymmetric_weight_factor.native" in report["fitted"] and abs(got / want - 1) < 0.05


@pytest.mark.slow
def test_stored_measurements_of_a_device_that_changed_are_measured_again(tmp_path: Path) -> None:
    """Some models stored, others to measure: stored ones are measured again first; where the device
    still runs as it did they are reused, where it now runs 3x slower (a busier or another board)
    nothing stored is reused, so one fit never mixes two states of the device."""
    from dataclasses import replace as dc_replace

    from harness.devices.transport import MeasureSettings
    from harness.run.calibrate import default_suite, run, transport_measure

    settings = MeasureSettings(runs=5, min_seconds=0.05, warmup_seconds=0.0, threads=1, profile_ops=False)
    gen = transport_measure("local", settings)
    real = next(gen)
    slower = {"factor": 1.0}
    calls: list[str] = []
    timed: dict[str, dict] = {}

    def device(path: Path) -> dict:
        # Each model is timed for real once; later measurements of it replay that record, so the
        # device "still runs as it did" exactly (two real timings of a 0.05 s run on a shared CI
        # machine can differ by more than the drift threshold) and "3x slower" is exactly 3x.
        if path.name not in timed:
            timed[path.name] = real(path)
        rec = copy.deepcopy(timed[path.name])
        calls.append(path.name)
        rec["latency_ms"] = {k: v * slower["factor"] if isinstance(v, float) else v
                             for k, v in rec["latency_ms"].items()}
        return rec

    suite = default_suite(quick=True)
    out = tmp_path / "d.yaml"
    kw = {"settings": settings, "measure": device, "progress": False, "plot": False, "max_passes": 2, "drift": 0.5}
    try:
        first = run("local", "host-cpu", out, suite=dc_replace(suite, items=suite.items[:5]), **kw)
        assert first["drift"]["checked"] is False and first["measured"] == 10
        calls.clear()
        held = run("local", "host-cpu", out, suite=dc_replace(suite, items=suite.items[:6]), **kw)
        # one anchor per kind of workload stored (the micro MatMuls, digits-vit), each measured twice
        assert held["drift"]["anchors"] == ["digits-vit-fp", "micro-mm8x64x64-fp"]
        assert held["drift"]["checked"] and not held["drift"]["moved"] and set(held["drift"]["ratios"]) == {
            "digits-vit-fp", "micro-mm8x64x64-fp"}
        assert held["reused"] == 10 and held["measured"] == 2 and len(calls) == 2 * 2 + 2
        calls.clear()
        slower["factor"] = 3.0
        moved = run("local", "host-cpu", out, suite=suite, **kw)
    finally:
        gen.close()
    assert moved["drift"]["moved"] and moved["drift"]["ratio"] == pytest.approx(3.0, rel=0.5)
    assert moved["reused"] == 0 and moved["measured"] == 2 * len(suite.items)
    assert len(calls) == 2 * 3 + moved["measured"]  # three anchors (micro, digits-vit, transformer), twice
    assert load_profile(out).calibration["drift"]["moved"] is True
    # the reset is in the file: a run resumed after it reuses what was measured since, nothing before
    from harness.run.calibrate import Store

    reloaded = Store(out.with_name("d.measurements.jsonl"))
    assert len(reloaded.records) == moved["measured"]
    assert all(rec["latency_ms"]["min"] > 0 for rec in reloaded.records.values())


@pytest.mark.slow
def test_the_drift_check_compares_an_anchor_with_its_stored_latency_over_all_its_passes(tmp_path: Path) -> None:
    """An anchor's stored latency is taken over its stored passes as a model's is (the median), and its
    repeats now likewise: stored passes at 1.0x and 1.2x, repeats at 1.1x, is a device that runs as it
    did (ratio 1.0), though the first pass alone would say 10 % slower (a reset at a 5 % bound)."""
    from dataclasses import replace as dc_replace

    from harness.devices.transport import MeasureSettings
    from harness.run.calibrate import default_suite, run, transport_measure

    settings = MeasureSettings(runs=5, min_seconds=0.05, warmup_seconds=0.0, threads=1, profile_ops=False)
    gen = transport_measure("local", settings)
    real = next(gen)
    factor = {"now": 1.0}
    timed: dict[str, dict] = {}
    seen: dict[str, int] = {}

    def device(path: Path) -> dict:  # each model timed once for real, then replayed at a factor
        if path.name not in timed:
            timed[path.name] = real(path)
        seen[path.name] = seen.get(path.name, 0) + 1
        rec = copy.deepcopy(timed[path.name])
        scale = factor["now"] if factor["now"] != 1.0 else (1.0 if seen[path.name] == 1 else 1.2)
        rec["latency_ms"] = {k: v * scale if isinstance(v, float) else v for k, v in rec["latency_ms"].items()}
        return rec

    suite = default_suite(quick=True)
    out = tmp_path / "d.yaml"
    kw = {"settings": settings, "measure": device, "progress": False, "plot": False, "max_passes": 2,
          "drift": 0.05}
    try:
        first = run("local", "host-cpu", out, suite=dc_replace(suite, items=suite.items[:5]), **kw)
        assert first["measured"] == 10  # two passes each: 1.0x, then 1.2x
        factor["now"] = 1.1
        held = run("local", "host-cpu", out, suite=dc_replace(suite, items=suite.items[:6]), **kw)
    finally:
        gen.close()
    assert held["drift"]["checked"] and not held["drift"]["moved"], held["drift"]
    assert all(r == pytest.approx(1.0) for r in held["drift"]["ratios"].values())
    assert held["reused"] == 10


@pytest.mark.slow
def test_stored_measurements_of_another_cpu_of_the_same_name_are_measured_again(tmp_path: Path) -> None:
    """The device now names another CPU than its stored records (a cloud host moved to a newer machine
    under the same name): nothing stored is reused, however close the anchors came out."""
    from dataclasses import replace as dc_replace

    from harness.devices.transport import MeasureSettings
    from harness.run.calibrate import default_suite, run, transport_measure

    settings = MeasureSettings(runs=5, min_seconds=0.05, warmup_seconds=0.0, threads=1, profile_ops=False)
    gen = transport_measure("local", settings)
    real = next(gen)
    cpu = {"name": "AMD EPYC (family 25 model 17 stepping 1)"}
    timed: dict[str, dict] = {}

    def device(path: Path) -> dict:
        # timed for real once, then replayed: the latencies are the same, only the CPU's name differs
        if path.name not in timed:
            timed[path.name] = real(path)
        rec = copy.deepcopy(timed[path.name])
        rec["environment"] = {**rec.get("environment", {}), "cpu_model": cpu["name"]}
        return rec

    suite = default_suite(quick=True)
    out = tmp_path / "c.yaml"
    kw = {"settings": settings, "measure": device, "progress": False, "plot": False, "max_passes": 2, "drift": 0.5}
    try:
        run("local", "host-cpu", out, suite=dc_replace(suite, items=suite.items[:5]), **kw)
        cpu["name"] = "AMD EPYC (family 26 model 2 stepping 1)"
        again = run("local", "host-cpu", out, suite=dc_replace(suite, items=suite.items[:6]), **kw)
    finally:
        gen.close()
    assert again["drift"]["ratio"] == pytest.approx(1.0)
    assert again["drift"]["moved"] and again["drift"]["other_cpu"] == {
        "stored": ["AMD EPYC (family 25 model 17 stepping 1)"], "now": [cpu["name"]]}
    assert again["reused"] == 0 and again["measured"] == 2 * 6

def test_a_models_last_fit_candidates_run_its_matmuls_on_matmulnbits(tmp_path: Path) -> None:
    """A search's block-quantized genes run MatMulNBits and no random mix draws one: the last two of a
    model's fit candidates put every MatMul on it (accuracy level 0 and 4), the rest float, and the mixes
    before them keep the seeds they had (their stored measurements stay valid)."""
    from harness.run.calibrate import MODEL_KERNEL_CANDIDATES, Builder, default_suite

    suite = default_suite(models=["builtin:digits-vit"])
    mine = [it for it in suite.items if it.id.startswith("model-")]
    assert [it.id.split("-")[-1] for it in mine[-2:]] == list(MODEL_KERNEL_CANDIDATES)
    few = [it for it in default_suite(models=["builtin:digits-vit"], model_candidates=5).items
           if it.id.startswith("model-")]
    assert not any(it.id.endswith(tuple(MODEL_KERNEL_CANDIDATES)) for it in few)  # no room: mixes only
    assert [it.genome for it in few if "mix" in it.id] == [it.genome for it in mine if it.id in {f.id for f in few}
                                                           and "mix" in it.id]
    builder = Builder(suite, tmp_path)
    for item, level in zip(mine[-2:], (None, 4)):
        genome = builder.genome(item)
        layers = builder.workload(item.workload).model.layers
        assert any(lay.op_type == "MatMul" for lay in layers)
        for lay in layers:
            gene = genome[lay.name]
            if lay.op_type == "MatMul":
                assert (gene.kernel, gene.weight_bits, gene.block_size, gene.accuracy_level) == (
                    "matmulnbits", 4, 32, level)
            else:
                assert gene.weight_bits == "fp"


def test_a_model_without_a_matmul_gets_random_mixes_in_place_of_the_matmulnbits_candidates(tmp_path: Path) -> None:
    # digits-cnn (Convs and a Gemm head): two more float builds would teach the fit nothing
    from harness.run.calibrate import MODEL_KERNEL_CANDIDATES, Builder, default_suite

    suite = default_suite(models=["builtin:digits-cnn"])
    last = [it for it in suite.items if it.id.startswith("model-")][-2:]
    assert [it.id.split("-")[-1] for it in last] == list(MODEL_KERNEL_CANDIDATES)
    builder = Builder(suite, tmp_path)
    layers = builder.workload("builtin:digits-cnn").model.layers
    assert not any(lay.op_type == "MatMul" for lay in layers)
    genomes = [builder.genome(it) for it in last]
    for genome in genomes:
        assert {str(genome[lay.name].weight_bits) for lay in layers} != {"fp"}
    assert genomes[0].hash != genomes[1].hash


def test_a_model_measured_more_often_does_not_look_faster() -> None:
    # the noise protocol gives the noisiest models more passes; the fastest of four passes on a host
    # with faster and slower phases is faster than the fastest of two, the median is not
    from harness.run.calibrate import pick_pass

    def passes(*values: float) -> list[tuple]:
        return [("item", "genome", v, {"pass": i}, Path(f"p{i}")) for i, v in enumerate(values)]

    calm, noisy = passes(3.86, 3.86), passes(3.79, 3.53, 3.07, 3.34)
    assert pick_pass(calm)[2] == pytest.approx(3.86)
    got = pick_pass(noisy)
    assert got[2] == pytest.approx((3.34 + 3.53) / 2)
    assert got[3] == {"pass": 3}  # the record (its per-op profile) of the pass nearest the median
    assert pick_pass(noisy, "min")[2] == 3.07 and pick_pass(noisy, "min")[3] == {"pass": 2}
    with pytest.raises(ValueError, match="median"):
        pick_pass(noisy, "mean")


def test_a_suite_too_large_to_be_a_calibration_is_refused_before_anything_is_measured(tmp_path: Path) -> None:
    from harness.core.errors import InputError
    from harness.run.calibrate import MAX_MODELS, Item, Suite, run

    measured: list[Path] = []
    items = [Item(f"m{i}", "micro:x", {}, "fit") for i in range(MAX_MODELS + 1)]
    with pytest.raises(InputError, match=f"at most {MAX_MODELS} models"):
        run("local", "host-cpu", tmp_path / "c.yaml", suite=Suite(items), measure=measured.append, progress=False)
    assert not measured and not list(tmp_path.iterdir())
    # a rule for taking a model's latency over its passes that does not exist: refused as early
    with pytest.raises(ValueError, match="across must be one of"):
        run("local", "host-cpu", tmp_path / "c.yaml", suite=Suite(items[:3]), measure=measured.append,
            progress=False, across="mean")
    assert not measured and not list(tmp_path.iterdir())


def test_stored_measurements_of_another_cpu_are_not_reused() -> None:
    # a cloud host keeps its name while the machine under it changes generation (Zen 4 -> Zen 5 here)
    from harness.run.calibrate import cpu_of, other_cpus

    zen5 = "AMD EPYC (family 26 model 2 stepping 1)"
    zen4 = "AMD EPYC (family 25 model 17 stepping 1)"
    assert other_cpus({zen4, zen5}, {zen5}) == [zen4]
    assert other_cpus({zen5}, {zen5}) == []
    assert other_cpus({"AMD EPYC", None}, {zen5}) == []  # before agent 1.6.1: the anchors decide
    assert other_cpus({"Cortex-A76"}, {None}) == []  # a device that names no CPU: nothing to compare
    assert cpu_of({"environment": {"cpu_model": zen5}}) == zen5 and cpu_of({"ok": False}) is None


def test_the_cost_of_streaming_beyond_the_cache_is_fitted_only_from_models_that_do() -> None:
    # none of these models reads more weights than the 32 MiB cache: the data cannot say what
    # streaming costs, so the profile's value stands (fitted freely it once ran to 3.5 ns a byte and
    # predicted MiniLM 18x too slow); one model that does makes it a fitted coefficient again
    from profiles.fit import fit_params, streams_beyond_cache

    base = load_profile("host-cpu")
    samples = _samples()
    key = ("memory", "beyond_cache_ns_per_byte")
    assert not streams_beyond_cache(base, samples)
    assert key not in {p.keys for p in fit_params(base, samples)}
    fitted, report = fit(samples, base)
    assert "memory.beyond_cache_ns_per_byte" not in report["fitted"]
    assert fitted.num(*key) == base.num(*key)
    big = Sample("big", "big", "fit", [_layer(4096, 4096, 1)], [("fp32", "fp32", "channel")], GraphStats(), 10.0)
    assert streams_beyond_cache(base, [*samples, big])  # 64 MiB of fp32 weights
    assert key in {p.keys for p in fit_params(base, [*samples, big])}
    layer_time = LayerSample("big", "big", "fit", big.layers[0], big.classes[0], 10.0, model_read_bytes=64 << 20)
    assert streams_beyond_cache(base, [layer_time])
