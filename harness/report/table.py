"""The front table of report.html: a row per front point with its test accuracy and interval first,
the validation value it was chosen on beside it, its verdicts against FP32 and dynamic int8 in words,
then its costs, each value with its provenance (a measured p50 with its 95 % interval when kept)."""

from __future__ import annotations

import html
from typing import Any

from harness.report.labels import Accuracy, run_accuracy
from harness.report.scores import SplitScores, interval_text, point_test, reference_name, verdict_cell
from harness.run.archive import Candidate, Value

#: Columns of the front table: objective -> (label, formatter)
LABELS = {
    "accuracy": "accuracy (%)",
    "size": "weights (KB, nominal)",
    "latency": "latency (ms)",
    "energy": "energy (mJ)",
    "memory": "peak memory (MB)",
}


def fmt(objective: str, value: float, acc: Accuracy | None = None) -> str:
    if objective == "accuracy":
        return (acc or Accuracy("top1")).fmt(value)
    if objective == "size":
        return f"{value / 1e3:.1f}"
    if objective == "memory":
        return f"{value / 1e6:.2f}"
    if objective == "energy":
        return f"{value:.4f}"
    return f"{value:.3f}"


def front_table(points: list[Candidate], all_points: list[Candidate], recommended: str | None,
                scores: SplitScores | None = None, baselines: dict[str, str] | None = None) -> str:
    """The front: test accuracy with its interval first, the validation value it was chosen on beside
    it, verdicts against FP32 (and dynamic int8) in words; validation only for a run never scored on test.
    ``baselines`` (name -> genome hash) marks the points that are a uniform baseline themselves."""
    scores = scores or SplitScores()
    acc = run_accuracy(all_points)
    rows_of = {c.hash: scores.row(c.hash) for c in points}
    tested = any(r is not None for r in rows_of.values())
    refs = ["fp32"] + [k for k in ("w8-dynamic",) if any(k in (r or {}).get("vs", {}) for r in rows_of.values())]
    costs = ("size", "latency", "energy", "memory")
    if tested:
        head = (f"<th>{html.escape(acc.label)} on test, 95 % interval</th><th>validation (chosen on)</th>"
                + "".join(f"<th>vs {html.escape(reference_name(k))} (test)</th>" for k in refs))
    else:
        head = f"<th>{html.escape(acc.label)} on validation</th>"
    head += "".join(f"<th>{html.escape(LABELS[o])}</th>" for o in costs)
    rows = []
    for c in points:
        row = rows_of[c.hash]
        validation = _value_cell("accuracy", c.values.get("accuracy"), acc)
        if tested:
            test = point_test(row, c.values["accuracy"].value)
            roles = [*((row or {}).get("roles") or []),
                     *(f"baseline:{name}" for name, h in (baselines or {}).items() if h == c.hash)]
            cells = [_test_cell(row, acc), validation,
                     *(f"<td class='l'>{verdict_cell(test, roles, k, acc)}</td>" for k in refs)]
        else:
            cells = [validation]
        cells += [_value_cell(o, c.values.get(o), acc) for o in costs]
        rec = " class='rec'" if c.hash == recommended else ""
        flag = " (emulated)" if c.emulated else ""
        gain = finetune_gain(c, all_points, scores)
        if gain is not None:
            flag += "<br><span class='src'>" + html.escape(gain_text(gain, acc)) + "</span>"
        star = " ★ recommended" if c.hash == recommended else ""
        rows.append(f"<tr{rec}><td class='l'><code>{c.hash}</code>{flag}{star}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>candidate</th>{head}</tr>{''.join(rows)}</table>"


def finetune_gain(c: Candidate, all_points: list[Candidate], scores: SplitScores) -> dict[str, Any] | None:
    """A fine-tuned point's gain over its parent: on validation (what it was chosen on) and, where both
    were scored, on test; None for a point no fine-tune made."""
    if c.parent is None:
        return None
    parent = next((p for p in all_points if p.hash == c.parent), None)
    out: dict[str, Any] = {"parent": c.parent, "validation": None, "test": None}
    if parent is not None and "accuracy" in parent.values and "accuracy" in c.values:
        out["validation"] = c.values["accuracy"].value - parent.values["accuracy"].value
    mine, theirs = scores.row(c.hash), scores.row(c.parent)
    if mine is not None and theirs is not None:
        out["test"] = float(mine["value"]) - float(theirs["value"])
    return out


def gain_text(gain: dict[str, Any], acc: Accuracy) -> str:
    """``fine-tuned from <parent>: +1.5 pt validation, +1.1 pt test`` (points for a fraction)."""
    unit = " pt" if acc.unit == "fraction" else f" {acc.unit}"
    told = [f"{gain[s] * acc.scale:+.1f}{unit} {s}" for s in ("validation", "test") if gain[s] is not None]
    return f"fine-tuned from {gain['parent'][:12]}" + (": " + ", ".join(told) if told else "")


def _test_cell(row: dict[str, Any] | None, acc: Accuracy) -> str:
    if row is None:
        return "<td><span class='src'>not scored on test</span></td>"
    n = f", n={row['n']}" if row.get("n") else ""
    src = f"{row.get('source', 'computed')}, {row.get('split', 'test')}{n}"
    return (f"<td><b>{html.escape(interval_text(row['value'], row.get('ci95'), acc, unit=False))}</b><br>"
            f"<span class='src'>{html.escape(src)}</span></td>")


def _value_cell(objective: str, v: Value | None, acc: Accuracy) -> str:
    """A value with its provenance; a measured latency with the 95 % interval of its p50 when kept."""
    if v is None:
        return "<td></td>"
    spread = v.detail.get("spread") if objective == "latency" else None
    if isinstance(spread, dict) and isinstance(spread.get("spread_pct"), (int, float)):
        verdict = "within" if spread.get("ok") else "over"
        return (f"<td>{v.value:.3f}<br><span class='src'>{html.escape(v.source)}, median p50 of "
                f"{int(spread.get('n') or 0)} repeats, spread {float(spread['spread_pct']):.1f} % ({verdict} 5 %)"
                "</span></td>")
    ci = v.detail.get("p50_ci95") if objective == "latency" else None
    if ci:
        return (f"<td>{v.value:.3f} [{float(ci[0]):.3f}, {float(ci[1]):.3f}]<br>"
                f"<span class='src'>{html.escape(v.source)}, p50 [95 % interval]</span></td>")
    split = ", validation" if objective == "accuracy" else ""
    return f"<td>{fmt(objective, v.value, acc)}<br><span class='src'>{html.escape(v.source)}{split}</span></td>"
