"""The headline: qae's evolved front on MiniLM beside what ONNX Runtime's own tools give a user.

Baselines, all made from the same FP32 export (``builtin:minilm-l6``) with ONNX Runtime's tools:
fp32; ``quantize_dynamic`` int8 per-channel over MatMul and the embedding Gathers (the strongest
simple baseline, FACTS.md); ``quantize_static`` QDQ w8a8 and QDQ w4a8 per-channel (weight MatMuls
only, via nodes_to_quantize, calibrated on the workload's calibration sentences); and
``MatMulNBitsQuantizer`` 4-bit, block 32, symmetric, accuracy level 4.

The front, chosen on the VALIDATION split: ``qae search`` (``harness.run.search.run_search``) on MiniLM
with the calibrated ``host-cpu-local`` profile predicting latency (objectives accuracy, size,
latency) optimises the builtin's ``eval.npz`` (400 sentences); the front is the Pareto set of every
candidate it evaluated under (1 - validation mean cosine, weight bytes, predicted latency). Up to
``MAX_MEASURED_FRONT`` of its points are chosen, on validation too, to be built and measured: for
each baseline up to three points at most its weight bytes and at least its validation cosine
(lowest predicted latency first), then points spread along size.

What the headline CONCLUDES is decided on the TEST split (the builtin's ``test.npz``, 400 other
sentences the search never saw); validation values are kept beside the test values:

- Accuracy: every baseline and every measured front point is scored once on test: top-1 retrieval
  agreement with FP32 (each sentence queries the others; 95 % exact binomial interval over the
  queries, the gallery held fixed) and the mean cosine of the mean-pooled (attention-masked)
  embeddings with FP32's (95 % percentile bootstrap over sentences), ``harness.core.stats``.
- Every comparison the judge makes (a front point against a baseline, on mean cosine and on
  agreement) is a paired bootstrap of the difference on the same test sentences
  (``paired_difference``); its verdict is "better" or "worse" only when the 95 % interval excludes
  0, else "within noise".
- A front point COVERS a baseline when its weight bytes are at most the baseline's and its mean
  cosine is not "worse" on test; whether a covering point is "better" in cosine is said separately.
  Only measured front points are judged (they are the ones with test scores and latencies).
- Latency: every model is measured in ``PASSES`` passes in alternating orders (local transport, the
  real agent, a fresh child per model and pass), and every timed run of every pass is kept. A
  model's latency is the p50 of all its runs, with the distribution-free 95 % interval of that
  median (``harness.core.latency_stats.median_ci``); the spread of the per-pass p50s is reported
  against MLPerf Mobile's 5 % rule (``replicability``). A front point against a baseline: the
  ratio of p50s with ``latency_stats.compare`` on all runs (two-sided Mann-Whitney U; significant
  when p < 0.05 and the p50s differ by at least 5 %, the spread of separate processes), and
  ``compare_repeats`` on the per-pass medians beside it (3 against 3 cannot reach p < 0.05).
- "Within 1.1x of dynamic int8's latency" holds unless the front point is significantly SLOWER than
  1.1x dynamic int8: a one-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``, alternative
  "greater", alpha 0.05) of the point's runs against dynamic int8's runs each multiplied by 1.1
  (the hypothesis "at most 1.1x" on the ratio scale). No 5 % floor here: it would excuse points up
  to about 1.15x. The opposite one-sided test is recorded too ("clearly within": significantly
  faster than 1.1x). Without timed runs (an agent older than 1.4) the ratio of p50s alone decides,
  and the record says so.
- "Strictly better than dynamic int8": covers it, and is either smaller in weight bytes or "better"
  in mean cosine, and is within 1.1x of its latency as above.
- Controls: a front point that computes exactly what a baseline computes (same weight bytes, test
  differences exactly 0: qae's uniform dynamic int8 genome is ORT's dynamic int8) is listed with its
  latency ratio: the between-process noise (a few %) that the tests on pooled runs do not model,
  so a reader can weigh a latency verdict near its threshold.

Size is compared as weight bytes (the search's size objective: the stored bytes of every initializer,
exact for QDQ, dynamic and MatMulNBits models alike); file bytes are reported beside it.

headline.json keeps the rules in words (``rules``), the verdict lines with their intervals, and the
verdict lines of the headline it replaces (``previous_verdicts``, read before writing) with what
changed (``verdict_changes``).

    python -m benchmarks.bench_headline [--quick] [--population N] [--generations N] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks import common
from harness.core.stats import SampleStats
from harness.devices.transport import MeasureSettings

WORKLOAD = "builtin:minilm-l6"
PROFILE = "host-cpu-local"
TOKENS = 64
SEED = 0
SETTINGS = MeasureSettings(runs=30, min_seconds=1.0, warmup_runs=2, warmup_seconds=0.2, timeout_s=180, threads=1)
BASELINES = ("fp32", "dynamic_int8", "qdq_w8a8", "qdq_w4a8", "matmulnbits_4bit")
DYN = "dynamic_int8"
MAX_MEASURED_FRONT = 16
PASSES = 3
#: How sizes are compared: stored weight bytes (the search's size objective); file bytes are reported too.
SIZE = "weight_bytes"
#: the latency condition against dynamic int8, and the level of every latency test
LATENCY_FACTOR = 1.1
ALPHA = 0.05
#: the two accuracy numbers the headline reports, in the order it reports them
METRICS = ("mean_cosine", "top1_agreement")

RULES = {
    "selection": "The search optimises the validation split (the builtin's eval.npz); the front and the points "
                 "to measure are chosen on validation. Every verdict is decided on the test split (the builtin's "
                 "test.npz, sentences the search never saw); validation values are reported beside.",
    "intervals": "95 % intervals: top-1 retrieval agreement with FP32 by the exact binomial (Clopper-Pearson) "
                 "interval over the queries (the gallery held fixed); mean cosine of the mean-pooled embeddings "
                 "with FP32's by a percentile bootstrap over sentences.",
    "comparisons": "A front point against a baseline, on mean cosine and on agreement: paired bootstrap of the "
                   "difference over the same test sentences; 'better'/'worse' only when its 95 % interval "
                   "excludes 0, else 'within noise'.",
    "covers": "A front point covers a baseline when its weight bytes are at most the baseline's and its mean "
              "cosine is not 'worse' on test; 'better' in cosine is said separately. Only measured front points "
              "are judged.",
    "latency": f"{PASSES} passes in alternating orders, a fresh agent child per model and pass, every timed run "
               "kept; latency = p50 of all runs with the distribution-free 95 % interval of the median; a point "
               "against a baseline = ratio of p50s with a two-sided Mann-Whitney U test on all runs (significant "
               "when p < 0.05 and the p50s differ by >= 5 %); the spread of per-pass p50s against the 5 % rule.",
    "within_1.1x": "Within 1.1x of dynamic int8's latency unless the point is significantly slower than 1.1x it: "
                   "one-sided Mann-Whitney U (alternative 'greater', alpha 0.05) of the point's runs against "
                   "dynamic int8's runs multiplied by 1.1, no 5 % floor. Without timed runs: the ratio of p50s.",
    "strictly_better": "Strictly better than dynamic int8: covers it, is smaller in weight bytes or 'better' in "
                       "mean cosine, and is within 1.1x of its latency (rule above).",
    "smaller": "Smaller than dynamic int8 (issue 15): weight bytes at most dynamic int8's divided by 1.35 with a mean "
               "cosine not 'worse' than dynamic int8's on test and within 1.1x its latency (rule above); stretch: "
               "divided by 1.5 with the lower end of the mean cosine's 95 % interval at least 0.99 and within "
               "1.25x its latency (the same one-sided test against its runs scaled by 1.25).",
}
#: (name, size divisor, cosine rule, latency factor) of the issue-15 conditions against dynamic int8
SMALLER = (("1.35x smaller", 1.35, "not worse than dynamic int8", 1.1),
           ("1.5x smaller (stretch)", 1.5, "lower end >= 0.99", 1.25))
#: how the block kernels' 4-bit weights are rounded in the headline's search (``--rounding``)
ROUNDING = "gptq"


def fixed_shapes(src: Path, dst: Path, tokens: int = TOKENS) -> Path:
    """A copy whose inputs are [batch, tokens]: the agent feeds 1 for a symbolic dim, so without this
    it would time 1 token. The batch stays symbolic on purpose: with fully static [1, 64] inputs
    ONNX Runtime 1.32's MatMul+Add -> Gemm fusion rejects qae's QDQ models at load time
    ("gemm_input_reshape_arg_q: output_dtype INT8 does not match y_zero_point type UINT8")."""
    proto = onnx.load(str(src))
    for inp in proto.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            d.Clear()
            if i == 0:
                d.dim_param = "batch"
            else:
                d.dim_value = tokens
    onnx.save(proto, str(dst))
    return dst


def _reader(work: Any) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = work.calib.batches(16)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    return Reader()


def weight_matmuls(proto: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and any(i in inits for i in n.input)]


def make_baselines(work: Any, root: Path) -> dict[str, Path]:
    """The ONNX Runtime-only models a user would otherwise pick; paths by baseline name."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.disable(logging.WARNING)  # the quantizers log every tensor at INFO and nag at WARNING
    src = Path(work.model.path)
    nodes = weight_matmuls(work.model.proto)
    out = {"fp32": src}
    out[DYN] = root / "dynamic_int8.onnx"
    quantize_dynamic(src, out[DYN], per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gather"], extra_options={"MatMulConstBOnly": True})
    for name, wtype in (("qdq_w8a8", QuantType.QInt8), ("qdq_w4a8", QuantType.QInt4)):
        out[name] = root / f"{name}.onnx"
        quantize_static(src, out[name], _reader(work), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=wtype, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                        nodes_to_quantize=nodes,
                        extra_options={"QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
    q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True, accuracy_level=4)
    q.process()
    out["matmulnbits_4bit"] = root / "matmulnbits_4bit.onnx"
    q.model.save_model_to_file(str(out["matmulnbits_4bit"]), use_external_data_format=False)
    logging.disable(logging.NOTSET)
    return out


# -- accuracy on a split, with per-sentence statistics --------------------------------------------
def sentence_cosines(outputs: np.ndarray, reference: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Each sentence's cosine between its mean-pooled embedding (attention-masked) and FP32's: the
    per-sentence terms whose mean is the mean cosine ``harness.quant.metrics`` reports."""
    from harness.quant.metrics import mean_pool

    a, b = mean_pool(outputs, mask), mean_pool(reference, mask)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / (np.where(na > 0, na, 1.0) * np.where(nb > 0, nb, 1.0)))


def split_stats(work: Any, proto: onnx.ModelProto | None, split: str) -> dict[str, SampleStats]:
    """Per-sentence statistics of retrieval agreement and mean cosine on ``split`` ("validation" or
    "test") from one inference (``None``: the FP32 model, whose outputs are the references)."""
    from harness.quant import metrics
    from harness.quant.evaluate import run_all, session

    data, refs = (work.test_data, work.test_references) if split == "test" else (work.eval_data, work.references)
    plan = work.plan
    if plan.metric != "embedding" or len(plan.outputs) != 1:
        raise RuntimeError(f"the headline scores one embedding output; the workload's plan is {plan.note}")
    name = plan.outputs[0]
    got = {name: refs[name]} if proto is None else run_all(session(proto), data, [name])
    mask = data.inputs.get("attention_mask")
    agree = metrics.sample_stats(plan, got, refs, data.labels, mask)
    if agree is None:
        raise RuntimeError(f"the model's {split} outputs hold NaN or inf: no per-sentence statistics")
    cos = sentence_cosines(got[name], refs[name], mask)
    return {"mean_cosine": SampleStats("mean", {"cos": cos[:, None]}), "top1_agreement": agree}


def with_interval(stats: SampleStats, reference: bool = False) -> dict[str, Any]:
    """The score with its 95 % interval (``harness.core.stats.interval``). FP32 against itself
    (``reference``) is exact, and a cosine equal throughout has no spread to resample (it is no 0/1
    outcome either): both get a point interval."""
    from harness.core.stats import interval

    col = next(iter(stats.outputs.values()))[:, 0]
    if reference or ("cos" in stats.outputs and np.ptp(col) == 0):
        v = stats.value()
        return {"value": v, "ci95": [v, v], "method": "FP32 is the reference itself: exact" if reference
                else "every sentence the same value: no spread"}
    iv = interval(stats)
    return {"value": iv.value, "ci95": [iv.lo, iv.hi], "method": iv.method}


def difference(a: SampleStats, b: SampleStats) -> dict[str, Any]:
    """score(a) - score(b) on the same sentences: paired bootstrap interval and verdict."""
    from harness.core.stats import paired_difference, verdict

    with warnings.catch_warnings():  # scipy warns on a degenerate resample (identical columns)
        warnings.simplefilter("ignore")
        d = paired_difference(a, b)
    return {"difference": d.value, "ci95": [d.lo, d.hi], "verdict": verdict(d), "method": d.method}


def scored(stats: dict[str, SampleStats], split: str, reference: bool = False) -> dict[str, Any]:
    """The JSON of one model on one split: each metric with its interval."""
    n = next(iter(stats.values())).n
    return {"split": split, "n": n, **{m: with_interval(stats[m], reference) for m in METRICS}}


# -- the search and its front ---------------------------------------------------------------------
def search(population: int, generations: int, workers: int, out: Path) -> tuple[Any, float]:
    from harness.run.config import SearchConfig
    from harness.run.search import run_search

    cfg = SearchConfig(model=WORKLOAD, profiles=[PROFILE], population=population, generations=generations,
                       seed=SEED, workers=workers, rounding=ROUNDING)
    t0 = time.perf_counter()
    archive = run_search(cfg, out)
    return archive, time.perf_counter() - t0


def front_points(archive: Any) -> tuple[list[dict[str, Any]], int]:
    """Pareto set of evaluated candidates under (1 - mean cosine, weight bytes, predicted latency),
    all on the validation split the search optimised."""
    from search.nsga2 import first_front

    cands = [c for c in archive.candidates(PROFILE) if c.values and "mean_cosine" in c.values]
    f = np.array([[1 - c.values["mean_cosine"].value, c.values["size"].value, c.values["latency"].value]
                  for c in cands])
    idx = sorted(first_front(f).tolist(), key=lambda i: f[i][1])
    return [{"hash": cands[i].hash, "genome": cands[i].genome,
             "validation": {"mean_cosine": cands[i].values["mean_cosine"].value,
                            "top1_agreement": cands[i].values["accuracy"].value},
             "weight_bytes": cands[i].values["size"].value,
             "predicted_latency_ms": cands[i].values["latency"].value} for i in idx], len(cands)


def pick_measured(front: list[dict[str, Any]], baselines: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The front points to build, score on test and measure, chosen on VALIDATION: for each baseline
    the covering points (at most its weight bytes, at least its validation cosine; lowest predicted
    latency first, up to three), then evenly along size up to the cap."""
    chosen: list[int] = []
    for b in baselines.values():
        hits = [i for i, p in enumerate(front)
                if p[SIZE] <= b[SIZE] and p["validation"]["mean_cosine"] >= b["validation"]["mean_cosine"]]
        chosen += sorted(hits, key=lambda i: front[i]["predicted_latency_ms"])[:3]
    if DYN in baselines:  # the candidates for the size conditions: best validation cosine first
        dyn_size = float(baselines[DYN][SIZE])
        for _, divisor, _, _ in SMALLER:
            small = [i for i, p in enumerate(front) if p[SIZE] <= dyn_size / divisor]
            chosen += sorted(small, key=lambda i: -front[i]["validation"]["mean_cosine"])[:3]
    spread = np.unique(np.round(np.linspace(0, len(front) - 1, MAX_MEASURED_FRONT)).astype(int)).tolist()
    for i in spread:
        if len(set(chosen)) >= MAX_MEASURED_FRONT:
            break
        chosen.append(i)
    return [front[i] for i in sorted(set(chosen))]


# -- latency --------------------------------------------------------------------------------------
def measure_all(paths: dict[str, Path], root: Path,
                shaped: Callable[[Path, Path], Path] | None = None) -> dict[str, dict[str, Any]]:
    """Every model measured in ``PASSES`` passes in alternating orders on one local agent (a fresh
    child per model and pass), every timed run kept (``latency_of``). ``shaped(src, dst)`` writes the
    copy the agent times (default ``fixed_shapes``: [batch, TOKENS] inputs)."""
    from harness.devices.config import DeviceConfig
    from harness.devices.connect import connect

    shaped = shaped or fixed_shapes
    fixed = {k: shaped(p, root / f"m-{k.replace(':', '-')}.onnx") for k, p in paths.items()}
    passes: dict[str, list[dict[str, Any]]] = {k: [] for k in paths}
    errors: dict[str, list[str]] = {k: [] for k in paths}
    device = DeviceConfig(name="local", transport="local", cache_dir=str(root / "agent"), sensor="none")
    with connect(device) as t:
        for n in range(PASSES):
            order = list(fixed) if n % 2 == 0 else list(reversed(fixed))
            for k in order:
                rec = t.measure(fixed[k], SETTINGS)
                if rec.ok and rec.latency_ms:
                    runs = [round(float(x), 4) for x in rec.runs_ms] if rec.runs_ms else None
                    passes[k].append({"pass": n, "p50_ms": float(rec.latency_ms["p50"]), "runs_ms": runs})
                else:
                    errors[k].append(f"{rec.error_kind}: {rec.message}")
    return {k: latency_of(passes[k], errors[k]) for k in paths}


def all_runs(row: dict[str, Any]) -> list[float]:
    """Every timed run of every pass of a measured row; [] when any pass came without its runs."""
    passes = row.get("passes") or []
    if not passes or any(not p.get("runs_ms") for p in passes):
        return []
    return [float(x) for p in passes for x in p["runs_ms"]]


def latency_of(passes: list[dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    """A model's latency from its passes: p50 of all runs with the 95 % interval of the median, the
    per-pass p50s and their spread (MLPerf Mobile's 5 % rule)."""
    from harness.core.latency_stats import MEDIAN_CI_METHOD, median_ci, replicability

    row: dict[str, Any] = {"passes": passes, "errors": errors, "latency_ms": None, "p50_ci95": None,
                           "p50_ms_per_pass": [p["p50_ms"] for p in passes], "replicability": None}
    runs = all_runs(row)
    if runs:
        row.update(latency_ms=float(np.median(runs)), p50_ci95=list(median_ci(runs)), runs=len(runs),
                   p50_ci_method=f"{MEDIAN_CI_METHOD}, all runs of all passes")
    elif passes:  # an agent without timed runs: the median of the passes' p50s, no interval
        row.update(latency_ms=float(np.median(row["p50_ms_per_pass"])), runs=0,
                   p50_ci_method="none: the agent sent no timed runs (median of the per-pass p50s)")
    if passes:
        spread = replicability(row["p50_ms_per_pass"])
        row["replicability"] = {**spread.to_dict(), "words": spread.words}
    return row


def within_factor(a_runs: list[float], b_runs: list[float], factor: float = LATENCY_FACTOR,
                  alpha: float = ALPHA, b_name: str = "dynamic int8") -> dict[str, Any]:
    """Is A within ``factor`` x B's latency? Fails only when A is significantly slower than B's runs
    scaled by ``factor``: one-sided Mann-Whitney U (alternative "greater") at ``alpha``; the
    opposite one-sided test says whether A is clearly within (significantly faster than factor x B)."""
    from scipy.stats import mannwhitneyu

    a = np.asarray(a_runs, dtype=np.float64)
    lim = factor * np.asarray(b_runs, dtype=np.float64)
    ratio = float(np.median(a) / np.median(b_runs))
    if np.ptp(np.concatenate([a, lim])) == 0:
        p_slower = p_faster = 1.0
    else:
        p_slower = float(mannwhitneyu(a, lim, alternative="greater").pvalue)
        p_faster = float(mannwhitneyu(a, lim, alternative="less").pvalue)
    holds = not p_slower < alpha
    clearly = p_faster < alpha
    state = ("significantly slower than 1.1x: fails" if not holds else
             "significantly faster than 1.1x: holds" if clearly else "not significantly slower than 1.1x: holds")
    state = state.replace("1.1x", f"{factor:g}x")
    return {"factor": factor, "ratio": ratio, "p_slower": p_slower, "p_faster": p_faster, "alpha": alpha,
            "holds": holds, "clearly_within": clearly, "test": "Mann-Whitney U, one-sided, against scaled runs",
            "words": f"{ratio:.2f}x {b_name}'s latency; against {factor:g}x its runs, one-sided Mann-Whitney U "
                     f"(slower: {_p(p_slower)}, faster: {_p(p_faster)}): {state}"}


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def ordered(names: Any) -> list[str]:
    """Baseline names in ``BASELINES`` order (a JSON file stores them sorted), others after."""
    rank = {n: i for i, n in enumerate(BASELINES)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def latency_versus(p: dict[str, Any], b: dict[str, Any], b_name: str) -> dict[str, Any] | None:
    """A front point's latency against a baseline's (``compare`` on all runs, ``compare_repeats`` on
    the per-pass runs); None when either was not measured."""
    from harness.core.latency_stats import compare, compare_repeats

    if p.get("latency_ms") is None or b.get("latency_ms") is None:
        return None
    a_runs, b_runs = all_runs(p), all_runs(b)
    if not a_runs or not b_runs:
        ratio = p["latency_ms"] / b["latency_ms"]
        return {"ratio": ratio, "p_value": None, "significant": None, "test": "none",
                "words": f"{ratio:.2f}x the latency of {b_name} (no timed runs: no significance)"}
    out: dict[str, Any] = compare(a_runs, b_runs, b_name=b_name).to_dict()
    out["repeats"] = compare_repeats([q["runs_ms"] for q in p["passes"]], [q["runs_ms"] for q in b["passes"]],
                                     b_name=b_name).to_dict()
    return out


# -- the judge ------------------------------------------------------------------------------------
def versus(front: list[dict[str, Any]], baselines: dict[str, dict[str, Any]],
           stats: dict[str, dict[str, SampleStats]]) -> None:
    """Fill each front point's ``vs``: per baseline, the paired test differences on mean cosine and
    agreement, size, latency comparison, and against dynamic int8 the 1.1x test. ``stats`` holds
    the test statistics by model key (baseline name, or ``front:HASH12``)."""
    for p in front:
        mine = stats[f"front:{p['hash'][:12]}"]
        p["vs"] = {}
        for name, b in baselines.items():
            row: dict[str, Any] = {m: difference(mine[m], stats[name][m]) for m in METRICS}
            row["size"] = "smaller" if p[SIZE] < b[SIZE] else "equal" if p[SIZE] == b[SIZE] else "larger"
            row["latency"] = latency_versus(p, b, name.replace("_", " "))
            if name == DYN:
                row["within_1.1x"] = within_1_1x(p, b)
            p["vs"][name] = row


def within_1_1x(p: dict[str, Any], dyn: dict[str, Any]) -> dict[str, Any] | None:
    if p.get("latency_ms") is None or dyn.get("latency_ms") is None:
        return None
    a_runs, b_runs = all_runs(p), all_runs(dyn)
    if a_runs and b_runs:
        return within_factor(a_runs, b_runs)
    ratio = p["latency_ms"] / dyn["latency_ms"]
    return {"factor": LATENCY_FACTOR, "ratio": ratio, "holds": ratio <= LATENCY_FACTOR, "clearly_within": None,
            "test": "none (no timed runs): ratio of p50s",
            "words": f"{ratio:.2f}x dynamic int8's latency (no timed runs: the ratio alone decides)"}


def _slower(cmp: dict[str, Any] | None) -> bool:
    """Significantly slower (an unmeasured point counts as slower: it has no latency to show)."""
    return cmp is None or bool(cmp.get("significant") and cmp["ratio"] > 1)


def _ahead(name: str, b: dict[str, Any], pool: list[dict[str, Any]]) -> list[str]:
    """Objectives on which baseline ``b`` beats every point of ``pool`` (its covering front points,
    or the whole measured front when none covers it): significantly, on test, or in bytes."""
    checks = {
        "latency": lambda p: not _slower(p["vs"][name]["latency"]),
        "top1_agreement": lambda p: p["vs"][name]["top1_agreement"]["verdict"] != "worse",
        "size": lambda p: p[SIZE] <= b[SIZE],
        "mean_cosine": lambda p: p["vs"][name]["mean_cosine"]["verdict"] != "worse",
    }
    return [obj for obj, ok in checks.items() if pool and not any(ok(p) for p in pool)]


def covers(p: dict[str, Any], name: str, b: dict[str, Any]) -> bool:
    return bool(p[SIZE] <= b[SIZE] and p["vs"][name]["mean_cosine"]["verdict"] != "worse")


def judge(baselines: dict[str, dict[str, Any]], front: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's conditions on the measured front points (each with ``vs`` from ``versus``):
    size in weight bytes, mean cosine by its paired verdict on test, latency with significance."""
    inf = float("inf")
    cover = {}
    ahead = {}
    for name, b in baselines.items():
        hits = [p for p in front if covers(p, name, b)]
        best = min(hits, key=lambda p: p.get("latency_ms") or inf) if hits else None
        better = [p["hash"][:12] for p in hits if p["vs"][name]["mean_cosine"]["verdict"] == "better"]
        cover[name] = {"covered": bool(hits), "by": best["hash"][:12] if best else None,
                       "covering": [p["hash"][:12] for p in hits],
                       "front_latency_ms": best.get("latency_ms") if best else None,
                       "better_in_cosine": bool(better), "better_in_cosine_by": better}
        if best is not None:
            vs = best["vs"][name]
            cover[name].update(mean_cosine=vs["mean_cosine"], top1_agreement=vs["top1_agreement"],
                               latency=vs["latency"], size=vs["size"])
        ahead[name] = _ahead(name, b, hits or front)
    dyn = baselines[DYN]
    candidates = []
    for p in front:
        if not covers(p, DYN, dyn):
            continue
        vs = p["vs"][DYN]
        gain = vs["size"] == "smaller" or vs["mean_cosine"]["verdict"] == "better"
        lat = vs.get("within_1.1x")
        ok = bool(gain and lat is not None and lat["holds"])
        candidates.append({"hash": p["hash"][:12], "smaller": vs["size"] == "smaller",
                           "cosine_verdict": vs["mean_cosine"]["verdict"], "within_1.1x": lat, "ok": ok,
                           "why_not": None if ok else ("neither smaller nor better in cosine" if not gain else
                                                       "not measured" if lat is None else
                                                       "significantly slower than 1.1x dynamic int8")})
    better = [c["hash"] for c in candidates if c["ok"]]
    smaller = {name: smaller_than(front, dyn, divisor, rule, factor) for name, divisor, rule, factor in SMALLER}
    return {"smaller_than_dynamic_int8": smaller,
            "decided_on": "test", "size": SIZE, "covers_each_baseline": cover, "same_model_controls": controls(
                baselines, front),
            "all_covered": all(c["covered"] for c in cover.values()), "baseline_ahead_on": ahead,
            "dynamic_int8_candidates": candidates, "beats_dynamic_int8_within_1.1x_latency": better,
            "dynamic_int8_condition": bool(better)}


def smaller_than(front: list[dict[str, Any]], dyn: dict[str, Any], divisor: float, rule: str,
                 factor: float) -> dict[str, Any]:
    """Issue 15's conditions: measured front points at most dynamic int8's weight bytes / ``divisor``,
    with their cosine rule (not worse than dynamic int8's on test, or the interval's lower end at
    least 0.99) and within ``factor`` x its latency (one-sided test against its scaled runs)."""
    limit = dyn[SIZE] / divisor
    rows = []
    for p in front:
        if p[SIZE] > limit:
            continue
        vs = p["vs"][DYN]
        cos = p["test"]["mean_cosine"]
        cos_ok = vs["mean_cosine"]["verdict"] != "worse" if rule.startswith("not worse") else cos["ci95"][0] >= 0.99
        lat = None
        if p.get("latency_ms") is not None and dyn.get("latency_ms") is not None and all_runs(p) and all_runs(dyn):
            lat = within_factor(all_runs(p), all_runs(dyn), factor)
        ok = bool(cos_ok and lat is not None and lat["holds"])
        why = None if ok else ("mean cosine" if not cos_ok else "not measured" if lat is None else "latency")
        rows.append({"hash": p["hash"][:12], "weight_bytes": p[SIZE], "ratio": dyn[SIZE] / p[SIZE],
                     "mean_cosine": cos, "vs_dynamic_cosine": vs["mean_cosine"], "latency": lat, "ok": ok,
                     "fails_on": why})
    return {"limit_bytes": limit, "divisor": divisor, "cosine_rule": rule, "latency_factor": factor,
            "met": any(r["ok"] for r in rows), "points": rows}


def controls(baselines: dict[str, dict[str, Any]], front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Front points that compute what a baseline computes (same weight bytes, test cosine and agreement
    differences exactly 0: qae's uniform dynamic int8 genome is ORT's dynamic int8): their latency
    ratio shows the between-process noise that a test on pooled runs does not model."""
    out = []
    for p in front:
        for name, b in baselines.items():
            vs = p["vs"][name]
            same = all(vs[m]["difference"] == 0 and vs[m]["ci95"] == [0.0, 0.0] for m in METRICS)
            if same and p[SIZE] == b[SIZE] and vs["latency"] is not None:
                out.append({"hash": p["hash"][:12], "baseline": name, "ratio": vs["latency"]["ratio"],
                            "words": vs["latency"]["words"]})
    return out


# -- verdicts in words ----------------------------------------------------------------------------
def _ci(d: dict[str, Any], pct: bool = False) -> str:
    lo, hi = d["ci95"]
    if pct:
        return f"{d['value'] * 100:.1f} % [{lo * 100:.1f}, {hi * 100:.1f}]"
    return f"{d['value']:.4f} [{lo:.4f}, {hi:.4f}]"


def _diff(d: dict[str, Any], pct: bool = False) -> str:
    lo, hi = d["ci95"]
    if pct:
        return f"{d['difference'] * 100:+.1f} pts [{lo * 100:+.1f}, {hi * 100:+.1f}]: {d['verdict']}"
    return f"{d['difference']:+.5f} [{lo:+.5f}, {hi:+.5f}]: {d['verdict']}"


def verdict_lines(body: dict[str, Any]) -> list[str]:
    """The verdicts in words, each with its interval (markdown list items without the dash)."""
    v = body["verdict"]
    if v.get("decided_on") != "test":
        return legacy_verdict_lines(body)
    front = {p["hash"][:12]: p for p in body["front"]}
    out = []
    for name in ordered(v["covers_each_baseline"]):
        c = v["covers_each_baseline"][name]
        b = body["baselines"][name]
        ahead = v["baseline_ahead_on"].get(name, [])
        if c["covered"]:
            p = front[c["by"]]
            lat = c.get("latency")
            line = (f"{name}: covered: **yes**, by qae {c['by']} (weight {p[SIZE] / 1e6:.2f} MB vs "
                    f"{b[SIZE] / 1e6:.2f} MB; mean cosine {_ci(p['test']['mean_cosine'])} vs "
                    f"{_ci(b['test']['mean_cosine'])}, difference {_diff(c['mean_cosine'])}; top-1 agreement "
                    f"{_ci(p['test']['top1_agreement'], True)} vs {_ci(b['test']['top1_agreement'], True)}, "
                    f"difference {_diff(c['top1_agreement'], True)}; latency "
                    f"{lat['words'] if lat else 'not measured'})")
            line += (f"; better in mean cosine: **yes** (qae {', '.join(c['better_in_cosine_by'])})"
                     if c["better_in_cosine"] else "; better in mean cosine: no (within noise or below)")
        else:
            line = (f"{name}: covered: **no** (no measured front point at most its {b[SIZE] / 1e6:.2f} weight MB "
                    f"with a mean cosine not worse than its {_ci(b['test']['mean_cosine'])} on test)")
        if ahead:
            line += f"; the baseline stays ahead on {', '.join(ahead)}"
        out.append(line + ".")
    dyn = body["baselines"][DYN]
    head = (f"strictly better than dynamic int8 (weight bytes <= and mean cosine not worse on test, and smaller or "
            f"better in cosine) and within {LATENCY_FACTOR:g}x its latency ({_latency(dyn)}): "
            f"**{'yes' if v['dynamic_int8_condition'] else 'no'}**")
    parts = []
    for c in v["dynamic_int8_candidates"]:
        p = front[c["hash"]]
        lat = c["within_1.1x"]
        parts.append(f"qae {c['hash']} ({'smaller' if c['smaller'] else 'same or larger size'}, mean cosine "
                     f"difference {_diff(p['vs'][DYN]['mean_cosine'])}; "
                     f"{lat['words'] if lat else 'not measured'})" + ("" if c["ok"] else f": no, {c['why_not']}"))
    out.append(head + (": " + "; ".join(parts) if parts else ": no measured front point covers dynamic int8")
               + ".")
    for name, cond in v.get("smaller_than_dynamic_int8", {}).items():
        head = (f"{name} than dynamic int8 (at most {cond['limit_bytes'] / 1e6:.2f} weight MB, mean cosine "
                f"{cond['cosine_rule']}, within {cond['latency_factor']:g}x its latency): "
                f"**{'yes' if cond['met'] else 'no'}**")
        parts = [f"qae {r['hash']} ({r['ratio']:.2f}x smaller; mean cosine {_ci(r['mean_cosine'])}, vs dynamic "
                 f"int8 {_diff(r['vs_dynamic_cosine'])}; {r['latency']['words'] if r['latency'] else 'not measured'})"
                 + ("" if r["ok"] else f": fails on {r['fails_on']}") for r in cond["points"]]
        out.append(head + (": " + "; ".join(parts) if parts else ": no measured front point is that small") + ".")
    for c in v.get("same_model_controls", []):
        out.append(f"control: qae {c['hash']} computes what {c['baseline']} computes (same weight bytes, test "
                   f"differences exactly 0); measured {c['words']}: the between-process noise the latency tests "
                   "on pooled runs do not model.")
    return out


def _latency(row: dict[str, Any]) -> str:
    if row.get("latency_ms") is None:
        return "not measured"
    ci = row.get("p50_ci95")
    return f"p50 {row['latency_ms']:.2f} ms" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def legacy_verdict_lines(body: dict[str, Any]) -> list[str]:
    """The verdict lines of a headline from before issue 14 (decided on the validation split, no
    intervals), as its summary stated them."""
    v = body["verdict"]
    out = []
    for name in ordered(v["covers_each_baseline"]):
        c = v["covers_each_baseline"][name]
        ahead = v.get("baseline_ahead_on", {}).get(name, [])
        line = (f"{name}: front point at least as good in size and mean cosine: "
                f"**{'yes' if c['covered'] else 'no'}**" + (f" (qae {c['by']})" if c.get("by") else ""))
        if ahead:
            line += f"; the baseline stays ahead on {', '.join(ahead)}"
        out.append(line + ".")
    dyn = body["baselines"][DYN]
    lat = dyn.get("latency_ms")
    out.append(f"strictly better than dynamic int8 in size or cosine (and no worse in the other) with measured "
               f"latency <= 1.1 x {'n/a' if lat is None else format(lat, '.2f')} ms: "
               f"**{'yes' if v['dynamic_int8_condition'] else 'no'}**"
               + (f" ({', '.join(v['beats_dynamic_int8_within_1.1x_latency'])})" if v["dynamic_int8_condition"]
                  else "") + ".")
    return out


def previous_verdicts(old: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the headline this run replaces concluded (None when there was none, or it was skipped)."""
    if not old or not isinstance(old.get("verdict"), dict):
        return None
    v = old["verdict"]
    try:
        lines = verdict_lines(old)
    except (KeyError, TypeError, IndexError):
        lines = []
    return {"date": old.get("environment", {}).get("date"), "decided_on": v.get("decided_on", "validation"),
            "quick": bool(old.get("quick", False)), "lines": lines,
            "covered": {n: bool(c.get("covered")) for n, c in v.get("covers_each_baseline", {}).items()},
            "all_covered": v.get("all_covered"), "dynamic_int8_condition": v.get("dynamic_int8_condition"),
            "beats_dynamic_int8_within_1.1x_latency": v.get("beats_dynamic_int8_within_1.1x_latency", [])}


def verdict_changes(prev: dict[str, Any] | None, v: dict[str, Any]) -> dict[str, Any]:
    """Each verdict now against the previous headline's: changed or not, in words."""
    if prev is None:
        return {"changed": None, "lines": ["no previous headline to compare with"]}
    yn = {True: "yes", False: "no", None: "n/a"}
    lines, changed = [], 0
    pairs = [(f"{n} covered", prev["covered"].get(n), v["covers_each_baseline"][n]["covered"])
             for n in ordered(v["covers_each_baseline"])]
    pairs.append(("strictly better than dynamic int8 within 1.1x its latency", prev["dynamic_int8_condition"],
                  v["dynamic_int8_condition"]))
    for what, old, new in pairs:
        if old is None:
            lines.append(f"{what}: {yn[new]} (not judged before)")
            continue
        changed += old != new
        lines.append(f"{what}: {yn[old]} -> {yn[new]} ({'changed' if old != new else 'unchanged'})")
    return {"changed": changed, "of": len(pairs), "lines": lines}


# -- the run --------------------------------------------------------------------------------------
def _old_result() -> dict[str, Any] | None:
    path = common.RESULTS / "headline.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _split(work: Any, name: str) -> dict[str, Any]:
    s = work.splits.get(name) or {}
    return {"file": Path(s["path"]).name if s.get("path") else None, "sha256": s.get("sha256"), "n": s.get("n"),
            "from": s.get("from")}


def main(argv: list[str] | None = None) -> int:
    from harness.builtin import minilm
    from harness.quant.evaluate import sizes
    from harness.quant.workload import Workload

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny search (population 6, 2 generations)")
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--generations", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    old = _old_result()  # read before this run overwrites it: its verdicts are restated beside the new ones
    if not minilm.available():
        path = common.write_result("headline", {"benchmark": "headline", "skipped": minilm.MISSING})
        print(f"headline skipped: {minilm.MISSING}; wrote {path}")
        return 0
    population, generations = (6, 2) if args.quick else (args.population, args.generations)
    work = Workload.open(WORKLOAD)
    if work.test_data is None:
        raise SystemExit("the MiniLM builtin ships no test.npz: the headline decides its verdicts on test")
    timings: dict[str, float] = {}
    stats: dict[str, dict[str, SampleStats]] = {}
    with tempfile.TemporaryDirectory(prefix="qae-headline-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        paths = make_baselines(work, root)
        timings["baselines_build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        baselines: dict[str, dict[str, Any]] = {}
        for name, p in paths.items():
            proto = onnx.load(str(p))
            size = sizes(proto, p.stat().st_size)
            val = split_stats(work, None if name == "fp32" else proto, "validation")
            baselines[name] = {"file_bytes": size.file_bytes, "weight_bytes": size.weight_bytes,
                               "validation": {"n": val["mean_cosine"].n, **{m: val[m].value() for m in METRICS}}}
        timings["baselines_validation_s"] = time.perf_counter() - t0
        archive, timings["search_s"] = search(population, generations, args.workers, root / "run")
        front, n_evaluated = front_points(archive)
        history = archive.history(PROFILE)
        archive.close()
        measured_front = pick_measured(front, baselines)
        t0 = time.perf_counter()
        for name, p in paths.items():  # the test split is read only now, after the search and the choice
            stats[name] = split_stats(work, None if name == "fp32" else onnx.load(str(p)), "test")
            baselines[name]["test"] = scored(stats[name], "test", reference=name == "fp32")
        for pt in measured_front:
            key = f"front:{pt['hash'][:12]}"
            result = work.build(work.genome(pt["genome"]))
            path = root / f"front-{pt['hash'][:12]}.onnx"
            onnx.save(result.proto, str(path))
            pt["file_bytes"] = path.stat().st_size
            paths[key] = path
            stats[key] = split_stats(work, result.proto, "test")
            pt["test"] = scored(stats[key], "test")
        timings["test_eval_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        lat = measure_all(paths, root)
        timings["measure_s"] = time.perf_counter() - t0
    for name, row in baselines.items():
        row.update(lat[name])
    for pt in measured_front:
        pt.update(lat[f"front:{pt['hash'][:12]}"])
    versus(measured_front, baselines, stats)
    verdict = judge(baselines, measured_front)
    fid = [abs(p["predicted_latency_ms"] / p["latency_ms"] - 1) for p in measured_front if p.get("latency_ms")]
    fidelity = {"n": len(fid), "mape": float(np.mean(fid)) if fid else None,
                "within_10pct": float(np.mean([e <= 0.10 for e in fid])) if fid else None}
    prev = previous_verdicts(old)
    body: dict[str, Any] = {
        "benchmark": "headline", "workload": WORKLOAD, "profile": PROFILE, "seed": SEED, "quick": args.quick,
        "splits": {"validation": _split(work, "validation"), "test": _split(work, "test")},
        "rules": RULES,
        "search": {"population": population, "generations": generations, "workers": args.workers,
                   "evaluated": n_evaluated, "history": history},
        "measure_settings": {**{k: v for k, v in vars(SETTINGS).items() if k != "genome"}, "passes": PASSES},
        "input_shape": [1, TOKENS], "baselines": baselines, "front": measured_front,
        "front_size": len(front),
        "front_all": [{"hash": p["hash"], "validation": p["validation"], SIZE: p[SIZE],
                       "predicted_latency_ms": p["predicted_latency_ms"], "measured": "test" in p} for p in front],
        "verdict": verdict, "minilm_costmodel_fidelity": fidelity, "timings": timings,
        "previous_verdicts": prev, "verdict_changes": verdict_changes(prev, verdict),
    }
    body["verdict_lines"] = verdict_lines(body)
    path = common.write_result("headline", body)
    _print(body, n_evaluated, len(front))
    print(f"wrote {path}")
    return 0


def _print(body: dict[str, Any], n_evaluated: int, front_size: int) -> None:
    rows = [(name, body["baselines"][name]) for name in ordered(body["baselines"])]
    rows += [(f"qae {p['hash'][:12]}", p) for p in body["front"]]
    print(f"MiniLM on host-cpu (measured here, batch 1 x {TOKENS}, 1 thread); qae front from {n_evaluated} "
          f"evaluated candidates ({front_size} on the front, {len(body['front'])} measured); accuracy on the test "
          f"split ({body['splits']['test']['n']} sentences) with 95 % intervals, validation in brackets")
    print(f"  {'model':22s} {'weight MB':>9s} {'mean cosine [95 % CI] (val)':>36s} "
          f"{'top-1 agr. [95 % CI] (val)':>32s} {'p50 ms [95 % CI]':>22s} {'pred ms':>8s}")
    for name, r in rows:
        t, v = r["test"], r["validation"]
        ci = r.get("p50_ci95")
        lat = "n/a" if r.get("latency_ms") is None else (
            f"{r['latency_ms']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        pred = f"{r['predicted_latency_ms']:.2f}" if "predicted_latency_ms" in r else ""
        cos = f"{_ci(t['mean_cosine'])} ({v['mean_cosine']:.4f})"
        agr = f"{_ci(t['top1_agreement'], True)} ({v['top1_agreement'] * 100:.1f})"
        print(f"  {name:22s} {r[SIZE] / 1e6:9.2f} {cos:>36s} {agr:>32s} {lat:>22s} {pred:>8s}")
    print("verdicts (decided on test):")
    for line in body["verdict_lines"]:
        print(f"  - {line.replace('**', '')}")
    print("against the previous headline: " + "; ".join(body["verdict_changes"]["lines"]))


if __name__ == "__main__":
    raise SystemExit(main())
