"""Reports of a run, derived from its archive: front.json, PNG plots and a self-contained report.html.

Nothing here is stored as truth: the front is recomputed from the archive's candidates each time
(``qae report RUN`` rebuilds everything). Every number shown says whether it was measured,
predicted or computed, and emulated candidates are marked.

One module (~500 lines) because the HTML page, its plots and front.json are derived from the same
front in one pass; the plots are small functions next to the page that embeds them.
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
from harness.report.labels import METRIC_LABELS, Accuracy, labelled, run_accuracy
from harness.run.archive import Archive, Candidate
from harness.run.failures import FailureSummary, failure_summary

#: Columns of the front table: objective -> (label, formatter)
LABELS = {
    "accuracy": "accuracy (%)",
    "size": "weights (KB, nominal)",
    "latency": "latency (ms)",
    "energy": "energy (mJ)",
    "memory": "peak memory (MB)",
}


def _fmt(objective: str, value: float, acc: Accuracy | None = None) -> str:
    if objective == "accuracy":
        return (acc or Accuracy("top1")).fmt(value)
    if objective == "size":
        return f"{value / 1e3:.1f}"
    if objective == "memory":
        return f"{value / 1e6:.2f}"
    if objective == "energy":
        return f"{value:.4f}"
    return f"{value:.3f}"


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
    """The non-dominated feasible candidates (accuracy maximised, every cost minimised)."""
    import moocore

    cands = [c for c in archive.candidates(target) if c.values and all(o in c.values for o in objectives)]
    feasible = [c for c in cands if c.feasible is not False]
    pool, ok = (feasible, True) if feasible else (_closest(cands), False)
    if not pool:
        return Front(target, [], False, cands, None)
    mat = _matrix(pool, objectives)
    mask = moocore.is_nondominated(mat, maximise=False, keep_weakly=False)
    front = sorted((c for c, m in zip(pool, mask) if m), key=lambda c: -c.values["accuracy"].value)
    return Front(target, front, ok, cands, recommend(front, objectives, weights))


def _closest(cands: list[Candidate], k: int = 8) -> list[Candidate]:
    """Without a feasible candidate, keep the least-violating ones (budgets are in the archive values)."""
    return sorted(cands, key=lambda c: c.violation if c.violation is not None else float("inf"))[:k]


def _matrix(cands: list[Candidate], objectives: list[str]) -> np.ndarray:
    rows = []
    for c in cands:
        rows.append([-c.values[o].value if o == "accuracy" else c.values[o].value for o in objectives])
    return np.array(rows, dtype=float)


def recommend(front: list[Candidate], objectives: list[str], weights: dict[str, float] | None) -> str | None:
    """Weighted scalar fitness over the front, each objective normalised to [0, 1] on the front."""
    if not front:
        return None
    weights = weights or {o: 1.0 for o in objectives}
    mat = _matrix(front, objectives)
    lo, hi = mat.min(axis=0), mat.max(axis=0)
    norm = (mat - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    w = np.array([weights.get(o, 0.0) for o in objectives])
    return front[int(np.argmin(norm @ w))].hash


def front_json(archive: Archive, fronts: list[Front]) -> dict[str, Any]:
    out: dict[str, Any] = {"targets": {}}
    for front in fronts:
        failures = failure_summary(archive, front.target)
        out["targets"][front.target] = {
            "feasible": front.feasible,
            "recommended": front.recommended,
            "accuracy_metric": run_accuracy(front.all_points).metric,
            "accuracy_unit": run_accuracy(front.all_points).unit,
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
                }
                for c in front.points
            ],
        }
    return out


# -- plots ------------------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_front(front: Front, path: Path, baselines: dict[str, str]) -> None:
    plt = _plt()
    acc = run_accuracy(front.all_points)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    others = [c for c in front.all_points if c not in front.points]
    if others:
        ax.scatter(
            [c.values["size"].value / 1e3 for c in others],
            [c.values["accuracy"].value * acc.scale for c in others],
            s=12,
            c="#cccccc",
            label="other candidates",
            zorder=1,
        )
    if front.points:
        lat = np.array([c.values["latency"].value for c in front.points])
        source = np.array([c.values["latency"].source for c in front.points])
        xs = np.array([c.values["size"].value / 1e3 for c in front.points])
        ys = np.array([c.values["accuracy"].value * acc.scale for c in front.points])
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
            ax.annotate(
                name,
                (c.values["size"].value / 1e3, c.values["accuracy"].value * acc.scale),
                xytext=(6, -12),
                textcoords="offset points",
                fontsize=9,
                color="#aa0000",
            )
            ax.scatter(
                [c.values["size"].value / 1e3],
                [c.values["accuracy"].value * acc.scale],
                marker="x",
                c="#aa0000",
                s=40,
                zorder=4,
            )
    ax.set_xlabel("weights at nominal width (KB)")
    ax.set_ylabel(f"{acc.label} on held-out data")
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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for target, rows in histories.items():
        if rows:
            ax.plot([r["generation"] for r in rows], [r["hypervolume"] for r in rows], marker="o", label=target)
    ax.set_xlabel("generation")
    ax.set_ylabel("hypervolume (normalised, feasible points)")
    ax.set_title("Search progress: hypervolume per generation", fontsize=11)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_heatmap(front: Front, layers: list[str], path: Path) -> None:
    plt = _plt()
    if not front.points:
        return
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
        [f"{c.hash[:8]} ({acc.short(c.values['accuracy'].value)})" for c in front.points],
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
    from harness.run.hil import gap_summary

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
    ax.set_xlabel("measured latency, p50 (ms)")
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


def candidate_gene(c: Candidate, layer: str) -> dict[str, Any]:
    default = c.genome.get("default", {})
    return {**default, **c.genome.get("layers", {}).get(layer, {})}


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
        cfg = archive.config()
        objectives = list(cfg["objectives"])
        targets = archive.targets()
        fronts = [derive_front(archive, t, objectives, weights) for t in targets]
        atomic_write_text(run / "front.json", json.dumps(front_json(archive, fronts), indent=1, sort_keys=True))
        layers = list(cfg.get("layers") or _layer_names(fronts))
        baselines = _baseline_hashes(cfg, layers, archive)
        images = []
        for front in fronts:
            slug = front.target.replace("/", "_")
            plot_front(front, run / f"front_{slug}.png", baselines)
            plot_heatmap(front, layers, run / f"heatmap_{slug}.png")
            images += [f"front_{slug}.png", f"heatmap_{slug}.png"]
            if plot_calibration(archive, front.target, run / f"calibration_{slug}.png"):
                images.append(f"calibration_{slug}.png")
        plot_hypervolume({t: archive.history(t) for t in targets}, run / "hypervolume.png")
        images.append("hypervolume.png")
        page = _html(run, cfg, fronts, archive, objectives)
        atomic_write_text(run / "report.html", page)
    finally:
        archive.close()
    return run / "report.html"


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


def _baseline_hashes(cfg: dict[str, Any], layers: list[str], archive: Archive) -> dict[str, str]:
    """Uniform baselines present in the archive, found by their genome contents."""
    from harness.run.config import BASELINES

    out: dict[str, str] = {}
    for target in archive.targets():
        for c in archive.candidates(target):
            genes = [candidate_gene(c, name) for name in layers]
            for name, (w, a) in BASELINES.items():
                # an embedding Gather has no activation: its gene reads "fp" there (genome normalisation)
                if genes and all(g.get("weight_bits") == w and g.get("activation_bits") in (a, "fp") for g in genes) \
                        and any(g.get("activation_bits") == a for g in genes):
                    out[name] = c.hash
        break
    return out


def _img(run: Path, name: str) -> str:
    path = run / name
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def _html(run: Path, cfg: dict[str, Any], fronts: list[Front], archive: Archive, objectives: list[str]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>qae report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "th{background:#f3f3f3}td.l{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
        ".src{color:#777;font-size:11px}.rec{background:#fff6d5}",
        "</style></head><body>",
        f"<h1>qae search: {html.escape(str(cfg['model']))}</h1>",
        "<p>Accuracy and size are <b>computed</b> on this host with ONNX Runtime (size = weights at their "
        "nominal width). Latency, energy and memory are <b>predicted</b> by each target's cost model unless "
        "marked <b>measured</b>. Emulated widths (2, 3, 5, 6 bits) have exact accuracy and nominal size, but no "
        "runtime here executes them faster.</p>",
        f"<p class='src'>objectives: {', '.join(objectives)}; seed {cfg['seed']}; population {cfg['population']}; "
        f"generations {cfg['generations']}; budgets: {html.escape(json.dumps(cfg.get('budgets', {})))}</p>",
        _setup_html(cfg),
        _img(run, "hypervolume.png"),
    ]
    for front in fronts:
        slug = front.target.replace("/", "_")
        parts.append(f"<h2>Target {html.escape(front.target)}</h2>")
        parts.append(_failures_html(failure_summary(archive, front.target), archive, front.target))
        if not front.feasible:
            parts.append("<p><b>No candidate met the budgets.</b> The closest candidates are kept below.</p>")
        parts.append(_img(run, f"front_{slug}.png"))
        parts.append(_table(front, objectives))
        parts.append(_img(run, f"heatmap_{slug}.png"))
        parts.append(_devices_html(run, archive, front, slug))
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


def _devices_html(run: Path, archive: Archive, front: Front, slug: str) -> str:
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
        _img(run, f"calibration_{slug}.png"),
    ]
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


def _table(front: Front, objectives: list[str]) -> str:
    cols = [o for o in ("accuracy", "size", "latency", "energy", "memory")]
    acc = run_accuracy(front.all_points)
    labels = {**LABELS, "accuracy": acc.label}
    head = "".join(f"<th>{html.escape(labels[o])}</th>" for o in cols)
    rows = []
    for c in front.points:
        cells = []
        for o in cols:
            v = c.values.get(o)
            cells.append(
                "<td></td>"
                if v is None
                else f"<td>{_fmt(o, v.value, acc)}<br><span class='src'>{html.escape(v.source)}</span></td>"
            )
        rec = " class='rec'" if c.hash == front.recommended else ""
        flag = " (emulated)" if c.emulated else ""
        star = " ★ recommended" if c.hash == front.recommended else ""
        rows.append(f"<tr{rec}><td class='l'><code>{c.hash}</code>{flag}{star}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>candidate</th>{head}</tr>{''.join(rows)}</table>"
