"""Metrics that fit the output: how a (quantized) model's outputs are scored, higher is better.

Each named metric scores one output against the FP32 reference (and the labels, for ``top1``):

============  ==================  ==============================================================
name          report key          what it is
============  ==================  ==============================================================
top1          top1                share of samples whose argmax is the label (class scores [N, C])
agreement     top1_agreement      share of argmaxes (over the last axis) equal to the reference's
cosine        cosine              cosine of the whole output tensor with the reference's
sqnr          sqnr                10*log10(sum ref^2 / sum err^2) over the whole tensor, in dB,
                                  clamped to [-100, 100] so FP32 against itself scores a finite 100
embedding     retrieval_top1_...  mean-pooled token embeddings [N, T, D]: top-1 retrieval agreement
mse           neg_mse             minus the mean squared error (0 is perfect): higher is better
max_abs       neg_max_abs         minus the largest absolute error (0 is perfect)
module:func   module:func         a user function (see ``user_metric``)
============  ==================  ==============================================================

The default (``auto``) is chosen from the data and the outputs' shapes: with labels, ``top1`` on
the first output that holds class scores [N, C] with C above the largest label (the other outputs
are reported with their cosine and SQNR, not optimised); else, when the one scored output is class
scores [N, C > 1], ``agreement`` (with the per-sample mean cosine beside it); else ``sqnr`` (with
the whole-tensor cosine beside it) -- an [N, 1] probability, a 1-D output, a dense map
[N, C, H, W], a sequence [N, T, C] or several outputs (a detector's box head [N, 4] looks like
class scores) are never argmaxed. A single [N, C] regression looks like class scores: score it with
``--metric sqnr``. A metric that cannot apply is an ``InputError`` naming one
that can.

Every output is scored (or those named with ``--outputs``), and a model's accuracy is the WORST
(min) of the chosen metric over its scored outputs: a detector whose box head has collapsed must
not hide behind a good class head, and the search maximises exactly this number. Outputs are the
batches' results concatenated along axis 0. A candidate output holding NaN or inf scores the floor
of every metric (-100 dB, cosine -1, agreement 0, -MSE and -max|err| -1e30), finite so a search
can rank it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import DataError, InputError, ModelError
from harness.core.stats import SampleStats

SQNR_CAP_DB = 100.0
#: the score of an output holding NaN or inf under -MSE / -max|err| (finite, so a search can rank it)
ERROR_FLOOR = -1e30

Shape = tuple[int, ...]
Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Metric:
    name: str
    key: str
    label: str
    needs_reference: bool = True


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("top1", "top1", "top-1 accuracy against the labels", needs_reference=False),
        Metric("agreement", "top1_agreement", "top-1 agreement with the FP32 reference"),
        Metric("cosine", "cosine", "cosine of the whole output with the FP32 reference"),
        Metric("sqnr", "sqnr", "dB against the FP32 reference, capped at 100"),
        Metric("embedding", "retrieval_top1_agreement", "top-1 retrieval agreement of mean-pooled embeddings"),
        Metric("mse", "neg_mse", "minus the mean squared error to the FP32 reference, 0 is best"),
        Metric("max_abs", "neg_max_abs", "minus the largest absolute error to the FP32 reference, 0 is best"),
    )
}
#: names older configurations use
ALIASES = {"classification": "top1"}
#: what ``--metric`` accepts besides ``module:function``
CHOICES = ("auto", *METRICS, *ALIASES)


@dataclass(frozen=True)
class Plan:
    """What is scored: the metric, the outputs whose worst value is the accuracy (``outputs``),
    the outputs only reported beside it (``reported``: cosine and SQNR of the outputs labels do
    not cover), and a one-line description."""

    metric: str  # a METRICS name, or module:function
    outputs: tuple[str, ...]
    note: str
    shapes: dict[str, Shape] = field(default_factory=dict)
    reported: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The metric's name in reports (``EvalReport.metric`` and the keys of ``scores``)."""
        return METRICS[self.metric].key if self.metric in METRICS else self.metric

    @property
    def user(self) -> bool:
        return self.metric not in METRICS

    @property
    def class_scores(self) -> bool:
        """Whether the scored outputs are treated as class scores (argmaxed)."""
        return self.metric in ("top1", "agreement")


@dataclass
class Scores:
    accuracy: float
    per_output: dict[str, dict[str, float]]
    top1_agreement: float | None
    mean_cosine: float | None
    sqnr_db: float | None
    labelled_accuracy: float | None


def canonical(metric: str) -> str:
    """``metric`` as a METRICS name (aliases resolved) or ``module:function``; InputError if neither."""
    metric = ALIASES.get(metric, metric)
    if metric == "auto" or metric in METRICS:
        return metric
    if ":" in metric:
        user_metric(metric)  # fails now, with its reason, rather than after a calibration
        return metric
    raise InputError(f"metric {metric!r} is not supported: use one of {', '.join(CHOICES)} or module:function")


def is_class_scores(shape: Shape) -> bool:
    """[N, C] with C > 1: what ``auto`` argmaxes. Nothing else is ever argmaxed by default."""
    return len(shape) == 2 and shape[1] > 1


def fmt_shape(shape: Shape, n: int | None = None) -> str:
    """``[N, 10]``; a first dimension that is not the sample count shows as a multiple or a number."""
    if not shape:
        return "[] (0-d)"
    first = str(shape[0])
    if n is None or shape[0] == n:
        first = "N"
    elif n and shape[0] % n == 0:
        first = f"{shape[0] // n}N"
    return "[" + ", ".join([first, *map(str, shape[1:])]) + "]"


def plan(
    metric: str,
    shapes: Mapping[str, Shape],
    labels: np.ndarray | None,
    has_reference: bool,
    outputs: Sequence[str] = (),
    n: int | None = None,
) -> Plan:
    """Choose what to score. ``shapes``: every output the model gives (all ``n`` samples, in order)."""
    metric = canonical(metric)
    shapes = dict(shapes)
    for name in outputs:
        if name not in shapes:
            raise InputError(f"--outputs names {name!r}, which is no model output: the outputs are {', '.join(shapes)}")
    named = bool(outputs)
    scored = list(outputs) if named else list(shapes)
    if not scored:
        raise ModelError("the model has no tensor output to score: check the model")

    def described(names: Sequence[str]) -> str:
        parts = [f"{o!r} {fmt_shape(shapes[o], n)}" for o in names]
        return ("output " if len(parts) == 1 else "outputs ") + ", ".join(parts)

    labels_note = ""
    top = int(labels.max()) if labels is not None and len(labels) else 0
    if metric in ("auto", "top1") and labels is not None:
        _check_labels(labels, top, [o for o in scored if is_class_scores(shapes[o])], shapes)
        fit = [o for o in scored if is_class_scores(shapes[o]) and shapes[o][1] > top]
        if metric == "top1" and named and len(fit) < len(scored):
            bad = next(o for o in scored if o not in fit)
            raise InputError(
                f"--metric top1 cannot score output {bad!r} {fmt_shape(shapes[bad], n)}: it holds no class scores "
                f"[N, C] with C > {top} (the largest label): use --metric sqnr or agreement"
            )
        if fit:
            # The labels belong to one output: the first that can hold them (named ones: each).
            chosen = fit if named else fit[:1]
            rest = [o for o in scored if o not in chosen]
            also = ""
            if rest and has_reference:
                also = (f"; {described(rest)} reported (cosine, SQNR), not optimised: "
                        "--metric sqnr optimises the worst of every output")
            elif rest:
                also = f"; {described(rest)} not scored (no labels for them, no reference)"
            beside = "; agreement and mean cosine beside it" if has_reference else ""
            return Plan("top1", tuple(chosen), f"metric: top1 against the labels on {described(chosen)}{beside}{also}",
                        shapes, tuple(rest) if has_reference else ())
        if metric == "top1":
            raise InputError(
                f"--metric top1 needs an output of class scores [N, C] with C > {top} (the largest label), "
                f"the model gives {described(scored)}: use --metric sqnr or agreement"
            )
        labels_note = f"; labels unused: no output holds class scores [N, C] with C > {top}"
    if metric == "top1":
        raise InputError(
            "--metric top1 needs labels: give data with a 'labels' array, or use --metric agreement or sqnr"
        )
    if not has_reference:
        if metric == "auto":
            what = "the labels fit no output" if labels is not None else "the data has no labels"
            raise ModelError(f"{what} and no reference model was given: pass --reference FP32.onnx")
        if metric in METRICS and METRICS[metric].needs_reference:
            raise ModelError(f"the {metric} metric compares with a reference model: pass --reference FP32.onnx")
    why = ""
    if metric == "auto":
        # Several outputs are scored by SQNR even when each looks like [N, C]: a detector's box
        # head [N, 4] has that shape too, and a regression is never argmaxed.
        metric = "agreement" if len(scored) == 1 and is_class_scores(shapes[scored[0]]) else "sqnr"
        others = [o for o in scored if not is_class_scores(shapes[o])]
        if metric == "sqnr" and len(scored) == 1:
            why = " (not class scores: never argmaxed)"
        elif metric == "sqnr" and others:
            why = f" ({', '.join(map(repr, others))} not class scores: never argmaxed)"
        elif metric == "sqnr":
            why = " (several outputs: none argmaxed; --metric agreement if all are class scores)"
    for name in scored:
        reason = _cannot(metric, shapes[name])
        if reason:
            alt = "embedding or sqnr" if metric != "embedding" and len(shapes[name]) == 3 else "sqnr or cosine"
            hint = "" if named else ", or name the outputs to score with --outputs"
            raise InputError(
                f"--metric {metric} cannot score output {name!r} {fmt_shape(shapes[name], n)}: {reason}: "
                f"use --metric {alt}{hint}"
            )
    worst = "; accuracy is the worst of them" if len(scored) > 1 else ""
    if metric in METRICS:
        beside = {"agreement": "; mean cosine beside it", "embedding": "; mean cosine beside it",
                  "sqnr": "; cosine beside it"}.get(metric, "")
        spec = METRICS[metric]
        note = f"metric: {spec.key} ({spec.label}) on {described(scored)}{why}{beside}{worst}{labels_note}"
    else:
        note = f"metric: user metric {metric} (higher is better) on {described(scored)}{labels_note}"
    return Plan(metric, tuple(scored), note, shapes)


def _check_labels(labels: np.ndarray, top: int, class_outputs: Sequence[str], shapes: Mapping[str, Shape]) -> None:
    """Labels are class indices 0..C-1 of an output of class scores [N, C]: one that cannot be (a
    negative one, or one no such output has a class for) is a data error, not a reason to score
    something else instead."""
    if not len(labels):
        return
    low = int(labels.min())
    if low < 0:
        raise DataError(
            f"the smallest label is {low}: labels are class indices 0..C-1, fix the 'labels' array of the data"
        )
    if class_outputs and not any(shapes[o][1] > top for o in class_outputs):
        widest = max(class_outputs, key=lambda o: shapes[o][1])
        count = shapes[widest][1]
        raise DataError(
            f"the largest label is {top} but output {widest!r} scores {count} classes (labels must be 0..{count - 1}):"
            " fix the 'labels' array of the data, name the output to score with --outputs,"
            " or use --metric sqnr or agreement (they ignore labels)"
        )


def _cannot(metric: str, shape: Shape) -> str | None:
    """Why ``metric`` cannot score an output of ``shape`` (None when it can)."""
    if metric == "agreement" and (len(shape) < 2 or shape[-1] < 2):
        return "it has no class axis to argmax (class scores are [N, C] with C > 1)"
    if metric == "embedding" and len(shape) != 3:
        return "it is no token embeddings [N, T, D]"
    return None


# -- the metrics ----------------------------------------------------------------------------------
def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def sqnr_db(output: np.ndarray, reference: np.ndarray) -> float:
    """10*log10(sum ref^2 / sum err^2) over the whole tensor, clamped to [-100, 100] dB."""
    ref = _f64(reference)
    err = _f64(output) - ref
    signal, noise = float(np.sum(ref * ref)), float(np.sum(err * err))
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return float(np.clip(10.0 * math.log10(signal / noise), -SQNR_CAP_DB, SQNR_CAP_DB))


def cosine(output: np.ndarray, reference: np.ndarray) -> float:
    """Cosine of the two whole tensors; 1 when both are zero, 0 when only one is."""
    a, b = _f64(output).ravel(), _f64(reference).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def mean_row_cosine(output: np.ndarray, reference: np.ndarray) -> float:
    """Mean over samples of the cosine of each sample's output (class scores)."""
    a = output.reshape(len(output), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)))


def top1_agreement(output: np.ndarray, reference: np.ndarray) -> float:
    """Share of argmaxes over the last axis (per sample and position) equal to the reference's."""
    return float(np.mean(output.argmax(-1) == reference.argmax(-1)))


def top1(output: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(output.reshape(len(output), -1).argmax(-1) == labels))


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
    hits, cos = _retrieval_hits(outputs, reference, mask)
    return float(np.mean(hits)), float(np.mean(cos))


def _retrieval_hits(
    outputs: np.ndarray, reference: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: whether its nearest other sentence is the same as under the reference (0/1), and
    the cosine of its pooled embedding with the reference's."""
    a, b = _unit(mean_pool(outputs, mask)), _unit(mean_pool(reference, mask))
    if len(a) < 2:
        raise ModelError("retrieval agreement needs at least two evaluation samples: give a larger data set")
    nearest = []
    for emb in (a, b):
        sim = emb @ emb.T
        np.fill_diagonal(sim, -np.inf)  # a query never retrieves itself
        nearest.append(sim.argmax(axis=1))
    return (nearest[0] == nearest[1]).astype(np.float64), np.sum(a * b, axis=1)


def neg_mse(output: np.ndarray, reference: np.ndarray) -> float:
    return -float(np.mean((_f64(output) - _f64(reference)) ** 2)) if output.size else 0.0


def neg_max_abs(output: np.ndarray, reference: np.ndarray) -> float:
    return -float(np.max(np.abs(_f64(output) - _f64(reference)))) if output.size else 0.0


# -- scoring --------------------------------------------------------------------------------------
def score(
    the_plan: Plan,
    outputs: Outputs,
    reference: Outputs | None,
    labels: np.ndarray | None,
    mask: np.ndarray | None = None,
) -> Scores:
    """Score the plan's outputs (and report its ``reported`` ones); ``mask`` is the attention mask the
    embedding metric pools with. Returns the accuracy and per-output numbers, and the worst of each
    number over the outputs that have it."""
    per: dict[str, dict[str, float]] = {}
    for name in (*the_plan.outputs, *the_plan.reported):
        if name not in outputs:
            continue
        out = outputs[name]
        ref = reference.get(name) if reference is not None else None
        if ref is not None and ref.shape != out.shape:
            raise ModelError(
                f"output {name!r} has shape {list(out.shape)} but the reference gives {list(ref.shape)}: "
                "give the FP32 original of this model as the reference"
            )
        optimised = name in the_plan.outputs
        row: dict[str, float] = {}
        finite = out.dtype.kind not in "fc" or bool(np.all(np.isfinite(out)))
        if optimised and the_plan.metric == "top1" and labels is not None:
            row["top1"] = top1(out, labels) if finite else 0.0
        if ref is not None:
            if optimised and the_plan.metric == "embedding":
                agree, pooled = embedding_agreement(out, ref, mask) if finite else (0.0, -1.0)
                row["retrieval_top1_agreement"], row["mean_cosine"] = agree, pooled
            elif optimised and the_plan.class_scores:
                row["top1_agreement"] = top1_agreement(out, ref) if finite else 0.0
                row["mean_cosine"] = mean_row_cosine(out, ref) if finite else -1.0
            row["cosine"] = cosine(out, ref) if finite else -1.0
            row["sqnr"] = sqnr_db(out, ref) if finite else -SQNR_CAP_DB
            if optimised and the_plan.metric == "mse":
                row["neg_mse"] = neg_mse(out, ref) if finite else ERROR_FLOOR
            if optimised and the_plan.metric == "max_abs":
                row["neg_max_abs"] = neg_max_abs(out, ref) if finite else ERROR_FLOOR
        per[name] = row
    if the_plan.user:
        fn = user_metric(the_plan.metric)
        chosen = {o: outputs[o] for o in the_plan.outputs}
        refs = None if reference is None else {o: reference[o] for o in the_plan.outputs if o in reference}
        try:
            value = fn(chosen, refs, labels)
        except Exception as exc:  # the user's code: its failure is theirs to fix, said in one line
            msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise InputError(f"metric {the_plan.metric} raised {type(exc).__name__}: {msg}: fix the function") from None
        accuracy = _user_value(the_plan.metric, value)
    else:
        accuracy = min(per[o][the_plan.key] for o in the_plan.outputs)

    def worst(*keys: str) -> float | None:
        vals = [next(row[k] for k in keys if k in row) for row in per.values() if any(k in row for k in keys)]
        return min(vals) if vals else None

    return Scores(
        accuracy=accuracy,
        per_output=per,
        top1_agreement=worst("retrieval_top1_agreement", "top1_agreement"),
        mean_cosine=worst("mean_cosine", "cosine"),
        sqnr_db=worst("sqnr"),
        labelled_accuracy=worst("top1"),
    )


def sample_stats(
    the_plan: Plan,
    outputs: Outputs,
    reference: Outputs | None,
    labels: np.ndarray | None,
    mask: np.ndarray | None = None,
) -> SampleStats | None:
    """Per-sample statistics of the plan's accuracy (``harness.core.stats``), so it gets an interval
    and paired comparisons: their score is the accuracy ``score`` gives. None when there are none:
    a user metric (it returns one number), an output holding NaN or inf, or outputs whose first axes
    differ (no common samples to resample)."""
    if the_plan.user:
        return None
    kind = {"top1": "mean", "agreement": "mean", "embedding": "mean", "sqnr": "ratio_db", "cosine": "cosine",
            "mse": "neg_ratio", "max_abs": "neg_max"}[the_plan.metric]
    per: dict[str, np.ndarray] = {}
    for name in the_plan.outputs:
        out = outputs[name]
        ref = reference.get(name) if reference is not None else None
        if out.dtype.kind in "fc" and not np.all(np.isfinite(out)):
            return None
        if the_plan.metric == "top1":
            assert labels is not None
            col = (out.reshape(len(out), -1).argmax(-1) == labels).astype(np.float64)
        elif ref is None:
            return None
        elif the_plan.metric == "agreement":
            hits = out.argmax(-1) == ref.argmax(-1)
            col = hits.reshape(len(out), -1).mean(axis=1) if hits.ndim > 1 else hits.astype(np.float64)
        elif the_plan.metric == "embedding":
            col = _retrieval_hits(out, ref, mask)[0]
        else:
            o = _f64(out).reshape(len(out), -1)
            r = _f64(ref).reshape(len(ref), -1)
            per[name] = np.stack(_error_columns(the_plan.metric, o, r), axis=1)
            continue
        per[name] = col.reshape(-1, 1)
    if len({arr.shape[0] for arr in per.values()}) != 1:
        return None
    try:
        return SampleStats(kind, per)
    except ValueError:
        return None


def _error_columns(metric: str, o: np.ndarray, r: np.ndarray) -> list[np.ndarray]:
    """Per-sample sums of a whole-tensor metric over flattened [N, ...] rows (``harness.core.stats`` kinds)."""
    err = o - r
    if metric == "sqnr":
        return [np.sum(r * r, axis=1), np.sum(err * err, axis=1)]
    if metric == "cosine":
        return [np.sum(o * r, axis=1), np.sum(o * o, axis=1), np.sum(r * r, axis=1)]
    if metric == "mse":
        return [np.sum(err * err, axis=1), np.full(len(o), o.shape[1], dtype=np.float64)]
    return [np.max(np.abs(err), axis=1) if o.shape[1] else np.zeros(len(o))]  # max_abs


# -- user metrics ---------------------------------------------------------------------------------
UserFn = Callable[[dict[str, np.ndarray], "dict[str, np.ndarray] | None", "np.ndarray | None"], Any]


def user_metric(spec: str) -> UserFn:
    """Import ``module:function`` (a dotted module, or a path to a .py file, then ``:function``).

    The function gets (outputs, reference, labels): the scored outputs as {name: array} with
    every sample, the FP32 reference the same way (None without one) and the labels (or None); it
    returns a finite float, higher is better. The current folder is searched for the module too.
    """
    module_name, _, func = spec.rpartition(":")
    if not module_name or not func.isidentifier():
        raise InputError(f"metric {spec!r} is not module:function: e.g. --metric mymetrics:f1")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise InputError(f"metric file {module_name} not found: give module:function or FILE.py:function")
            loader_spec = importlib.util.spec_from_file_location(f"qae_user_metric_{path.stem}", path)
            if loader_spec is None or loader_spec.loader is None:
                raise InputError(f"metric file {module_name} cannot be imported: give a .py file")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:
                if "" in sys.path or str(Path.cwd()) in sys.path:
                    raise
                # The qae console script does not put the current folder on the path; a user's
                # metrics.py next to their data is the common case.
                sys.path.append(str(Path.cwd()))
                module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"metric {spec!r}: module {module_name} cannot be imported ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}): put it on PYTHONPATH or give FILE.py:function"
        ) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise InputError(f"metric {spec!r}: {module_name} has no function {func!r}: check the name")
    return fn  # type: ignore[no-any-return]


def _user_value(spec: str, value: Any) -> float:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(
            f"metric {spec} returned {type(value).__name__} {str(value)[:40]!r}: it must return one finite float, "
            "higher is better"
        )
    if not math.isfinite(float(value)):
        raise InputError(f"metric {spec} returned {float(value)}: it must return a finite float, higher is better")
    return float(value)
