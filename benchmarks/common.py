"""What every benchmark records beside its numbers: machine, versions, date; and where it writes."""

from __future__ import annotations

import json
import os
import platform
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
