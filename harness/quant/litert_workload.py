"""The LiteRT workload: a ``Workload`` whose model is a .tflite, built by ai-edge-quantizer and scored
with LiteRT's interpreter on this host.

Same contract as ``harness.quant.workload.Workload`` (the search, the CLI, the HIL loop and the
exports use it unchanged): the same splits, the same metric plan chosen once from the FP32 outputs,
the same ``EvalReport`` with per-sample statistics for intervals. The differences:

- calibration is ai-edge-quantizer's (every tensor's min/max over the calibration split), run once
  per workload and reused by every genome;
- ``build`` returns a ``LiteResult`` (the .tflite bytes and the recipe), ``save_model`` writes it;
- sizes are the file's bytes and its constant buffers' bytes, exactly as stored (int4 weights are
  packed in the file); nothing is emulated (a width the quantizer cannot build is refused).

Which model: a ``.tflite`` file; ``builtin:NAME`` with ``runtime="litert"`` (converted from its
torch definition once, ``harness.quant.litert_convert``); or ``torch:module:function`` (converted
from the user's module, traced with the first calibration sample).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import InputError
from harness.core.genome import Genome
from harness.quant import metrics
from harness.quant.data import DataOptions, load_dataset
from harness.quant.evaluate import EvalReport
from harness.quant.litert_model import LiteModelInfo, load_tflite, require, weight_bytes
from harness.quant.workload import Workload, at_data_shapes, builtin_default, resolve_metric, with_metric

RUNTIMES = ("onnxruntime", "litert")
TORCH_PREFIX = "torch:"


def wants_litert(spec: str | Path, runtime: str | None) -> bool:
    """True when ``spec`` runs on LiteRT: a .tflite file, a torch module, or ``runtime == "litert"``."""
    if runtime not in (None, *RUNTIMES):
        raise InputError(f"--runtime {runtime!r} is not supported: use one of {', '.join(RUNTIMES)}")
    text = str(spec)
    return runtime == "litert" or text.lower().endswith(".tflite") or text.startswith(TORCH_PREFIX)


def load_lite_model(spec: str | Path, input_shapes: dict[str, list[int]] | None = None,
                    calib: str | Path | None = None) -> LiteModelInfo:
    """The LiteRT model ``spec`` names (see the module docstring); a missing extra is one line."""
    require()
    text = str(spec)
    if text.startswith("builtin:"):
        from harness.quant.litert_convert import ensure_builtin

        model = ensure_builtin(text.split(":", 1)[1])
        return model if not input_shapes else _reshaped(model, input_shapes)
    if text.startswith(TORCH_PREFIX):
        from harness.core.paths import cache_dir
        from harness.quant.litert_convert import convert_torch

        if calib is None:
            raise InputError("--torch needs --calib DATA.npz: its first sample traces the module for conversion")
        model = convert_torch(text[len(TORCH_PREFIX):], calib, cache_dir() / "torch-litert")
        return model if not input_shapes else _reshaped(model, input_shapes)
    return load_tflite(text, input_shapes)


def _reshaped(model: LiteModelInfo, shapes: dict[str, list[int]]) -> LiteModelInfo:
    out = model.at_shapes(shapes)
    assert isinstance(out, LiteModelInfo)
    return out


class LiteWorkload(Workload):
    """A ``Workload`` on LiteRT (see the module docstring). ``ranges`` holds ai-edge-quantizer's
    calibration result (tensor name -> min/max), computed once."""

    runtime = "litert"

    @classmethod
    def open_lite(
        cls,
        spec: str | Path,
        calib: str | Path | None = None,
        eval_data: str | Path | None = None,
        method: str = "minmax",
        input_shapes: dict[str, list[int]] | None = None,
        metric: str = "auto",
        options: DataOptions | None = None,
        test_data: str | Path | None = None,
        holdout: float | None = None,
    ) -> LiteWorkload:
        from harness.quant import litert_quant

        if method != "minmax":
            raise InputError(f"--method {method} is ONNX Runtime's calibration; ai-edge-quantizer calibrates with "
                             "min/max: use --method minmax on LiteRT")
        options = with_metric(options, metric)
        model = load_lite_model(spec, input_shapes, calib)
        calib_set = load_dataset(calib or builtin_default(model, "calib", "--calib"), model, options)
        model = at_data_shapes(model, calib_set, input_shapes)  # type: ignore[assignment]
        assert isinstance(model, LiteModelInfo)
        feeds = [{model.input_map.get(k, k): v for k, v in feed.items()} for feed in calib_set.batches(None)]
        ranges, cached = litert_quant.calibrate(model, _cast(model, feeds), calib_set.sha256)
        work = cls(model, calib_set, ranges, cached, method,  # type: ignore[arg-type]
                   metric=resolve_metric(options.metric, model.builtin), options=options)
        work.open_splits(eval_data, test_data, holdout)
        return work

    @property
    def lite(self) -> LiteModelInfo:
        assert isinstance(self.model, LiteModelInfo)
        return self.model

    def build(self, genome: Genome) -> Any:
        from harness.quant import litert_quant

        return litert_quant.quantize(self.lite, genome, self.ranges)  # type: ignore[arg-type]

    def _outputs(self, content: bytes | None, split: str, threads: int | None = None) -> dict[str, np.ndarray]:
        from harness.quant import litert_quant

        data = self._eval_set() if split == "validation" else self.test_data
        if data is None:
            raise InputError("no test split: give --test TEST.npz or --holdout FRACTION")
        return litert_quant.run_all(self.lite, content, data, threads=threads)

    @property
    def references(self) -> dict[str, np.ndarray]:
        if self._references is None:
            self._references = self._outputs(None, "validation")
        return self._references

    @property
    def reference_outputs(self) -> np.ndarray:
        return self.references[self.lite.outputs[0].name]

    @property
    def test_references(self) -> dict[str, np.ndarray]:
        if self.test_data is None:
            raise InputError("no test split: give --test TEST.npz or --holdout FRACTION")
        if self._test_references is None:
            self._test_references = self._outputs(None, "test")
        return self._test_references

    def evaluate(self, result: Any | None, threads: int | None = None, split: str = "validation",
                 with_stats: bool = False) -> EvalReport:
        if split not in ("validation", "test"):
            raise ValueError(f"unknown split {split!r}")
        data = self._eval_set() if split == "validation" else self.test_data
        if data is None:
            raise InputError("no test split: give --test TEST.npz or --holdout FRACTION")
        plan = self.plan
        content = self.lite.content if result is None else result.content
        got = self._outputs(content, split, threads)
        reference = self.references if split == "validation" else self.test_references
        mask = data.inputs.get("attention_mask")
        scored = metrics.score(plan, got, reference, data.labels, mask)
        stats = metrics.sample_stats(plan, got, reference, data.labels, mask) if with_stats else None
        weights = weight_bytes(content)
        return EvalReport(
            accuracy=scored.accuracy, metric=plan.key, n=data.n, file_bytes=len(content), weight_bytes=weights,
            stored_weight_bytes=weights, emulated=False, emulated_layers=[], top1_agreement=scored.top1_agreement,
            mean_cosine=scored.mean_cosine, labelled_accuracy=scored.labelled_accuracy, scores=scored.per_output,
            sqnr_db=scored.sqnr_db, metric_note=plan.note, sample_stats=None if stats is None else stats.to_dict(),
        )


def _cast(model: LiteModelInfo, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Feeds in the dtypes the .tflite declares (MiniLM's int64 ids may be int32 there)."""
    from harness.quant.litert_model import interpreter

    details = interpreter(model.content).get_signature_runner().get_input_details()
    return [{k: np.asarray(v).astype(np.dtype(details[k]["dtype"]), copy=False) for k, v in feed.items()}
            for feed in feeds]


def open_workload(spec: str | Path, runtime: str | None = None, **kwargs: Any) -> Workload:
    """``Workload.open`` or, for a LiteRT model (``wants_litert``), ``LiteWorkload.open_lite``."""
    if wants_litert(spec, runtime):
        return LiteWorkload.open_lite(spec, **kwargs)
    return Workload.open(spec, **kwargs)


def evaluate_lite_file(spec: str, data: str | None, reference: str | None, options: DataOptions) -> dict[str, Any]:
    """``qae evaluate`` on a .tflite file: every output scored against ``reference`` (an FP32 .tflite)
    or the labels, sizes as stored."""
    from harness.quant.litert_quant import run_all

    if data is None:
        raise InputError("--data is required for a .tflite model: give an .npz file")
    model = load_tflite(spec, require_layers=False)
    dataset = load_dataset(data, model, options)
    got = run_all(model, None, dataset)
    ref = None
    if reference is not None:
        ref_model = load_tflite(reference, require_layers=False)
        if [i.name for i in ref_model.inputs] != [i.name for i in model.inputs]:
            raise InputError("the reference model has other inputs than the model: give its FP32 original")
        ref = run_all(ref_model, None, load_dataset(data, ref_model, options))
    shapes = {n: tuple(int(d) for d in a.shape) for n, a in got.items()}
    plan = metrics.plan(metrics.canonical(options.metric), shapes, dataset.labels, ref is not None, options.outputs,
                        n=dataset.n)
    scored = metrics.score(plan, got, ref, dataset.labels, dataset.inputs.get("attention_mask"))
    weights = weight_bytes(model.content)
    return EvalReport(
        accuracy=scored.accuracy, metric=plan.key, n=dataset.n, file_bytes=len(model.content), weight_bytes=weights,
        stored_weight_bytes=weights, emulated=False, emulated_layers=[], top1_agreement=scored.top1_agreement,
        mean_cosine=scored.mean_cosine, labelled_accuracy=scored.labelled_accuracy, scores=scored.per_output,
        sqnr_db=scored.sqnr_db, metric_note=plan.note,
    ).to_dict()
