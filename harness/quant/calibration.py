"""Activation ranges: calibrate once per (model, data, method), cache on disk, reuse for every candidate.

ONNX Runtime's calibrator does the work, fed as the data says (the model's fixed batch when it has
one, else 32 samples a run; constant inputs with every batch). qae keys its result by the sha256 of
the model file, of the data file with the layout it is read with (``Dataset.key``: constant inputs
and sample axes; the metric does not change ranges, so it is left out) and the method, and stores
it as JSON under the cache folder (``$QAE_CACHE_DIR``, else ``~/.cache/qae``). The file is written
atomically, so a killed run never leaves a half cache.

A cache file is read as untrusted: it must fit ``CACHE_SCHEMA`` (its model, data and method, and a
``[lo, hi]`` pair of numbers per tensor) and every range must be sane (``range_problem``: finite,
``lo <= hi``, within ``RANGE_LIMIT``, and a model input's range near what its data holds). Anything
else is recomputed, with a one-line warning, and overwritten. Freshly computed ranges pass the same
check before they are cached: a NaN range (calibration data holding NaN) is an error, never a file.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.atomic import atomic_write_text
from harness.core.errors import DataError, InputError, ModelError
from harness.core.inputs import warn
from harness.core.model import QUANTIZABLE_OPS, ModelInfo
from harness.core.paths import cache_dir
from harness.quant.data import Dataset

METHODS = ("minmax", "entropy", "percentile")
Ranges = dict[str, tuple[float, float]]
CALIB_BATCH = 32
#: The largest activation magnitude a range may have. Beyond it an 8-bit scale exceeds 4e9, so every
#: real value of the tensor quantizes to zero; no float32 model's activations go there, while a
#: damaged or tampered cache does (float32 itself ends at 3.4e38).
RANGE_LIMIT = 1e12
#: A model input's cached range may reach at most this many data spans beyond the data's own
#: min/max (minmax gives exactly them; entropy and percentile give less): more is not from this data.
INPUT_SLACK = 1.0

_PAIR = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
#: The calibration cache file (see ``activation_ranges``).
CACHE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model_sha256", "data_key", "method", "ranges"],
    "properties": {
        "model_sha256": {"type": "string"},
        "data_sha256": {"type": "string"},
        "data_key": {"type": "string"},
        "method": {"enum": list(METHODS)},
        "ranges": {"type": "object", "minProperties": 1, "additionalProperties": _PAIR},
    },
}


def cache_path(model: ModelInfo, data: Dataset, method: str) -> Path:
    return cache_dir() / "calib" / f"{model.sha256[:16]}-{data.key[:16]}-{method}.json"


def activation_ranges(model: ModelInfo, data: Dataset, method: str = "minmax") -> tuple[Ranges, bool]:
    """Ranges of every tensor feeding or leaving a quantizable op; returns (ranges, from_cache)."""
    if method not in METHODS:
        raise InputError(f"calibration method {method!r} is not supported: use one of {', '.join(METHODS)}")
    path = cache_path(model, data, method)
    if path.is_file():
        cached, problem = _read_cache(path, model, data, method)
        if cached is not None:
            return cached, True
        warn(f"calibration cache {path.name} is invalid ({problem}): the ranges are recomputed")
    ranges = compute_ranges(model, data, method)
    bad = ranges_problem(ranges, data)
    if bad is not None:  # never cache what a later read would refuse; say what in the data caused it
        raise DataError(
            f"calibration on {data.path.name} gives an unusable range ({bad}): "
            "remove the samples holding NaN or Inf from the calibration data"
        )
    body = {"model_sha256": model.sha256, "data_sha256": data.sha256, "data_key": data.key, "method": method,
            "ranges": ranges}
    atomic_write_text(path, json.dumps(body, sort_keys=True))
    return ranges, False


def _read_cache(path: Path, model: ModelInfo, data: Dataset, method: str) -> tuple[Ranges | None, str]:
    """(ranges, "") from a valid cache file, else (None, why it is not)."""
    import jsonschema

    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"not readable JSON: {type(exc).__name__}"
    err = next(iter(jsonschema.Draft202012Validator(CACHE_SCHEMA).iter_errors(body)), None)
    if err is not None:
        where = ".".join(str(p) for p in err.absolute_path) or "top level"
        return None, f"{where}: {err.message[:80]}"
    if (body["model_sha256"], body["data_key"], body["method"]) != (model.sha256, data.key, method):
        return None, "it belongs to another model, data set or method"
    ranges = {str(k): (float(v[0]), float(v[1])) for k, v in body["ranges"].items()}
    bad = ranges_problem(ranges, data)
    return (None, bad) if bad is not None else (ranges, "")


def ranges_problem(ranges: Ranges, data: Dataset) -> str | None:
    """Why these ranges cannot be used (naming the first bad tensor), or None when they are sane."""
    for name, (lo, hi) in ranges.items():
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return f"tensor {name!r} has range [{lo}, {hi}], not finite"
        if lo > hi:
            return f"tensor {name!r} has range [{lo:g}, {hi:g}] with low above high"
        if max(abs(lo), abs(hi)) > RANGE_LIMIT:
            return f"tensor {name!r} has range [{lo:g}, {hi:g}] beyond +-{RANGE_LIMIT:g}"
    for name, arr in data.inputs.items():  # a model input's range comes straight from its data
        if name not in ranges or arr.dtype.kind != "f" or not arr.size:
            continue
        finite = arr[np.isfinite(arr)]
        if not finite.size:
            continue
        dlo, dhi = float(finite.min()), float(finite.max())
        slack = INPUT_SLACK * max(dhi - dlo, abs(dlo), abs(dhi), 1e-6)
        lo, hi = ranges[name]
        if lo < dlo - slack or hi > dhi + slack:
            return f"input {name!r} has range [{lo:g}, {hi:g}] far outside its data's [{dlo:g}, {dhi:g}]"
    return None


def compute_ranges(model: ModelInfo, data: Dataset, method: str) -> Ranges:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            # The model's fixed batch wins over CALIB_BATCH (a batch-1 model is fed one sample a run).
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

        onnx.save(_typed(model.proto, data), str(src))
        calibrator = create_calibrator(
            src,
            op_types_to_calibrate=list(QUANTIZABLE_OPS),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=cal_method,
            extra_options={"symmetric": False},
        )
        try:
            calibrator.collect_data(Reader())
            computed = calibrator.compute_data()
        except Exception as exc:  # ORT's words on one line, with what to check
            msg = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"calibration cannot run the model on {data.path.name} ({msg}): check the data's shapes, "
                "--sample-axis and --constant-input"
            ) from None
    out: Ranges = {}
    for name in computed:
        lo, hi = computed[name].range_value
        out[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return out


def _typed(proto: Any, data: Dataset) -> Any:
    """``proto``, with a typed value_info for every tensor in or out of a quantizable op that ONNX
    shape inference leaves untyped (a com.microsoft op stops it): ONNX Runtime's calibrator skips
    untyped tensors, which would leave their layers without a range. The types come from one run."""
    import onnx
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(proto)
    except Exception:  # inference gives up on some models; the run below types what is needed
        inferred = proto
    typed = {
        vi.name
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    consts = {t.name for t in proto.graph.initializer}
    need = [
        t
        for node in proto.graph.node
        if node.op_type in QUANTIZABLE_OPS
        for t in (*node.input, *node.output)
        if t and t not in typed and t not in consts
    ]
    need = [t for t in dict.fromkeys(need) if t in {o for n in proto.graph.node for o in n.output}]
    if not need:
        return proto
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in need if n not in outputs)  # ORT types them
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = sess.run(need, data.first_feed())
    except Exception:  # the calibrator's own run reports what is wrong
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for name, value in zip(need, values):
        if isinstance(value, np.ndarray):
            elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            out.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return out
