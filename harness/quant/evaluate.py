"""Accuracy and exact size of a (quantized) model, with ONNX Runtime on this host.

Integer products are scored exactly on every host: where this host's ONNX Runtime saturates uint8 x
int8 products (x86 without VNNI), ``session`` runs a copy with uint8 weights (``harness.quant.exact``).

Every output is run; the metric that fits the outputs and the data scores them against labels or
the reference (FP32) outputs (``harness.quant.metrics``): ``accuracy`` is the worst scored output's
value of that metric, higher is better, and ``scores`` holds every scored output's numbers. A
sentence-embedding workload asks for ``metric="embedding"``: outputs are token embeddings,
mean-pooled with the attention mask, and accuracy is top-1 retrieval agreement (see
``embedding_agreement``). Sizes are counted, not estimated: ``file_bytes`` is the file,
``weight_bytes`` counts every quantized layer weight at its nominal packed width (an emulated 3-bit
weight counts 3 bits, though the file stores 8) and every other initializer at its stored size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from harness.core.errors import InputError, ModelError
from harness.quant import metrics
from harness.quant.data import Dataset
from harness.quant.exact import exact_int8, u8s8_saturates
from harness.quant.metrics import embedding_agreement, mean_pool

__all__ = ["EVAL_BATCH", "EvalReport", "SizeReport", "agreement", "embedding_agreement", "evaluate", "mean_pool",
           "run_all", "run_outputs", "session", "sizes"]

EVAL_BATCH = 256
#: the metric names ``--metric`` takes (besides ``module:function``); see ``harness.quant.metrics``
METRICS = metrics.CHOICES


@dataclass
class SizeReport:
    file_bytes: int
    weight_bytes: int
    stored_weight_bytes: int


@dataclass
class EvalReport:
    accuracy: float
    metric: str
    n: int
    file_bytes: int
    weight_bytes: int
    stored_weight_bytes: int
    emulated: bool
    emulated_layers: list[str] = field(default_factory=list)
    top1_agreement: float | None = None
    mean_cosine: float | None = None
    labelled_accuracy: float | None = None
    #: output -> report key -> value, for every scored output (see ``harness.quant.metrics``)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the worst SQNR over the scored outputs (dB, capped at 100); None without a reference
    sqnr_db: float | None = None
    #: one line saying what was scored and how
    metric_note: str = ""
    #: per-sample statistics of ``accuracy`` (``harness.core.stats.SampleStats.to_dict()``), when asked
    #: for (``with_stats``) and the metric has them; they give its interval and paired comparisons
    sample_stats: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def session(model: onnx.ModelProto | str | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    src: bytes | str | None = None
    if u8s8_saturates():  # score the model in exact integer arithmetic (see harness.quant.exact)
        proto = model if isinstance(model, onnx.ModelProto) else _load_quietly(Path(model))
        exact = exact_int8(proto) if proto is not None else None
        if exact is not None:
            try:
                src = exact.SerializeToString()
            except ValueError:  # over protobuf's 2 GB: scored as ORT runs it here, and said so
                import logging

                logging.getLogger(__name__).warning(
                    "model over 2 GB: scored with this CPU's saturating u8s8 kernels, not exactly")
    if src is None:
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"ONNX Runtime cannot load the model ({msg}): check the model or its genome") from None


def _load_quietly(path: Path) -> onnx.ModelProto | None:
    """The model at ``path`` for the exact-int8 rewrite, or None (ORT then reports what is wrong)."""
    try:
        return onnx.load(str(path))
    except Exception:
        return None


def output_names(proto: onnx.ModelProto) -> list[str]:
    """The graph outputs that are tensors (a sequence or map output cannot be scored)."""
    return [o.name for o in proto.graph.output if o.type.HasField("tensor_type")]


def run_all(sess: Any, data: Dataset, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every tensor output (or ``names``) for every sample, batched as the data says (a model with a
    fixed batch runs at that size, constant inputs go with every batch); batches are concatenated
    along axis 0 (0-d outputs are stacked)."""
    if names is None:
        names = [o.name for o in sess.get_outputs()]
    names = list(names)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in data.batches(EVAL_BATCH):
        try:
            results = sess.run(names, feed)
        except Exception as exc:  # ORT's own words, on one line, with what to check
            msg = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"ONNX Runtime cannot run the model on {data.path.name} ({msg}): check the data's shapes, "
                "--sample-axis and --constant-input"
            ) from None
        for name, value in zip(names, results):
            if not isinstance(value, np.ndarray):
                raise ModelError(f"output {name!r} is no tensor ({type(value).__name__}): name others with --outputs")
            parts[name].append(value)
    return {n: np.stack(p) if p[0].ndim == 0 else np.concatenate(p, axis=0) for n, p in parts.items()}


def run_outputs(sess: Any, data: Dataset) -> np.ndarray:
    """The first output for every sample (kept for callers that score one output; see ``run_all``)."""
    first = sess.get_outputs()[0].name
    return run_all(sess, data, [first])[first]


def agreement(outputs: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement over the last axis, mean per-sample cosine) of two batches of class scores.

    Only for outputs with a class axis (rank >= 2, last dimension > 1); anything else is scored by
    ``harness.quant.metrics`` (SQNR, whole-tensor cosine) and never argmaxed.
    """
    if outputs.ndim < 2 or outputs.shape[-1] < 2:
        raise ModelError(
            f"an output of shape {list(outputs.shape)} holds no class scores to argmax: score it with --metric sqnr"
        )
    return metrics.top1_agreement(outputs, reference), metrics.mean_row_cosine(outputs, reference)


def sizes(proto: onnx.ModelProto, file_bytes: int, nominal_bits: dict[str, int] | None = None) -> SizeReport:
    """Bytes of the weights: ``nominal_bits`` initializers at their nominal width, the rest as stored.

    The packed kernels (MatMulNBits, GatherBlockQuantized) store their weights as uint8 holding
    ``8 / bits`` values a byte, so they are counted exactly as stored: packed weights (a MatMul's K
    padded to whole blocks) plus float scales plus packed zero points; qae never lists them in
    ``nominal_bits``, except a 4-bit QDQ embedding table it writes as GatherBlockQuantized (one the
    runtime's Gather cannot index): its values count at their nominal width, two to a stored byte.
    """
    nominal_bits = nominal_bits or {}
    per_byte = {n.input[0]: 8 // bits for n in proto.graph.node if n.op_type == "GatherBlockQuantized"
                for bits in [next((a.i for a in n.attribute if a.name == "bits"), 4)] if 0 < bits < 8}
    weight = stored = 0
    for init in proto.graph.initializer:
        n_bytes = _stored_bytes(init)
        stored += n_bytes
        if init.name in nominal_bits:
            count = (int(np.prod(init.dims)) if init.dims else 1) * per_byte.get(init.name, 1)
            weight += math.ceil(count * nominal_bits[init.name] / 8)
        else:
            weight += n_bytes
    return SizeReport(file_bytes, weight, stored)


def _stored_bytes(init: onnx.TensorProto) -> int:
    if init.raw_data:
        return len(init.raw_data)
    count = int(np.prod(init.dims)) if init.dims else 1
    if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return count * itemsize


def evaluate(
    proto: onnx.ModelProto,
    data: Dataset,
    *,
    file_bytes: int,
    nominal_bits: dict[str, int] | None = None,
    emulated_layers: list[str] | None = None,
    reference_outputs: np.ndarray | Mapping[str, np.ndarray] | None = None,
    threads: int | None = None,
    metric: str = "auto",
    outputs: Sequence[str] = (),
    plan: metrics.Plan | None = None,
    with_stats: bool = False,
) -> EvalReport:
    """Score ``proto`` on ``data`` (see ``harness.quant.metrics`` for ``metric`` and ``outputs``).

    ``reference_outputs``: the FP32 outputs as {name: array}; a bare array is the first output's
    (older callers), and then only that output is scored. ``plan``: a plan made earlier for the
    same model and data (a Workload makes it once), which skips choosing again.
    """
    if plan is None:
        metric = metrics.canonical(metric)
    sess = session(proto, threads)
    names = output_names(proto)
    reference: dict[str, np.ndarray] | None = None
    if isinstance(reference_outputs, np.ndarray):
        reference = {names[0]: reference_outputs}
        outputs = tuple(outputs) or (names[0],)
    elif reference_outputs is not None:
        reference = dict(reference_outputs)
    wanted = [*plan.outputs, *plan.reported] if plan is not None else (list(outputs) or names)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise InputError(
            f"--outputs names {unknown[0]!r}, which is no model output: the outputs are {', '.join(names)}"
        )
    got = run_all(sess, data, wanted)
    if plan is None:
        shapes = {n: tuple(int(d) for d in got[n].shape) for n in wanted}
        plan = metrics.plan(metric, shapes, data.labels, reference is not None, outputs, n=data.n)
    mask = data.inputs.get("attention_mask")
    scored = metrics.score(plan, got, reference, data.labels, mask)
    stats = metrics.sample_stats(plan, got, reference, data.labels, mask) if with_stats else None
    size = sizes(proto, file_bytes, nominal_bits)
    return EvalReport(
        accuracy=scored.accuracy,
        metric=plan.key,
        n=data.n,
        file_bytes=size.file_bytes,
        weight_bytes=size.weight_bytes,
        stored_weight_bytes=size.stored_weight_bytes,
        emulated=bool(emulated_layers),
        emulated_layers=list(emulated_layers or []),
        top1_agreement=scored.top1_agreement,
        mean_cosine=scored.mean_cosine,
        labelled_accuracy=scored.labelled_accuracy,
        scores=scored.per_output,
        sqnr_db=scored.sqnr_db,
        metric_note=plan.note,
        sample_stats=None if stats is None else stats.to_dict(),
    )
