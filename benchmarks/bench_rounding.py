"""Weight rounding methods against round-to-nearest, per layer and end to end (issue 15).

For every MatMul layer of a model, each method (rtn, mse, hqq, gptq from ``harness.quant.rounding``)
quantizes the weight at the same bits and block size, so at the same bytes, and the benchmark prints
the relative squared error of the weight (``||W - Wq||^2 / ||W||^2``) and of the layer output on the
calibration inputs GPTQ was fitted to and on held-out (evaluation) inputs. End to end, every MatMul
weight of the float model is replaced by its dequantized weight (what a weight-only QDQ or
MatMulNBits model computes, up to float rounding) and the model is scored on the evaluation split
with the workload's metric and mean cosine against FP32 on the TEST split (issue 14's rules: 95 %
intervals, and each method's paired difference with RTN on the same test samples: "better"/"worse"
only when its interval excludes 0). Writes results/bench/rounding.json.

    python -m benchmarks.bench_rounding [--model builtin:minilm-l6] [--bits 4] [--block 32] [--asymmetric]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from benchmarks import common
from harness.core.stats import SampleStats, interval, paired_difference, verdict
from harness.quant.evaluate import run_all, session
from harness.quant.rounding import METHODS, activation_samples, quantize_weight
from harness.quant.workload import Workload


def _rel(err: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum(err.astype(np.float64) ** 2) / max(float(np.sum(ref.astype(np.float64) ** 2)), 1e-30))


def _test_stats(work: Workload, proto: onnx.ModelProto) -> dict[str, SampleStats]:
    """Per-sample statistics on the test split: the workload's accuracy metric and the mean cosine
    with FP32 (pooled sentence embeddings for an embedding model, each sample's output otherwise)."""
    from benchmarks.bench_headline import split_stats
    from harness.quant.evaluate import evaluate

    if work.metric == "embedding":
        got = split_stats(work, proto, "test")
        return {"accuracy": got["top1_agreement"], "mean_cosine": got["mean_cosine"]}
    assert work.test_data is not None
    rep = evaluate(proto, work.test_data, file_bytes=proto.ByteSize(), reference_outputs=work.test_references,
                   plan=work.plan, with_stats=True)
    out = run_all(session(proto), work.test_data, [work.plan.outputs[0]])[work.plan.outputs[0]]
    ref = work.test_references[work.plan.outputs[0]]
    a, b = out.reshape(len(out), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    assert rep.sample_stats is not None
    return {"accuracy": SampleStats.from_dict(rep.sample_stats),
            "mean_cosine": SampleStats("mean", {"c": cos[:, None]})}


def run(spec: str, bits: int, block: int | None, symmetric: bool, max_rows: int,
        layers_cap: int | None) -> dict[str, Any]:
    work = Workload.open(spec)
    assert work.eval_data is not None
    layers = [lay for lay in work.model.layers if lay.op_type == "MatMul"][:layers_cap]
    names = [lay.name for lay in layers]
    t0 = time.perf_counter()
    xs = activation_samples(work.model, work.calib, names, max_rows=max_rows)
    held = activation_samples(work.model, work.eval_data, names, max_rows=max_rows)
    print(f"== {spec}: {len(layers)} MatMul layers, {bits}-bit, block {block or 'per-channel'}, "
          f"{'symmetric' if symmetric else 'asymmetric'}; samples {time.perf_counter() - t0:.1f}s "
          f"({xs[names[0]].shape[0]} calibration rows, {held[names[0]].shape[0]} held-out rows)")
    inits = {t.name: t for t in work.model.proto.graph.initializer}
    deq: dict[str, dict[str, np.ndarray]] = {m: {} for m in METHODS}
    ratios: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    seconds = dict.fromkeys(METHODS, 0.0)
    for layer in layers:
        w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        x, xh = xs[layer.name].astype(np.float64), held[layer.name].astype(np.float64)
        y, yh = x @ w, xh @ w
        errs = {}
        for method in METHODS:
            t = time.perf_counter()
            d = quantize_weight(w, bits, block_axis=1 - layer.channel_axis, block_size=block, symmetric=symmetric,
                                method=method, x=xs[layer.name]).dequantize()
            seconds[method] += time.perf_counter() - t
            deq[method][layer.weight] = d
            d64 = d.astype(np.float64)
            errs[method] = (_rel(d64 - w, w), _rel(x @ d64 - y, y), _rel(xh @ d64 - yh, yh))
        for method in METHODS:
            ratios[method].append([e / max(r, 1e-30) for e, r in zip(errs[method], errs["rtn"])])
        if layer is layers[0] or layer.name.endswith(("output.dense", "fc2")):
            print(f"  {layer.name} {list(w.shape)}: " + "  ".join(
                f"{m} w={e[0]:.5f} o={e[1]:.5f} held-out={e[2]:.5f}" for m, e in errs.items()))
    print("  mean ratio to rtn over layers (weight / output calib / output held-out), seconds for all layers:")
    for method in METHODS:
        r = np.mean(np.array(ratios[method]), axis=0)
        print(f"    {method:5s} {r[0]:.3f} / {r[1]:.3f} / {r[2]:.3f}   {seconds[method]:.1f}s")
    print(f"  end to end on the test split ({work.test_data.n if work.test_data else 0} samples), all {len(layers)} "
          "layers replaced (95 % intervals; difference with rtn, paired):")
    result: dict[str, Any] = {"model": spec, "bits": bits, "block_size": block, "symmetric": symmetric,
                              "layers": len(layers), "metric": work.plan.key, "methods": {}}
    stats: dict[str, dict[str, SampleStats]] = {}
    for method in METHODS:
        proto = onnx.ModelProto()
        proto.CopyFrom(work.model.proto)
        for tensor in proto.graph.initializer:
            if tensor.name in deq[method]:
                tensor.CopyFrom(numpy_helper.from_array(deq[method][tensor.name], tensor.name))
        stats[method] = _test_stats(work, proto)
        r = np.mean(np.array(ratios[method]), axis=0)
        row: dict[str, Any] = {"weight_error_ratio": float(r[0]), "output_error_ratio_calib": float(r[1]),
                               "output_error_ratio_heldout": float(r[2]), "seconds": seconds[method]}
        for key, st in stats[method].items():
            ci = interval(st)
            row[key] = {"value": ci.value, "ci95": [ci.lo, ci.hi], "method": ci.method}
            if method != "rtn":
                diff = paired_difference(st, stats["rtn"][key])
                row[key]["vs_rtn"] = {"difference": diff.value, "ci95": [diff.lo, diff.hi], "verdict": verdict(diff)}
        result["methods"][method] = row
        vs = row["mean_cosine"].get("vs_rtn")
        print(f"    {method:5s} {work.plan.key}={row['accuracy']['value']:.4f} {row['accuracy']['ci95']}  "
              f"mean cosine={row['mean_cosine']['value']:.5f}"
              + (f"  vs rtn {vs['difference']:+.5f} [{vs['ci95'][0]:+.5f}, {vs['ci95'][1]:+.5f}] {vs['verdict']}"
                 if vs else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    from harness.builtin import minilm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="model spec (repeatable); default digits-vit and, "
                    "when its extra is installed, minilm-l6")
    ap.add_argument("--bits", type=int, action="append", help="weight bits (repeatable; default 4 and 3)")
    ap.add_argument("--block", type=int, default=32, help="block size; 0 for per-channel")
    ap.add_argument("--asymmetric", action="store_true")
    ap.add_argument("--max-rows", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="first 6 layers only")
    args = ap.parse_args(argv)
    models = args.model or ["builtin:digits-vit", *(["builtin:minilm-l6"] if minilm.available() else [])]
    results = []
    for spec in models:
        for bits in args.bits or [4, 3]:
            results.append(run(spec, bits, args.block or None, not args.asymmetric, args.max_rows,
                               6 if args.quick else None))
    path = common.write_result("rounding", {"benchmark": "rounding", "quick": args.quick, "split": "test",
                                            "runs": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
