"""The front re-scored on test, as the report says it: test values with their 95 % interval, the
validation value beside them, verdicts against FP32 and the baselines, and the optimism gap.

The search chose its front on validation; the test split was scored once afterwards (LEAD's
``harness.run.testsplit``) and stored in the archive by genome hash (``Archive.test_scores``). This
module only reads those rows. A verdict is the one stored with the row ("better"/"worse" only when
the paired interval of the difference excludes zero); nothing here turns a difference into a claim.
An archive written before test scores existed has none: every function here then says so and the
report shows validation values only.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.report.labels import Accuracy
from harness.run.archive import Archive

#: A reference a point is compared with (a key of a row's "vs") -> how the page names it
REFERENCE_NAMES = {
    "fp32": "FP32",
    "w8-dynamic": "dynamic int8",
    "w8a8": "static int8 (w8a8)",
    "w4a8": "w4a8",
}
#: Index lists longer than this are replaced by their count in front.json (the archive keeps them)
MAX_LISTED = 32


@dataclass(frozen=True)
class SplitScores:
    """The test rows of a run, by genome hash (empty for a run scored on validation only)."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def row(self, genome_hash: str) -> dict[str, Any] | None:
        return self.rows.get(genome_hash)

    def with_role(self, role: str) -> dict[str, Any] | None:
        return next((r for r in self.rows.values() if role in (r.get("roles") or [])), None)

    def baselines(self) -> dict[str, dict[str, Any]]:
        """Uniform baselines scored on test: name (w8a8, w8-dynamic, ...) -> row."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows.values():
            for role in r.get("roles") or []:
                if str(role).startswith("baseline:"):
                    out[str(role).split(":", 1)[1]] = r
        return out


def load_scores(archive: Archive) -> SplitScores:
    """The archive's test rows (none for an archive from before the test split)."""
    return SplitScores(archive.test_scores())


def reference_name(key: str) -> str:
    return REFERENCE_NAMES.get(key, key)


def validation_of(row: dict[str, Any], fallback: float | None) -> float | None:
    v = (row.get("validation") or {}).get("value")
    return fallback if v is None else float(v)


# -- front.json --------------------------------------------------------------------------------------
def point_test(row: dict[str, Any] | None, validation: float | None) -> dict[str, Any] | None:
    """A front point's "test" entry: its test accuracy with interval and provenance, the validation
    value it was chosen on, and its verdicts against FP32 and the baselines."""
    if row is None:
        return None
    accuracy = {
        "value": row["value"],
        "source": row.get("source", "computed"),
        "split": row.get("split", "test"),
        "n": row.get("n"),
        "ci95": row.get("ci95"),
        "ci_method": row.get("ci_method"),
        "metric": row.get("metric"),
        "unit": row.get("unit"),
    }
    return {"accuracy": accuracy, "validation_accuracy": validation_of(row, validation), "vs": row.get("vs") or {}}


def short_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """FP32's or a baseline's test value as a target of front.json carries it."""
    if row is None:
        return None
    return {"value": row["value"], "ci95": row.get("ci95"), "n": row.get("n"), "ci_method": row.get("ci_method"),
            "validation_accuracy": validation_of(row, None), "genome_hash": row.get("hash")}


def optimism_gap(pairs: list[tuple[float, float]], acc: Accuracy) -> dict[str, Any] | None:
    """Validation minus test, averaged over the front points scored on both (pairs of (validation, test))."""
    if not pairs:
        return None
    mean = sum(v - t for v, t in pairs) / len(pairs)
    return {"mean": mean, "n_points": len(pairs), "words": gap_words(mean, len(pairs), acc)}


def gap_words(mean: float, n_points: int, acc: Accuracy) -> str:
    size = _amount(abs(mean), acc)
    over = f"over {n_points} front point{'s' if n_points != 1 else ''}"
    if size == _amount(0.0, acc):
        return f"On average ({over}) the front's validation accuracy equals its test accuracy: no optimism showed."
    if mean > 0:
        return (f"On average ({over}) the front's validation accuracy is {size} above its test accuracy: "
                "the optimism of choosing on validation.")
    return (f"On average ({over}) the front's validation accuracy is {size} below its test accuracy: "
            "choosing on validation showed no optimism on this test split.")


def splits_summary(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The run's splits for front.json: paths, hashes and counts; long index lists become counts."""
    splits = cfg.get("splits")
    if not isinstance(splits, dict):
        return None
    out: dict[str, Any] = {}
    for name, part in splits.items():
        if not isinstance(part, dict):
            out[name] = part
            continue
        entry: dict[str, Any] = {}
        for key, value in part.items():
            if isinstance(value, list) and len(value) > MAX_LISTED:
                entry[f"{key}_count"] = len(value)
            else:
                entry[key] = value
        out[name] = entry
    return out


# -- words ---------------------------------------------------------------------------------------------
def _amount(x: float, acc: Accuracy) -> str:
    if acc.unit == "fraction":
        return f"{x * acc.scale:.1f} points"
    if acc.unit == "dB":
        return f"{x:.2f} dB"
    return f"{x:.3g}"


def _unit_suffix(acc: Accuracy) -> str:
    return {"fraction": " %", "dB": " dB"}.get(acc.unit, "")


def interval_text(value: float, ci95: list[float] | None, acc: Accuracy, unit: bool = True) -> str:
    """'98.15 % [96.90, 99.04]'; the value alone when no interval was computed (a user metric)."""
    suffix = _unit_suffix(acc) if unit else ""
    if not ci95:
        return f"{acc.fmt(value)}{suffix}"
    return f"{acc.fmt(value)}{suffix} [{acc.fmt(ci95[0])}, {acc.fmt(ci95[1])}]"


def difference_text(vs: dict[str, Any], acc: Accuracy) -> str:
    """'+0.40 [-0.60, +1.30] points': the paired difference on test and its interval."""
    if vs.get("difference") is None:  # a user metric without per-sample statistics: no interval, no claim
        return str(vs.get("why") or "no interval could be computed")
    unit = {"fraction": " points", "dB": " dB"}.get(acc.unit, "")
    d = float(vs["difference"]) * acc.scale
    ci = vs.get("ci95")
    if ci and d == 0 and ci[0] == ci[1] == 0:
        return "+0.00: the same on every test sample"
    if not ci:
        return f"{d:+.2f}{unit}"
    return f"{d:+.2f} [{ci[0] * acc.scale:+.2f}, {ci[1] * acc.scale:+.2f}]{unit}"


def verdict_words(vs: dict[str, Any] | None, key: str) -> str:
    """'better than FP32' / 'worse than FP32' / 'within noise of FP32', as the stored verdict says (a
    difference without an interval makes no claim either way)."""
    name = reference_name(key)
    verdict = (vs or {}).get("verdict")
    if verdict == "better":
        return f"better than {name}"
    if verdict == "worse":
        return f"worse than {name}"
    if verdict == "within noise":
        return f"within noise of {name}"
    return f"no verdict vs {name} (no interval)"


def verdict_cell(test: dict[str, Any] | None, roles: list[str], key: str, acc: Accuracy) -> str:
    """An HTML table cell's content: the verdict in words, the paired difference and its interval below."""
    if test is None:
        return "<span class='src'>not scored on test</span>"
    if key in roles or f"baseline:{key}" in roles:  # the reference itself (FP32's row, or its genome)
        return f"is {html.escape(reference_name(key))}"
    vs = (test.get("vs") or {}).get(key)
    if vs is None:
        return "<span class='src'>not compared</span>"
    words = verdict_words(vs, key)
    style = {"better": "color:#060", "worse": "color:#a00"}.get(str(vs.get("verdict")), "color:#555")
    return (f"<span style='{style}'>{html.escape(words)}</span><br>"
            f"<span class='src'>{html.escape(difference_text(vs, acc))}</span>")


def no_test_note(splits: dict[str, Any] | None, run: Path | str) -> str:
    """Why a run has no test scores, and what to do (``splits``: the run configuration's)."""
    if not isinstance(splits, dict):
        return (f"no test split was scored for this run (older run): values are validation; "
                f"`qae search --resume {run}` scores it")
    if not splits.get("test"):
        return ("no test split was given for this run (--test FILE.npz or --holdout FRACTION): values are "
                "validation, the samples the front was chosen on, so they read optimistic")
    return (f"the test split was not scored yet (the search did not finish): values are validation; "
            f"`qae search --resume {run}` scores it")


def recommended_line(target: str, front: dict[str, Any], run: Path | str, splits: dict[str, Any] | None = None) -> str:
    """One terminal line for ``qae report``: the recommended point on test, on validation, vs FP32
    (``splits``: front.json's, to say why a run has no test value)."""
    acc = Accuracy(str(front.get("accuracy_metric") or "top1"))
    point = next((p for p in front.get("points", []) if p["id"] == front.get("recommended")), None)
    if point is None:
        return f"{target}: no recommended point"
    if not front.get("feasible", True):  # the front is the least-violating candidates: say it on this line too
        target = f"{target} (no candidate met the budgets: the closest)"
    validation = point["objectives"].get("accuracy", {}).get("value")
    val_text = "-" if validation is None else f"{acc.fmt(validation)}{_unit_suffix(acc)}"
    test = point.get("test")
    if not test:
        return f"{target}: recommended {point['id']}: validation {val_text} ({no_test_note(splits, run)})"
    a = test["accuracy"]
    n = f" (n={a['n']})" if a.get("n") else ""
    val = test.get("validation_accuracy")
    val_text = val_text if val is None else f"{acc.fmt(val)}{_unit_suffix(acc)}"
    fp32 = (test.get("vs") or {}).get("fp32")
    if point.get("baseline") == "fp32":
        verdict = "is FP32"
    elif acc.unit == "dB":  # FP32 scores the metric's cap against itself: the dB above already compare with it
        verdict = "SQNR against FP32's output"
    elif fp32 is None:
        verdict = "is FP32"
    else:
        verdict = f"{verdict_words(fp32, 'fp32')} ({difference_text(fp32, acc)})"
    return (f"{target}: recommended {point['id']}: test {interval_text(a['value'], a.get('ci95'), acc)}{n}, "
            f"validation {val_text}; {verdict}")


# -- the page --------------------------------------------------------------------------------------------
def splits_html(cfg: dict[str, Any], scores: SplitScores, run: Path) -> str:
    """How to read the page's accuracy: which split is which, what an interval means; or, for an
    older run, the one-line note that its values are validation."""
    if not scores:
        note = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(no_test_note(cfg.get("splits"), run)))
        return f"<p style='background:#ffe;padding:.4em'>{note}</p>"
    splits = cfg.get("splits") or {}

    def n(name: str) -> str:
        part = splits.get(name) or {}
        return f" ({part['n']} samples)" if isinstance(part, dict) and part.get("n") else ""

    test = splits.get("test") or {}
    origin = {"file": "from --test", "holdout": "held out of --data", "builtin": "shipped with the built-in"}.get(
        str(test.get("from")) if isinstance(test, dict) else "", "")
    origin = f", {origin}," if origin else ""
    return (
        f"<p>Three disjoint splits: <b>calibration</b>{n('calibration')} set the quantization ranges; "
        f"<b>validation</b>{n('validation')} is what the search optimised and chose the front on; "
        f"<b>test</b>{n('test')}{html.escape(origin)} was scored once, after the search, and is what this page "
        "reports. A test value comes with its 95 % interval [lo, hi]: the range the model's accuracy on such inputs "
        "lies in, given how few test samples there are; the fewer the samples, the wider it is. A point is called "
        "better or worse than FP32 (or a baseline) only when the interval of their paired difference on the same "
        "test samples excludes zero; otherwise the page says <i>within noise</i>. Validation values are "
        "optimistic, because the front was chosen on them.</p>"
    )


def references_html(scores: SplitScores, acc: Accuracy) -> str:
    """FP32 and the uniform baselines on test, above a target's table."""
    items = []
    fp32 = scores.with_role("fp32")
    if fp32 is not None:
        items.append(f"FP32 {interval_text(fp32['value'], fp32.get('ci95'), acc)}")
    for name, row in sorted(scores.baselines().items()):
        items.append(f"{reference_name(name)} {interval_text(row['value'], row.get('ci95'), acc)}")
    if not items:
        return ""
    n = (fp32 or next(iter(scores.rows.values()))).get("n")
    count = f" (n = {n})" if n else ""
    return f"<p>On test{count}: {html.escape('; '.join(items))}.</p>"


def plot_validation_test(series: dict[str, list[dict[str, Any]]], scores: SplitScores, acc: Accuracy,
                         path: Path) -> bool:
    """Validation (x) against test (y) per front point, test interval as error bars, y = x, FP32 and the
    baselines marked; one series per target. False (no file) when nothing was scored on test."""
    if not any(series.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = acc.scale
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    xs_all: list[float] = []
    markers = "osD^vP<>"
    for i, (target, rows) in enumerate(series.items()):
        pts = [(validation_of(r, None), r) for r in rows]
        pts = [(v, r) for v, r in pts if v is not None]
        if not pts:
            continue
        x = [float(v) * s for v, _ in pts]  # type: ignore[arg-type]
        y = [float(r["value"]) * s for _, r in pts]
        err = [[max(0.0, (r["value"] - (r.get("ci95") or [r["value"]] * 2)[0]) * s) for _, r in pts],
               [max(0.0, ((r.get("ci95") or [r["value"]] * 2)[1] - r["value"]) * s) for _, r in pts]]
        ax.errorbar(x, y, yerr=err, fmt=markers[i % len(markers)], ms=6 + 2 * (len(series) - i - 1), mfc="none",
                    capsize=3, lw=0.8, label=f"front on {target}", zorder=3)
        xs_all += x + y + [v - e for v, e in zip(y, err[0])] + [v + e for v, e in zip(y, err[1])]
    refs: list[tuple[str, dict[str, Any] | None, str, str]] = [("FP32", scores.with_role("fp32"), "*", "#c00")]
    for i, (key, base) in enumerate(sorted(scores.baselines().items())):
        refs.append((reference_name(key), base, "x+1234"[i % 6], "#555"))
    for name, row, marker, color in refs:
        v = None if row is None else validation_of(row, None)
        if row is None or v is None:
            continue
        ci = row.get("ci95") or [row["value"]] * 2
        ax.errorbar([v * s], [row["value"] * s], yerr=[[max(0.0, (row["value"] - ci[0]) * s)],
                                                       [max(0.0, (ci[1] - row["value"]) * s)]],
                    fmt=marker, color=color, ms=12 if marker == "*" else 8, capsize=3, lw=0.8, label=name, zorder=4)
        xs_all += [v * s, row["value"] * s, ci[0] * s, ci[1] * s]
    if xs_all:
        lo, hi = min(xs_all), max(xs_all)
        pad = max((hi - lo) * 0.05, 0.5 if acc.unit == "fraction" else 0.05)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8, alpha=0.6,
                label="test = validation", zorder=1)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    unit = {"fraction": "%", "dB": "dB"}.get(acc.unit, "score")
    ax.set_xlabel(f"validation ({unit}): what the search chose on")
    ax.set_ylabel(f"test ({unit}), 95 % interval: what is reported")
    ax.set_title("Validation vs test per front point (below the line: optimism of the choice)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
