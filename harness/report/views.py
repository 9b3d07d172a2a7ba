"""The reviewer's views of a run as plotly figures (plain dicts, drawn by the page's inlined
plotly.js): hypervolume per generation on one scale, per-layer sensitivity, predicted vs measured
latency per device, validation vs test accuracy of the front, and device vs host accuracy.

Each function returns ``None`` when the run holds nothing to draw, so the page says nothing rather
than show an empty chart; each figure carries a ``note`` the page prints under it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.report.labels import Accuracy
from harness.report.scores import SplitScores
from harness.run.archive import Archive, Candidate

#: The reference point lies this far beyond the worst value (as a multiple of the range), so that
#: the extreme points of a front, each worst on some objective, still add to the hypervolume
REFERENCE_MARGIN = 1.1
#: Said under the hypervolume chart: what its scale means
HV_NOTE = (
    "Hypervolume of the feasible candidates proposed up to each generation, with their current values "
    "(measured where measured). Each objective is scaled over all feasible candidates of the target: 0 is the "
    "best value any of them reached, the worst sits at 1/1.1, and the reference point is 1 on every objective (10 % "
    "of the range beyond the worst, so the extreme points count too). So the hypervolume lies in [0, 1] on every "
    "target and generation, and 1 would be one candidate best on every objective at once. The terminal's HV "
    "column during a search is normalised by the first generation's range instead, so it can exceed 1 once "
    "later generations beat the first."
)


def _layout(title: str, x: str, y: str, **more: Any) -> dict[str, Any]:
    return {"title": {"text": title, "font": {"size": 14}}, "xaxis": {"title": {"text": x}},
            "yaxis": {"title": {"text": y}}, "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "height": 360,
            "legend": {"orientation": "h", "y": -0.2}, **more}


def _minimised(c: Candidate, objectives: list[str]) -> list[float]:
    return [-c.values[o].value if o == "accuracy" else c.values[o].value for o in objectives]


def hypervolume_series(cands: list[Candidate], objectives: list[str]) -> list[dict[str, float]]:
    """[{generation, hypervolume}] on the one scale ``HV_NOTE`` explains; [] without feasible points."""
    import moocore

    pool = [c for c in cands if c.feasible is not False and all(o in c.values for o in objectives)]
    if not pool:
        return []
    mat = np.array([_minimised(c, objectives) for c in pool], dtype=float)
    lo, hi = mat.min(axis=0), mat.max(axis=0)
    norm = (mat - lo) / np.where(hi - lo > 0, hi - lo, 1.0) / REFERENCE_MARGIN
    gens = np.array([c.generation for c in pool])
    out = []
    for g in sorted(set(gens.tolist())):
        pts = norm[gens <= g]
        inside = pts[np.all(pts < 1.0, axis=1)]
        hv = float(moocore.hypervolume(inside, ref=np.ones(len(objectives)))) if len(inside) else 0.0
        out.append({"generation": int(g), "hypervolume": hv})
    return out


def hypervolume_figure(series: dict[str, list[dict[str, float]]]) -> dict[str, Any] | None:
    traces = [{"type": "scatter", "mode": "lines+markers", "name": t, "x": [r["generation"] for r in rows],
               "y": [r["hypervolume"] for r in rows]} for t, rows in series.items() if rows]
    if not traces:
        return None
    layout = _layout("Search progress: hypervolume per generation", "generation",
                     "hypervolume (0 to 1, see below)")
    layout["yaxis"]["range"] = [0, 1.02]
    layout["xaxis"].update(dtick=1, tick0=0)  # generations are whole numbers
    return {"id": "hypervolume", "data": traces, "layout": layout, "note": HV_NOTE}


def sensitivity_figure(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The sensitivity probes (``--sensitivity-probes``): per layer, 1 - mean cosine to FP32 with only
    that layer at w4a8; stored in the run's configuration by the search."""
    sens = cfg.get("sensitivity") or {}
    if not sens:
        return None
    names = [n for n in cfg.get("layers") or [] if n in sens] or sorted(sens)  # model order (JSON sorts keys)
    return {"id": "sensitivity",
            "data": [{"type": "bar", "x": names, "y": [float(sens[n]) for n in names], "name": "1 - mean cosine",
                      "marker": {"color": "#c63"}}],
            "layout": _layout("Per-layer sensitivity (probes)", "layer", "1 - mean cosine to FP32",
                              xaxis={"tickangle": -60, "automargin": True}),
            "note": "One probe per layer before the search: that layer alone at w4a8, every other layer float, "
                    "scored on the validation split (computed on this host). Higher means the layer loses more "
                    "when quantized; the search lowers the least sensitive layers first."}


def calibration_figure(archive: Archive, target: str) -> dict[str, Any] | None:
    """Predicted (just before measuring) vs measured latency on a device group, with the error."""
    gaps = archive.gaps(target)
    if not gaps:
        return None
    meas = np.array([g["measured"] for g in gaps], dtype=float)
    pred = np.array([g["predicted"] for g in gaps], dtype=float)
    err = np.abs(pred - meas) / meas
    lo, hi = float(min(meas.min(), pred.min())) * 0.8, float(max(meas.max(), pred.max())) * 1.25
    text = [f"{g['hash']}<br>generation {g['generation']}, device {g['device']}<br>measured "
            f"{g['statistic']} {m:.4g} ms, "
            f"predicted {p:.4g} ms ({(p - m) / m * 100:+.0f} %)" for g, m, p in zip(gaps, meas, pred)]
    data = [
        {"type": "scatter", "mode": "lines", "x": [lo, hi], "y": [lo, hi], "name": "prediction = measurement",
         "line": {"color": "black", "width": 1}},
        {"type": "scatter", "mode": "lines", "x": [lo, hi, hi, lo], "y": [lo * 0.9, hi * 0.9, hi * 1.1, lo * 1.1],
         "fill": "toself", "fillcolor": "rgba(120,190,120,0.25)", "line": {"width": 0}, "name": "±10 %",
         "hoverinfo": "skip"},
        {"type": "scatter", "mode": "markers", "x": meas.tolist(), "y": pred.tolist(), "name": "candidates",
         "text": text, "hoverinfo": "text",
         "marker": {"color": [g["generation"] for g in gaps], "colorscale": "Plasma", "size": 8,
                    "line": {"width": 0.5, "color": "black"},
                    "colorbar": {"title": {"text": "generation"}, "dtick": 1}}},
    ]
    from harness.run.hil import gap_statistics

    layout = _layout(f"{target}: predicted vs measured latency", f"measured latency, {gap_statistics(gaps)} (ms)",
                     "predicted just before measuring (ms)")
    layout["xaxis"].update(type="log", dtick="D2")  # minor labels at 2 and 5 only: the default crowds them
    layout["yaxis"].update(type="log", dtick="D2")
    note = (f"{len(gaps)} measurements: the cost model's error before each measurement (online re-fit as they came in)"
            f" is {float(err.mean()) * 100:.1f} % mean absolute (MAPE); {float((err <= 0.1).mean()) * 100:.0f} % "
            "of predictions within ±10 %. Each prediction is compared with the measured latency of the statistic "
            "it predicts: min where the profile was calibrated on min latency (its calibration says so), the "
            "measured p50 after an online re-fit, which fits the p50s.")
    return {"id": f"calibration-{slug(target)}", "data": data, "layout": layout, "note": note}


def validation_test_figure(fronts: dict[str, list[Candidate]], scores: SplitScores,
                           acc: Accuracy) -> dict[str, Any] | None:
    """Each distinct front point's test accuracy (95 % interval) against the validation value it was
    chosen on: accuracy is computed on this host, the same on every target, so a point on several
    fronts is drawn once (its hover names them)."""
    targets: dict[str, list[str]] = {}
    points: dict[str, tuple[Candidate, dict[str, Any]]] = {}
    for target, front in fronts.items():
        for c in front:
            row = scores.row(c.hash)
            if row is not None:
                points.setdefault(c.hash, (c, row))
                targets.setdefault(c.hash, []).append(target)
    if not points:
        return None
    rows = list(points.values())
    x = [c.values["accuracy"].value * acc.scale for c, _ in rows]
    y = [float(r["value"]) * acc.scale for _, r in rows]
    ci = [r.get("ci95") or [r["value"], r["value"]] for _, r in rows]
    lo, hi = min(x + y), max(x + y)
    pad = max((hi - lo) * 0.1, 0.5)
    data = [{"type": "scatter", "mode": "lines", "x": [lo - pad, hi + pad], "y": [lo - pad, hi + pad],
             "name": "test = validation", "line": {"color": "#888", "dash": "dot"}},
            {"type": "scatter", "mode": "markers", "name": "front points", "x": x, "y": y,
             "text": [f"{c.hash} (front of {', '.join(targets[c.hash])})" for c, _ in rows],
             "marker": {"size": 8, "color": "#1f77b4"},
             "error_y": {"type": "data", "symmetric": False, "color": "#1f77b4",
                         "array": [(float(b[1]) * acc.scale - v) for b, v in zip(ci, y)],
                         "arrayminus": [(v - float(b[0]) * acc.scale) for b, v in zip(ci, y)]}}]
    return {"id": "validation-test", "data": data,
            "layout": _layout("Front points: validation (chosen on) vs test (reported)",
                              f"{acc.label}, validation", f"{acc.label}, test (95 % interval)"),
            "note": "The search chose its front on the validation split; the test split was scored once afterwards. "
                    "Points below the diagonal read optimistic on validation. Points with equal values overlap; "
                    "hover names each."}


def device_host_figure(archive: Archive, target: str) -> dict[str, Any] | None:
    rows = [(h, a) for h, a in archive.device_accuracy(target).items() if a["accuracy"] is not None
            and a["host_accuracy"] is not None]
    if not rows:
        return None
    m = Accuracy(str(rows[0][1]["metric"] or "top1"))
    x = [a["host_accuracy"] * m.scale for _, a in rows]
    y = [a["accuracy"] * m.scale for _, a in rows]
    lo, hi = min(x + y), max(x + y)
    pad = max((hi - lo) * 0.1, 0.5)
    data = [{"type": "scatter", "mode": "lines", "x": [lo - pad, hi + pad], "y": [lo - pad, hi + pad],
             "name": "device = host", "line": {"color": "#888", "dash": "dot"}},
            {"type": "scatter", "mode": "markers", "name": "front points", "x": x, "y": y,
             "text": [f"{h} on {a['device']}" for h, a in rows], "marker": {"size": 9, "symbol": "star"}}]
    return {"id": f"device-host-{slug(target)}", "data": data,
            "layout": _layout(f"{target}: accuracy on the device vs on this host", f"{m.label}, host",
                              f"{m.label}, device (measured)"),
            "note": "The same quantized models scored by the device's runtime and by ONNX Runtime here; a gap over "
                    "1 point means the device computes something else."}


def slug(target: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in target)
