"""Reports of a run, derived from its archive: front.json, PNG plots and a self-contained report.html.

Nothing here is stored as truth: the front is recomputed from the archive's candidates each time
(``qae report RUN`` rebuilds everything). Every number shown says whether it was measured,
predicted or computed, and emulated candidates are marked.

One module (~650 lines) because the HTML page, its PNG plots and front.json are derived from the
same front in one pass (``run_state``); the plots are small functions next to the page that embeds
them. The page's interactive part (fronts, decision points, reviewer views, plotly.js) is
``harness.report.interactive`` with ``decisions`` and ``views``; the front table is
``harness.report.table``; the test split's values, verdicts and words are ``harness.report.scores``;
the live page (``render_page``, no PNGs) is served by ``harness.report.serve``.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.atomic import atomic_write_text
from harness.report.interactive import (
    CSS,
    charts_section,
    count_line,
    decisions_section,
    front_section,
    head_scripts,
    page_data,
)
from harness.report.labels import METRIC_LABELS, Accuracy, labelled, run_accuracy
from harness.report.scores import (
    SplitScores,
    load_scores,
    optimism_gap,
    plot_validation_test,
    point_test,
    references_html,
    short_row,
    splits_html,
    splits_summary,
)
from harness.report.table import finetune_gain, front_table
from harness.report.views import hypervolume_series
from harness.run.archive import Archive, Candidate
from harness.run.failures import FailureSummary, failure_summary
from harness.run.testsplit import baseline_hashes, candidate_gene, front_of

#: The run's validation-vs-test plot (one per run, a series per target)
VALIDATION_TEST_PNG = "validation_test.png"


@dataclass
class Front:
    target: str
    points: list[Candidate]
    feasible: bool  # False: no candidate met the budgets; points are the closest ones
    all_points: list[Candidate]
    recommended: str | None


def derive_front(
    archive: Archive, target: str, objectives: list[str], weights: dict[str, float] | None = None
) -> Front:
    """The non-dominated feasible candidates (accuracy maximised, every cost minimised); without a
    feasible one, the front of the least-violating candidates (``harness.run.testsplit.front_of``)."""
    front, ok, cands = front_of(archive, target, objectives)
    if not front:
        return Front(target, [], False, cands, None)
    return Front(target, front, ok, cands, recommend(front, objectives, weights))


def _matrix(cands: list[Candidate], objectives: list[str]) -> np.ndarray:
    rows = []
    for c in cands:
        rows.append([-c.values[o].value if o == "accuracy" else c.values[o].value for o in objectives])
    return np.array(rows, dtype=float)


#: A cost (size, latency, energy, memory) spread less than this share of its value over the front weighs
#: as that share, not as the whole [0, 1]: 0.5 % of predicted latency must not outweigh 3x of size.
RECOMMEND_COST_FLOOR = 0.05


def recommend(front: list[Candidate], objectives: list[str], weights: dict[str, float] | None) -> str | None:
    """Weighted scalar fitness over the front, each objective normalised by its range on the front; a cost's
    range counts as at least ``RECOMMEND_COST_FLOOR`` of its largest value (accuracy by its range alone)."""
    if not front:
        return None
    weights = weights or {o: 1.0 for o in objectives}
    mat = _matrix(front, objectives)
    lo, hi = mat.min(axis=0), mat.max(axis=0)
    floor = np.array([0.0 if o == "accuracy" else RECOMMEND_COST_FLOOR for o in objectives])
    span = np.maximum(hi - lo, floor * np.maximum(np.abs(lo), np.abs(hi)))
    norm = (mat - lo) / np.where(span > 0, span, 1.0)
    w = np.array([weights.get(o, 0.0) for o in objectives])
    return front[int(np.argmin(norm @ w))].hash


def front_json(archive: Archive, fronts: list[Front], scores: SplitScores | None = None,
               baselines: dict[str, str] | None = None) -> dict[str, Any]:
    """The fronts as data. Each point's ``objectives.accuracy`` is its validation value (what the search
    chose on); ``test`` holds its test value with interval and verdicts, null where not scored;
    ``baseline`` names the uniform baseline (fp32, w8a8, ...) a point is, if any."""
    scores = load_scores(archive) if scores is None else scores
    names = {h: name for name, h in (baselines or {}).items()}
    out: dict[str, Any] = {"targets": {}, "splits": splits_summary(archive.config()), "test_scored": bool(scores)}
    for front in fronts:
        failures = failure_summary(archive, front.target)
        acc = run_accuracy(front.all_points)
        tests = {c.hash: point_test(scores.row(c.hash), c.values["accuracy"].value) for c in front.points}
        pairs = [(t["validation_accuracy"], t["accuracy"]["value"]) for t in tests.values()
                 if t is not None and t["validation_accuracy"] is not None]
        out["targets"][front.target] = {
            "fp32_test": short_row(scores.with_role("fp32")),
            "baselines_test": {name: short_row(row) for name, row in scores.baselines().items()},
            "optimism_gap": optimism_gap(pairs, acc),
            "feasible": front.feasible,
            "recommended": front.recommended,
            "accuracy_metric": acc.metric,
            "accuracy_unit": acc.unit,
            "candidates": failures.candidates,
            "failed": failures.failed,
            "most_common_error": None if not failures.kind else {
                "error_kind": failures.kind, "message": failures.first_line, "count": failures.count},
            "points": [
                {
                    "id": c.hash,
                    "genome_hash": c.hash,
                    "genome": c.genome,
                    "generation": c.generation,
                    "emulated": c.emulated,
                    "objectives": {name: labelled(name, v) for name, v in c.values.items()},
                    "test": tests[c.hash],
                    "baseline": names.get(c.hash),
                    "finetuned": _finetuned(archive, c, front.all_points, scores),
                }
                for c in front.points
            ],
        }
    return out


def _finetuned(archive: Archive, c: Candidate, all_points: list[Candidate], scores: SplitScores) -> Any:
    """A fine-tuned point's parent, settings and gain over its parent (validation; test where both were
    scored); None for every other point."""
    gain = finetune_gain(c, all_points, scores)
    if gain is None:
        return None
    prov = archive.finetuned(c.target).get(c.hash, {})
    return {**gain, "steps": prov.get("steps"), "best_step": prov.get("best_step"), "seed": prov.get("seed"),
            "data": prov.get("data"), "lsq": (prov.get("settings") or {}).get("lsq"), "model": prov.get("model"),
            "model_sha256": prov.get("model_sha256")}


# -- plots ------------------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shown_accuracy(c: Candidate, scores: SplitScores) -> tuple[float, list[float] | None]:
    """A candidate's accuracy as plots show it: on test with its interval when scored, else validation."""
    row = scores.row(c.hash)
    if row is None:
        return c.values["accuracy"].value, None
    return float(row["value"]), row.get("ci95")


def plot_front(front: Front, path: Path, baselines: dict[str, str], scores: SplitScores | None = None) -> None:
    plt = _plt()
    scores = scores or SplitScores()
    acc = run_accuracy(front.all_points)
    # all on test or all on validation: one axis never mixes the two splits among front points
    on_test = bool(front.points) and all(scores.row(c.hash) for c in front.points)
    scores = scores if on_test else SplitScores()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    others = [c for c in front.all_points if c not in front.points]
    if others:
        ax.scatter(
            [c.values["size"].value / 1e3 for c in others],
            [c.values["accuracy"].value * acc.scale for c in others],
            s=12,
            c="#cccccc",
            label="other candidates (validation)" if on_test else "other candidates",
            zorder=1,
        )
    if front.points:
        lat = np.array([c.values["latency"].value for c in front.points])
        source = np.array([c.values["latency"].source for c in front.points])
        xs = np.array([c.values["size"].value / 1e3 for c in front.points])
        shown = [_shown_accuracy(c, scores) for c in front.points]
        ys = np.array([v * acc.scale for v, _ in shown])
        # the test interval of each point scored on test (none for validation values)
        yerr = np.array([[(v - ci[0]) * acc.scale, (ci[1] - v) * acc.scale] if ci else [0.0, 0.0]
                         for v, ci in shown]).T.clip(min=0.0)
        if yerr.any():
            ax.errorbar(xs, ys, yerr=yerr, fmt="none", ecolor="#666", elinewidth=0.8, capsize=2, zorder=2)
        vmin, vmax = float(lat.min()), float(lat.max()) if lat.max() > lat.min() else float(lat.min()) + 1e-9
        sc = None
        # Each provenance its own marker: a simulated device's numbers are neither measured nor predicted.
        for mask, marker, label in (
            (source == "predicted", "o", "front, latency predicted"),
            (source == "simulated", "D", "front, latency simulated"),
            (source == "measured", "*", "front, latency measured"),
        ):
            if mask.any():
                sc = ax.scatter(
                    xs[mask],
                    ys[mask],
                    c=lat[mask],
                    cmap="viridis",
                    vmin=vmin,
                    vmax=vmax,
                    marker=marker,
                    s={"o": 70, "D": 55}.get(marker, 160),
                    edgecolors="black",
                    linewidths=0.6,
                    label=label,
                    zorder=3,
                )
        tuned = np.array([c.parent is not None for c in front.points])
        if tuned.any():  # fine-tuned points ringed in red
            ax.scatter(xs[tuned], ys[tuned], s=260, facecolors="none", edgecolors="#d62728", linewidths=1.4,
                       label="fine-tuned (gain over its parent in the table)", zorder=4)
        # The 2-D envelope (best accuracy at or below each size) as a step line; with more than two
        # objectives some front points sit below it because they win on latency or energy instead.
        order = np.argsort(xs)
        envelope = np.maximum.accumulate(ys[order])
        ax.step(
            xs[order],
            envelope,
            where="post",
            color="black",
            lw=0.8,
            alpha=0.5,
            zorder=2,
            label=f"best {METRIC_LABELS.get(acc.metric, acc.metric)} for the size",
        )
        if sc is not None:
            fig.colorbar(sc, ax=ax, label="latency (ms)")
    by_hash = {c.hash: c for c in front.all_points}
    for name, h in baselines.items():
        if h in by_hash:
            c = by_hash[h]
            y = _shown_accuracy(c, scores)[0] * acc.scale
            ax.annotate(
                name,
                (c.values["size"].value / 1e3, y),
                xytext=(6, -12),
                textcoords="offset points",
                fontsize=9,
                color="#aa0000",
            )
            ax.scatter(
                [c.values["size"].value / 1e3],
                [y],
                marker="x",
                c="#aa0000",
                s=40,
                zorder=4,
            )
    ax.set_xlabel("weights at nominal width (KB)")
    ax.set_ylabel(f"{acc.label}, test (95 % interval)" if on_test else f"{acc.label}, validation")
    status = "" if front.feasible else " — no candidate met the budgets (closest shown)"
    ax.set_title(f"Pareto front on {front.target}{status}", fontsize=11)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    else:  # every candidate failed: say so on the plot rather than leave it blank
        ax.text(0.5, 0.5, "no candidate was evaluated", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hypervolume(histories: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Hypervolume per generation on the one [0, 1] scale of ``harness.report.views.hypervolume_series``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for target, rows in histories.items():
        if rows:
            ax.plot([r["generation"] for r in rows], [r["hypervolume"] for r in rows], marker="o", label=target)
    ax.set_xlabel("generation")
    ax.set_ylabel("hypervolume of the feasible points")
    ax.set_ylim(0, 1.02)
    ax.set_title("Search progress: hypervolume per generation\n(each objective scaled over the target's feasible "
                 "candidates: best 0, worst 1/1.1, reference point 1)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_heatmap(front: Front, layers: list[str], path: Path, scores: SplitScores | None = None) -> None:
    plt = _plt()
    if not front.points:
        return
    scores = scores or SplitScores()
    acc = run_accuracy(front.all_points)
    codes = {"fp": 32}
    mat = np.array(
        [
            [codes.get(str(w), _num(w)) for w in (candidate_gene(c, name)["weight_bits"] for name in layers)]
            for c in front.points
        ],
        dtype=float,
    )
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(layers) + 2), max(3, 0.35 * len(front.points) + 1.8)))
    im = ax.imshow(np.log2(mat), cmap="magma_r", aspect="auto", vmin=1, vmax=5)
    for i, c in enumerate(front.points):
        for j, name in enumerate(layers):
            gene = candidate_gene(c, name)
            act = {"dynamic": "d", "fp": "f"}.get(str(gene["activation_bits"]), str(gene["activation_bits"]))
            w = "fp" if gene["weight_bits"] == "fp" else str(gene["weight_bits"])
            ax.text(
                j, i, f"{w}/{act}", ha="center", va="center", fontsize=6, color="white" if mat[i, j] >= 8 else "black"
            )
    ax.set_xticks(range(len(layers)), layers, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(
        range(len(front.points)),
        [_heat_label(c, scores, acc) for c in front.points],
        fontsize=7,
    )
    cbar = fig.colorbar(im, ax=ax, ticks=[2, 3, 4, 5])
    cbar.ax.set_yticklabels(["4", "8", "16", "fp32"])
    cbar.set_label("weight bits")
    ax.set_title(
        f"Per-layer precision of the front on {front.target} (cell: weight/activation bits; d = dynamic, f = float)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(archive: Archive, target: str, path: Path) -> bool:
    """Measured vs predicted latency, and the prediction error per generation, for a device group."""
    from harness.run.hil import gap_statistics, gap_summary

    gaps = archive.gaps(target)
    if not gaps:
        return False
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    meas = np.array([g["measured"] for g in gaps])
    pred = np.array([g["predicted"] for g in gaps])
    gen = np.array([g["generation"] for g in gaps])
    sc = ax.scatter(meas, pred, c=gen, cmap="plasma", s=28, edgecolors="black", linewidths=0.4)
    lo, hi = float(min(meas.min(), pred.min())) * 0.8, float(max(meas.max(), pred.max())) * 1.25
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="prediction = measurement")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="#9c9", alpha=0.3, label="±10 %")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured latency, {gap_statistics(gaps)} (ms)")
    ax.set_ylabel("predicted just before measuring (ms)")
    ax.set_title(f"{target}: predicted vs measured", fontsize=10)
    fig.colorbar(sc, ax=ax, label="generation")
    ax.legend(fontsize=8, loc="upper left")
    rows = gap_summary(gaps)
    bx.plot([r["generation"] for r in rows], [r["mape"] * 100 for r in rows], marker="o", color="#c33")
    for r in rows:
        bx.annotate(
            f"n={r['n']}", (r["generation"], r["mape"] * 100), xytext=(3, 4), textcoords="offset points", fontsize=7
        )
    bx.set_xlabel("generation")
    bx.set_ylabel("mean |error| on newly measured (%)")
    bx.set_title("cost model error as measurements come in (online re-fit)", fontsize=10)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def layer_times_point(archive: Archive, front: Front) -> tuple[Candidate, dict[str, Any]] | None:
    """The front point whose per-layer times the report shows: the recommended one if it was
    profiled on a device, else the front's first profiled point, else None."""
    rows = archive.layer_times(front.target)
    profiled = [c for c in front.points if c.hash in rows]
    if not profiled:
        return None
    pick = next((c for c in profiled if c.hash == front.recommended), profiled[0])
    return pick, rows[pick.hash]


def plot_layer_times(archive: Archive, front: Front, path: Path) -> bool:
    """A bar per layer, the cost model's prediction beside the device's profiler (one profiled front
    point), and the measured time of the ops no layer owns. False when nothing was profiled."""
    got = layer_times_point(archive, front)
    if got is None:
        return False
    cand, row = got
    measured, predicted = row["measured"], row["predicted"]
    names = [n for n in measured.get("order") or [] if n in measured["layers"]] or list(measured["layers"])
    meas = [float(measured["layers"][n]) for n in names]
    pred = [float(predicted["layers"].get(n, 0.0)) for n in names]
    other = sum(float(v) for v in measured.get("unattributed", {}).values())
    # the model's own time outside its layers: the profiler's ops of no layer; the cost model's total
    # less its layers (per-inference overhead and the ops it does not cost per layer)
    rest = max(0.0, float(predicted.get("latency_ms") or 0.0) - sum(pred))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.32 * (len(names) + 1) + 1.9))
    y = np.arange(len(names) + 1)
    pv, mv = [*pred, rest], [*meas, other]
    ax.barh(y - 0.2, pv, height=0.4, color="#9ab",
            label=f"predicted ({predicted.get('calibration_id') or 'profile'})")
    ax.barh(y + 0.2, mv, height=0.4, color="#c63",
            label=f"measured on {row['device']} ({measured.get('runs')} profiled runs" + (
                f", shares of the {measured['scaled_to']})" if measured.get("scaled_to") else ")"))
    # the layers set the scale; the rest of the model, often larger, is clipped and labelled
    top = max([*pv[:-1], *mv[:-1], 1e-9]) * 1.4
    ax.set_xlim(0, top)
    for yy, v in ((y[-1] - 0.2, rest), (y[-1] + 0.2, other)):
        if v > top:
            ax.text(top * 0.98, yy, f"{v:.3f} ms", ha="right", va="center", fontsize=7, color="white")
    ax.set_yticks(y)
    ax.set_yticklabels([*names, "rest of the model"], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per inference")
    ax.set_title(f"{front.target}: per-layer latency of {cand.hash[:10]}", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _heat_label(c: Candidate, scores: SplitScores, acc: Accuracy) -> str:
    row = scores.row(c.hash)
    if row is None:
        return f"{c.hash[:8]} ({acc.short(c.values['accuracy'].value)} validation)"
    return f"{c.hash[:8]} ({acc.short(float(row['value']))} test)"


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 32.0


# -- the whole report -----------------------------------------------------------------------------------
def build_report(run: Path, weights: dict[str, float] | None = None) -> Path:
    """(Re)write front.json, the PNGs and report.html of a run folder from its archive."""
    archive = Archive.open_existing(run / "archive.sqlite", readonly=True)  # a report never writes the archive
    try:
        cfg, fronts, scores, layers, baselines = run_state(archive, weights)
        atomic_write_text(run / "front.json",
                          json.dumps(front_json(archive, fronts, scores, baselines), indent=1, sort_keys=True))
        for front in fronts:
            slug = front.target.replace("/", "_")
            plot_front(front, run / f"front_{slug}.png", baselines, scores)
            plot_heatmap(front, layers, run / f"heatmap_{slug}.png", scores)
            plot_calibration(archive, front.target, run / f"calibration_{slug}.png")
            plot_layer_times(archive, front, run / f"layers_{slug}.png")
        plot_hypervolume({f.target: hypervolume_series(f.all_points, list(cfg["objectives"])) for f in fronts},
                         run / "hypervolume.png")
        series = {f.target: [r for r in (scores.row(c.hash) for c in f.points) if r is not None] for f in fronts}
        acc = run_accuracy([c for f in fronts for c in f.all_points])
        plotted = plot_validation_test(series, scores, acc, run / VALIDATION_TEST_PNG)
        page = _html(run, cfg, fronts, archive, list(cfg["objectives"]), scores, plotted, baselines, layers=layers)
        atomic_write_text(run / "report.html", page)
    finally:
        archive.close()
    return run / "report.html"


def render_page(run: Path, live: dict[str, Any] | None = None, weights: dict[str, float] | None = None) -> str:
    """report.html's page from the archive as it is now, in memory, without the PNGs (the live page)."""
    archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
    try:
        cfg, fronts, scores, layers, baselines = run_state(archive, weights)
        return _html(run, cfg, fronts, archive, list(cfg["objectives"]), scores, False, baselines, layers=layers,
                     live=live)
    finally:
        archive.close()


def run_state(archive: Archive, weights: dict[str, float] | None) -> tuple[
        dict[str, Any], list[Front], SplitScores, list[str], dict[str, str]]:
    """What every view of a run derives from: config, fronts, test scores, layer names, baselines."""
    cfg = archive.config()
    objectives = list(cfg["objectives"])
    fronts = [derive_front(archive, t, objectives, weights) for t in archive.targets()]
    layers = list(cfg.get("layers") or _layer_names(fronts))
    return cfg, fronts, load_scores(archive), layers, baseline_hashes(archive, layers)


def _layer_names(fronts: list[Front]) -> list[str]:
    for front in fronts:
        for c in front.all_points:
            names = list(c.genome.get("layers", {}))
            if names:
                return _all_layers(front)
    return []


def _all_layers(front: Front) -> list[str]:
    seen: list[str] = []
    for c in front.all_points:
        for name in c.genome.get("layers", {}):
            if name not in seen:
                seen.append(name)
    return seen


def _img(run: Path, name: str) -> str:
    path = run / name
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def _run_gap(fronts: list[Front], scores: SplitScores) -> str:
    """The mean optimism gap over the run's distinct front points, in words."""
    pairs: dict[str, tuple[float, float]] = {}
    for front in fronts:
        for c in front.points:
            t = point_test(scores.row(c.hash), c.values["accuracy"].value)
            if t is not None and t["validation_accuracy"] is not None:
                pairs[c.hash] = (t["validation_accuracy"], t["accuracy"]["value"])
    gap = optimism_gap(list(pairs.values()), run_accuracy([c for f in fronts for c in f.all_points]))
    return "" if gap is None else str(gap["words"])


def _html(run: Path, cfg: dict[str, Any], fronts: list[Front], archive: Archive, objectives: list[str],
          scores: SplitScores | None = None, plotted: bool = False, baselines: dict[str, str] | None = None,
          layers: list[str] | None = None, live: dict[str, Any] | None = None) -> str:
    """The page: decision points, an interactive front per target with its table, the reviewer's
    views, then the static PNGs (left out of a live page, whose PNGs would be stale)."""
    scores = scores or SplitScores()
    baselines = baselines or {}
    data, decisions = page_data(archive, fronts, run, cfg, list(layers or _layer_names(fronts)), scores, baselines)
    images = live is None
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>qae report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "th{background:#f3f3f3}td.l{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
        ".src{color:#777;font-size:11px}.rec{background:#fff6d5}" + CSS,
        "</style><link rel='icon' href='data:,'>",  # no favicon request: the page fetches nothing
        "</head><body>",
        # a live page swaps this element's content when the archive changed (report.js)
        f"<div id='qae-main' data-version='{html.escape(str((live or {}).get('version', '')))}'>",
        f"<h1>qae search: {html.escape(str(cfg['model']))}</h1>",
        "<p>Accuracy and size are <b>computed</b> on this host with ONNX Runtime (size = weights at their "
        "nominal width). Latency, energy and memory are <b>predicted</b> by each target's cost model unless "
        "marked <b>measured</b>. Emulated widths (2, 3, 5, 6 bits) have exact accuracy and nominal size, but no "
        "runtime here executes them faster.</p>",
        f"<p class='src'>objectives: {', '.join(objectives)}; seed {cfg['seed']}; population {cfg['population']}; "
        f"generations {cfg['generations']}; budgets: {html.escape(json.dumps(cfg.get('budgets', {})))}</p>",
        _setup_html(cfg),
        splits_html(cfg, scores, run),
        decisions_section(fronts, decisions, data) if fronts else "<p>No candidate was evaluated yet.</p>",
    ]
    for front, target in zip(fronts, data["targets"]):
        slug = front.target.replace("/", "_")
        parts.append(f"<h2>Target {html.escape(front.target)}</h2>")
        parts.append(count_line(target))
        parts.append(_failures_html(failure_summary(archive, front.target), archive, front.target))
        if not front.feasible:
            parts.append("<p><b>No candidate met the budgets.</b> The closest candidates are kept below.</p>")
        parts.append(front_section(target))
        parts.append(references_html(scores, run_accuracy(front.all_points)))
        parts.append(front_table(front.points, front.all_points, front.recommended, scores, baselines))
        parts.append(_devices_html(run, archive, front, slug, images))
    parts.append(charts_section(data))
    if plotted:
        parts.append(f"<p>{html.escape(_run_gap(fronts, scores))}</p>")
    if images:
        pngs = [VALIDATION_TEST_PNG, "hypervolume.png"] + [
            f"{kind}_{f.target.replace('/', '_')}.png" for f in fronts for kind in ("front", "heatmap")]
        parts.append("<details><summary>Static figures (the PNGs in the run folder, for papers and terminals)"
                     f"</summary>{''.join(_img(run, name) for name in pngs)}</details>")
    else:
        parts.append("<p class='src'>Live page: the static PNGs are written by <code>qae report RUN</code>.</p>")
    parts.append("</div>")
    parts.append(head_scripts(data, live))
    parts.append("</body></html>")
    return "\n".join(parts)


def _setup_html(cfg: dict[str, Any]) -> str:
    """The shapes the run used and how accuracy was scored, as the search printed them."""
    items = []
    shapes = cfg.get("shapes_used") or {}
    if shapes:
        given = set(cfg.get("input_shapes") or {})
        text = ", ".join(f"{k} {'x'.join(map(str, v))}{' (--input-shape)' if k in given else ''}"
                         for k, v in shapes.items())
        items.append(f"input shapes of one inference: {html.escape(text)}")
    if cfg.get("metric_note"):
        items.append(html.escape(str(cfg["metric_note"])))
    return f"<p class='src'>{'<br>'.join(items)}</p>" if items else ""


def _failures_html(summary: FailureSummary, archive: Archive, target: str) -> str:
    """Failed candidates first and loud: a front built from a few survivors says little."""
    parts = []
    if summary.failed:
        style = " style='background:#fdd;padding:.4em'" if summary.mostly_failed else ""
        common = (f" Most common error ({summary.count}x): <b>{html.escape(str(summary.kind))}</b>: "
                  f"{html.escape(str(summary.first_line))}") if summary.kind else ""
        verdict = " <b>More than half failed: this front is not to be trusted.</b>" if summary.mostly_failed else ""
        parts.append(f"<p{style}>{summary.failed} of {summary.candidates} candidates failed.{common}{verdict}</p>")
    failed = {e["hash"] for e in archive.errors(target)} - {c.hash for c in archive.candidates(target) if not c.values}
    device = [e for e in archive.errors(target) if e["hash"] in failed]
    if device:
        parts.append(f"<p>{len(device)} measurement attempts failed on devices; first: "
                     f"{html.escape(device[0]['error_kind'])}: {html.escape(device[0]['message'][:200])}</p>")
    return "\n".join(parts)


def _devices_html(run: Path, archive: Archive, front: Front, slug: str, images: bool = True) -> str:
    """Hardware in the loop: measured share of the front, device events, fits, on-device accuracy."""
    jobs = archive.jobs(front.target)
    if not jobs:
        return ""
    measured = sum(
        1 for c in front.points if c.values.get("latency") and c.values["latency"].source in ("measured", "simulated")
    )
    parts = [
        f"<h3>Measured on the devices of {html.escape(front.target)}</h3>",
        f"<p>{measured} of {len(front.points)} front points have latency from the device (measured, or simulated "
             "on a simulated device); "
        f"{sum(j['status'] == 'done' for j in jobs)} measurements in all, "
        f"{sum(j['status'] == 'queued' for j in jobs)} still waiting for a device.</p>",
        _img(run, f"calibration_{slug}.png") if images else "",
    ]
    if images and (run / f"layers_{slug}.png").exists() and layer_times_point(archive, front) is not None:
        parts += ["<p>Per-layer latency of one measured front point: the device's profiler (extra runs, never "
                  "part of its measured latency) beside the cost model's per-layer prediction.</p>",
                  _img(run, f"layers_{slug}.png")]
    events = archive.events(front.target)
    if events:
        items = "".join(f"<li><b>{html.escape(e['kind'])}</b> {html.escape(e['message'])}</li>" for e in events)
        parts.append(f"<p>Device events:</p><ul>{items}</ul>")
    fits = archive.fits(front.target)
    if fits:
        fit_rows = "".join(
            f"<tr><td>{f['generation']}</td><td>{f['n']}</td><td class='l'>{html.escape(f['method'])}</td>"
            f"<td class='l'>{html.escape(f['calibration_id'])}</td>"
            f"<td>{(f['in_sample_mape'] or 0) * 100:.1f}</td></tr>"
            for f in fits
        )
        parts.append(
            "<p>Online re-fits of the cost model:</p><table><tr><th>generation</th><th>measurements</th>"
            f"<th>method</th><th>calibration id</th><th>in-sample MAPE (%)</th></tr>{fit_rows}</table>"
        )
    acc = archive.device_accuracy(front.target)
    if acc:
        rows: list[str] = []
        for h, a in acc.items():
            if a["accuracy"] is None:
                rows.append(
                    f"<tr><td class='l'><code>{h}</code></td><td class='l' colspan=5>"
                    f"{html.escape(str(a['error_kind']))}: {html.escape(str(a['message']))[:160]}</td></tr>"
                )
                continue
            m = Accuracy(str(a["metric"] or "top1"))
            gap = (a["accuracy"] - (a["host_accuracy"] or 0)) * m.scale
            flag = " style='background:#fdd'" if abs(gap) > 1 else ""
            host = "" if a["host_accuracy"] is None else m.fmt(a["host_accuracy"])
            rows.append(
                f"<tr{flag}><td class='l'><code>{h}</code></td><td>{host}</td>"
                f"<td>{m.fmt(a['accuracy'])}</td><td>{gap:+.2f}{' ⚠ over 1 point' if flag else ''}</td>"
                f"<td class='l'>{html.escape(m.label)}</td><td class='l'>{html.escape(a['device'])}</td></tr>"
            )
        parts.append(
            "<p>Accuracy on the device vs on the host (final front):</p><table><tr><th>candidate</th>"
            "<th>host</th><th>device</th><th>gap (% points or dB)</th><th>metric</th><th>device</th></tr>"
            f"{''.join(rows)}</table>"
        )
    return "\n".join(parts)
