"""Building a candidate from cached calibration ranges vs a full ``quantize_static`` (digits-vit).

Both sides produce a w8a8 per-channel QDQ model of builtin:digits-vit, interleaved in one run so
they see the same machine state; the benchmark prints the ratio of medians and writes
results/bench/quantize.json. It also records the uniform baselines' accuracy and size.

    python -m benchmarks.bench_quantize [--repeats N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result
from harness.core.model import builtin_data
from harness.quant.workload import Workload

logging.getLogger().setLevel(logging.ERROR)  # ORT's quantize_static nags about pre-processing
W8A8 = {"weight_bits": 8, "activation_bits": 8, "scheme": "symmetric", "granularity": "per_channel"}


def full_quantize_static(model_path: Path, calib_path: Path, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    pixels = np.load(calib_path)["pixels"]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"pixels": pixels[i : i + 32]} for i in range(0, len(pixels), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(model_path),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    work = Workload.open("builtin:digits-vit")
    genome = work.uniform(**W8A8)
    full, cached = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            t = time.perf_counter()
            full_quantize_static(work.model.path, builtin_data("digits-vit", "calib"), Path(tmp) / "full.onnx")
            full.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = work.build(genome)
            (Path(tmp) / "cached.onnx").write_bytes(result.proto.SerializeToString())
            cached.append(time.perf_counter() - t)
    ratio = statistics.median(full) / statistics.median(cached)
    baselines: dict[str, dict[str, float]] = {}
    for name, fields in {
        "fp32": None,
        "w8a8": W8A8,
        "w4a8": {**W8A8, "weight_bits": 4},
        "w8_dynamic": {**W8A8, "activation_bits": "dynamic"},
        "w4_weight_only": {**W8A8, "weight_bits": 4, "activation_bits": "fp"},
    }.items():
        report = work.evaluate(None if fields is None else work.build(work.uniform(**fields)))
        baselines[name] = {
            "accuracy": report.accuracy,
            "mean_cosine": report.mean_cosine or 1.0,
            "weight_bytes": report.weight_bytes,
            "file_bytes": report.file_bytes,
        }
    path = write_result(
        "quantize",
        {
            "workload": "builtin:digits-vit",
            "repeats": args.repeats,
            "full_quantize_static_s": {"median": statistics.median(full), "all": full},
            "build_from_cached_ranges_s": {"median": statistics.median(cached), "all": cached},
            "speedup": ratio,
            "baselines": baselines,
        },
    )
    print(f"full quantize_static: median {statistics.median(full) * 1e3:.1f} ms over {args.repeats}")
    print(f"build from cached ranges: median {statistics.median(cached) * 1e3:.1f} ms over {args.repeats}")
    print(f"speed-up from calibrating once: {ratio:.2f}x")
    for name, row in baselines.items():
        print(f"  {name:15s} accuracy {row['accuracy'] * 100:6.2f} %  weights {row['weight_bytes']:>8,} B")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
