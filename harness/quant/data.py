"""Calibration and evaluation sets: one ``.npz`` array per model input, plus optional ``labels``.

Arrays are checked against the model before anything runs: every input present, no unknown array,
the same number of samples in each, the same kind of dtype (a float64 array is cast to a float32
input, an int array never to a float one) and every fixed dimension equal.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.errors import DataError
from harness.core.model import ModelInfo

LABELS = "labels"


@dataclass
class Dataset:
    """Validated arrays for one model; ``inputs`` keyed by input name, all of length ``n``."""

    path: Path
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    sha256: str

    @property
    def n(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.n, size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}


def load_dataset(path: str | Path, model: ModelInfo) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found: give an .npz with one array per model input")
    raw = path.read_bytes()
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable .npz file ({type(exc).__name__}): save it with numpy.savez"
        ) from None
    labels = arrays.pop(LABELS, None)
    names = [spec.name for spec in model.inputs]
    for name in names:
        if name not in arrays:
            raise DataError(
                f"{path} has no array for model input {name!r}: save one array per input, "
                f"e.g. numpy.savez(path, {name}=...)"
            )
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise DataError(
            f"{path} has an array {extra[0]!r} that is no model input: the inputs are "
            f"{', '.join(names)} (and optional 'labels')"
        )
    inputs: dict[str, np.ndarray] = {}
    count = None
    for spec in model.inputs:
        arr = arrays[spec.name]
        want = np.dtype(spec.dtype)
        if arr.dtype != want:
            if arr.dtype.kind != want.kind and not (arr.dtype.kind in "iu" and want.kind in "iu"):
                raise DataError(
                    f"{path}: array {spec.name!r} is {arr.dtype} but the model input is {want}: "
                    f"convert it with .astype(numpy.{want})"
                )
            arr = arr.astype(want)
        if arr.ndim != len(spec.shape):
            raise DataError(
                f"{path}: array {spec.name!r} has shape {list(arr.shape)} but the model input has "
                f"{len(spec.shape)} dimensions {_fmt(spec.shape)}: reshape the data"
            )
        for axis, (got, need) in enumerate(zip(arr.shape, spec.shape)):
            if axis > 0 and need is not None and got != need:
                raise DataError(
                    f"{path}: array {spec.name!r} has shape {list(arr.shape)} but the model input is "
                    f"{_fmt(spec.shape)} (dimension {axis} must be {need}): reshape the data"
                )
        if count is not None and len(arr) != count:
            raise DataError(f"{path}: arrays have different sample counts ({count} and {len(arr)})")
        count = len(arr)
        inputs[spec.name] = np.ascontiguousarray(arr)
    if not count:
        raise DataError(f"{path} holds no samples: give at least one")
    if labels is not None and (labels.ndim != 1 or len(labels) != count or labels.dtype.kind not in "iu"):
        raise DataError(
            f"{path}: 'labels' must be a 1-D integer array of {count} class indices, "
            f"got {labels.dtype} with shape {list(labels.shape)}"
        )
    return Dataset(path, inputs, labels, hashlib.sha256(raw).hexdigest())


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
