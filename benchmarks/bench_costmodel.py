"""Calibrate ``host-cpu`` on this machine (local transport, <= 40 models) and report held-out error.

Run: ``python -m benchmarks.bench_costmodel [--quick] [--fresh]``. Prints, for the held-out whole
candidate models of digits-vit and of the larger transformer, the share of predictions within
+-10 % (nn-Meter's metric) and the MAPE, and writes everything to results/bench/costmodel.json.
Measurements are kept in results/bench/calibration/ and reused by a re-run (``--fresh`` discards them).
Also times the population path of the cost model (100 genomes) as a rate, not as a pass/fail.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from harness.core.atomic import atomic_write_text
from harness.core.genome import Gene, Genome
from harness.core.model import load_model
from harness.run.calibrate import default_suite, run
from profiles.costmodel import CostTable, GraphStats
from profiles.schema import load_profile

OUT = Path("results/bench")


def population_rate(profile_path: Path) -> dict[str, float]:
    """Time to predict 100 random digits-vit genomes (table built once)."""
    model = load_model("builtin:digits-vit")
    ops = {lay.name: lay.op_type for lay in model.layers}
    rng = np.random.default_rng(0)
    choices = [Gene(8, 8), Gene(4, 8), Gene("fp", "fp"), Gene(8, "dynamic"), Gene(16, 16), Gene(6, 6)]
    genomes = [Genome.from_dict({"layers": {n: choices[int(rng.integers(len(choices)))].to_dict() for n in ops}}, ops)
               for _ in range(100)]
    profile = load_profile(profile_path)
    t0 = time.perf_counter()
    table = CostTable(model.layers, profile, GraphStats.of(model))
    t1 = time.perf_counter()
    table.predict_many(genomes)
    t2 = time.perf_counter()
    return {"table_build_ms": (t1 - t0) * 1e3, "predict_100_genomes_ms": (t2 - t1) * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="7 tiny models: checks the pipeline only")
    ap.add_argument("--fresh", action="store_true", help="discard stored measurements first")
    args = ap.parse_args(argv)
    out = OUT / "calibration" / ("host-cpu-quick.yaml" if args.quick else "host-cpu-local.yaml")
    store = out.with_name(out.stem + ".measurements.jsonl")
    if args.fresh and store.exists():
        store.unlink()
    t0 = time.perf_counter()
    report = run("local", "host-cpu", out, suite=default_suite(quick=args.quick), progress=sys.stderr.isatty())
    elapsed = time.perf_counter() - t0
    held = report["heldout"]
    print(f"calibrated host-cpu on local: {report['models']} models x {report['passes']} passes "
          f"({report['measured']} measurements now, {report['reused']} reused, {len(report['failed'])} failed, "
          f"{elapsed:.0f} s), statistic {report['statistic']}")
    for workload, s in sorted(held.get("by_workload", {}).items()):
        print(f"  held-out {workload:22s} n={s['n']:2d}  within +-10 %: {s['within_10pct'] * 100:5.1f} %  "
              f"MAPE {s['mape'] * 100:5.1f} %")
    if held["n"]:
        share, mape = held["within_10pct"] * 100, held["mape"] * 100
        print(f"  held-out all                    n={held['n']:2d}  within +-10 %: {share:5.1f} %  MAPE {mape:5.1f} %")
    fitm = report["fit"]
    print(f"  fit set                         n={fitm['n']:2d}  within +-10 %: {fitm['within_10pct'] * 100:5.1f} %  "
          f"MAPE {fitm['mape'] * 100:5.1f} %")
    rate = population_rate(out)
    print(f"  cost model: table {rate['table_build_ms']:.1f} ms, then 100 genomes in "
          f"{rate['predict_100_genomes_ms']:.2f} ms")
    from benchmarks.common import environment

    result = {"benchmark": "costmodel", "profile": str(out), "elapsed_s": elapsed, **report, "population": rate,
              "environment": environment()}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "costmodel.json", json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
