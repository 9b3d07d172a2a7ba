"""What every benchmark records beside its numbers: machine, versions, date; and where it writes."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import time
from pathlib import Path
from typing import Any

from harness.core.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"


def environment() -> dict[str, Any]:
    import numpy
    import onnx
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": numpy.__version__,
    }


def write_result(name: str, body: dict[str, Any]) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps({"environment": environment(), **body}, indent=1, sort_keys=True) + "\n")
    return path


def archive_holds(db: Path) -> tuple[str, bool]:
    """What an archive holds, and whether any value was stored twice."""
    if not db.is_file():
        return "no archive", False
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        n = con.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
        errs = con.execute("SELECT COUNT(*) FROM errors").fetchone()[0]
        dupes = con.execute(
            "SELECT COUNT(*) FROM (SELECT hash, objective, source, COUNT(*) c FROM value_log "
            "GROUP BY target, hash, objective, source HAVING c > 1)"
        ).fetchone()[0]
        status = (con.execute("SELECT status FROM runs").fetchone() or ("absent",))[0]
    return f"{n} candidates, {errs} errors, status {status}", dupes > 0
