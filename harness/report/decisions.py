"""Decision points: per target, the best front point under each of a few named budget presets, and
what it costs against FP32 and against the best uniform baseline under the same preset.

A preset is a set of budgets (in qae's units, the keys of ``harness.run.config.BUDGET_KEYS``) and a
way to choose among the points that meet them: the most accurate (on validation, what the search
chose on) or the smallest. The comparison reads the test split's values when the run scored them,
validation otherwise, and says which; latency ratios say whether they were measured or predicted.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from harness.report.labels import Accuracy
from harness.report.scores import SplitScores
from harness.run.archive import Candidate

#: Budget key -> (objective, factor from qae's unit to the value as stored for the objective)
BUDGET_OBJECTIVES = {"latency_ms": ("latency", 1.0), "energy_j": ("energy", 1e3), "memory_bytes": ("memory", 1.0),
                     "size_bytes": ("size", 1.0)}
#: The IoT preset on an SQNR metric: the smallest point at or above this many dB (1 % RMS error against FP32's
#: output). FP32 scores the metric's cap against itself, so "within 1 dB of FP32" would only ever pick FP32.
SQNR_PRESET_DB = 40.0
#: The uniform baselines a decision point is compared with (FP32 apart)
UNIFORM = ("w8a8", "w8-dynamic", "w4a8")
#: How a budget reads on the page: key -> (objective, factor to the shown unit, unit)
BUDGET_WORDS = {"latency_ms": ("latency", 1.0, "ms"), "energy_j": ("energy", 1e3, "mJ"),
                "memory_bytes": ("memory", 1e-6, "MB"), "size_bytes": ("size", 1e-3, "KB")}


@dataclass(frozen=True)
class Preset:
    name: str
    budgets: dict[str, float]
    choose: str = "accuracy"  # "accuracy": the most accurate that fits; "size": the smallest that fits
    why: str = ""


@dataclass
class Decision:
    preset: Preset
    point: Candidate | None
    baseline: str | None = None  # the best uniform baseline under the same preset
    words: list[str] = field(default_factory=list)


def presets(profile: str | None, profile_budgets: dict[str, float], user_budgets: dict[str, float],
            acc: Accuracy) -> list[Preset]:
    """The named presets of a target: no budget, the profile's, the user's ``--budget`` (when given),
    and the smallest point within one point (or 1 dB) of FP32."""
    out = [Preset("Most accurate (server: no budget)", {}, "accuracy", "the most accurate front point")]
    if profile_budgets:
        out.append(Preset(f"Within {profile or 'the profile'}'s budgets (device)", dict(profile_budgets), "accuracy",
                          f"the most accurate point within {budget_text(profile_budgets, acc)}"))
    if user_budgets:
        merged = {**profile_budgets, **user_budgets}
        out.append(Preset("Within your --budget", merged, "accuracy",
                          f"the most accurate point within {budget_text(merged, acc)}"))
    if acc.unit == "dB":  # FP32 against itself is the cap (100 dB): a loss against it means nothing
        out.append(Preset(f"Smallest at >= {SQNR_PRESET_DB:g} dB (IoT: smallest weights)",
                          {"accuracy_floor": SQNR_PRESET_DB}, "size",
                          f"the smallest point whose output is within {SQNR_PRESET_DB:g} dB of FP32's (about "
                          f"{100 * 10 ** (-SQNR_PRESET_DB / 20):g} % RMS error; validation)"))
        return out
    loss = 1.0 / acc.scale
    unit = "point" if acc.unit == "fraction" else acc.unit
    out.append(Preset(f"Smallest within 1 {unit} of FP32 (IoT: smallest weights)", {"accuracy_loss": loss}, "size",
                      f"the smallest point that loses at most 1 {unit} of accuracy against FP32 (validation)"))
    return out


def budget_text(budgets: dict[str, float], acc: Accuracy) -> str:
    parts = []
    for key, value in budgets.items():
        if key in BUDGET_WORDS:
            name, factor, unit = BUDGET_WORDS[key]
            parts.append(f"{name} ≤ {value * factor:g} {unit}")
        elif key == "accuracy_loss":
            unit = " points" if acc.unit == "fraction" else f" {acc.unit}"
            parts.append(f"accuracy loss ≤ {value * acc.scale:g}{unit}")
        elif key == "accuracy_floor":
            parts.append(f"accuracy ≥ {value * acc.scale:g} {acc.unit}")
    return ", ".join(parts) or "no budget"


def fits(c: Candidate, budgets: dict[str, float], fp32_accuracy: float | None) -> bool:
    for key, limit in budgets.items():
        if key == "accuracy_loss":
            if fp32_accuracy is not None and fp32_accuracy - c.values["accuracy"].value > limit + 1e-12:
                return False
            continue
        if key == "accuracy_floor":
            if c.values["accuracy"].value < limit - 1e-12:
                return False
            continue
        obj, factor = BUDGET_OBJECTIVES.get(key, (None, 1.0))
        v = c.values.get(obj) if obj else None
        if v is not None and v.value > limit * factor:
            return False
    return True


def _choose(cands: list[Candidate], preset: Preset, fp32: float | None) -> Candidate | None:
    ok = [c for c in cands if fits(c, preset.budgets, fp32)]
    if not ok:
        return None
    if preset.choose == "size":
        return min(ok, key=lambda c: (c.values["size"].value, -c.values["accuracy"].value))
    return max(ok, key=lambda c: (c.values["accuracy"].value, -c.values["size"].value))


def decide(front: list[Candidate], all_points: list[Candidate], presets_: list[Preset],
           baselines: dict[str, str], scores: SplitScores, acc: Accuracy) -> list[Decision]:
    """Each preset's point among the front, its best uniform baseline and the words comparing them."""
    by_hash = {c.hash: c for c in all_points}
    fp32 = by_hash.get(baselines.get("fp32", ""))
    fp32_acc = fp32.values["accuracy"].value if fp32 is not None else None
    uniform = [by_hash[baselines[n]] for n in UNIFORM if baselines.get(n) in by_hash]
    names = {h: n for n, h in baselines.items()}
    on_test = all(scores.row(c.hash) for c in [*front, *uniform, *([fp32] if fp32 else [])]) and bool(scores)
    out = []
    for preset in presets_:
        point = _choose(front, preset, fp32_acc)
        base = _choose(uniform, preset, fp32_acc)
        d = Decision(preset, point, names.get(base.hash) if base else None)
        if point is not None:
            if fp32 is not None and point.hash != fp32.hash:
                d.words.append(compare(point, fp32, "FP32", scores if on_test else SplitScores(), acc, "fp32"))
            if base is not None and base.hash != point.hash:
                d.words.append(compare(point, base, names[base.hash], scores if on_test else SplitScores(), acc,
                                       names[base.hash]))
            elif base is not None:
                d.words.append(f"it is the uniform baseline {names[base.hash]}")
            elif uniform:
                d.words.append("no uniform baseline meets this preset")
        out.append(d)
    return out


def _accuracy(c: Candidate, scores: SplitScores) -> tuple[float, str]:
    row = scores.row(c.hash)
    return (float(row["value"]), "test") if row else (c.values["accuracy"].value, "validation")


def compare(point: Candidate, ref: Candidate, name: str, scores: SplitScores, acc: Accuracy,
            key: str | None = None) -> str:
    """'4.9x smaller than FP32, 1.3x faster (predicted latency), -0.7 points (test, within noise)'.

    ``key`` names the reference in the point's test row (``fp32``, ``w8a8``, ...): its stored paired
    verdict ("within noise", "better", "worse") follows the difference, so no claim inside the noise reads
    as one."""
    parts = []
    s, r = point.values["size"].value, ref.values["size"].value
    if s > 0 and r > 0:
        ratio = _ratio(r / s, "smaller", "larger")
        parts.append(f"{ratio} {'as' if ratio.startswith('about') else 'than'} {name}")
    lat, rlat = point.values.get("latency"), ref.values.get("latency")
    if lat is not None and rlat is not None and lat.value > 0 and rlat.value > 0:
        # a ratio of a measured and a predicted latency says which is which
        sources = (f"{lat.source} latency" if lat.source == rlat.source
                   else f"latency {lat.source} here, {rlat.source} for {name}")
        parts.append(_ratio(rlat.value / lat.value, "faster", "slower") + f" ({sources})")
    a, split = _accuracy(point, scores)
    b, _ = _accuracy(ref, scores)
    unit = "points" if acc.unit == "fraction" else acc.unit
    row = scores.row(point.hash) if key else None
    verdict = ((row or {}).get("vs") or {}).get(key or "", {}).get("verdict")
    if acc.unit == "dB" and key == "fp32":  # FP32 scores the cap against itself: the point's own dB is the comparison
        parts.append(f"{a * acc.scale:.1f} dB against FP32's output ({split})")
    else:
        parts.append(f"{(a - b) * acc.scale:+.1f} {unit} ({split}{', ' + verdict if verdict else ''})")
    return ", ".join(parts)


def _ratio(x: float, more: str, less: str) -> str:
    if abs(x - 1.0) < 0.05:
        return f"about as {more.removesuffix('er')}"  # "about as small", "about as fast"
    return f"{x:.1f}x {more}" if x > 1 else f"{1 / x:.1f}x {less}"


def decisions_html(target: str, decisions: list[Decision], acc: Accuracy, export: dict[str, str]) -> str:
    rows = []
    for d in decisions:
        if d.point is None:
            rows.append(f"<tr><td class='l'><b>{html.escape(d.preset.name)}</b><br><span class='src'>"
                        f"{html.escape(d.preset.why)}</span></td><td class='l' colspan=3>no front point meets "
                        "this preset</td></tr>")
            continue
        c = d.point
        rows.append(
            f"<tr><td class='l'><b>{html.escape(d.preset.name)}</b><br><span class='src'>{html.escape(d.preset.why)}"
            f"</span></td><td class='l'><code>{c.hash}</code>{' (emulated)' if c.emulated else ''}<br>"
            f"<span class='src'>{acc.short(c.values['accuracy'].value)} validation, "
            f"{c.values['size'].value / 1e3:.1f} KB</span></td>"
            f"<td class='l'>{'<br>'.join(html.escape(w) for w in d.words)}</td>"
            f"<td class='l'><code class='export'>{html.escape(export[c.hash])}</code></td></tr>")
    return (f"<table class='decisions' data-target='{html.escape(target)}'><tr><th>preset</th><th>point</th>"
            f"<th>against FP32 and the best uniform baseline that meets the preset</th><th>export</th></tr>"
            f"{''.join(rows)}</table>")


def decisions_md(decisions: list[Decision], acc: Accuracy) -> list[str]:
    lines = ["| preset | point | against FP32 and the best uniform baseline |", "| --- | --- | --- |"]
    for d in decisions:
        if d.point is None:
            lines.append(f"| {d.preset.name} | none meets it | |")
        else:
            c = d.point
            lines.append(f"| {d.preset.name} | `{c.hash}` {acc.short(c.values['accuracy'].value)} validation, "
                         f"{c.values['size'].value / 1e3:.1f} KB | {'; '.join(d.words)} |")
    return lines
