"""The interactive part of report.html: a front per target the reader explores (axes among the
objectives, budget sliders, hover for a candidate's values with provenance, click for its genome and
``qae export`` command), decision points, and the reviewer's views (``harness.report.views``).

The page stays one file that opens offline: plotly.js is inlined from the plotly package (which
ships plotly.min.js; nothing of plotly's Python side is imported), the page's own script
(``report.js`` beside this module) too, and the data as a JSON block. Nothing is fetched when the
page opens; only a page served live (``harness.report.serve``) asks its own server, on 127.0.0.1,
whether the archive changed.
"""

from __future__ import annotations

import html
import json
import math
import shlex
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from harness.report.decisions import Decision, decide, decisions_html, presets
from harness.report.labels import Accuracy, run_accuracy
from harness.report.scores import SplitScores
from harness.report.table import finetune_gain, gain_text
from harness.report.views import (
    calibration_figure,
    device_host_figure,
    hypervolume_figure,
    hypervolume_series,
    sensitivity_figure,
    slug,
    validation_test_figure,
)
from harness.run.archive import Archive, Candidate, Value
from harness.run.testsplit import candidate_gene

#: objective -> (axis label, factor from the stored value to the shown one)
SHOWN = {"size": ("weights (KB, nominal)", 1e-3), "latency": ("latency (ms)", 1.0), "energy": ("energy (mJ)", 1.0),
         "memory": ("peak memory (MB)", 1e-6)}
#: budget key -> objective (the page's sliders start at a target's budgets)
BUDGET_OBJECTIVE = {"latency_ms": ("latency", 1.0), "energy_j": ("energy", 1e3), "memory_bytes": ("memory", 1e-6),
                    "size_bytes": ("size", 1e-3)}
GENE_FIELDS = ("weight_bits", "activation_bits", "scheme", "granularity", "kernel", "block_size")


@cache
def plotly_js() -> str:
    """plotly.min.js as the plotly package ships it (read as a file: importing plotly is slow)."""
    try:
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:  # a broken install: say what to do
        from harness.core.errors import InputError

        raise InputError(f"plotly's plotly.min.js is missing ({exc}): reinstall qae (`pip install -e .`), "
                         "which installs plotly") from None


@cache
def page_script() -> str:
    return (resources.files("harness.report") / "report.js").read_text(encoding="utf-8")


def profile_of(cands: list[Candidate]) -> str | None:
    """The hardware profile a target's predictions came from (a device group's too)."""
    for c in cands:
        for name in ("latency", "energy", "memory"):
            v = c.values.get(name)
            if v is not None and v.detail.get("profile"):
                return str(v.detail["profile"])
    return None


def profile_budgets(profile: str | None) -> dict[str, float]:
    if not profile:
        return {}
    try:
        from profiles import load_profile

        return dict(load_profile(profile).budgets)
    except Exception:  # a calibrated profile since removed, a renamed one: the run's own budgets still count
        return {}


def export_command(run: Path, target: str, genome_hash: str) -> str:
    return f"qae export {shlex.quote(str(run))} --target {shlex.quote(target)} --pick {genome_hash}"


def _value(name: str, v: Value, acc: Accuracy) -> dict[str, Any]:
    """A value as the page shows it: number in the shown unit, source and the words that back it."""
    factor = acc.scale if name == "accuracy" else SHOWN.get(name, ("", 1.0))[1]
    out: dict[str, Any] = {"v": v.value * factor, "source": v.source}
    d = v.detail
    words = []
    if v.source == "measured" or v.source == "simulated":
        words.append(f"on {d.get('device') or d.get('device_or_profile') or 'a device'}")
        ci = d.get("p50_ci95")
        if ci:
            out["ci"] = [float(ci[0]) * factor, float(ci[1]) * factor]
            words.append("p50, 95 % interval")
        spread = d.get("spread")
        if isinstance(spread, dict) and spread.get("spread_pct") is not None:
            words.append(f"median of {spread.get('n')} repeats, spread {float(spread['spread_pct']):.1f} %")
    elif v.source == "predicted":
        words.append(f"by {d.get('profile')}")
        if d.get("calibration_id"):
            words.append(f"calibration {d['calibration_id']}")
        if d.get("expected_error") is not None:
            words.append(f"expected error ±{float(d['expected_error']) * 100:.0f} %")
            e = float(d["expected_error"])
            out["ci"] = [v.value * factor * (1 - e), v.value * factor * (1 + e)]
    else:
        if name == "accuracy":
            words.append(f"{d.get('split', 'validation')}, n={d.get('n')}")
        elif name == "size":
            words.append("nominal width")
    out["words"] = ", ".join(str(w) for w in words)
    return out


def _gene_label(g: dict[str, Any]) -> str:
    w, a = g.get("weight_bits"), g.get("activation_bits")
    if w == "fp":
        return "fp"
    a = {"dynamic": "dyn"}.get(str(a), str(a))  # w8a8, w8adyn, w4afp (float activations)
    kernel = g.get("kernel")
    return f"w{w}a{a}" + (f" {kernel}" if kernel and kernel != "qdq" else "")


def point_data(c: Candidate, run: Path, layers: list[str], acc: Accuracy, scores: SplitScores,
               front: set[str], names: dict[str, str], recommended: str | None,
               all_points: list[Candidate] | None = None) -> dict[str, Any]:
    genes = [candidate_gene(c, name) for name in layers] if layers else []
    summary: dict[str, int] = {}
    for g in genes:
        summary[_gene_label(g)] = summary.get(_gene_label(g), 0) + 1
    row = scores.row(c.hash)
    test = None if row is None else {"v": float(row["value"]) * acc.scale, "n": row.get("n"),
                                     "ci": [float(x) * acc.scale for x in row["ci95"]] if row.get("ci95") else None}
    return {
        "id": c.hash, "front": c.hash in front, "baseline": names.get(c.hash), "emulated": c.emulated,
        "generation": c.generation, "recommended": c.hash == recommended, "feasible": c.feasible is not False,
        "values": {n: _value(n, v, acc) for n, v in c.values.items() if n in ("accuracy", *SHOWN)},
        "test": test,
        "summary": ", ".join(f"{k} ×{n}" for k, n in sorted(summary.items(), key=lambda kv: -kv[1])),
        "genes": [[name, *(g.get(f) for f in GENE_FIELDS)] for name, g in zip(layers, genes)],
        "export": export_command(run, c.target, c.hash),
        # a point a fine-tune made: its parent and gain (validation, and test where both were scored)
        "finetuned": None if (gain := finetune_gain(c, all_points or [], scores)) is None else gain_text(gain, acc),
    }


def target_data(archive: Archive, front: Any, run: Path, cfg: dict[str, Any], layers: list[str],
                scores: SplitScores, baselines: dict[str, str]) -> tuple[dict[str, Any], list[Decision]]:
    """One target's data for the page and its decision points."""
    acc = run_accuracy(front.all_points)
    names = {h: n for n, h in baselines.items()}
    profile = profile_of(front.all_points)
    pbudgets = profile_budgets(profile)
    user = dict(cfg.get("budgets") or {})
    budgets = {**pbudgets, **user}
    on_front = {c.hash for c in front.points}
    points = [point_data(c, run, layers, acc, scores, on_front, names, front.recommended, front.all_points)
              for c in front.all_points]
    decisions = decide(front.points, front.all_points, presets(profile, pbudgets, user, acc), baselines, scores, acc)
    sliders = {obj: value * factor for key, value in budgets.items()
               for obj, factor in [BUDGET_OBJECTIVE.get(key, ("", 0.0))] if obj}
    data = {
        "name": front.target, "slug": slug(front.target), "feasible": front.feasible, "profile": profile,
        "candidates": archive.count(front.target), "evaluated": len(front.all_points), "points": points,
        "budgets": sliders, "recommended": front.recommended,
    }
    return data, decisions


def page_data(archive: Archive, fronts: list[Any], run: Path, cfg: dict[str, Any], layers: list[str],
              scores: SplitScores, baselines: dict[str, str]) -> tuple[dict[str, Any], dict[str, list[Decision]]]:
    acc = run_accuracy([c for f in fronts for c in f.all_points])
    objectives = {"accuracy": {"label": acc.label, "higher": True},
                  **{o: {"label": label, "higher": False} for o, (label, _) in SHOWN.items()}}
    targets, decisions = [], {}
    for front in fronts:
        data, decided = target_data(archive, front, run, cfg, layers, scores, baselines)
        targets.append(data)
        decisions[front.target] = decided
    charts = [hypervolume_figure({f.target: hypervolume_series(f.all_points, list(cfg["objectives"]))
                                  for f in fronts}),
              validation_test_figure({f.target: f.points for f in fronts}, scores, acc),
              sensitivity_figure(cfg)]
    for front in fronts:
        charts += [calibration_figure(archive, front.target), device_host_figure(archive, front.target)]
    return ({"objectives": objectives, "search_objectives": list(cfg["objectives"]), "targets": targets,
             "charts": [c for c in charts if c is not None], "metric_unit": acc.unit}, decisions)


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element; a number that is not finite becomes null (JSON has none)."""
    return json.dumps(_finite(data), allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def head_scripts(data: dict[str, Any], live: dict[str, Any] | None = None) -> str:
    """plotly.js, the page's data and script; ``live`` makes the page poll its server for changes."""
    return "\n".join([
        f"<script>{plotly_js()}</script>",
        f"<script type='application/json' id='qae-data'>{script_json(data)}</script>",
        f"<script>window.QAE_LIVE = {script_json(live)};</script>",
        f"<script>{page_script()}</script>",
    ])


CSS = (".front-box{border:1px solid #ddd;padding:.6em;margin:1em 0}"
       ".controls{display:flex;flex-wrap:wrap;gap:.4em 1.4em;align-items:center;font-size:13px;margin:.3em 0}"
       ".controls label{white-space:nowrap}"
       ".controls input[type=range]{width:150px;vertical-align:middle}.plot{width:100%;min-height:460px}"
       ".details{font-size:13px;background:#fafafa;border:1px solid #eee;padding:.4em;margin-top:.4em}"
       ".details table{font-size:12px}"
       "code.export{display:inline-block;max-width:100%;background:#eef;padding:2px 4px;user-select:all;"
       "overflow-wrap:anywhere}.note{font-size:12px;color:#555;max-width:900px}.chart{min-height:360px}"
       "table.decisions td{vertical-align:top}table.decisions th{text-align:left}"
       ".live{position:fixed;top:.5em;right:.5em;background:#efe;"
       "border:1px solid #9c9;padding:.2em .6em;font-size:12px}")


def front_section(target: dict[str, Any]) -> str:
    """The placeholders report.js fills for one target's interactive front."""
    s = html.escape(target["slug"])
    return (f"<div class='front-box' id='front-box-{s}' data-target='{html.escape(target['name'])}'>"
            f"<div class='controls' id='controls-{s}'></div>"
            f"<div class='plot' id='plot-{s}'></div>"
            f"<div class='note' id='feasible-{s}'></div>"
            f"<div class='details' id='details-{s}'>Click a point to see its genome and the command that "
            "exports it.</div></div>")


def count_line(target: dict[str, Any]) -> str:
    s = html.escape(target["slug"])
    return (f"<p><span class='count' id='count-{s}'>{target['candidates']}</span> candidates proposed, "
            f"{target['evaluated']} with every objective evaluated.</p>")


def charts_section(data: dict[str, Any]) -> str:
    if not data["charts"]:
        return ""
    parts = ["<h2>Views for a reviewer</h2>"]
    for chart in data["charts"]:
        parts.append(f"<div class='chart' id='chart-{html.escape(chart['id'])}'></div>"
                     f"<p class='note'>{html.escape(chart['note'])}</p>")
    return "\n".join(parts)


def decisions_section(fronts: list[Any], decisions: dict[str, list[Decision]], data: dict[str, Any]) -> str:
    parts = ["<h2>Decision points</h2><p class='note'>For each target, the front point each preset picks (chosen "
             "on validation, as the search did), and what it costs against FP32 and against the best uniform "
             "baseline that meets the same preset. Accuracy differences are on test where the run scored it.</p>"]
    for front, target in zip(fronts, data["targets"]):
        export = {p["id"]: p["export"] for p in target["points"]}
        acc = run_accuracy(front.all_points)
        parts.append(f"<h3>{html.escape(front.target)}</h3>")
        parts.append(decisions_html(front.target, decisions[front.target], acc, export))
    return "\n".join(parts)
