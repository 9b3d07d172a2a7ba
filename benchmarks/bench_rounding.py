"""Weight rounding methods against round-to-nearest, per layer and end to end (issue 15).

For every MatMul layer of a model, each method (rtn, mse, hqq, gptq from ``harness.quant.rounding``)
quantizes the weight at the same bits and block size, so at the same bytes, and the benchmark prints
the relative squared error of the weight (``||W - Wq||^2 / ||W||^2``) and of the layer output on the
calibration inputs GPTQ was fitted to and on held-out (evaluation) inputs. End to end, every MatMul
weight of the float model is replaced by its dequantized weight (what a weight-only QDQ or
MatMulNBits model computes, up to float rounding) and the model is scored on the evaluation split
with the workload's metric and mean cosine against FP32. Prints only; writes nothing under results/.

    python -m benchmarks.bench_rounding [--model builtin:minilm-l6] [--bits 4] [--block 32] [--asymmetric]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from harness.quant.evaluate import output_names, run_all, session
from harness.quant.rounding import METHODS, activation_samples, quantize_weight
from harness.quant.workload import Workload


def _rel(err: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum(err.astype(np.float64) ** 2) / max(float(np.sum(ref.astype(np.float64) ** 2)), 1e-30))


def run(spec: str, bits: int, block: int | None, symmetric: bool, max_rows: int, layers_cap: int | None) -> None:
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
    print(f"  end to end on the evaluation split ({work.eval_data.n} samples), all {len(layers)} layers replaced:")
    names_out = output_names(work.model.proto)
    for method in METHODS:
        proto = onnx.ModelProto()
        proto.CopyFrom(work.model.proto)
        for tensor in proto.graph.initializer:
            if tensor.name in deq[method]:
                tensor.CopyFrom(numpy_helper.from_array(deq[method][tensor.name], tensor.name))
        outputs = run_all(session(proto), work.eval_data, names_out)
        got: dict[str, Any] = work.score_outputs(outputs)
        print(f"    {method:5s} {got['metric']}={got['accuracy']:.4f}  mean cosine={got['mean_cosine']:.5f}"
              f"  sqnr={got['sqnr_db']:.2f} dB")


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
    for spec in models:
        for bits in args.bits or [4, 3]:
            run(spec, bits, args.block or None, not args.asymmetric, args.max_rows, 6 if args.quick else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
