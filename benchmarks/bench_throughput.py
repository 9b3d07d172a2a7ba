"""Evaluation throughput: candidates per second, calibration reuse, cache hit rate, time outside ORT.

For digits-vit and MiniLM (``builtin:minilm-l6``, skipped when its extra is missing):
- candidates per second: random genomes from qae's per-layer menu (``harness.run.search.layer_choices``),
  each built from the cached calibration ranges and evaluated on the workload's evaluation data, one
  thread, one after the other, as a ``qae search --workers 1`` does on a cache miss;
- the share of that time spent outside ONNX Runtime's inference (``InferenceSession.run`` is timed by
  wrapping it; everything else, quantizing, serialising, session creation, metrics, is "outside");
- calibration reuse: one calibration pass (ONNX Runtime's calibrator, uncached) + one build, against
  one build from the cached ranges; the ratio is the per-candidate speed-up of calibrating once.
And for digits-vit, the fitness-cache hit rate of a real ``qae search`` run over two target profiles
in a fresh cache folder (the second target re-uses every host evaluation the first made).

    python -m benchmarks.bench_throughput [--quick] [--candidates N] [--minilm-candidates N]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

SEED = 0


class RunTimer:
    """Wraps ``onnxruntime.InferenceSession.run`` to add up the time spent in inference."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._orig: Any = None

    def __enter__(self) -> RunTimer:
        import onnxruntime

        self._orig = onnxruntime.InferenceSession.run
        orig, timer = self._orig, self

        def run(sess: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return orig(sess, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - t0

        onnxruntime.InferenceSession.run = run  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        import onnxruntime

        onnxruntime.InferenceSession.run = self._orig  # type: ignore[method-assign]


def random_genomes(work: Any, n: int, seed: int) -> list[Any]:
    from harness.core.genome import Genome
    from harness.run.config import SearchConfig
    from harness.run.seeds import layer_choices

    choices = layer_choices(work, SearchConfig(model="-", profiles=[]))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        layers = {}
        for layer, genes in zip(work.model.layers, choices):
            layers[layer.name] = genes[int(rng.integers(len(genes)))].to_dict()
        out.append(Genome.from_dict({"layers": layers}, work.layer_ops))
    return out


def throughput(spec: str, n: int) -> dict[str, Any]:
    """Build and evaluate ``n`` random genomes of ``spec`` on one thread; times split by phase."""
    from harness.quant.calibration import compute_ranges
    from harness.quant.workload import Workload

    work = Workload.open(spec)
    _ = work.reference_outputs  # FP32 reference once, as a search does before its first candidate
    genomes = random_genomes(work, n, SEED)
    build_s, eval_s, infer_s = [], [], []
    with RunTimer() as timer:
        t_all = time.perf_counter()
        for genome in genomes:
            t0 = time.perf_counter()
            result = work.build(genome)
            t1 = time.perf_counter()
            before = timer.seconds
            work.evaluate(result, threads=1)
            t2 = time.perf_counter()
            build_s.append(t1 - t0)
            eval_s.append(t2 - t1)
            infer_s.append(timer.seconds - before)
        total = time.perf_counter() - t_all
    # calibration reuse: calibrate (uncached) + build vs build from the cached ranges
    t0 = time.perf_counter()
    compute_ranges(work.model, work.calib, work.method)
    calib_s = time.perf_counter() - t0
    build_med = statistics.median(build_s)
    return {
        "workload": spec,
        "layers": len(work.model.layers),
        "candidates": n,
        "seed": SEED,
        "total_s": total,
        "candidates_per_s": n / total,
        "build_s_median": build_med,
        "evaluate_s_median": statistics.median(eval_s),
        "inference_s_total": sum(infer_s),
        "share_outside_inference": 1.0 - sum(infer_s) / total,
        "calibration_s": calib_s,
        "calibration_reuse_speedup": (calib_s + build_med) / build_med,
        "calibration_reuse_speedup_with_eval": (calib_s + build_med + statistics.median(eval_s))
        / (build_med + statistics.median(eval_s)),
    }


def cache_hit_rate(generations: int, population: int) -> dict[str, Any]:
    """A real ``qae search`` (digits-vit, two targets) in a fresh cache folder: fitness-cache hit rate."""
    from harness.run.archive import Archive
    from harness.run.config import SearchConfig
    from harness.run.search import run_search

    old = os.environ.get("QAE_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="qae-bench-cache-") as tmp:
        os.environ["QAE_CACHE_DIR"] = str(Path(tmp) / "cache")
        try:
            cfg = SearchConfig(model="builtin:digits-vit", profiles=["host-cpu-local", "hexagon-htp"],
                               generations=generations, population=population, seed=SEED)
            t0 = time.perf_counter()
            archive: Archive = run_search(cfg, Path(tmp) / "run")
            elapsed = time.perf_counter() - t0
            per_target: dict[str, dict[str, Any]] = {}
            for target in archive.targets():
                hist = archive.history(target)
                per_target[target] = {"evaluations": archive.count(target),
                                      "hit_rate_cumulative": hist[-1]["cache_hit_rate"] if hist else None}
            archive.close()
        finally:
            if old is None:
                os.environ.pop("QAE_CACHE_DIR", None)
            else:
                os.environ["QAE_CACHE_DIR"] = old
    total = sum(t["evaluations"] for t in per_target.values())
    return {"workload": "builtin:digits-vit", "targets": per_target, "generations": generations,
            "population": population, "seed": SEED, "told_evaluations": total, "seconds": elapsed,
            # cumulative over the run: the target searched last holds it
            "hit_rate": per_target[cfg.profiles[-1]]["hit_rate_cumulative"] if cfg.profiles[-1] in per_target
            else max(float(t["hit_rate_cumulative"] or 0.0) for t in per_target.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--candidates", type=int, default=40, help="digits-vit candidates")
    ap.add_argument("--minilm-candidates", type=int, default=3)
    args = ap.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    from harness.builtin import minilm

    n_digits, n_minilm = (8, 2) if args.quick else (args.candidates, args.minilm_candidates)
    gens, pop = (2, 8) if args.quick else (4, 16)
    rows = [throughput("builtin:digits-vit", n_digits)]
    skipped = None
    if minilm.available():
        rows.append(throughput("builtin:minilm-l6", n_minilm))
    else:
        skipped = minilm.MISSING
    cache = cache_hit_rate(gens, pop)
    path = common.write_result("throughput", {"benchmark": "throughput", "threads": 1, "workloads": rows,
                                              "cache": cache, "skipped": skipped})
    print("evaluation throughput (one thread, build from cached ranges + evaluate):")
    for r in rows:
        print(f"  {r['workload']:20s} {r['candidates_per_s']:6.2f} candidates/s over {r['candidates']}  "
              f"outside ORT inference {r['share_outside_inference'] * 100:4.1f} %  calibration reuse "
              f"{r['calibration_reuse_speedup']:.1f}x per build ({r['calibration_reuse_speedup_with_eval']:.2f}x "
              f"per candidate)")
    print(f"  fitness cache, qae search over 2 targets: hit rate {cache['hit_rate'] * 100:.1f} % "
          f"({cache['told_evaluations']} told evaluations)")
    if skipped:
        print(f"  MiniLM skipped: {skipped}", file=sys.stderr)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
