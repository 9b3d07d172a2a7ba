"""The test split, scored once after the search: what a run reports, with intervals and verdicts.

The search chooses on the validation split; choosing on a score and reporting the same score
overstates it (the best of many noisy draws). So once every target's front is final,
``score_test`` scores each front point, each uniform baseline found in the archive and FP32 on the
test split, with per-sample statistics (``harness.quant.metrics.sample_stats``), and stores one
row per model in the archive's ``test_scores``: the value, its 95 % interval
(``harness.core.stats.interval``), its validation value beside it, and paired comparisons with FP32
and every baseline (``paired_difference``, ``verdict``: "better"/"worse" only when the interval of
the difference excludes 0). Evaluations go through the fitness cache under the test split's own
key. A resumed run scores what is missing; a changed test file re-scores everything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.genome import Genome
from harness.core.stats import SampleStats, interval, paired_difference, verdict
from harness.quant.evalcache import EvalCache
from harness.quant.evaluate import EvalReport
from harness.quant.workload import Workload
from harness.run.archive import Archive, Candidate
from harness.run.config import BASELINE_TABLES, BASELINES, SearchConfig, metric_unit
from harness.run.evaluation import eval_settings

FP32 = "fp32"


def front_of(archive: Archive, target: str, objectives: list[str]) -> tuple[list[Candidate], bool, list[Candidate]]:
    """(the non-dominated candidates of ``target`` by their current values, whether they are feasible,
    every candidate with all objectives). Without a feasible candidate the least-violating ones are
    the pool. Accuracy is maximised, every cost minimised."""
    import moocore

    cands = [c for c in archive.candidates(target) if c.values and all(o in c.values for o in objectives)]
    feasible = [c for c in cands if c.feasible is not False]
    if feasible:
        pool, ok = feasible, True
    else:
        pool = sorted(cands, key=lambda c: c.violation if c.violation is not None else float("inf"))[:8]
        ok = False
    if not pool:
        return [], False, cands
    mat = np.array([[-c.values[o].value if o == "accuracy" else c.values[o].value for o in objectives]
                    for c in pool], dtype=float)
    mask = moocore.is_nondominated(mat, maximise=False, keep_weakly=False)
    front = sorted((c for c, m in zip(pool, mask) if m), key=lambda c: -c.values["accuracy"].value)
    return front, ok, cands


def candidate_gene(c: Candidate, layer: str) -> dict[str, Any]:
    default = c.genome.get("default", {})
    return {**default, **c.genome.get("layers", {}).get(layer, {})}


def baseline_hashes(archive: Archive, layers: list[str]) -> dict[str, str]:
    """Uniform baselines (``BASELINES``) present in the archive, found by their genome contents: every layer
    at the baseline's bits with the run's scheme and granularity (an embedding table may have its
    ``BASELINE_TABLES`` grid), the plain QDQ kernel, no block and round-to-nearest, as ``seeds.baseline_values``
    seeds them; the first such candidate. A per-tensor or block-kernel variant of the same bits is not it."""
    cfg = archive.config()
    run_grid = (cfg.get("scheme", "symmetric"), cfg.get("granularity", "per_channel"))
    out: dict[str, str] = {}
    for target in archive.targets():
        for c in archive.candidates(target):
            genes = [candidate_gene(c, name) for name in layers]
            for name, (w, a) in BASELINES.items():
                if name in out or not genes:
                    continue
                grids = {run_grid, BASELINE_TABLES.get(name, run_grid)}
                # an embedding Gather has no activation: its gene reads "fp" there (genome normalisation)
                if all(g.get("weight_bits") == w and g.get("activation_bits") in (a, "fp") and _plain(g, grids)
                       for g in genes) and any(g.get("activation_bits") == a for g in genes):
                    out[name] = c.hash
        break
    return out


def _plain(gene: dict[str, Any], grids: set[tuple[str, str]]) -> bool:
    """A gene as a uniform baseline has it: one of ``grids`` (scheme, granularity), the default kernel,
    no block, round-to-nearest (a float gene has no grid to compare)."""
    if gene.get("kernel", "qdq") != "qdq" or gene.get("block_size") is not None:
        return False
    if gene.get("rounding", "rtn") != "rtn" or gene.get("accuracy_level") is not None:
        return False
    return gene.get("weight_bits") == "fp" or (gene.get("scheme"), gene.get("granularity")) in grids


def score_test(
    work: Workload, archive: Archive, cfg: SearchConfig, reference: EvalReport, say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Score the fronts, baselines and FP32 on the test split once; store and return the rows."""
    assert work.test_data is not None
    test_sha = work.test_data.sha256
    stored = archive.test_scores()
    stale = any(r.get("test_sha256") != test_sha for r in stored.values())
    if stale:
        say("the test split changed since it was scored: scoring it again")
        stored = {}
    layers = [layer.name for layer in work.model.layers]
    roles: dict[str, list[str]] = {}
    found: dict[str, Candidate] = {}
    for target in archive.targets():
        front, _, cands = front_of(archive, target, list(cfg.objectives))
        for c in front:
            roles.setdefault(c.hash, []).append(f"front:{target}")
            found.setdefault(c.hash, c)
            if c.parent is not None:  # a fine-tuned point's gain is told against its parent, on test too
                roles.setdefault(c.parent, []).append(f"parent:{c.hash}")
        for c in cands:
            found.setdefault(c.hash, c)
    # a baseline that failed to build or evaluate has no values: nothing to score on test
    baselines = {name: h for name, h in baseline_hashes(archive, layers).items() if name != FP32 and h in found}
    for name, h in baselines.items():
        roles.setdefault(h, []).append(f"baseline:{name}")
    roles[FP32] = [FP32]
    todo = [h for h in roles if h not in stored]
    if todo:
        say(f"scoring {len(todo)} models (front points, baselines, FP32) once on the test split "
            f"({work.test_data.n} samples from {work.test_data.path.name})")
    cache = EvalCache()
    settings = eval_settings(work, cfg, "test")
    tuned = archive.finetuned()
    try:
        for h in todo:
            artifact = (archive.path.parent, tuned[h]) if h in tuned else None
            stored[h] = _row(work, cache, settings, h, found.get(h), reference, test_sha, artifact)
    finally:
        cache.close()
    rows = []
    fp32_stats = _stats(stored[FP32])
    for h, row in stored.items():
        if h not in roles:
            continue
        row["roles"] = roles[h]
        vs: dict[str, Any] = {}
        mine = _stats(row)
        others = {FP32: fp32_stats, **{name: _stats(stored.get(bh)) for name, bh in baselines.items()}}
        for name, theirs in others.items():
            if h == FP32 or name in [r.split(":", 1)[-1] for r in roles[h] if r.startswith("baseline:")]:
                continue
            if mine is None or theirs is None or mine.n != theirs.n:
                vs[name] = {"difference": None, "verdict": "no interval",
                            "why": "the metric gives no per-sample statistics (a user metric returns one number)"}
                continue
            diff = paired_difference(mine, theirs)
            vs[name] = {"difference": diff.value, "ci95": [diff.lo, diff.hi], "method": diff.method,
                        "verdict": verdict(diff)}
        row["vs"] = vs
        rows.append(row)
    archive.set_test_scores(rows, replace_all=True)  # rows of points no longer on a front go
    return {r["hash"]: r for r in rows}


def _stats(row: dict[str, Any] | None) -> SampleStats | None:
    return _valid(row.get("stats")) if row else None


def _row(work: Workload, cache: EvalCache, settings: str, h: str, cand: Candidate | None, reference: EvalReport,
         test_sha: str, artifact: tuple[Path, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One model's test score: from the cache, or built and evaluated now (a fine-tuned candidate from
    its ``artifact``: the run folder and its provenance, ``harness.quant.tuned``)."""
    genome: dict[str, Any] | None = None
    if h == FP32:
        result = work.evaluate(None, threads=1, split="test", with_stats=True).to_dict()
        validation: dict[str, Any] = {"value": reference.accuracy, "n": reference.n}
    else:
        assert cand is not None
        genome = cand.genome
        hit = cache.get(work.model.sha256, h, settings)
        if hit is not None and hit.get("sample_stats") is not None and _valid(hit["sample_stats"]) is None:
            hit = None  # a cached entry with malformed statistics is evaluated again
        if hit is None:
            if artifact is not None:
                from harness.quant.tuned import build_tuned

                run, provenance = artifact
                built = build_tuned(work, run / provenance["model"], Genome.from_dict(genome, work.layer_ops),
                                    provenance.get("model_sha256"))
            else:
                built = work.build(Genome.from_dict(genome, work.layer_ops))
            hit = work.evaluate(built, threads=1, split="test", with_stats=True).to_dict()
            cache.put(work.model.sha256, h, settings, hit)
        result = hit
        acc = cand.values["accuracy"]
        validation = {"value": acc.value, "n": acc.detail.get("n")}
    stats = _valid(result.get("sample_stats"))
    metric = str(result["metric"])
    row: dict[str, Any] = {
        "hash": h, "genome": genome, "split": "test", "source": "computed", "metric": metric,
        "unit": metric_unit(metric), "n": int(result["n"]), "value": float(result["accuracy"]),
        "validation": validation, "test_sha256": test_sha, "emulated": bool(result.get("emulated")),
    }
    if stats is not None:
        ci = interval(stats)
        row.update(ci95=[ci.lo, ci.hi], ci_method=ci.method, stats=stats.to_dict())
    else:
        row.update(ci95=None, ci_method="none: the metric gives no per-sample statistics")
    return row


def _valid(d: Any) -> SampleStats | None:
    if d is None:
        return None
    try:
        return SampleStats.from_dict(d)
    except ValueError:
        return None
