"""A workload: one model with its calibration and evaluation data, ready to build and score genomes.

This is the unit the search, the CLI and the benchmarks share: calibration runs once (and is cached
on disk), the FP32 reference outputs (every output) are computed once, the metric is chosen once
from them (``plan``, described by ``metric_note``), and every candidate genome is then built from
the cached ranges and evaluated on the same data. The model's shapes for one inference come from
the given ``input_shapes``, else from the calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import InputError, ModelError
from harness.core.genome import Gene, Genome
from harness.core.model import BUILTINS, ModelInfo, builtin_data, builtin_meta, load_model
from harness.quant import metrics
from harness.quant.calibration import Ranges, activation_ranges
from harness.quant.data import DataOptions, Dataset, load_dataset
from harness.quant.evaluate import EvalReport, evaluate, output_names, run_all, session
from harness.quant.quantize import QuantResult, quantize, read_stamp


@dataclass
class Workload:
    """``metric`` is the metric asked for (``auto`` resolved against a builtin's declared one);
    ``plan`` says what it became for these outputs and data, ``metric_note`` in one line."""

    #: the backend that builds and runs candidates (``harness.quant.litert_workload.LiteWorkload``: litert)
    runtime = "onnxruntime"

    model: ModelInfo
    calib: Dataset
    ranges: Ranges
    ranges_from_cache: bool
    method: str = "minmax"
    eval_data: Dataset | None = None
    metric: str = "auto"
    options: DataOptions = field(default_factory=DataOptions)
    #: the test split: scored only after a search, never by it (None: no test split was given)
    test_data: Dataset | None = None
    #: where each split came from: {"validation"|"test": {"path", "sha256", "n", "from"}, "holdout": ...}
    splits: dict[str, Any] = field(default_factory=dict)
    _references: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _test_references: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _plan: metrics.Plan | None = field(default=None, repr=False)
    _samples: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def open(
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
    ) -> Workload:
        """Load the model and data, calibrate (cached), and fix the shapes the model runs at.

        Given ``input_shapes`` win; the other inputs take the shape of one inference of the
        calibration data (``Dataset.inference_shapes``). ``metric`` is the older way to say
        ``options.metric``: it applies when the options leave the metric at ``auto``.

        Splits: ``eval_data`` is the validation split (what a search scores). The test split is
        ``test_data``, or ``holdout`` (a fraction) of ``eval_data`` split once with a fixed seed
        (the rest is then the validation split), or a builtin's shipped ``test.npz`` when neither
        data file is given; without any, there is no test split (``test_data`` is None).
        """
        options = with_metric(options, metric)
        model = load_model(spec, input_shapes)
        calib_set = load_dataset(calib or builtin_default(model, "calib", "--calib"), model, options)
        model = at_data_shapes(model, calib_set, input_shapes)
        ranges, cached = activation_ranges(model, calib_set, method)
        work = cls(model, calib_set, ranges, cached, method, metric=resolve_metric(options.metric, model.builtin),
                   options=options)
        work.open_splits(eval_data, test_data, holdout)
        return work

    def open_splits(self, eval_data: str | Path | None, test_data: str | Path | None, holdout: float | None) -> None:
        """The validation split (``eval_data``, or a builtin's own) and the test split (see ``open``);
        every backend's ``open`` ends here."""
        if test_data is not None and holdout is not None:
            raise InputError("give either --test FILE or --holdout FRACTION, not both")
        if eval_data is not None or self.model.builtin:
            self.eval_data = load_dataset(eval_data or builtin_default(self.model, "eval", "--data"), self.model,
                                          self.options)
        self._open_test(test_data, holdout, builtin_test=eval_data is None)

    def _open_test(self, test_data: str | Path | None, fraction: float | None, builtin_test: bool) -> None:
        """Fix the test split (see ``open``) and record where every split came from."""
        from harness.quant.data import HOLDOUT_SEED, holdout

        def described(data: Dataset, origin: str) -> dict[str, Any]:
            return {"path": str(data.path), "sha256": data.sha256, "n": data.n, "from": origin}

        self.splits = {"calibration": described(self.calib, "file"), "holdout": None}
        if self.eval_data is None:
            if test_data is not None or fraction is not None:
                raise InputError("--test and --holdout need evaluation data: give --data VALIDATION.npz too")
            return
        origin = "builtin" if builtin_test and self.model.builtin else "file"
        if fraction is not None:
            whole = self.eval_data
            val, test = holdout(whole, fraction)
            self.eval_data = whole.subset(val, "validation")
            self.test_data = whole.subset(test, "test")
            self.splits["holdout"] = {"fraction": float(fraction), "seed": HOLDOUT_SEED, "of": str(whole.path),
                                      "validation_indices": val, "test_indices": test}
            origin = "holdout"
        elif test_data is not None:
            self.test_data = load_dataset(test_data, self.model, self.options)
        elif builtin_test and self.model.builtin and builtin_data(self.model.builtin, "test").is_file():
            self.test_data = load_dataset(builtin_data(self.model.builtin, "test"), self.model, self.options)
        self.splits["validation"] = described(self.eval_data, origin)
        if self.test_data is not None:
            if self.test_data.sha256 == self.eval_data.sha256:
                raise InputError("--test is the same file as --data: the test split must hold other samples")
            if (self.eval_data.labels is None) != (self.test_data.labels is None):
                which = "--data" if self.eval_data.labels is not None else "--test"
                raise InputError(f"only {which} has labels: give 'labels' in both the validation and the test data")
            self.splits["test"] = described(self.test_data, origin)

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
        """The quantized model of ``genome``; a ``rounding: gptq`` layer gets its calibration inputs
        (collected once for every MatMul/Gemm layer, cached on disk: ``rounding.activation_samples``)."""
        samples = self.gptq_samples() if any(gene.rounding == "gptq" for gene in genome.genes.values()) else None
        return quantize(self.model, genome, self.ranges, samples)

    def gptq_samples(self) -> dict[str, np.ndarray]:
        """Every MatMul/Gemm layer's calibration inputs ``[S, K]`` (what ``rounding: gptq`` needs),
        collected once and cached on disk (``rounding.activation_samples``)."""
        if self._samples is None:
            from harness.quant.rounding import activation_samples

            eligible = [layer.name for layer in self.model.layers if layer.op_type in ("MatMul", "Gemm")]
            self._samples = activation_samples(self.model, self.calib, eligible)
        return self._samples

    def _eval_set(self) -> Dataset:
        if self.eval_data is None:
            raise InputError("no evaluation data: give --data EVAL.npz")
        return self.eval_data

    @property
    def references(self) -> dict[str, np.ndarray]:
        """The FP32 model's every tensor output on the evaluation data, computed once."""
        if self._references is None:
            self._references = run_all(session(self.model.proto), self._eval_set(), output_names(self.model.proto))
        return self._references

    @property
    def reference_outputs(self) -> np.ndarray:
        """The FP32 model's first output (what a device returns); ``references`` has them all."""
        return self.references[output_names(self.model.proto)[0]]

    @property
    def plan(self) -> metrics.Plan:
        """The metric and outputs that score this workload, chosen once from the FP32 outputs."""
        if self._plan is None:
            shapes = {name: tuple(int(d) for d in arr.shape) for name, arr in self.references.items()}
            data = self._eval_set()
            self._plan = metrics.plan(self.metric, shapes, data.labels, True, self.options.outputs, n=data.n)
        return self._plan

    @property
    def metric_note(self) -> str:
        """One line: which metric scores which outputs (CLIs print it)."""
        if self.eval_data is None:
            return "metric: chosen once evaluation data is given (--data)"
        return self.plan.note

    @property
    def test_references(self) -> dict[str, np.ndarray]:
        """The FP32 model's every tensor output on the test split, computed once (after a search)."""
        if self.test_data is None:
            raise InputError("no test split: give --test TEST.npz or --holdout FRACTION")
        if self._test_references is None:
            self._test_references = run_all(session(self.model.proto), self.test_data,
                                            output_names(self.model.proto))
        return self._test_references

    def evaluate(self, result: QuantResult | None, threads: int | None = None, split: str = "validation",
                 with_stats: bool = False) -> EvalReport:
        """Score a built candidate (or the FP32 model for ``None``) on the validation split (what a
        search sees) or, after it, on the ``test`` split; ``with_stats`` adds per-sample statistics."""
        if split not in ("validation", "test"):
            raise ValueError(f"unknown split {split!r}")
        data = self._eval_set() if split == "validation" else self.test_data
        if data is None:
            raise InputError("no test split: give --test TEST.npz or --holdout FRACTION")
        plan = self.plan  # chosen once, on the validation split, for both
        proto = self.model.proto if result is None else result.proto
        return evaluate(
            proto,
            data,
            file_bytes=proto.ByteSize(),
            nominal_bits=None if result is None else result.nominal_bits,
            emulated_layers=None if result is None else result.emulated_layers,
            reference_outputs=self.references if split == "validation" else self.test_references,
            threads=threads,
            plan=plan,
            with_stats=with_stats,
        )

    def score_outputs(self, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """Score outputs computed elsewhere (a device) by this workload's plan, against the FP32
        reference: the plan's outputs present in ``outputs`` are scored (a device returns the first).
        Returns accuracy, metric, mean_cosine, sqnr_db, top1_agreement and scores."""
        chosen = tuple(n for n in self.plan.outputs if n in outputs)
        if not chosen:
            raise ModelError(f"none of the scored outputs {', '.join(self.plan.outputs)} was returned")
        sub = replace(self.plan, outputs=chosen)
        data = self._eval_set()
        got = metrics.score(sub, outputs, self.references, data.labels, data.inputs.get("attention_mask"))
        return {
            "accuracy": got.accuracy,
            "metric": sub.key,
            "mean_cosine": got.mean_cosine,
            "sqnr_db": got.sqnr_db,
            "top1_agreement": got.top1_agreement,
            "scores": got.per_output,
        }


def with_metric(options: DataOptions | None, metric: str) -> DataOptions:
    """``options`` with the older ``metric`` argument applied where the options leave it at ``auto``."""
    options = options or DataOptions()
    return replace(options, metric=metric) if metric != "auto" and options.metric == "auto" else options


def resolve_metric(metric: str, builtin: str | None) -> str:
    """``auto`` becomes the metric a builtin declares in its meta.json (e.g. ``embedding``), if any.

    A declared ``top1`` stays ``auto``: that is what auto does with labels, and auto still scores
    agreement on data without them.
    """
    metric = metrics.canonical(metric)
    if metric == "auto" and builtin:
        declared = builtin_meta(builtin).get("metric")
        if declared in metrics.METRICS and declared != "top1":
            return str(declared)
    return metric


def at_data_shapes(model: ModelInfo, data: Dataset, given: dict[str, list[int]] | None) -> ModelInfo:
    """The model re-inventoried at the shapes of one inference of ``data``, for inputs not ``given``."""
    given = given or {}
    shapes = {k: v for k, v in data.inference_shapes().items() if k not in given}
    if all(model.shapes_used.get(k) == v for k, v in shapes.items()):
        return model
    # One real feed resolves what shape inference cannot; it only fits when no shape was overridden.
    return model.at_shapes(shapes, sample=None if given else data.first_feed())


def builtin_default(model: ModelInfo, kind: str, option: str) -> str:
    if model.builtin:
        return str(builtin_data(model.builtin, kind))
    raise InputError(f"{option} is required for a model that is not a builtin: give an .npz file")


def evaluate_file(
    spec: str,
    data: str | None = None,
    reference: str | None = None,
    metric: str = "auto",
    options: DataOptions | None = None,
) -> dict[str, Any]:
    """Evaluate a model file as the CLI does; a qae-quantized builtin finds its data, reference and metric."""
    options = options or DataOptions()
    if metric != "auto" and options.metric == "auto":
        options = replace(options, metric=metric)
    model = load_model(spec, require_layers=False)
    props = {p.key: p.value for p in model.proto.metadata_props}
    base = props.get("qae.base_model")
    base_builtin = base.split(":", 1)[1] if base and base.startswith("builtin:") else None
    resolved = resolve_metric(options.metric, model.builtin or (base_builtin if base_builtin in BUILTINS else None))
    if data is None:
        if model.builtin:
            data = str(builtin_data(model.builtin, "eval"))
        elif base and base.startswith("builtin:"):
            data = str(builtin_data(load_model(base).builtin or "", "eval"))
        else:
            raise InputError("--data is required for a model that is not a builtin: give an .npz file")
    if reference is None and base and base.startswith("builtin:") and not model.builtin:
        reference = base
    dataset = load_dataset(data, model, options)
    ref_outputs = None
    if reference is not None:
        ref_model = load_model(reference, require_layers=False)
        _same_io(model, ref_model)
        ref_outputs = run_all(session(ref_model.proto), load_dataset(data, ref_model, options),
                              output_names(ref_model.proto))
    nominal, emulated = read_stamp(model.proto)
    report = evaluate(
        model.proto,
        dataset,
        file_bytes=model.file_bytes,
        nominal_bits=nominal,
        emulated_layers=emulated,
        reference_outputs=ref_outputs,
        metric=resolved,
        outputs=options.outputs,
    )
    return report.to_dict()


def _same_io(model: ModelInfo, ref: ModelInfo) -> None:
    if [i.name for i in model.inputs] != [i.name for i in ref.inputs]:
        raise ModelError("the reference model has other inputs than the model: give its FP32 original")
    missing = [o.name for o in model.outputs if o.name not in {r.name for r in ref.outputs}]
    if missing:
        raise ModelError(
            f"the reference model has no output {missing[0]!r}: give the model's FP32 original as --reference"
        )
