"""The fault matrix (issue 13): every scenario of benchmarks/faults_run.py (the run),
faults_devices.py (the device boundary) and faults_files.py (files and data), each end to end with
real processes, then a table scenario -> outcome -> what the archive holds.

    python -m benchmarks.bench_faults [--only SUBSTRING]

Writes results/bench/faults.json; exits 1 if any scenario FAILED. A scenario module that is not
there yet is a row saying so (not a failure of the others).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

MODULES = ("benchmarks.faults_run", "benchmarks.faults_devices", "benchmarks.faults_files")


def run_all(only: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for module_name in MODULES:
        try:
            scenarios = importlib.import_module(module_name).SCENARIOS
        except ImportError as exc:
            rows.append({"module": module_name, "scenario": "(module)", "outcome": "missing",
                         "detail": f"not run: {exc}", "archive": "-", "lost": False, "duplicated": False,
                         "orphans": 0, "seconds": 0.0})
            continue
        for name, fn in scenarios:
            if only and only not in name:
                continue
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="qae-fault-") as tmp:
                try:
                    row = dict(fn(Path(tmp)))
                except Exception as exc:  # a scenario that crashes is itself a failure, shown as one row
                    row = {"outcome": "FAILED", "detail": f"scenario crashed: {type(exc).__name__}: {exc}",
                           "archive": "-", "lost": False, "duplicated": False, "orphans": 0,
                           "trace": traceback.format_exc(limit=3)}
            if row.get("lost") or row.get("duplicated") or row.get("orphans"):
                row["outcome"] = "FAILED"
            rows.append({"module": module_name, "scenario": name, **row,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{name:<40} {row['outcome']:<12} {row['archive']}", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'scenario':<40} {'outcome':<12} {'archive':<42} detail", "-" * 120]
    for r in rows:
        lines.append(f"{r['scenario'][:40]:<40} {r['outcome']:<12} {str(r['archive'])[:42]:<42} {r['detail']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_faults", description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run the scenarios whose name contains this")
    args = ap.parse_args(argv)
    rows = run_all(args.only)
    print()
    print(table(rows))
    failed = [r for r in rows if r["outcome"] == "FAILED"]
    path = write_result("faults", {"scenarios": rows, "failed": len(failed)})
    print(f"\n{len(rows)} scenarios, {len(failed)} failed: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
