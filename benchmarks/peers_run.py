"""Run ONE peer quantizer on one ONNX model, in the peer's own virtual environment (issue 16).

This file is self-contained on purpose: it imports only numpy, onnx, onnxruntime and the peer, never
qae, so that it runs in a venv that holds the peer (whose pins may clash with qae's: Intel Neural
Compressor 2.x wants numpy < 2). ``benchmarks/bench_peers.py`` starts it as a child process:

    PEER_PYTHON benchmarks/peers_run.py --peer nncf --model M.onnx --calib calib.npz --val eval.npz --out DIR \
        [--transformer] [--max-trials N] [--metric top1|cosine]

The child writes ``DIR/model.onnx`` (the peer's model) and ``DIR/result.json``: the peer and its
version, the exact call, wall time, how often the peer called the accuracy callback, and on failure
the error with its traceback. Each peer gets the same data and the same metric on the validation
split (``--metric``): ``top1``, top-1 of the first output against ``labels`` in the npz (every other
array is a model input), or ``cosine``, for sentence embeddings without labels: the mean over
sentences of the cosine between the candidate's and the FP32 model's mean-pooled first output
(pooled over tokens whose ``attention_mask`` is nonzero), fed one row per run. The drop allowed is
0.01 absolute for either; result.json names it ``mean_cosine``.

Evaluations are counted three ways, because peers call the callback differently: ``callback_calls``
(every call), ``full_evaluations`` (calls that scored the whole validation split) and
``samples_scored`` / n_val (equivalent full evaluations; NNCF ranks layers per sample).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

# No peer may phone home (nothing outside is reachable here anyway; this keeps them from trying).
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "true")  # openvino-telemetry (NNCF) opts out under CI
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WHAT = {
    "nncf": "NNCF quantize_with_accuracy_control: int8 QDQ, reverts the most sensitive ops to float until the drop "
            "is met",
    "nncf_wc": "NNCF compress_weights: weight-only int4_sym (ratio 0.8) with int8_asym backup, one shot, no callback",
    "inc": "Intel Neural Compressor 2.6 ORT adaptor: static int8, accuracy-aware 'basic' tuning (op-wise fallback)",
    "onc": "onnx-neural-compressor 1.0 autotune over StaticQuantConfig's tuning set (static int8)",
    "inc_rtn": "onnx-neural-compressor 1.0 weight-only RTN (MatMul), autotune over RTNConfig's tuning set "
               "(4/8 bit x sym/asym, group 32) until the drop is met",
    "inc_gptq": "onnx-neural-compressor 1.0 weight-only GPTQ (MatMul), autotune over GPTQConfig's tuning set "
                "(4/8 bit x sym x actorder x mse x perchannel, group 32) until the drop is met",
    "inc_awq": "onnx-neural-compressor 1.0 weight-only AWQ (MatMul), autotune over AWQConfig's tuning set "
               "(4/8 bit x sym x auto_scale x mse_search, group 32) until the drop is met",
    "olive": "Olive OnnxQuantization (static/dynamic search space) searched by TPE, accuracy metric + latency",
    "aimet": "AIMET Automatic Mixed Precision over w16a16/w8a16/w8a8/w4a8 candidates, greedy + binary search",
}
PEERS = tuple(WHAT)
TOLERABLE_LOSS = 0.01  # absolute drop of the metric (top-1 or mean cosine), the same for every peer
METRICS = {"top1": "top1", "cosine": "mean_cosine"}  # --metric -> result.json "metric"


class NotApplicable(Exception):
    """The peer does not apply to this model (result status "not_applicable")."""


def load_split(path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(model inputs, labels or None): ``labels`` is the only array that is not a model input."""
    with np.load(path) as d:
        labels = np.asarray(d["labels"]) if "labels" in d.files else None
        inputs = {k: np.asarray(d[k]) for k in d.files if k != "labels"}
    return inputs, labels


def n_of(inputs: dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))


def rows(inputs: dict[str, np.ndarray], lo: int, hi: int) -> dict[str, np.ndarray]:
    return {k: v[lo:hi] for k, v in inputs.items()}


def _session(model: Any) -> ort.InferenceSession:
    """An ORT session from whatever a peer hands its callback: a path, a ModelProto, a wrapper, a session."""
    if isinstance(model, ort.InferenceSession):
        return model
    for attr in ("model_path", "model"):  # Olive's handler / INC's ONNXModel wrap the model
        inner = getattr(model, attr, None)
        if inner is not None and not isinstance(model, onnx.ModelProto):
            return _session(inner)
    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"cannot run a {type(model).__name__}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        if ORT_S8_BUG not in str(e):
            raise
        COMPAT["sessions_rewritten"] += 1
        COMPAT["error"] = str(e)
        fixed = onnx.ModelProto()
        fixed.CopyFrom(model)
        s8_activations_to_u8(fixed)
        return ort.InferenceSession(fixed.SerializeToString(), so, providers=["CPUExecutionProvider"])


#: ONNX Runtime 1.32's QDQPropagationTransformer + QDQS8ToU8Transformer (ORT_ENABLE_EXTENDED and up)
#: fail on opset-21 QDQ models whose activation QuantizeLinear has an int8 zero point (NNCF's):
#: "[TypeInferenceError] output_dtype INT8 does not match y_zero_point type UINT8".
ORT_S8_BUG = "does not match y_zero_point type"
COMPAT: dict[str, Any] = {"sessions_rewritten": 0, "error": None}


def s8_activations_to_u8(model: onnx.ModelProto) -> int:
    """Activation Q/DQ pairs with an int8 zero point -> uint8 with zero point + 128: the same numbers
    (what ORT's QDQS8ToU8Transformer itself does), and ORT 1.32 can then build the session. Weight
    quantizers (a constant input) are left alone. Returns how many zero points changed."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    changed: set[str] = set()
    outputs: set[str] = set()
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits or len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp = inits[n.input[2]]
        if zp.name not in changed and zp.data_type == onnx.TensorProto.INT8:
            shifted = numpy_helper.to_array(zp).astype(np.int16) + 128
            zp.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), zp.name))
            changed.add(zp.name)
        if zp.name in changed:
            outputs.add(n.output[0])
    keep = [v for v in model.graph.value_info if v.name not in outputs]  # their recorded type was int8
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    return len(changed)


def mean_pool(outputs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over tokens of ``[N, seq, dim]`` outputs where ``mask`` is nonzero (sentence-transformers'
    pooling for all-MiniLM-L6-v2; a copy of harness/quant/metrics.py::mean_pool). No token -> zero."""
    weights = (mask != 0).astype(np.float64)
    summed = np.einsum("nt,ntd->nd", weights, outputs.astype(np.float64))
    return summed / np.maximum(weights.sum(axis=1, keepdims=True), 1.0)


class Scorer:
    """The accuracy callback every peer gets, counted. ``metric`` "top1": top-1 (a fraction) of the
    first output against the labels, 64 rows a run; "mean_cosine": mean over sentences of the cosine
    between the candidate's pooled first output and the FP32 model's (``reference``, computed once,
    uncounted), one row a run (so a batch-1 export runs as well as a symbolic batch)."""

    def __init__(self, metric: str, inputs: dict[str, np.ndarray], labels: np.ndarray | None, fp32_model: str,
                 reference: np.ndarray | None = None) -> None:
        if metric == "top1" and labels is None:
            raise ValueError("--metric top1 needs 'labels' in the validation npz")
        if metric == "mean_cosine" and "attention_mask" not in inputs:
            raise ValueError("--metric cosine needs 'attention_mask' in the validation npz")
        self.metric, self.inputs, self.labels, self.fp32_model = metric, inputs, labels, fp32_model
        self.batch = 64 if metric == "top1" else 1
        self.n = n_of(inputs)
        self._reference = reference
        self.calls = 0
        self.full = 0
        self.samples = 0
        self.seconds = 0.0
        self._last: tuple[Any, ort.InferenceSession] | None = None

    def session(self, model: Any) -> ort.InferenceSession:
        # NNCF calls once per sample with the same ModelProto: build its session once.
        if self._last is not None and self._last[0] is model:
            return self._last[1]
        sess = _session(model)
        self._last = (model, sess)
        return sess

    def _first_output(self, sess: ort.InferenceSession, idx: np.ndarray) -> np.ndarray:
        names = {i.name for i in sess.get_inputs()}
        outs = []
        for lo in range(0, len(idx), self.batch):
            chunk = idx[lo : lo + self.batch]
            outs.append(sess.run(None, {k: v[chunk] for k, v in self.inputs.items() if k in names})[0])
        return np.concatenate(outs)

    def _pooled(self, sess: ort.InferenceSession, idx: np.ndarray) -> np.ndarray:
        pooled = mean_pool(self._first_output(sess, idx), self.inputs["attention_mask"][idx])
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.where(norms > 0, norms, 1.0)

    def reference(self) -> np.ndarray:
        """The FP32 model's unit pooled embeddings of every validation row (mean_cosine only)."""
        if self._reference is None:
            self._reference = self._pooled(_session(self.fp32_model), np.arange(self.n))
        return self._reference

    def per_item(self, model: Any, idx: np.ndarray | None = None) -> np.ndarray:
        """The metric of each row ``idx`` (default: all) of the validation split, counted as one call:
        1.0/0.0 (top-1 hit) or the cosine with the FP32 model's pooled output."""
        idx = np.arange(self.n) if idx is None else np.asarray(idx, dtype=np.int64)
        ref = self.reference() if self.metric == "mean_cosine" else None  # before the clock: not the peer's
        t0 = time.perf_counter()
        sess = self.session(model)
        if ref is None:
            out = self._first_output(sess, idx)
            assert self.labels is not None
            values = (np.argmax(out.reshape(len(out), -1), axis=1) == self.labels[idx]).astype(np.float64)
        else:
            values = np.sum(self._pooled(sess, idx) * ref[idx], axis=1)
        self.calls += 1
        self.samples += len(idx)
        self.full += int(len(idx) == self.n)
        self.seconds += time.perf_counter() - t0
        return values

    def score(self, model: Any, idx: np.ndarray | None = None) -> float:
        return float(np.mean(self.per_item(model, idx)))

    def __call__(self, model: Any, *_: Any) -> float:
        return self.score(model)

    def counts(self) -> dict[str, Any]:
        return {"callback_calls": self.calls, "full_evaluations": self.full, "samples_scored": self.samples,
                "equivalent_full_evaluations": round(self.samples / max(self.n, 1), 2),
                "callback_seconds": round(self.seconds, 2)}


# --------------------------------------------------------------------------------------------- peers


def run_nncf(a: argparse.Namespace, cal: dict, cb: Scorer, out: Path) -> dict[str, Any]:
    import nncf

    model = onnx.load(a.model)
    calib_items = [rows(cal, i, i + 1) for i in range(n_of(cal))]
    # Items are row numbers of the validation split; NNCF feeds rows(...) when it runs the model itself.
    val_items = nncf.Dataset(list(range(cb.n)), lambda i: rows(cb.inputs, i, i + 1))

    def validate(m: onnx.ModelProto, items: Any) -> float | tuple[float, list[float]]:
        values = cb.per_item(m, np.fromiter(items, dtype=np.int64))
        # top-1: a float, and NNCF ranks by the change of each item's outputs (its default for logits);
        # mean cosine: (metric, per-sentence values), and NNCF ranks by the metric itself.
        return float(values.mean()) if cb.metric == "top1" else (float(values.mean()), values.tolist())

    kwargs: dict[str, Any] = {"max_drop": TOLERABLE_LOSS, "drop_type": nncf.DropType.ABSOLUTE,
                              "subset_size": len(calib_items)}
    if a.transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    q = nncf.quantize_with_accuracy_control(model, nncf.Dataset(calib_items), val_items, validate, **kwargs)
    onnx.save(q, out)
    returns = "top1 (float)" if cb.metric == "top1" else "(mean cosine, per-sentence cosines)"
    return {"version": nncf.__version__, "call": (
        "nncf.quantize_with_accuracy_control(onnx.load(model), nncf.Dataset(calib_rows), "
        f"nncf.Dataset(range({cb.n}), lambda i: val_row(i)), validate -> {returns}, max_drop=0.01, "
        f"drop_type=nncf.DropType.ABSOLUTE, subset_size={len(calib_items)}"
        + (", model_type=nncf.ModelType.TRANSFORMER" if a.transformer else "") + ")")}


def run_nncf_wc(a: argparse.Namespace, cal: dict, cb: Scorer, out: Path) -> dict[str, Any]:
    """NNCF weight compression (weight-only, int4 with an int8_asym backup), one shot: no callback."""
    import nncf

    model = onnx.load(a.model)
    calib_items = [rows(cal, i, i + 1) for i in range(n_of(cal))]
    # Conv is left out: NNCF 3.4.0 writes a Conv weight's DequantizeLinear with a scale ORT rejects
    # ("For per axis quantization, scale must be 1D tensor with size 32"), see benchmarks/PEERS.md;
    # validate=False: a model without Conv (MiniLM) is not an error.
    q = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, ratio=0.8, group_size=-1,
                              backup_mode=nncf.BackupMode.INT8_ASYM, dataset=nncf.Dataset(calib_items),
                              subset_size=len(calib_items),
                              ignored_scope=nncf.IgnoredScope(types=["Conv"], validate=False))
    onnx.save(q, out)
    return {"version": nncf.__version__, "call": (
        "nncf.compress_weights(onnx.load(model), mode=nncf.CompressWeightsMode.INT4_SYM, ratio=0.8, group_size=-1, "
        f"backup_mode=nncf.BackupMode.INT8_ASYM, dataset=nncf.Dataset(calib_rows), subset_size={len(calib_items)}, "
        "ignored_scope=nncf.IgnoredScope(types=['Conv'], validate=False))")}


def run_inc(a: argparse.Namespace, cal: dict, cb: Scorer, out: Path) -> dict[str, Any]:
    """Intel Neural Compressor 2.x, ONNX Runtime adaptor: accuracy-aware tuning, basic (op-wise fallback)."""
    shimmed = shim_onnx_mapping()
    import neural_compressor
    from neural_compressor import PostTrainingQuantConfig, quantization
    from neural_compressor.config import AccuracyCriterion, TuningCriterion

    names = list(cal)

    class CalibLoader:
        batch_size = 1

        def __iter__(self):  # (input, label); a single-input model takes the array itself
            for i in range(n_of(cal)):
                x = rows(cal, i, i + 1)
                yield (x[names[0]] if len(names) == 1 else x), 0

    conf = PostTrainingQuantConfig(
        approach="static",
        accuracy_criterion=AccuracyCriterion(higher_is_better=True, criterion="absolute",
                                             tolerable_loss=TOLERABLE_LOSS),
        tuning_criterion=TuningCriterion(strategy="basic", timeout=0, max_trials=a.max_trials),
    )
    q = quantization.fit(model=a.model, conf=conf, calib_dataloader=CalibLoader(), eval_func=cb)
    if q is None:
        raise RuntimeError("neural_compressor.quantization.fit returned None: no config met the accuracy goal")
    q.save(str(out))
    return {"version": neural_compressor.__version__, "onnx_mapping_shim": shimmed, "call": (
        "neural_compressor.quantization.fit(model=path, conf=PostTrainingQuantConfig(approach='static', "
        "accuracy_criterion=AccuracyCriterion(higher_is_better=True, criterion='absolute', tolerable_loss=0.01), "
        f"tuning_criterion=TuningCriterion(strategy='basic', timeout=0, max_trials={a.max_trials})), "
        "calib_dataloader=CalibLoader() (batch_size=1, yields (x, 0)), eval_func=top1); q.save(out)")}


def shim_onnx_mapping() -> bool:
    """Neural Compressor 2.6 reads ``onnx.mapping``, which onnx 1.19 removed: without it, every
    trial fails with AttributeError("module 'onnx' has no attribute 'mapping'"). Put back the two
    tables it reads, built from ``onnx.helper``; True when the shim was needed."""
    if hasattr(onnx, "mapping"):
        return False
    import types

    codes = [v for v in onnx.TensorProto.DataType.values() if v != onnx.TensorProto.UNDEFINED]
    to_np: dict[int, np.dtype] = {}
    for code in codes:
        try:
            to_np[code] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))
        except Exception:
            continue
    to_tensor: dict[np.dtype, int] = {}
    for code, dt in to_np.items():  # first wins: FLOAT for float32, not a float8 stored as float32
        to_tensor.setdefault(dt, code)
    onnx.mapping = types.SimpleNamespace(  # type: ignore[attr-defined]
        TENSOR_TYPE_TO_NP_TYPE=to_np, NP_TYPE_TO_TENSOR_TYPE=to_tensor)
    return True


def _onc_reader(cal: dict[str, np.ndarray]) -> Any:
    """onnx-neural-compressor's calibration reader over the calibration split, one row a batch."""
    from onnx_neural_compressor import data_reader

    class Reader(data_reader.CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict | None:
            if self.i >= n_of(cal):
                return None
            self.i += 1
            return rows(cal, self.i - 1, self.i)

        def rewind(self) -> None:
            self.i = 0

    return Reader()


def _onc_autotune(a: argparse.Namespace, cal: dict, cb: Scorer, out: Path, config_name: str) -> dict[str, Any]:
    """onnx-neural-compressor's autotune over ``config_name``'s own tuning set (its relative
    tolerable_loss, 0.01 of the baseline: about the absolute 0.01 for a metric near 1)."""
    from importlib.metadata import version

    from onnx_neural_compressor.quantization import config, tuning

    config_set = getattr(config, config_name).get_config_set_for_tuning()
    tune_config = tuning.TuningConfig(config_set=config_set, tolerable_loss=TOLERABLE_LOSS, max_trials=a.max_trials)
    try:
        q = tuning.autotune(model_input=a.model, tune_config=tune_config, eval_fn=cb,
                            calibration_data_reader=_onc_reader(cal))
    except SystemExit as e:  # autotune calls exit(0) when no config met the goal (or its baseline failed)
        raise RuntimeError(f"onnx_neural_compressor autotune exited ({e!r}): no config met the accuracy goal "
                           f"in {cb.calls} evaluations, its baseline included") from e
    onnx.save(q, out)
    return {"version": version("onnx-neural-compressor"), "call": (
        "onnx_neural_compressor.quantization.tuning.autotune(model_input=path, tune_config=TuningConfig("
        f"config_set={config_name}.get_config_set_for_tuning(), tolerable_loss=0.01, "
        f"max_trials={a.max_trials}), eval_fn={cb.metric}, calibration_data_reader=Reader())")}


def run_onc(a: argparse.Namespace, cal: dict, cb: Scorer, out: Path) -> dict[str, Any]:
    """onnx-neural-compressor (INC's 3.x-style ONNX package): autotune over StaticQuantConfig's tuning set."""
    return _onc_autotune(a, cal, cb, out, "StaticQuantConfig")


def run_inc_weight_only(algo: str, a: argparse.Namespace, cal: dict, cb: Scorer, out: Path) -> dict[str, Any]:
    """Neural Compressor weight-only quantization of every MatMul (``algo``: RTN, GPTQ or AWQ), through
    onnx-neural-compressor 1.0 (INC's ONNX package since 3.0): autotune over the algorithm's tuning set."""
    if not any(n.op_type == "MatMul" for n in onnx.load(a.model, load_external_data=False).graph.node):
        raise NotApplicable(f"{algo} is weight-only quantization of MatMul weights and the model has no MatMul")
    info = _onc_autotune(a, cal, cb, out, f"{algo}Config")
    # autotune returns only the model: which config met the goal, read from it. onnx-neural-compressor
    # writes MatMulNBits only for 4 bits; other widths stay a float MatMul whose weight is rounded to
    # the grid and kept in float (initializer named *_Q8G32): simulated, no smaller than FP32.
    chosen: dict[str, int] = {}
    for n in onnx.load(out, load_external_data=False).graph.node:
        if n.op_type == "MatMulNBits":
            at = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            asym = len(n.input) > 3 and bool(n.input[3])  # a zero-point input
            key = f"MatMulNBits bits={at.get('bits')} block_size={at.get('block_size')} asym={asym}"
        elif n.op_type == "MatMul" and (m := re.search(r"_Q(\d+)G(-?\d+)$", n.input[1])):
            key = f"MatMul, float weight rounded to {m[1]} bits, group {m[2]} (simulated)"
        else:
            continue
        chosen[key] = chosen.get(key, 0) + 1
    return {**info, "weight_only_nodes": chosen}


OLIVE_SCRIPT = '''
import json, os
import numpy as np
from olive.data.registry import Registry

@Registry.register_dataset()
def qae_split(data_path):
    d = np.load(data_path)
    names = [k for k in d.files if k != "labels"]
    labels = d["labels"] if "labels" in d.files else np.zeros(len(d[names[0]]), dtype=np.int64)
    return [({k: d[k][i] for k in names}, int(labels[i])) for i in range(len(labels))]

@Registry.register_post_process()
def qae_top1_argmax(output_data, **kwargs):
    # Olive's accuracy metric calls this once per batch of the validation split: count the rows scored
    with open(os.environ["QAE_PEERS_COUNT"], "a") as f:
        f.write(json.dumps({"rows": int(output_data.shape[0])}) + "\\n")
    return output_data.reshape(output_data.shape[0], -1).argmax(dim=-1)
'''

#: Olive's own latency metric beside the accuracy one (issue 16: "the same accuracy callback plus
#: latency"): avg ms over its default 10 warm-up + 20 timed runs of one calibration row, priority 2.
OLIVE_LATENCY = {"name": "latency", "type": "latency", "data_config": "calib",
                 "sub_types": [{"name": "avg", "priority": 2, "higher_is_better": False}]}


def run_olive(a: argparse.Namespace, cal: dict, cb: Scorer, out: Path) -> dict[str, Any]:
    """Olive: OnnxQuantization (static and dynamic, its search space) searched by its TPE sampler (Optuna),
    ranked by an accuracy metric on the validation split (priority 1, goal: drop <= 0.01) and Olive's
    latency metric (priority 2).

    top-1: Olive's ``accuracy`` metric (torchmetrics accuracy = top-1) with a post-process that
    counts rows. Olive 0.13.0 cannot run a ``custom`` metric through ``olive.workflows.run``: it
    forces a custom metric's backend to None and then fails serialising the run config ("Error
    calling function `serialize_backend`: AttributeError: 'NoneType' object has no attribute
    'model_dump'"), and none of its built-in metrics is a mean cosine. So mean_cosine is given as
    Olive's documented custom metric (``user_config.evaluate_func`` = this callback, in process) and
    the run fails with Olive's own error, which is the result."""
    import olive
    from olive.workflows import run as olive_run

    work = Path(tempfile.mkdtemp(prefix="olive-", dir=out.parent))
    script = work / "qae_user_script.py"
    script.write_text(OLIVE_SCRIPT)
    counts = work / "counts.jsonl"
    os.environ["QAE_PEERS_COUNT"] = str(counts)

    def split(name: str, path: str, batch: int, post: bool) -> dict[str, Any]:
        cfg: dict[str, Any] = {"name": name, "user_script": str(script),
                               "load_dataset_config": {"type": "qae_split", "data_path": path},
                               "dataloader_config": {"batch_size": batch}}
        if post:
            cfg["post_process_data_config"] = {"type": "qae_top1_argmax"}
        return cfg

    goal = {"type": "max-degradation", "value": TOLERABLE_LOSS}
    if cb.metric == "top1":
        num_classes = int(_session(a.model).run(None, rows(cb.inputs, 0, 1))[0].reshape(1, -1).shape[1])
        accuracy: dict[str, Any] = {
            "name": "accuracy", "type": "accuracy", "backend": "torch_metrics", "data_config": "val",
            "sub_types": [{"name": "accuracy_score", "priority": 1, "higher_is_better": True, "goal": goal,
                           "metric_config": {"task": "multiclass", "num_classes": num_classes}}]}
    else:
        accuracy = {"name": "mean_cosine", "type": "custom",
                    "sub_types": [{"name": "mean_cosine", "priority": 1, "higher_is_better": True, "goal": goal}],
                    "user_config": {"evaluate_func": lambda model, device, execution_providers: cb(model)}}
    config = {
        "input_model": {"type": "ONNXModel", "model_path": a.model},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [split("calib", a.calib, 1, False), split("val", a.val, cb.n, True)],
        "evaluators": {"qae_eval": {"type": "OnnxEvaluator", "metrics": [accuracy, OLIVE_LATENCY]}},
        "passes": {"quantization": {"type": "OnnxQuantization", "data_config": "calib"}},
        # max_iter/max_time bound the search: Olive 0.13.0 fails every step whose model comes from its cache
        # (FootprintNode has no field model_config) and, counting only successes, max_samples never stops it.
        "search_strategy": {"execution_order": "joint", "sampler": "tpe", "max_samples": a.max_trials, "seed": 0,
                            "max_iter": a.max_trials, "max_time": 600},
        "evaluator": "qae_eval",
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(work / "cache"),
        "output_dir": str(work / "out"),
    }
    as_given = json.dumps({k: v for k, v in config.items() if k not in ("cache_dir", "output_dir")}, default=str)
    (work / "olive_config.json").write_text(json.dumps(config, indent=1, default=str))
    try:
        result = olive_run(config)  # Olive puts its own objects into ``config``
    finally:
        scored = [json.loads(line)["rows"] for line in counts.read_text().splitlines()] if counts.exists() else []
        cb.calls += len(scored)
        cb.samples += sum(scored)
        cb.full += sum(1 for r in scored if r == cb.n)
    best = _olive_best(result, work / "out")
    if best is None:
        raise RuntimeError(f"Olive produced no model that met the goal (output in {work})")
    import shutil

    shutil.copyfile(best[0], out)
    return {"version": olive.__version__, "call": "olive.workflows.run(config) with config = " + as_given,
            "olive_workdir": str(work), "olive_best": str(best[0]), "olive_best_metrics": best[1],
            "callback_note": ("Olive's accuracy metric (torchmetrics multiclass accuracy = top-1) on the validation "
                              "split, evaluations counted by rows through its post-process" if cb.metric == "top1"
                              else "Olive's custom metric calling this callback (mean cosine on the validation split)")
                             + "; plus Olive's latency metric (avg ms, priority 2)"}


def _olive_best(result: Any, outdir: Path) -> tuple[Path, dict[str, Any] | None] | None:
    """The best model Olive reports with its metrics (accuracy, latency), else the first .onnx in its
    output folder (metrics unknown)."""
    try:
        best = result.get_best_candidate()
        if best is not None:
            p = Path(best.model_path)
            cands = sorted(p.rglob("*.onnx")) if p.is_dir() else [p]
            return (cands[0], best.metrics_value) if cands else None
    except Exception:
        pass
    cands = sorted(outdir.rglob("*.onnx"))
    return (cands[0], None) if cands else None


AIMET_PHASE1_ROWS = 100  # sentences the phase-1 callback scores on the cosine workload


def run_aimet(a: argparse.Namespace, cal: dict, cb: Scorer, out: Path) -> dict[str, Any]:
    """AIMET (aimet-onnx): Automatic Mixed Precision, greedy phase 1 + binary-search phase 2, drop 1 %."""
    import aimet_onnx
    from aimet_onnx.common.defs import CallbackFunc, QuantizationDataType
    from aimet_onnx.mixed_precision import choose_mixed_precision
    from aimet_onnx.quantsim import QuantizationSimModel

    model = onnx.load(a.model)
    calib_batches = [rows(cal, lo, lo + cb.batch) for lo in range(0, n_of(cal), cb.batch)]
    sim = QuantizationSimModel(model, param_type="int8", activation_type="int8", quant_scheme="min_max",
                               providers=["CPUExecutionProvider"])

    def forward(session: ort.InferenceSession, _: Any) -> None:
        for b in calib_batches:
            session.run(None, b)

    sim.compute_encodings(forward, None)
    int_ = QuantizationDataType.int
    # ((activation bits, dtype), (param bits, dtype)); the baseline is the highest
    candidates = [((16, int_), (16, int_)), ((16, int_), (8, int_)), ((8, int_), (8, int_)), ((8, int_), (4, int_))]
    evaluate = CallbackFunc(lambda sess, _: cb(sess), None)
    # Phase 1 (per-layer sensitivity, many calls) may score a fixed subset, as AIMET's docs advise:
    # on the sentence workload the first 100 sentences; top-1 keeps the whole split (270 rows, cheap).
    phase1_rows = cb.n if cb.metric == "top1" else min(AIMET_PHASE1_ROWS, cb.n)
    phase1 = CallbackFunc(lambda sess, _: cb.score(sess, np.arange(phase1_rows)), None)
    results = Path(tempfile.mkdtemp(prefix="aimet-amp-", dir=out.parent))
    pareto = choose_mixed_precision(sim, candidates, phase1, evaluate, allowed_accuracy_drop=TOLERABLE_LOSS,
                                    results_dir=str(results), clean_start=True,
                                    forward_pass_callback=CallbackFunc(forward, None), use_all_amp_candidates=True)
    onnx.save(sim.to_onnx_qdq(prequantize_constants=True), out)  # weights stored as integers, not float + Q
    return {"version": aimet_onnx.__version__, "pareto_points": len(pareto or []), "amp_results": str(results),
            "call": (
                "sim = QuantizationSimModel(onnx.load(model), param_type='int8', activation_type='int8', "
                "quant_scheme='min_max', providers=['CPUExecutionProvider']); sim.compute_encodings(forward, None); "
                "choose_mixed_precision(sim, [((16,int),(16,int)), ((16,int),(8,int)), ((8,int),(8,int)), "
                f"((8,int),(4,int))], CallbackFunc({cb.metric} on the first {phase1_rows} rows), "
                f"CallbackFunc({cb.metric} on all {cb.n} rows), allowed_accuracy_drop=0.01, "
                "results_dir=..., clean_start=True, forward_pass_callback=CallbackFunc(forward, None), "
                "use_all_amp_candidates=True); onnx.save(sim.to_onnx_qdq(prequantize_constants=True), out)")}


RUNNERS: dict[str, Callable[[argparse.Namespace, dict, Scorer, Path], dict[str, Any]]] = {
    "nncf": run_nncf, "nncf_wc": run_nncf_wc, "inc": run_inc, "onc": run_onc,
    "inc_rtn": partial(run_inc_weight_only, "RTN"), "inc_gptq": partial(run_inc_weight_only, "GPTQ"),
    "inc_awq": partial(run_inc_weight_only, "AWQ"), "olive": run_olive, "aimet": run_aimet}


def describe(path: Path) -> dict[str, Any]:
    from collections import Counter

    m = onnx.load(path)
    ops = Counter(n.op_type for n in m.graph.node)
    by_type: Counter[str] = Counter()
    for t in m.graph.initializer:
        by_type[onnx.TensorProto.DataType.Name(t.data_type)] += len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
    return {"file_bytes": path.stat().st_size, "op_types": dict(sorted(ops.items())),
            "initializer_bytes_by_type": dict(by_type)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, choices=PEERS)
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--val", required=True, help="validation split (what the peer's callback scores)")
    ap.add_argument("--out", required=True, help="folder: model.onnx and result.json go there")
    ap.add_argument("--transformer", action="store_true", help="tell peers that ask (NNCF model_type)")
    ap.add_argument("--max-trials", type=int, default=100)
    ap.add_argument("--metric", choices=tuple(METRICS), default="top1",
                    help="top1: labelled top-1; cosine: mean cosine of pooled embeddings with the FP32 model's")
    a = ap.parse_args(argv)
    outdir = Path(a.out).resolve()
    a.model, a.calib, a.val = (str(Path(p).resolve()) for p in (a.model, a.calib, a.val))
    outdir.mkdir(parents=True, exist_ok=True)
    cal, _ = load_split(a.calib)
    metric = METRICS[a.metric]
    cb = Scorer(metric, *load_split(a.val), a.model)
    record: dict[str, Any] = {"peer": a.peer, "what": WHAT[a.peer], "model": str(a.model), "val_path": str(a.val),
                              "metric": metric, "python": sys.executable,
                              "versions": {"numpy": np.__version__, "onnx": onnx.__version__,
                                           "onnxruntime": ort.__version__}}
    # Not counted: the reference every peer's drop is measured against. For mean_cosine the FP32 model
    # is the reference: its embeddings against themselves (1.0 unless a row has no token).
    if metric == "top1":
        record["fp32_val_metric"] = record["fp32_val_top1"] = score_once(cb, a.model)
    else:
        ref = cb.reference()
        record["fp32_val_metric"] = float(np.mean(np.sum(ref * ref, axis=1)))
    os.chdir(outdir)  # peers write workspaces in the working directory (INC: nc_workspace/)
    t0 = time.perf_counter()
    try:
        info = RUNNERS[a.peer](a, cal, cb, outdir / "model.onnx")
        record.update(status="ok", **info)
    except NotApplicable as e:
        record.update(status="not_applicable", error=str(e))
    except BaseException as e:  # a peer may raise anything, SystemExit included: report it, never crash
        record.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    record["wall_s"] = round(time.perf_counter() - t0, 2)
    record.update(cb.counts())
    record["ort_compat_sessions"] = COMPAT["sessions_rewritten"]
    if record["status"] == "ok" and (outdir / "model.onnx").exists():
        try:
            check_output(record, outdir, cb)
        except Exception as e:  # the peer returned a model ORT cannot run: that is its result
            record.update(status="error", error=f"the peer's model does not run: {type(e).__name__}: {e}",
                          traceback=traceback.format_exc())
    (outdir / "result.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "traceback"}, default=str))
    return 0 if record["status"] == "ok" else 1


def score_once(cb: Scorer, model: str | Path) -> float:
    """``model`` on the whole validation split by a fresh, uncounted scorer sharing ``cb``'s FP32 reference."""
    ref = cb.reference() if cb.metric == "mean_cosine" else None
    return Scorer(cb.metric, cb.inputs, cb.labels, cb.fp32_model, ref).score(str(model))


def check_output(record: dict[str, Any], outdir: Path, cb: Scorer) -> None:
    """Load the peer's model in ORT (rewriting it if it only trips ORT_S8_BUG), score it on the
    validation split, describe it."""
    try:
        ort.InferenceSession(str(outdir / "model.onnx"), providers=["CPUExecutionProvider"])
    except Exception as e:
        if ORT_S8_BUG not in str(e):
            raise
        raw = outdir / "model.peer-raw.onnx"
        (outdir / "model.onnx").rename(raw)
        m = onnx.load(raw)
        n = s8_activations_to_u8(m)
        onnx.save(m, outdir / "model.onnx")
        record["ort_compat_rewrite"] = {
            "why": str(e), "what": f"{n} activation int8 zero points -> uint8 + 128 (numerically identical)",
            "peer_raw_model": str(raw)}
    record["model_out"] = str(outdir / "model.onnx")
    record["described"] = describe(outdir / "model.onnx")
    record["val_metric"] = score_once(cb, outdir / "model.onnx")
    if cb.metric == "top1":
        record["val_top1"] = record["val_metric"]


if __name__ == "__main__":
    raise SystemExit(main())
