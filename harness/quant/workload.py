"""A workload: one model with its calibration and evaluation data, ready to build and score genomes.

This is the unit the search, the CLI and the benchmarks share: calibration runs once (and is cached
on disk), the FP32 reference outputs are computed once, and every candidate genome is then built
from the cached ranges and evaluated on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import InputError, ModelError
from harness.core.genome import Gene, Genome
from harness.core.model import BUILTINS, ModelInfo, builtin_data, builtin_meta, load_model
from harness.quant.calibration import Ranges, activation_ranges
from harness.quant.data import Dataset, load_dataset
from harness.quant.evaluate import METRICS, EvalReport, evaluate, run_outputs, session
from harness.quant.quantize import QuantResult, quantize, read_stamp


@dataclass
class Workload:
    model: ModelInfo
    calib: Dataset
    ranges: Ranges
    ranges_from_cache: bool
    method: str = "minmax"
    eval_data: Dataset | None = None
    metric: str = "auto"
    _reference: np.ndarray | None = None

    @classmethod
    def open(
        cls,
        spec: str | Path,
        calib: str | Path | None = None,
        eval_data: str | Path | None = None,
        method: str = "minmax",
        input_shapes: dict[str, list[int]] | None = None,
        metric: str = "auto",
    ) -> Workload:
        """``metric``: one of ``harness.quant.evaluate.METRICS``; ``auto`` takes a builtin's declared one."""
        model = load_model(spec, input_shapes)
        metric = resolve_metric(metric, model.builtin)
        calib_path = calib or _builtin_default(model, "calib", "--calib")
        calib_set = load_dataset(calib_path, model)
        ranges, cached = activation_ranges(model, calib_set, method)
        work = cls(model, calib_set, ranges, cached, method, metric=metric)
        if eval_data is not None or model.builtin:
            work.eval_data = load_dataset(eval_data or _builtin_default(model, "eval", "--data"), model)
        return work

    @property
    def layer_ops(self) -> dict[str, str]:
        return {layer.name: layer.op_type for layer in self.model.layers}

    def load_genome(self, path: str | Path) -> Genome:
        return Genome.load(path, self.layer_ops)

    def genome(self, data: Any) -> Genome:
        return Genome.from_dict(data, self.layer_ops)

    def uniform(self, **fields: Any) -> Genome:
        return Genome.uniform(Gene(**fields), self.layer_ops)

    def build(self, genome: Genome) -> QuantResult:
        return quantize(self.model, genome, self.ranges)

    @property
    def reference_outputs(self) -> np.ndarray:
        if self.eval_data is None:
            raise InputError("no evaluation data: give --data EVAL.npz")
        if self._reference is None:
            self._reference = run_outputs(session(self.model.proto), self.eval_data)
        return self._reference

    def evaluate(self, result: QuantResult | None, threads: int | None = None) -> EvalReport:
        """Score a built candidate (or the FP32 model for ``None``) on the evaluation data."""
        if self.eval_data is None:
            raise InputError("no evaluation data: give --data EVAL.npz")
        proto = self.model.proto if result is None else result.proto
        return evaluate(
            proto,
            self.eval_data,
            file_bytes=proto.ByteSize(),
            nominal_bits=None if result is None else result.nominal_bits,
            emulated_layers=None if result is None else result.emulated_layers,
            reference_outputs=self.reference_outputs,
            threads=threads,
            metric=self.metric,
        )


def resolve_metric(metric: str, builtin: str | None) -> str:
    """``auto`` becomes the metric a builtin declares in its meta.json (e.g. ``embedding``), if any."""
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not supported: use one of {', '.join(METRICS)}")
    if metric == "auto" and builtin:
        declared = builtin_meta(builtin).get("metric")
        if declared in METRICS:  # digits-vit declares "top1", which "auto" already means with labels
            return str(declared)
    return metric


def _builtin_default(model: ModelInfo, kind: str, option: str) -> str:
    if model.builtin:
        return str(builtin_data(model.builtin, kind))
    raise InputError(f"{option} is required for a model that is not a builtin: give an .npz file")


def evaluate_file(
    spec: str, data: str | None = None, reference: str | None = None, metric: str = "auto"
) -> dict[str, Any]:
    """Evaluate a model file as the CLI does; a qae-quantized builtin finds its data, reference and metric."""
    model = load_model(spec, require_layers=False)
    props = {p.key: p.value for p in model.proto.metadata_props}
    base = props.get("qae.base_model")
    base_builtin = base.split(":", 1)[1] if base and base.startswith("builtin:") else None
    metric = resolve_metric(metric, model.builtin or (base_builtin if base_builtin in BUILTINS else None))
    if data is None:
        if model.builtin:
            data = str(builtin_data(model.builtin, "eval"))
        elif base and base.startswith("builtin:"):
            data = str(builtin_data(load_model(base).builtin or "", "eval"))
        else:
            raise InputError("--data is required for a model that is not a builtin: give an .npz file")
    if reference is None and base and base.startswith("builtin:") and not model.builtin:
        reference = base
    dataset = load_dataset(data, model)
    ref_outputs = None
    if reference is not None:
        ref_model = load_model(reference, require_layers=False)
        _same_io(model, ref_model)
        ref_outputs = run_outputs(session(ref_model.proto), load_dataset(data, ref_model))
    nominal, emulated = read_stamp(model.proto)
    report = evaluate(
        model.proto,
        dataset,
        file_bytes=model.path.stat().st_size,
        nominal_bits=nominal,
        emulated_layers=emulated,
        reference_outputs=ref_outputs,
        metric=metric,
    )
    return report.to_dict()


def _same_io(model: ModelInfo, ref: ModelInfo) -> None:
    if [i.name for i in model.inputs] != [i.name for i in ref.inputs]:
        raise ModelError("the reference model has other inputs than the model: give its FP32 original")
