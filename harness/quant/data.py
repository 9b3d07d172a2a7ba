"""Calibration and evaluation sets: one ``.npz`` array per model input, plus optional ``labels``.

The data convention
-------------------
Every model input has one array, named like the input. An array is either **per-sample** or
**constant**:

- A per-sample array holds the samples along axis 0, or along the axis K given for that input
  (``--sample-axis NAME=K``: e.g. ``K=1`` for a recurrent input laid out ``[T, N, F]``). Its other
  dimensions must equal the model's fixed dimensions. All per-sample arrays hold the same number of
  samples, and ``labels`` (optional) is a 1-D integer array with one class index per sample.
- A constant array is fed as stored, unchanged, with every batch: a scalar such as a sample rate,
  an initial recurrent state ``[2, 1, 128]``. Name it with ``--constant-input NAME``. A 0-d array
  is constant without being named. Its shape must equal the model's fixed dimensions.

How many samples one inference takes: when the model fixes the dimension at an input's sample
axis (e.g. a batch of 1), calibration and evaluation feed exactly that many samples per run (one
at a time for 1), and the number of samples must be a multiple of it. Otherwise batches are as
large as the caller asks (32 for calibration, 256 for evaluation).

An ``.npz`` file can describe itself: a reserved array ``qae_inputs`` holding one JSON string, e.g.
``numpy.savez(path, x=..., state=..., sr=numpy.int64(16000),
qae_inputs=numpy.array('{"constant": ["state"], "sample_axis": {"x": 1}}'))``.
It is read without pickle and checked against a schema; flags given on the command line win over it
for the inputs they name.

Arrays are checked against the model before anything runs: every input present, no unknown array,
the same kind of dtype (a float64 array is cast to a float32 input, an int array never to a float
one) and every fixed dimension equal. Every failure is a one-line ``DataError`` that says the fix.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import DataError, InputError
from harness.core.model import ModelInfo, TensorSpec

LABELS = "labels"
#: the reserved array of a self-describing .npz (a 0-d JSON string)
LAYOUT = "qae_inputs"
#: batch size when the model does not fix one and the caller names none
DEFAULT_BATCH = 256
#: the seed of ``--holdout`` splits (recorded in the run with the indices each part got)
HOLDOUT_SEED = 20261201

_LAYOUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "constant": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "sample_axis": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
    },
    "additionalProperties": False,
}


@dataclass(frozen=True)
class DataOptions:
    """How data is laid out and scored; everything a Workload needs besides the files.

    ``constant_inputs``: inputs fed as stored with every batch. ``sample_axes``: (input, axis) pairs
    for per-sample inputs whose samples are not along axis 0. ``metric``: ``auto``, a metric name
    from ``harness.quant.metrics`` or ``module:function``. ``outputs``: the outputs to score (all
    when empty).
    """

    constant_inputs: tuple[str, ...] = ()
    sample_axes: tuple[tuple[str, int], ...] = ()
    metric: str = "auto"
    outputs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "constant_inputs": list(self.constant_inputs),
            "sample_axes": {name: axis for name, axis in self.sample_axes},
            "metric": self.metric,
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DataOptions:
        d = d or {}
        axes = d.get("sample_axes") or {}
        pairs = axes.items() if isinstance(axes, dict) else axes
        return cls(
            constant_inputs=tuple(str(n) for n in d.get("constant_inputs") or ()),
            sample_axes=tuple((str(n), int(k)) for n, k in pairs),
            metric=str(d.get("metric") or "auto"),
            outputs=tuple(str(n) for n in d.get("outputs") or ()),
        )

    def layout(self) -> dict[str, Any]:
        """The part that changes what is fed to the model (not how it is scored)."""
        return {"constant_inputs": sorted(self.constant_inputs), "sample_axes": dict(sorted(self.sample_axes))}


@dataclass
class Dataset:
    """Validated arrays for one model; ``inputs`` keyed by input name, as stored in the file.

    ``constant`` names the inputs fed as stored; every other input holds ``n`` samples along its
    ``sample_axes`` entry (0 when absent). ``batch`` is the number of samples the model takes per
    run when it fixes it (None: any).
    """

    path: Path
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    sha256: str
    constant: frozenset[str] = frozenset()
    sample_axes: dict[str, int] = field(default_factory=dict)
    batch: int | None = None

    @property
    def n(self) -> int:
        """Number of samples; a data set of constant inputs only is one sample."""
        for name, arr in self.inputs.items():
            if name not in self.constant:
                return int(arr.shape[self.sample_axes.get(name, 0)])
        return 1

    @property
    def key(self) -> str:
        """sha256 of the file and of the layout it is read with (constants, sample axes): a cache key."""
        layout = {"constant": sorted(self.constant), "sample_axes": dict(sorted(self.sample_axes.items()))}
        return hashlib.sha256((self.sha256 + json.dumps(layout, sort_keys=True)).encode()).hexdigest()

    def batch_size(self, size: int | None = None) -> int:
        """Samples per run: the model's fixed batch when it has one, else ``size`` (default 256)."""
        return self.batch or size or DEFAULT_BATCH

    def take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The feed for samples ``start:stop``; constant inputs as stored."""
        feed = {}
        for name, arr in self.inputs.items():
            if name in self.constant:
                feed[name] = arr
            else:
                index: list[Any] = [slice(None)] * arr.ndim
                index[self.sample_axes.get(name, 0)] = slice(start, stop)
                feed[name] = arr[tuple(index)]
        return feed

    def batches(self, size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``batch_size(size)`` samples each (the last may be shorter when the model allows)."""
        step = self.batch_size(size)
        for start in range(0, self.n, step):
            yield self.take(start, start + step)

    def subset(self, indices: Sequence[int], part: str) -> Dataset:
        """The samples at ``indices`` (in that order), constants as stored. Its ``sha256`` is the file's
        with ``part`` and the indices, so caches never mix a part with the whole file."""
        idx = np.asarray(indices, dtype=np.int64)
        inputs = {}
        for name, arr in self.inputs.items():
            inputs[name] = arr if name in self.constant else np.take(arr, idx, axis=self.sample_axes.get(name, 0))
        digest = hashlib.sha256(f"{self.sha256}:{part}:{json.dumps(idx.tolist())}".encode()).hexdigest()
        labels = None if self.labels is None else self.labels[idx]
        return Dataset(self.path, inputs, labels, digest, self.constant, dict(self.sample_axes), self.batch)

    def first_feed(self) -> dict[str, np.ndarray]:
        """One inference's feed: one sample (or the model's fixed batch), constants as stored."""
        return self.take(0, self.batch or 1)

    def inference_shapes(self) -> dict[str, list[int]]:
        """The shape of every input for one inference (see ``first_feed``)."""
        return {name: [int(d) for d in arr.shape] for name, arr in self.first_feed().items()}


def holdout(data: Dataset, fraction: float, seed: int = HOLDOUT_SEED) -> tuple[list[int], list[int]]:
    """Split ``data`` once into (validation, test) sample indices, ``fraction`` of them for test.

    Stratified by label when the data has labels and every class can be split; a model with a
    fixed batch gets parts that are whole batches. The same data, fraction and seed give the same
    split (scikit-learn's ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    if not (isinstance(fraction, (int, float)) and 0.0 < float(fraction) < 1.0):
        raise InputError(f"--holdout {fraction} is not a fraction between 0 and 1: e.g. --holdout 0.3")
    step = data.batch or 1
    n = data.n
    n_test = round(n * float(fraction) / step) * step
    n_val = n - n_test
    least = max(2, step)
    if n_test < least or n_val < least:
        raise InputError(
            f"--holdout {fraction} of the {n} samples in {data.path.name} leaves {n_val} for validation and "
            f"{n_test} for test; each needs at least {least}: give more data, another fraction, or --test FILE"
        )
    stratify = None
    if data.labels is not None:
        _, counts = np.unique(data.labels, return_counts=True)
        if counts.min() >= 2 and min(n_test, n_val) >= len(counts):
            stratify = data.labels
    val, test = train_test_split(np.arange(n), test_size=n_test, random_state=seed, stratify=stratify)
    return sorted(int(i) for i in val), sorted(int(i) for i in test)


def load_dataset(path: str | Path, model: ModelInfo, options: DataOptions | None = None) -> Dataset:
    """Read and check an ``.npz`` against ``model`` (see the module docstring for the convention)."""
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
    constant, axes = _layout(path, arrays.pop(LAYOUT, None), model, options or DataOptions())
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
            f"{', '.join(names)} (and optional 'labels' and '{LAYOUT}')"
        )
    inputs: dict[str, np.ndarray] = {}
    count: tuple[str, int] | None = None
    batch: tuple[str, int] | None = None
    for spec in model.inputs:
        arr = _cast(path, spec, arrays[spec.name])
        if arr.ndim == 0:
            constant.add(spec.name)  # a scalar holds no samples
        is_constant = spec.name in constant
        axis = None if is_constant else axes.get(spec.name, 0)
        _check_dims(path, spec, arr, axis)
        # np.ascontiguousarray would turn a 0-d array into 1-d: copy only what is not contiguous.
        inputs[spec.name] = arr if arr.flags.c_contiguous else np.array(arr, order="C")
        if axis is None:
            continue
        size = int(arr.shape[axis])
        if count is not None and size != count[1]:
            raise DataError(
                f"{path}: arrays hold different sample counts ({count[0]!r}: {count[1]}, {spec.name!r}: {size}): "
                "give every per-sample input the same number of samples, or name the others with --constant-input"
            )
        count = (spec.name, size)
        fixed = spec.shape[axis] if spec.rank_known else None
        if fixed is not None:
            if batch is not None and fixed != batch[1]:
                raise DataError(
                    f"model inputs {batch[0]!r} and {spec.name!r} fix different batch sizes ({batch[1]} and {fixed}) "
                    "at their sample axes: give the right --sample-axis or --constant-input for them"
                )
            batch = (spec.name, fixed)
    if count is not None and count[1] == 0:
        raise DataError(f"{path} holds no samples: give at least one")
    n = count[1] if count is not None else 1
    if batch is not None and n % batch[1]:
        raise DataError(
            f"{path} holds {n} samples but the model takes exactly {batch[1]} per run (input {batch[0]!r}, "
            f"dimension {axes.get(batch[0], 0)}): give a multiple of {batch[1]} samples"
        )
    if labels is not None and (labels.ndim != 1 or len(labels) != n or labels.dtype.kind not in "iu"):
        raise DataError(
            f"{path}: 'labels' must be a 1-D integer array of {n} class indices, "
            f"got {labels.dtype} with shape {list(labels.shape)}"
        )
    _check_finite(path, inputs, constant, axes, n)
    _check_indices(path, model, inputs)
    return Dataset(
        path,
        inputs,
        labels,
        hashlib.sha256(raw).hexdigest(),
        frozenset(constant),
        {k: v for k, v in axes.items() if k not in constant and v != 0},
        batch[1] if batch else None,
    )


def _check_indices(path: Path, model: ModelInfo, inputs: dict[str, np.ndarray]) -> None:
    """An integer input that indexes a constant table (a Gather's indices: token ids into an embedding)
    must stay within the table's rows: ONNX Runtime fails on the first id out of range with an error that
    names neither the input nor the range."""
    tables = {t.name: int(t.dims[0]) for t in model.proto.graph.initializer if len(t.dims) >= 1}
    for node in model.proto.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in inputs:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        rows = tables.get(node.input[0]) if axis == 0 else None
        ids = inputs[node.input[1]]
        if rows is None or ids.dtype.kind not in "iu" or not ids.size:
            continue
        lo, hi = int(ids.min()), int(ids.max())
        if lo < -rows or hi >= rows:
            bad = hi if hi >= rows else lo
            raise DataError(
                f"{path}: input {node.input[1]!r} holds index {bad}, outside the {rows:,} rows of the table "
                f"{node.input[0]!r} it looks up (valid: 0 to {rows - 1}): re-tokenize with the model's own vocabulary"
            )


def _check_finite(path: Path, inputs: dict[str, np.ndarray], constant: set[str], axes: dict[str, int], n: int) -> None:
    """Refuse a float input with no finite value (it scores every candidate alike, and calibrates
    to NaN ranges); warn, in one line, when some samples hold NaN or Inf."""
    flagged = np.zeros(n, dtype=bool)
    names: list[str] = []
    for name, arr in inputs.items():
        if arr.dtype.kind not in "fc" or not arr.size:
            continue
        finite = np.isfinite(arr)
        if finite.all():
            continue
        if not finite.any():
            raise DataError(
                f"{path}: input {name!r} holds only NaN or Inf values: give real data (check how the file was made)"
            )
        names.append(name)
        if name in constant:
            flagged[:] = True  # a constant is fed with every sample
        else:
            moved = np.moveaxis(finite, axes.get(name, 0), 0).reshape(finite.shape[axes.get(name, 0)], -1)
            flagged |= ~moved.all(axis=1)
    if names:
        from harness.core.inputs import warn

        warn(
            f"{path}: {int(flagged.sum())} of {n} samples hold NaN or Inf (input {', '.join(map(repr, names))}): "
            "they score as wrong and can spoil calibration; remove them"
        )


def _layout(
    path: Path, stored: np.ndarray | None, model: ModelInfo, options: DataOptions
) -> tuple[set[str], dict[str, int]]:
    """(constant inputs, sample axes) from the file's ``qae_inputs`` and the options; options win."""
    constant: set[str] = set()
    axes: dict[str, int] = {}
    if stored is not None:
        declared = _read_layout(path, stored)
        constant = set(declared.get("constant", []))
        axes = {str(k): int(v) for k, v in declared.get("sample_axis", {}).items()}
        _check_names(model, constant | set(axes), f"{path}: '{LAYOUT}' names", DataError)
    flagged_axes = dict(options.sample_axes)
    _check_names(model, set(options.constant_inputs), "--constant-input names")
    _check_names(model, set(flagged_axes), "--sample-axis names")
    both = set(options.constant_inputs) & set(flagged_axes)
    if both:
        raise InputError(
            f"input {sorted(both)[0]!r} is given both --constant-input and --sample-axis: "
            "a constant input has no sample axis, give one of them"
        )
    # A flag overrides what the file says about the same input, in either direction.
    constant = (constant - set(flagged_axes)) | set(options.constant_inputs)
    axes = {k: v for k, v in axes.items() if k not in options.constant_inputs}
    axes.update(flagged_axes)
    overlap = constant & set(axes)
    if overlap:
        raise DataError(
            f"{path}: '{LAYOUT}' declares input {sorted(overlap)[0]!r} both constant and with a sample axis: keep one"
        )
    return constant, axes


def _read_layout(path: Path, stored: np.ndarray) -> dict[str, Any]:
    import jsonschema

    text: str | None = None
    if stored.ndim == 0 and stored.dtype.kind in "US":
        item = stored[()]
        text = item.decode() if isinstance(item, bytes) else str(item)
    example = """numpy.array('{"constant": ["state"], "sample_axis": {"x": 1}}')"""
    if text is None:
        raise DataError(f"{path}: '{LAYOUT}' must be one JSON string, e.g. {LAYOUT}={example}")
    try:
        declared = json.loads(text)
        jsonschema.validate(declared, _LAYOUT_SCHEMA)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: '{LAYOUT}' is not valid JSON ({exc.msg}): write it like {example}") from None
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise DataError(
            f"{path}: '{LAYOUT}' does not fit its schema at {where} ({exc.message}): "
            f"it holds 'constant' (input names) and 'sample_axis' (name: axis), e.g. {example}"
        ) from None
    return dict(declared)


def _check_names(model: ModelInfo, names: set[str], what: str, error: type[InputError] = InputError) -> None:
    known = [spec.name for spec in model.inputs]
    unknown = sorted(names - set(known))
    if unknown:
        raise error(f"{what} {unknown[0]!r}, which is no model input: the inputs are {', '.join(known)}")


def _cast(path: Path, spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    if spec.dtype.startswith("onnx:"):
        return arr  # a type numpy has no name for: ONNX Runtime says whether it fits
    want = np.dtype(spec.dtype)
    if arr.dtype == want:
        return arr
    if arr.dtype.kind != want.kind and not (arr.dtype.kind in "iu" and want.kind in "iu"):
        raise DataError(
            f"{path}: array {spec.name!r} is {arr.dtype} but the model input is {want}: "
            f"convert it with .astype(numpy.{want})"
        )
    if want.kind in "iu" and arr.size:  # an integer cast wraps silently: 256 would read as 0
        info = np.iinfo(want)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise DataError(
                f"{path}: array {spec.name!r} holds {hi if hi > info.max else lo}, outside the model input's {want} "
                f"range ({info.min} to {info.max}): give values the input can hold, as numpy.{want}"
            )
    return arr.astype(want)


def _check_dims(path: Path, spec: TensorSpec, arr: np.ndarray, axis: int | None) -> None:
    """Every fixed model dimension equals the array's, except at the sample axis (``None``: constant)."""
    if axis is not None and not axis < max(arr.ndim, 1):
        raise DataError(
            f"{path}: array {spec.name!r} has {arr.ndim} dimensions, so it has no sample axis {axis}: "
            f"give --sample-axis {spec.name}=K with K < {arr.ndim}"
        )
    if not spec.rank_known:
        return
    if arr.ndim != len(spec.shape):
        raise DataError(
            f"{path}: array {spec.name!r} has shape {list(arr.shape)} but the model input has "
            f"{len(spec.shape)} dimensions {_fmt(spec.shape)}: reshape the data"
        )
    for dim, (got, need) in enumerate(zip(arr.shape, spec.shape)):
        if dim != axis and need is not None and got != need:
            hint = "" if axis is not None else " (it is fed as stored: a constant input)"
            raise DataError(
                f"{path}: array {spec.name!r} has shape {list(arr.shape)} but the model input is "
                f"{_fmt(spec.shape)} (dimension {dim} must be {need}){hint}: reshape the data"
                + ("" if axis is None or axis else " or give its --sample-axis")
            )


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
