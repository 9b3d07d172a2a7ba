"""``make bench``: run every benchmark part, then write results/bench/summary.md.

    python -m benchmarks [--parts PART,...] [--quick]

Parts: search, throughput, cluster, devices, costmodel, kernels, rounding, headline, finetune, litert.

Each part is its own module (``python -m benchmarks.bench_<part>``) and runs here in a child process,
so one failing part is reported and the others still run. The load average before and after each
part goes into results/bench/run.json, because the timing parts are only as quiet as the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import common

PARTS = ("search", "throughput", "cluster", "devices", "costmodel", "kernels", "rounding", "headline", "finetune",
         "litert")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="small settings: checks the pipeline, not the numbers")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part {unknown[0]!r}: use any of {', '.join(PARTS)}")
    runs = []
    for part in parts:
        cmd = [sys.executable, "-m", f"benchmarks.bench_{part}", *(["--quick"] if args.quick else [])]
        print(f"== {part}: {' '.join(cmd[1:])}", flush=True)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        runs.append({"part": part, "command": " ".join(["python", *cmd[1:]]), "rc": rc,
                     "seconds": time.perf_counter() - t0, "loadavg_before": list(load_before),
                     "loadavg_after": list(os.getloadavg())})
        print(f"== {part}: exit {rc} in {runs[-1]['seconds']:.0f} s", flush=True)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    run_path = common.RESULTS / "run.json"
    previous = json.loads(run_path.read_text()) if run_path.exists() else {}
    by_part = {r["part"]: r for r in previous.get("parts", [])}
    by_part.update({r["part"]: r for r in runs})
    common.write_result("run", {"quick": args.quick, "parts": [by_part[p] for p in PARTS if p in by_part]})
    from benchmarks.summary import write_summary

    path = write_summary(common.RESULTS)
    print(f"wrote {path}")
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
