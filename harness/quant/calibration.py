"""Activation ranges: calibrate once per (model, data, method), cache on disk, reuse for every candidate.

ONNX Runtime's calibrator does the work; qae keys its result by the sha256 of the model file and of
the data file and the method, and stores it as JSON under the cache folder (``$QAE_CACHE_DIR``, else
``~/.cache/qae``). The file is written atomically, so a killed run never leaves a half cache.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from harness.core.atomic import atomic_write_text
from harness.core.errors import InputError
from harness.core.model import QUANTIZABLE_OPS, ModelInfo
from harness.core.paths import cache_dir
from harness.quant.data import Dataset

METHODS = ("minmax", "entropy", "percentile")
Ranges = dict[str, tuple[float, float]]
CALIB_BATCH = 32


def cache_path(model: ModelInfo, data: Dataset, method: str) -> Path:
    return cache_dir() / "calib" / f"{model.sha256[:16]}-{data.sha256[:16]}-{method}.json"


def activation_ranges(model: ModelInfo, data: Dataset, method: str = "minmax") -> tuple[Ranges, bool]:
    """Ranges of every tensor feeding or leaving a quantizable op; returns (ranges, from_cache)."""
    if method not in METHODS:
        raise InputError(f"calibration method {method!r} is not supported: use one of {', '.join(METHODS)}")
    path = cache_path(model, data, method)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            return {k: (float(v[0]), float(v[1])) for k, v in cached["ranges"].items()}, True
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is recomputed and overwritten
    ranges = compute_ranges(model, data, method)
    body = {"model_sha256": model.sha256, "data_sha256": data.sha256, "method": method, "ranges": ranges}
    atomic_write_text(path, json.dumps(body, sort_keys=True))
    return ranges, False


def compute_ranges(model: ModelInfo, data: Dataset, method: str) -> Ranges:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = data.batches(CALIB_BATCH)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    cal_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory(prefix="qae-calib-") as tmp:
        src = Path(tmp) / "model.onnx"
        import onnx

        onnx.save(model.proto, str(src))
        calibrator = create_calibrator(
            src,
            op_types_to_calibrate=list(QUANTIZABLE_OPS),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=cal_method,
            extra_options={"symmetric": False},
        )
        calibrator.collect_data(Reader())
        computed = calibrator.compute_data()
    out: Ranges = {}
    for name in computed:
        lo, hi = computed[name].range_value
        out[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return out
