"""Accuracy and exact size of a (quantized) model, with ONNX Runtime on this host.

Accuracy is top-1 against labels when the data has them; otherwise it is agreement with a
reference (FP32) model: top-1 agreement and the mean cosine of the outputs. A sentence-embedding
workload asks for ``metric="embedding"``: outputs are token embeddings, mean-pooled with the
attention mask, and accuracy is top-1 retrieval agreement (see ``embedding_agreement``). Sizes are counted, not
estimated: ``file_bytes`` is the file, ``weight_bytes`` counts every quantized layer weight at its
nominal packed width (an emulated 3-bit weight counts 3 bits, though the file stores 8) and every
other initializer at its stored size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from harness.core.errors import InputError, ModelError
from harness.quant.data import Dataset

EVAL_BATCH = 256
#: ``auto``: ``classification`` when the data has labels, else ``agreement``.
METRICS = ("auto", "classification", "agreement", "embedding")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def session(model: onnx.ModelProto | str | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"ONNX Runtime cannot load the model ({msg}): check the model or its genome") from None


def run_outputs(sess: Any, data: Dataset) -> np.ndarray:
    """First output for every sample, batched; a model with a fixed batch size runs at that size."""
    dim0 = sess.get_inputs()[0].shape[0]
    batch = dim0 if isinstance(dim0, int) and dim0 > 0 else EVAL_BATCH
    if data.n % batch and isinstance(dim0, int):
        raise ModelError(f"the model takes batches of exactly {batch}: give a data set whose size is a multiple")
    outs = [sess.run(None, feed)[0] for feed in data.batches(batch)]
    return np.concatenate(outs, axis=0)


def agreement(outputs: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean cosine) of two output batches of the same shape."""
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    top1 = float(
        np.mean(
            outputs.reshape(len(outputs), -1, outputs.shape[-1]).argmax(-1)
            == reference.reshape(len(reference), -1, reference.shape[-1]).argmax(-1)
        )
    )
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)
    return top1, float(np.mean(cos))


def mean_pool(outputs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Mean over tokens of ``[N, seq, dim]`` outputs, counting only tokens whose mask is nonzero.

    This is sentence-transformers' pooling for all-MiniLM-L6-v2. A row with no token counts as zero.
    """
    if outputs.ndim != 3:
        raise ModelError(
            f"the embedding metric needs token embeddings [N, seq, dim], the model gives {list(outputs.shape)}: "
            "use --metric agreement"
        )
    weights = np.ones(outputs.shape[:2]) if mask is None else (mask != 0).astype(np.float64)
    if weights.shape != outputs.shape[:2]:
        raise ModelError(f"attention_mask {list(weights.shape)} does not match the outputs {list(outputs.shape)}")
    summed = np.einsum("nt,ntd->nd", weights, outputs.astype(np.float64))
    return summed / np.maximum(weights.sum(axis=1, keepdims=True), 1.0)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def embedding_agreement(outputs: np.ndarray, reference: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """(top-1 retrieval agreement, mean cosine) of pooled sentence embeddings against a reference.

    Mean cosine: between each sentence's pooled embedding and the reference's. Retrieval agreement:
    each sentence queries all the others by cosine; the share of queries whose nearest neighbour is
    the same under ``outputs`` as under ``reference``. Needs at least two sentences.
    """
    a, b = _unit(mean_pool(outputs, mask)), _unit(mean_pool(reference, mask))
    if len(a) < 2:
        raise ModelError("retrieval agreement needs at least two evaluation samples: give a larger data set")
    cosine = float(np.mean(np.sum(a * b, axis=1)))
    nearest = []
    for emb in (a, b):
        sim = emb @ emb.T
        np.fill_diagonal(sim, -np.inf)  # a query never retrieves itself
        nearest.append(sim.argmax(axis=1))
    return float(np.mean(nearest[0] == nearest[1])), cosine


def sizes(proto: onnx.ModelProto, file_bytes: int, nominal_bits: dict[str, int] | None = None) -> SizeReport:
    nominal_bits = nominal_bits or {}
    weight = stored = 0
    for init in proto.graph.initializer:
        n_bytes = _stored_bytes(init)
        stored += n_bytes
        if init.name in nominal_bits:
            count = int(np.prod(init.dims)) if init.dims else 1
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
    reference_outputs: np.ndarray | None = None,
    threads: int | None = None,
    metric: str = "auto",
) -> EvalReport:
    """Score ``proto`` on ``data``; ``metric`` is one of ``METRICS`` (see the module docstring)."""
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not supported: use one of {', '.join(METRICS)}")
    if metric == "embedding" and reference_outputs is None:
        raise ModelError("the embedding metric compares with a reference model: pass --reference FP32.onnx")
    sess = session(proto, threads)
    outputs = run_outputs(sess, data)
    size = sizes(proto, file_bytes, nominal_bits)
    top1: float | None = None
    cosine = labelled = None
    if metric == "embedding" and reference_outputs is not None:
        top1, cosine = embedding_agreement(outputs, reference_outputs, data.inputs.get("attention_mask"))
    elif reference_outputs is not None:
        top1, cosine = agreement(outputs, reference_outputs)
    if data.labels is not None and metric in ("auto", "classification"):
        labelled = float(np.mean(outputs.reshape(len(outputs), -1).argmax(-1) == data.labels))
    if metric == "embedding" and top1 is not None:
        accuracy, metric = top1, "retrieval_top1_agreement"
    elif labelled is not None:
        accuracy, metric = labelled, "top1"
    elif metric == "classification":
        raise ModelError("the classification metric needs labels: give data with a 'labels' array")
    elif top1 is not None:
        accuracy, metric = top1, "top1_agreement"
    else:
        raise ModelError("the data has no labels and no reference model was given: pass --reference FP32.onnx")
    return EvalReport(
        accuracy=accuracy,
        metric=metric,
        n=data.n,
        file_bytes=size.file_bytes,
        weight_bytes=size.weight_bytes,
        stored_weight_bytes=size.stored_weight_bytes,
        emulated=bool(emulated_layers),
        emulated_layers=list(emulated_layers or []),
        top1_agreement=top1,
        mean_cosine=cosine,
        labelled_accuracy=labelled,
    )
