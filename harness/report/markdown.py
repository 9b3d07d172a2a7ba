"""``qae report RUN --format md``: a Markdown summary of a run for CI logs and pull requests: per
target the front (test accuracy with its interval where scored, validation beside it, costs with
their provenance), the decision points, and the failures; the hypervolume on the report's scale."""

from __future__ import annotations

from pathlib import Path

from harness.core.atomic import atomic_write_text
from harness.report.decisions import decide, decisions_md, presets
from harness.report.html import run_state
from harness.report.interactive import export_command, profile_budgets, profile_of
from harness.report.labels import run_accuracy
from harness.report.views import hypervolume_series
from harness.run.archive import Archive, Value
from harness.run.failures import failure_summary

COSTS = {"size": ("weights (KB)", 1e-3), "latency": ("latency (ms)", 1.0), "energy": ("energy (mJ)", 1.0),
         "memory": ("memory (MB)", 1e-6)}
SOURCE_MARK = {"measured": "m", "predicted": "p", "simulated": "s", "computed": "c"}


def _cost(v: Value | None, factor: float) -> str:
    return "" if v is None else f"{v.value * factor:.4g} ({SOURCE_MARK.get(v.source, v.source)})"


def markdown(run: Path, weights: dict[str, float] | None = None) -> str:
    archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
    try:
        cfg, fronts, scores, _layers, baselines = run_state(archive, weights)
        names = {h: n for n, h in baselines.items()}
        lines = [f"# qae report: {cfg['model']}", "",
                 f"objectives {', '.join(cfg['objectives'])}; seed {cfg['seed']}; population {cfg['population']}; "
                 f"generations {cfg['generations']}; status {archive.status()}.", "",
                 "Costs say where they come from: (m) measured on a device, (p) predicted by the cost model, "
                 "(s) simulated device, (c) computed on this host. Accuracy: the search chose on validation; "
                 "test values (95 % interval) are reported where the run scored them."]
        for front in fronts:
            acc = run_accuracy(front.all_points)
            summary = failure_summary(archive, front.target)
            lines += ["", f"## {front.target}", "",
                      f"{summary.candidates} candidates, {summary.failed} failed; {len(front.points)} on the front"
                      + ("" if front.feasible else " (no candidate met the budgets: the closest are shown)") + "."]
            hv = hypervolume_series(front.all_points, list(cfg["objectives"]))
            if hv:
                lines.append(f"Hypervolume (0 to 1, each objective scaled best to worst over the feasible "
                             f"candidates): {hv[-1]['hypervolume']:.3f} after generation {hv[-1]['generation']}.")
            lines += ["", f"| candidate | {acc.label} test [95 %] | validation | "
                      + " | ".join(label for label, _ in COSTS.values()) + " |",
                      "| --- | --- | --- |" + " --- |" * len(COSTS)]
            for c in front.points:
                row = scores.row(c.hash)
                ci = row.get("ci95") if row else None
                test = "not scored" if row is None else (
                    f"{acc.fmt(float(row['value']))}" + (f" [{acc.fmt(ci[0])}, {acc.fmt(ci[1])}]" if ci else ""))
                tags = [t for t in (names.get(c.hash), "emulated" if c.emulated else None,
                                    "recommended" if c.hash == front.recommended else None) if t]
                lines.append(f"| `{c.hash}`{' (' + ', '.join(tags) + ')' if tags else ''} | {test} | "
                             f"{acc.fmt(c.values['accuracy'].value)} | "
                             + " | ".join(_cost(c.values.get(o), f) for o, (_, f) in COSTS.items()) + " |")
            profile = profile_of(front.all_points)
            decided = decide(front.points, front.all_points,
                             presets(profile, profile_budgets(profile), dict(cfg.get("budgets") or {}), acc),
                             baselines, scores, acc)
            lines += ["", "Decision points:", "", *decisions_md(decided, acc)]
            if front.recommended:
                lines += ["", f"Export the recommended point: `{export_command(run, front.target, front.recommended)}`"]
            if summary.failed and summary.kind:
                lines += ["", f"Most common error ({summary.count}x): {summary.kind}: {summary.first_line}"]
        return "\n".join(lines) + "\n"
    finally:
        archive.close()


def write_markdown(run: Path, weights: dict[str, float] | None = None) -> tuple[Path, str]:
    text = markdown(run, weights)
    atomic_write_text(run / "report.md", text)
    return run / "report.md", text
