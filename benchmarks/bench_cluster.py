"""Evaluation on a Dask cluster (``qae search --cluster``): throughput with 1 and 2 local workers, bytes
shipped, per-task overhead, and the head's own cost per candidate (what bounds scaling).

For digits-vit and MiniLM (``builtin:minilm-l6``, skipped when its extra is missing):
- in process: random genomes from qae's per-layer menu built and scored one after another on this
  process's workload (``harness.run.evaluation.evaluate_on``, one thread), as ``--workers 1`` does;
- ``local:1`` and ``local:2``: the same genomes through ``harness.run.cluster.ClusterRunner`` (the code a
  search runs), timed from submission to the last result in order, after the cluster started and the
  workload was scattered (start-up timed apart);
- bytes shipped: once per worker, the pickled workload (model, ranges, data, FP32 references: what the
  scatter sends); per task, a genome there and its result back (pickle sizes, what Dask's serialization
  sends besides its small framing);
- per-task overhead: local:1 seconds per candidate minus in-process seconds per candidate.
For digits-vit also the head's cost per candidate: a ``qae search`` whose every evaluation is a fitness
cache hit (a second run over the first's cache): the engine's tell, the prediction and the archive
transaction, per candidate, between its first and last generation.

    python -m benchmarks.bench_cluster [--quick] [--candidates N] [--minilm-candidates N]
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.bench_throughput import random_genomes

SEED = 0
WORKERS = (1, 2)


def _in_process(work: Any, payloads: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    from harness.run.evaluation import evaluate_on

    evaluate_on(work, payloads[0])  # the first candidate (first session) apart, as on the cluster
    t0 = time.perf_counter()
    results = [evaluate_on(work, p) for p in payloads]
    return time.perf_counter() - t0, results


def _on_cluster(work: Any, payloads: list[dict[str, Any]], n: int) -> dict[str, Any]:
    from harness.run.cluster import ClusterRunner

    t0 = time.perf_counter()
    runner = ClusterRunner(f"local:{n}", work)
    start = time.perf_counter() - t0
    try:
        list(runner.map(payloads[:n]))  # each worker's first task (imports, first session) apart, as a search's
        t0 = time.perf_counter()
        results = list(runner.map(payloads))
        seconds = time.perf_counter() - t0
    finally:
        runner.close()
    return {"workers": n, "start_s": start, "seconds": seconds, "candidates_per_s": len(payloads) / seconds,
            "results": results}


def workload_row(spec: str, n: int) -> dict[str, Any]:
    from harness.quant.workload import Workload

    work = Workload.open(spec)
    _ = work.references, work.plan  # as the runner does before it scatters
    payloads = [g.to_dict() for g in random_genomes(work, n, SEED)]
    local_s, local_results = _in_process(work, payloads)
    clusters = [_on_cluster(work, payloads, w) for w in WORKERS]
    for c in clusters:  # the same numbers wherever a candidate is scored
        c["same_results_as_in_process"] = c.pop("results") == local_results
    per_task = [len(pickle.dumps(p, protocol=5)) for p in payloads]
    back = [len(pickle.dumps(r, protocol=5)) for r in local_results]
    one = next(c for c in clusters if c["workers"] == 1)
    return {
        "workload": spec,
        "layers": len(work.model.layers),
        "candidates": n,
        "seed": SEED,
        "in_process_s": local_s,
        "in_process_candidates_per_s": n / local_s,
        "clusters": clusters,
        "bytes_per_worker": len(pickle.dumps(work, protocol=5)),
        "bytes_per_task_sent": statistics.mean(per_task),
        "bytes_per_task_returned": statistics.mean(back),
        "overhead_per_task_s": one["seconds"] / n - local_s / n,
        "speedup_2_over_1": clusters[-1]["candidates_per_s"] / one["candidates_per_s"],
    }


def head_cost(generations: int, population: int) -> dict[str, Any]:
    """Seconds the head spends per candidate when evaluating is free (every candidate a cache hit)."""
    from harness.run.config import SearchConfig
    from harness.run.search import run_search

    old = os.environ.get("QAE_CACHE_DIR")
    marks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory(prefix="qae-bench-cluster-") as tmp:
        os.environ["QAE_CACHE_DIR"] = str(Path(tmp) / "cache")
        try:
            cfg = SearchConfig(model="builtin:digits-vit", profiles=["hexagon-htp"], generations=generations,
                               population=population, seed=SEED)
            run_search(cfg, Path(tmp) / "first", say=lambda _m: None).close()  # fills the cache
            run_search(cfg, Path(tmp) / "second", say=lambda _m: None,
                       on_progress=lambda p: marks.append((time.perf_counter(), p.evaluations))).close()
        finally:
            if old is None:
                os.environ.pop("QAE_CACHE_DIR", None)
            else:
                os.environ["QAE_CACHE_DIR"] = old
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    return {"workload": "builtin:digits-vit", "generations": generations, "population": population,
            "candidates_timed": n_last - n_first, "seconds_per_candidate": (t_last - t_first) / (n_last - n_first)}


def scaling(row: dict[str, Any], head_s: float, population: int) -> dict[str, Any]:
    """The short calculation the README quotes: N machines of one worker each, one generation of
    ``population`` candidates between two barriers."""
    t = row["in_process_s"] / row["candidates"] + row["overhead_per_task_s"]  # one task on one worker
    per_gen = {n: -(-population // n) * t for n in (1, 2, 4, 8, 16, 24, 48)}  # ceil(P/N) rounds per generation
    rate = {n: min(population / s, 1 / head_s) for n, s in per_gen.items()}
    return {"task_s": t, "head_s": head_s, "population": population, "head_bound_candidates_per_s": 1 / head_s,
            "candidates_per_s_by_machines": rate}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--candidates", type=int, default=40, help="digits-vit candidates")
    ap.add_argument("--minilm-candidates", type=int, default=4)
    ap.add_argument("--population", type=int, default=24, help="the population of the scaling calculation")
    args = ap.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from harness.builtin import minilm

    n_digits, n_minilm = (8, 2) if args.quick else (args.candidates, args.minilm_candidates)
    gens, pop = (2, 8) if args.quick else (4, 16)
    load_before = os.getloadavg()
    rows = [workload_row("builtin:digits-vit", n_digits)]
    skipped = None
    if minilm.available():
        rows.append(workload_row("builtin:minilm-l6", n_minilm))
    else:
        skipped = minilm.MISSING
    head = head_cost(gens, pop)
    load_after = os.getloadavg()
    calc = {r["workload"]: scaling(r, head["seconds_per_candidate"], args.population) for r in rows}
    path = common.write_result("cluster", {
        "benchmark": "cluster", "engine": "dask distributed", "workloads": rows, "head": head, "scaling": calc,
        "skipped": skipped, "cores": os.cpu_count(), "loadavg_before": list(load_before),
        "loadavg_after": list(load_after)})
    print(f"evaluation on a local Dask cluster ({os.cpu_count()} cores, load average {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}):")
    for r in rows:
        c1, c2 = r["clusters"]
        print(f"  {r['workload']:20s} in process {r['in_process_candidates_per_s']:6.2f}/s  local:1 "
              f"{c1['candidates_per_s']:6.2f}/s  local:2 {c2['candidates_per_s']:6.2f}/s  over {r['candidates']}; "
              f"overhead {r['overhead_per_task_s'] * 1e3:.0f} ms/task; {r['bytes_per_worker'] / 1e6:.2f} MB per "
              f"worker, {r['bytes_per_task_sent']:.0f} B + {r['bytes_per_task_returned']:.0f} B per task")
    print(f"  head: {head['seconds_per_candidate'] * 1e3:.1f} ms per candidate with every evaluation cached")
    if skipped:
        print(f"  MiniLM skipped: {skipped}", file=sys.stderr)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
