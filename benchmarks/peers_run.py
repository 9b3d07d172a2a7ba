"""Run ONE peer quantizer on one ONNX model, in the peer's own virtual environment (issue 16).

This file is self-contained on purpose: it imports only numpy, onnx, onnxruntime and the peer, never
qae, so that it runs in a venv that holds the peer (whose pins may clash with qae's: Intel Neural
Compressor 2.x wants numpy < 2). ``benchmarks/bench_peers.py`` starts it as a child process:

    PEER_PYTHON benchmarks/peers_run.py --peer nncf --model M.onnx --calib calib.npz --val eval.npz --out DIR

The child writes ``DIR/model.onnx`` (the peer's model) and ``DIR/result.json``: the peer and its
version, the exact call, wall time, how often the peer called the accuracy callback, and on failure
the error with its traceback. Each peer gets the same data and the same metric: top-1 of the first
output on the validation split (``labels`` in the npz, every other array is a model input).

Evaluations are counted three ways, because peers call the callback differently: ``callback_calls``
(every call), ``full_evaluations`` (calls that scored the whole validation split) and
``samples_scored`` / n_val (equivalent full evaluations; NNCF ranks layers per sample).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

# No peer may phone home (nothing outside is reachable here anyway; this keeps them from trying).
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "true")  # openvino-telemetry (NNCF) opts out under CI
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PEERS = ("nncf", "nncf_wc", "inc", "onc", "olive", "aimet")
TOLERABLE_LOSS = 0.01  # absolute top-1 drop, the same for every peer


def load_split(path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(path) as d:
        labels = np.asarray(d["labels"])
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


class Top1:
    """The accuracy callback every peer gets: top-1 (a fraction) of the first output, counted."""

    def __init__(self, inputs: dict[str, np.ndarray], labels: np.ndarray, batch: int = 64) -> None:
        self.inputs, self.labels, self.batch = inputs, labels, batch
        self.n = len(labels)
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

    def score(self, model: Any, inputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        t0 = time.perf_counter()
        sess = self.session(model)
        names = {i.name for i in sess.get_inputs()}
        n = len(labels)
        correct = 0
        for lo in range(0, n, self.batch):
            feed = {k: v for k, v in rows(inputs, lo, lo + self.batch).items() if k in names}
            out = sess.run(None, feed)[0]
            correct += int((np.argmax(out.reshape(len(out), -1), axis=1) == labels[lo : lo + self.batch]).sum())
        self.calls += 1
        self.samples += n
        self.full += int(n == self.n)
        self.seconds += time.perf_counter() - t0
        return correct / n

    def __call__(self, model: Any, *_: Any) -> float:
        return self.score(model, self.inputs, self.labels)

    def counts(self) -> dict[str, Any]:
        return {"callback_calls": self.calls, "full_evaluations": self.full, "samples_scored": self.samples,
                "equivalent_full_evaluations": round(self.samples / max(self.n, 1), 2),
                "callback_seconds": round(self.seconds, 2)}


# --------------------------------------------------------------------------------------------- peers


def run_nncf(a: argparse.Namespace, cal: dict, val: tuple, cb: Top1, out: Path) -> dict[str, Any]:
    import nncf

    model = onnx.load(a.model)
    calib_items = [rows(cal, i, i + 1) for i in range(n_of(cal))]
    vin, vlab = val
    val_items = [(rows(vin, i, i + 1), vlab[i : i + 1]) for i in range(len(vlab))]

    def validate(m: onnx.ModelProto, items: Any) -> float:
        items = list(items)
        x = {k: np.concatenate([it[0][k] for it in items]) for k in items[0][0]}
        y = np.concatenate([it[1] for it in items])
        return cb.score(m, x, y)

    kwargs: dict[str, Any] = {"max_drop": TOLERABLE_LOSS, "drop_type": nncf.DropType.ABSOLUTE,
                              "subset_size": len(calib_items)}
    if a.transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    q = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(calib_items), nncf.Dataset(val_items, lambda it: it[0]), validate, **kwargs)
    onnx.save(q, out)
    return {"version": nncf.__version__, "call": (
        "nncf.quantize_with_accuracy_control(onnx.load(model), nncf.Dataset(calib_rows), "
        "nncf.Dataset(val_rows, lambda it: it[0]), validate, max_drop=0.01, drop_type=nncf.DropType.ABSOLUTE, "
        f"subset_size={len(calib_items)}" + (", model_type=nncf.ModelType.TRANSFORMER" if a.transformer else "")
        + ")")}


def run_nncf_wc(a: argparse.Namespace, cal: dict, val: tuple, cb: Top1, out: Path) -> dict[str, Any]:
    """NNCF weight compression (weight-only, int4 with an int8_asym backup), one shot: no callback."""
    import nncf

    model = onnx.load(a.model)
    calib_items = [rows(cal, i, i + 1) for i in range(n_of(cal))]
    # Conv is left out: NNCF 3.4.0 writes a Conv weight's DequantizeLinear with a scale ORT rejects
    # ("For per axis quantization, scale must be 1D tensor with size 32"), see benchmarks/PEERS.md.
    q = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, ratio=0.8, group_size=-1,
                              backup_mode=nncf.BackupMode.INT8_ASYM, dataset=nncf.Dataset(calib_items),
                              subset_size=len(calib_items), ignored_scope=nncf.IgnoredScope(types=["Conv"]))
    onnx.save(q, out)
    return {"version": nncf.__version__, "call": (
        "nncf.compress_weights(onnx.load(model), mode=nncf.CompressWeightsMode.INT4_SYM, ratio=0.8, group_size=-1, "
        f"backup_mode=nncf.BackupMode.INT8_ASYM, dataset=nncf.Dataset(calib_rows), subset_size={len(calib_items)}, "
        "ignored_scope=nncf.IgnoredScope(types=['Conv']))")}


def run_inc(a: argparse.Namespace, cal: dict, val: tuple, cb: Top1, out: Path) -> dict[str, Any]:
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


def run_onc(a: argparse.Namespace, cal: dict, val: tuple, cb: Top1, out: Path) -> dict[str, Any]:
    """onnx-neural-compressor (INC's 3.x-style ONNX package): autotune over StaticQuantConfig's tuning set."""
    from importlib.metadata import version

    from onnx_neural_compressor import data_reader
    from onnx_neural_compressor.quantization import config, tuning

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

    tune_config = tuning.TuningConfig(config_set=config.StaticQuantConfig.get_config_set_for_tuning(),
                                      tolerable_loss=TOLERABLE_LOSS, max_trials=a.max_trials)
    q = tuning.autotune(model_input=a.model, tune_config=tune_config, eval_fn=cb, calibration_data_reader=Reader())
    if q is None:
        raise RuntimeError("onnx_neural_compressor autotune returned None: no config met the accuracy goal")
    onnx.save(q, out)
    return {"version": version("onnx-neural-compressor"), "call": (
        "onnx_neural_compressor.quantization.tuning.autotune(model_input=path, tune_config=TuningConfig("
        "config_set=StaticQuantConfig.get_config_set_for_tuning(), tolerable_loss=0.01, "
        f"max_trials={a.max_trials}), eval_fn=top1, calibration_data_reader=Reader())")}


OLIVE_SCRIPT = '''
import json, os
import numpy as np
from olive.data.registry import Registry

@Registry.register_dataset()
def qae_split(data_path):
    d = np.load(data_path)
    names = [k for k in d.files if k != "labels"]
    return [({k: d[k][i] for k in names}, int(d["labels"][i])) for i in range(len(d["labels"]))]

@Registry.register_post_process()
def qae_top1_argmax(output_data, **kwargs):
    # Olive's accuracy metric calls this once per batch of the validation split: count the rows scored
    with open(os.environ["QAE_PEERS_COUNT"], "a") as f:
        f.write(json.dumps({"rows": int(output_data.shape[0])}) + "\\n")
    return output_data.reshape(output_data.shape[0], -1).argmax(dim=-1)
'''


def run_olive(a: argparse.Namespace, cal: dict, val: tuple, cb: Top1, out: Path) -> dict[str, Any]:
    """Olive: OnnxQuantization (static and dynamic, its search space) searched by its TPE sampler (Optuna),
    scored by Olive's own accuracy metric (torchmetrics accuracy = top-1) on the validation split.

    Olive 0.13.0 cannot run a ``custom`` metric through ``olive.workflows.run``: it forces a custom
    metric's backend to None and then fails serialising it ("Error calling function
    `serialize_backend`: AttributeError: 'NoneType' object has no attribute 'model_dump'"). So the
    callback is Olive's ``accuracy`` metric on the same split, with a post-process that counts rows."""
    import olive
    from olive.workflows import run as olive_run

    work = Path(tempfile.mkdtemp(prefix="olive-", dir=out.parent))
    script = work / "qae_user_script.py"
    script.write_text(OLIVE_SCRIPT)
    counts = work / "counts.jsonl"
    os.environ["QAE_PEERS_COUNT"] = str(counts)
    n_val = len(val[1])
    num_classes = int(_session(a.model).run(None, rows(val[0], 0, 1))[0].reshape(1, -1).shape[1])

    def split(name: str, path: str, batch: int, post: bool) -> dict[str, Any]:
        cfg: dict[str, Any] = {"name": name, "user_script": str(script),
                               "load_dataset_config": {"type": "qae_split", "data_path": path},
                               "dataloader_config": {"batch_size": batch}}
        if post:
            cfg["post_process_data_config"] = {"type": "qae_top1_argmax"}
        return cfg

    config = {
        "input_model": {"type": "ONNXModel", "model_path": a.model},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [split("calib", a.calib, 1, False), split("val", a.val, n_val, True)],
        "evaluators": {"top1_eval": {"type": "OnnxEvaluator", "metrics": [{
            "name": "accuracy", "type": "accuracy", "backend": "torch_metrics", "data_config": "val",
            "sub_types": [{"name": "accuracy_score", "priority": 1, "higher_is_better": True,
                           "goal": {"type": "max-degradation", "value": TOLERABLE_LOSS},
                           "metric_config": {"task": "multiclass", "num_classes": num_classes}}]}]}},
        "passes": {"quantization": {"type": "OnnxQuantization", "data_config": "calib"}},
        # max_iter/max_time bound the search: Olive 0.13.0 fails every step whose model comes from its cache
        # (FootprintNode has no field model_config) and, counting only successes, max_samples never stops it.
        "search_strategy": {"execution_order": "joint", "sampler": "tpe", "max_samples": a.max_trials, "seed": 0,
                            "max_iter": a.max_trials, "max_time": 600},
        "evaluator": "top1_eval",
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(work / "cache"),
        "output_dir": str(work / "out"),
    }
    as_given = json.dumps({k: v for k, v in config.items() if k not in ("cache_dir", "output_dir")})
    (work / "olive_config.json").write_text(json.dumps(config, indent=1))
    try:
        result = olive_run(config)  # Olive puts its own objects into ``config``
    finally:
        scored = [json.loads(line)["rows"] for line in counts.read_text().splitlines()] if counts.exists() else []
        cb.calls += len(scored)
        cb.samples += sum(scored)
        cb.full += sum(1 for r in scored if r == n_val)
    best = _olive_best(result, work / "out")
    if best is None:
        raise RuntimeError(f"Olive produced no model that met the goal (output in {work})")
    import shutil

    shutil.copyfile(best, out)
    return {"version": olive.__version__, "call": "olive.workflows.run(config) with config = " + as_given,
            "olive_workdir": str(work), "olive_best": str(best),
            "callback_note": "Olive's accuracy metric (torchmetrics multiclass accuracy = top-1) on the validation "
                             "split; evaluations counted by rows through its post-process"}


def _olive_best(result: Any, outdir: Path) -> Path | None:
    """The best model Olive reports, else the first .onnx in its output folder."""
    try:
        best = result.get_best_candidate()
        if best is not None:
            p = Path(best.model_path)
            if p.is_dir():
                cands = sorted(p.rglob("*.onnx"))
                return cands[0] if cands else None
            return p
    except Exception:
        pass
    cands = sorted(outdir.rglob("*.onnx"))
    return cands[0] if cands else None


def run_aimet(a: argparse.Namespace, cal: dict, val: tuple, cb: Top1, out: Path) -> dict[str, Any]:
    """AIMET (aimet-onnx): Automatic Mixed Precision, greedy phase 1 + binary-search phase 2, drop 1 %."""
    import aimet_onnx
    from aimet_onnx.common.defs import CallbackFunc, QuantizationDataType
    from aimet_onnx.mixed_precision import choose_mixed_precision
    from aimet_onnx.quantsim import QuantizationSimModel

    model = onnx.load(a.model)
    calib_batches = [rows(cal, lo, lo + 32) for lo in range(0, n_of(cal), 32)]
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
    results = Path(tempfile.mkdtemp(prefix="aimet-amp-", dir=out.parent))
    pareto = choose_mixed_precision(sim, candidates, evaluate, evaluate, allowed_accuracy_drop=TOLERABLE_LOSS,
                                    results_dir=str(results), clean_start=True,
                                    forward_pass_callback=CallbackFunc(forward, None), use_all_amp_candidates=True)
    onnx.save(sim.to_onnx_qdq(prequantize_constants=True), out)  # weights stored as integers, not float + Q
    return {"version": aimet_onnx.__version__, "pareto_points": len(pareto or []), "amp_results": str(results),
            "call": (
                "sim = QuantizationSimModel(onnx.load(model), param_type='int8', activation_type='int8', "
                "quant_scheme='min_max', providers=['CPUExecutionProvider']); sim.compute_encodings(forward, None); "
                "choose_mixed_precision(sim, [((16,int),(16,int)), ((16,int),(8,int)), ((8,int),(8,int)), "
                "((8,int),(4,int))], CallbackFunc(top1), CallbackFunc(top1), allowed_accuracy_drop=0.01, "
                "results_dir=..., clean_start=True, forward_pass_callback=CallbackFunc(forward, None), "
                "use_all_amp_candidates=True); onnx.save(sim.to_onnx_qdq(prequantize_constants=True), out)")}


RUNNERS = {"nncf": run_nncf, "nncf_wc": run_nncf_wc, "inc": run_inc, "onc": run_onc, "olive": run_olive,
           "aimet": run_aimet}


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
    a = ap.parse_args(argv)
    outdir = Path(a.out).resolve()
    a.model, a.calib, a.val = (str(Path(p).resolve()) for p in (a.model, a.calib, a.val))
    outdir.mkdir(parents=True, exist_ok=True)
    cal, _ = load_split(a.calib)
    val = load_split(a.val)
    cb = Top1(*val)
    record: dict[str, Any] = {"peer": a.peer, "model": str(a.model), "val_path": str(a.val), "python": sys.executable,
                              "versions": {"numpy": np.__version__, "onnx": onnx.__version__,
                                           "onnxruntime": ort.__version__}}
    fp32 = Top1(*val)(a.model)  # not counted: the reference every peer's drop is measured against
    record["fp32_val_top1"] = fp32
    os.chdir(outdir)  # peers write workspaces in the working directory (INC: nc_workspace/)
    t0 = time.perf_counter()
    try:
        info = RUNNERS[a.peer](a, cal, val, cb, outdir / "model.onnx")
        record.update(status="ok", **info)
    except BaseException as e:  # a peer may raise anything, SystemExit included: report it, never crash
        record.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    record["wall_s"] = round(time.perf_counter() - t0, 2)
    record.update(cb.counts())
    record["ort_compat_sessions"] = COMPAT["sessions_rewritten"]
    if record["status"] == "ok" and (outdir / "model.onnx").exists():
        try:
            check_output(record, outdir)
        except Exception as e:  # the peer returned a model ORT cannot run: that is its result
            record.update(status="error", error=f"the peer's model does not run: {type(e).__name__}: {e}",
                          traceback=traceback.format_exc())
    (outdir / "result.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "traceback"}, default=str))
    return 0 if record["status"] == "ok" else 1


def check_output(record: dict[str, Any], outdir: Path) -> None:
    """Load the peer's model in ORT (rewriting it if it only trips ORT_S8_BUG), score it on the
    validation split, describe it."""
    val = load_split(record["val_path"])
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
    record["val_top1"] = Top1(*val)(outdir / "model.onnx")


if __name__ == "__main__":
    raise SystemExit(main())
