"""ONNX Runtime against LiteRT on the same genomes (issue 21): which runtime wins for which genome.

    python -m benchmarks.bench_litert [--quick] [--models digits-vit,minilm-l6]

For builtin:digits-vit and builtin:minilm-l6, the same genomes are built twice, by qae's ONNX path
(QDQ / dynamic quantization, run by ONNX Runtime's CPU provider) and by its LiteRT path
(ai-edge-quantizer recipes, run by LiteRT's interpreter with XNNPACK), from the same weights (the
LiteRT built-ins are converted from the torch definitions with the shipped ONNX weights loaded):

- ``w8-dynamic``: every layer int8 weights, dynamic activations;
- ``w8a8``: static int8 weights and activations;
- ``w4-weight-only``: int4 weights, float activations;
- ``mixed``: a mixed point: digits-vit's is the recommended point of a short LiteRT search run here
  (so it is one a LiteRT front holds); MiniLM's is a rule (its FFN-output MatMuls, whose inputs carry
  the outliers FACTS.md names, with dynamic activations, the other MatMuls static w8a8, the word table
  int8 weight-only), because a search on MiniLM does not fit this benchmark's time.

Where a runtime cannot build a gene for a layer (LiteRT's DEPTHWISE_CONV_2D takes 8-bit weights only),
that layer takes the nearest gene both can build, on both runtimes, and the result says which.

Each model file is measured by the real agent over the local transport (a fresh child process per
model, the same method for both runtimes: warm-up, then >= ``runs`` timed runs and >= ``seconds``, one
thread), ONNX Runtime and LiteRT interleaved genome by genome, so both see the same machine state. Reported:
size (file and weights as stored), the metric on the test split with its 95 % interval, p50 latency
with its 95 % interval, and LiteRT / ONNX Runtime with a Mann-Whitney test. OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result
from harness.core.atomic import atomic_write_text

GENOMES: dict[str, dict[str, Any]] = {
    "w8-dynamic": {"default": {"weight_bits": 8, "activation_bits": "dynamic"}},
    "w8a8": {"default": {"weight_bits": 8, "activation_bits": 8}},
    "w4-weight-only": {"default": {"weight_bits": 4, "activation_bits": "fp"}},
}


def minilm_mixed(layers: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in layers:
        if name.endswith("embeddings"):
            out[name] = {"weight_bits": 8, "activation_bits": "fp"}
        elif ".output.dense" in name and ".attention." not in name:  # the six FFN-output MatMuls
            out[name] = {"weight_bits": 8, "activation_bits": "dynamic"}
        else:
            out[name] = {"weight_bits": 8, "activation_bits": 8}
    return {"default": {"weight_bits": "fp"}, "layers": out}


def vit_front_point(quick: bool, out: Path) -> tuple[dict[str, Any], str]:
    """The recommended point of a short LiteRT search on digits-vit (profile litert-xnnpack)."""
    from harness.cli.main import main

    run = out / "vit-search"
    gens, pop = ("2", "6") if quick else ("4", "12")
    code = main(["search", "builtin:digits-vit", "--runtime", "litert", "--profile", "litert-xnnpack",
                 "--generations", gens, "--population", pop, "--seed", "0", "--out", str(run)])
    if code != 0:
        raise SystemExit(f"the LiteRT search on digits-vit failed ({code})")
    fronts = json.loads((run / "front.json").read_text())["targets"]["litert-xnnpack"]
    point = next(p for p in fronts["points"] if p["id"] == fronts["recommended"])
    return point["genome"], f"recommended point {point['id'][:12]} of `qae search builtin:digits-vit --runtime " \
                            f"litert --profile litert-xnnpack --generations {gens} --population {pop} --seed 0`"


def buildable(lite: Any, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The genome with every layer LiteRT cannot build moved to the nearest gene it can (8-bit weights,
    the same activation, else weight-only); the adjusted layer names."""
    from harness.quant.litert_quant import layer_supported

    genome = lite.genome(data)
    layers: dict[str, Any] = {}
    adjusted = []
    for layer in lite.model.layers:
        gene = genome[layer.name]
        if layer_supported(lite.model, layer.name, gene):
            layers[layer.name] = gene.to_dict()
            continue
        for w, a in ((8, gene.activation_bits), (8, "fp")):
            d = {**gene.to_dict(), "weight_bits": w, "activation_bits": a}
            if layer_supported(lite.model, layer.name, lite.genome({"default": {"weight_bits": "fp"},
                                                                    "layers": {layer.name: d}})[layer.name]):
                layers[layer.name] = d
                adjusted.append(f"{layer.name}: w{gene.weight_bits}/{gene.activation_bits} -> w{w}/{a}")
                break
    return {"default": {"weight_bits": "fp"}, "layers": layers}, adjusted


def measure(path: Path, shapes: dict[str, list[int]], runs: int, seconds: float) -> dict[str, Any]:
    from harness.core.latency_stats import median_ci
    from harness.devices.config import get_device
    from harness.devices.connect import connect
    from harness.devices.transport import MeasureSettings

    settings = MeasureSettings(runs=runs, min_seconds=seconds, warmup_seconds=0.3, threads=1, idle_seconds=0.0,
                               input_shapes=shapes, timeout_s=300)
    with connect(get_device("local")) as transport:
        rec = transport.measure(path, settings)
    if not rec.ok or not rec.runs_ms or rec.latency_ms is None:
        return {"error": f"{rec.error_kind}: {rec.message[:200]}"}
    lo, hi = median_ci(rec.runs_ms)
    return {"p50_ms": rec.latency_ms["p50"], "p50_ci95_ms": [lo, hi], "n": len(rec.runs_ms),
            "runtime": rec.environment.get("runtime"), "runs_ms": rec.runs_ms}


def one_model(name: str, quick: bool, out: Path) -> dict[str, Any]:
    from harness.core.latency_stats import compare
    from harness.core.stats import SampleStats, interval, paired_difference, verdict
    from harness.quant.litert_workload import LiteWorkload
    from harness.quant.quantize import model_suffix, save_model
    from harness.quant.workload import Workload

    t0 = time.perf_counter()
    onnx_work = Workload.open(f"builtin:{name}")
    lite_work = LiteWorkload.open_lite(f"builtin:{name}")
    setup_s = time.perf_counter() - t0
    genomes = dict(GENOMES)
    if name == "digits-vit":
        mixed, how = vit_front_point(quick, out)
    else:
        mixed, how = minilm_mixed(lite_work.model.layer_names), "rule: FFN outputs w8 dynamic, other MatMuls w8a8, " \
                                                                  "embedding tables w8 weight-only"
    genomes["mixed"] = mixed
    runs, seconds = (20, 0.3) if quick else (100, 2.0)
    rows = []
    for label, data in genomes.items():
        common, adjusted = buildable(lite_work, data)
        row: dict[str, Any] = {"genome": label, "adjusted_for_litert": adjusted}
        if label == "mixed":
            row["source"] = how
        runtimes: dict[str, Any] = {}
        samples: dict[str, Any] = {}
        for runtime, work in (("onnxruntime", onnx_work), ("litert", lite_work)):
            genome = work.genome(common)
            t = time.perf_counter()
            result = work.build(genome)
            build_s = time.perf_counter() - t
            path = out / f"{name}-{label}{model_suffix(result)}"
            save_model(result, path)
            report = work.evaluate(result, threads=1, split="test", with_stats=True)
            samples[runtime] = SampleStats.from_dict(report.sample_stats) if report.sample_stats else None
            stats = interval(samples[runtime]) if samples[runtime] is not None else None
            runtimes[runtime] = {
                "genome_hash": genome.hash, "build_s": build_s, "file_bytes": path.stat().st_size,
                "weight_bytes": report.weight_bytes, "metric": report.metric, "test": report.accuracy,
                "test_ci95": None if stats is None else [stats.lo, stats.hi], "n_test": report.n,
                "mean_cosine": report.mean_cosine,
                "latency": measure(path, dict(work.model.shapes_used), runs, seconds),
            }
        if samples["litert"] is not None and samples["onnxruntime"] is not None:  # the same test samples: paired
            diff = paired_difference(samples["litert"], samples["onnxruntime"])
            row["litert_minus_onnxruntime_test"] = {**diff.to_dict(), "verdict": verdict(diff)}
        a, b = runtimes["litert"]["latency"], runtimes["onnxruntime"]["latency"]
        if "runs_ms" in a and "runs_ms" in b:
            row["litert_over_onnxruntime"] = compare(a["runs_ms"], b["runs_ms"], b_name="ONNX Runtime").to_dict()
        for r in runtimes.values():
            r["latency"].pop("runs_ms", None)
        row.update(runtimes)
        rows.append(row)
        print(f"{name} {label}: " + ", ".join(
            f"{rt} {v['file_bytes']:,} B, test {v['test']:.4f}, p50 {v['latency'].get('p50_ms', float('nan')):.4f} ms"
            for rt, v in runtimes.items()), flush=True)
    return {"model": f"builtin:{name}", "setup_s": setup_s, "rows": rows,
            "input_shapes": dict(onnx_work.model.shapes_used)}


def markdown(body: dict[str, Any]) -> str:
    env = body["environment_note"]
    lines = [
        "# ONNX Runtime vs LiteRT on the same genomes (issue 21)",
        "",
        f"{env}. Latency: p50 of one-thread runs measured by the qae agent over the local transport (fresh child "
        "process per model; each run feeds the inputs and reads the outputs, onnxruntime's run(feed) and LiteRT's "
        "set_tensor / invoke / get_tensor), ONNX Runtime and LiteRT interleaved; [95 % interval of the median]. "
        "Metric on the test "
        "split with its 95 % bootstrap interval. Sizes as stored in the file. `LiteRT / ORT` is the ratio of medians "
        "(Mann-Whitney, significant at p < 0.05 and at least 5 % apart, else 'same').",
        "",
    ]
    for model in body["models"]:
        lines += [f"## {model['model']} (input {model['input_shapes']})", "",
                  "| genome | runtime | file bytes | weight bytes | test metric [95 %] | p50 ms [95 %] "
                  "| LiteRT / ORT |",
                  "|---|---|---:|---:|---|---|---|"]
        for row in model["rows"]:
            cmp = row.get("litert_over_onnxruntime")
            verdict = "" if cmp is None else f"{cmp['ratio']:.2f}x" + ("" if cmp["significant"] else " (same)")
            for rt in ("onnxruntime", "litert"):
                v = row[rt]
                lat = v["latency"]
                ci = v["test_ci95"]
                test = f"{v['test']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
                p50 = (f"{lat['p50_ms']:.4f} [{lat['p50_ci95_ms'][0]:.4f}, {lat['p50_ci95_ms'][1]:.4f}]"
                       if "p50_ms" in lat else lat.get("error", "?"))
                lines.append(f"| {row['genome']} | {rt} | {v['file_bytes']:,} | {v['weight_bytes']:,} | "
                             f"{v['metric']} {test} | {p50} | {verdict if rt == 'litert' else ''} |")
        lines += ["", "Which runtime wins (LiteRT against ONNX Runtime, same genome):", ""]
        for row in model["rows"]:
            cmp, diff = row.get("litert_over_onnxruntime"), row.get("litert_minus_onnxruntime_test")
            speed = "latency: no comparison" if cmp is None else (
                f"LiteRT {1 / cmp['ratio']:.1f}x faster" if cmp["significant"] and cmp["ratio"] < 1 else
                f"ONNX Runtime {cmp['ratio']:.1f}x faster" if cmp["significant"] else "same latency (within noise)")
            acc = "" if diff is None else (
                f"; test metric {diff['value']:+.4f} [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}] paired: "
                f"LiteRT {diff['verdict']}")
            size = row["litert"]["file_bytes"] / row["onnxruntime"]["file_bytes"]
            lines.append(f"- {row['genome']}: {speed}{acc}; LiteRT file {size:.2f}x the ONNX one")
        notes = [f"- {row['genome']}: LiteRT cannot build {', '.join(row['adjusted_for_litert'])}; both runtimes "
                 "ran the adjusted genome" for row in model["rows"] if row["adjusted_for_litert"]]
        notes += [f"- mixed: {row['source']}" for row in model["rows"] if row.get("source")]
        lines += ["", *notes, ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_litert", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs and a shorter search: checks the pipeline")
    ap.add_argument("--models", default="digits-vit,minilm-l6")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qae-bench-litert-") as tmp:
        models = [one_model(m.strip(), args.quick, Path(tmp)) for m in args.models.split(",") if m.strip()]
    load_after = os.getloadavg()
    from harness.quant.litert_model import litert_version

    note = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine (2 cores), OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS')}, busy machine (other engineers' jobs: load average "
            f"{load_before[0]:.1f} before, {load_after[0]:.1f} after), ai-edge-litert {litert_version()}")
    body = {"models": models, "quick": args.quick, "seconds": time.perf_counter() - t0, "environment_note": note,
            "loadavg_before": list(load_before), "loadavg_after": list(load_after),
            "litert": litert_version()}
    path = write_result("litert", body)
    atomic_write_text(RESULTS / "litert.md", markdown(body))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
