"""Fitting a profile's coefficients to measurements, and the held-out error of the result.

The model fitted is the cost model itself (``profiles.costmodel.layer_cost``), so a calibrated
profile predicts with exactly the formula it was fitted with. Coefficients stay physical: every
fitted value is >= 0, throughputs and bandwidth are fitted as their inverses (time per MAC, per
byte) with bounds, and the loss is robust (``soft_l1`` on log ratios) so that one disturbed
measurement cannot drag the fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from profiles.costmodel import ExecClass, GraphStats, cost_of, rate_key
from profiles.errors import ProfileError
from profiles.protocols import LayerLike
from profiles.schema import Profile


@dataclass
class Sample:
    """One measured model: its layers with their execution classes (``ExecClass``, or classic
    ``(weight, activation, granularity)`` tuples), and the measured latency."""

    id: str
    workload: str
    role: str  # fit | heldout
    layers: Sequence[LayerLike]
    classes: Sequence[tuple[Any, ...]]
    graph: GraphStats
    measured_ms: float


@dataclass(frozen=True)
class Param:
    """A fitted coefficient: its key path in the profile and whether it is fitted as an inverse."""

    keys: tuple[str, ...]
    inverse: bool = False
    lo: float = 0.0
    hi: float = math.inf


def fit_params(profile: Profile, samples: Sequence[Sample] = ()) -> list[Param]:
    """The coefficients a latency calibration can identify: rates, overheads, conversion costs, and
    the coefficients of each kernel rate (``kernels.K.rates.R``) some sample's layer runs on."""
    d = profile.data
    kernel_params: list[Param] = []
    seen: set[tuple[str, str]] = set()
    for s in samples:
        for c in s.classes:
            ec = ExecClass(*c)
            if ec.kernel == "qdq" or not ec.weight.startswith("int"):
                continue
            key = rate_key(profile, ec.kernel, int(ec.weight[3:]), ec.accuracy)
            if key is None or (ec.kernel, key) in seen:
                continue
            seen.add((ec.kernel, key))
            for coef in d["kernels"][ec.kernel]["rates"][key]:
                inverse = coef == "throughput_gmacs"
                kernel_params.append(Param(("kernels", ec.kernel, "rates", key, coef), inverse=inverse,
                                           lo=1e-6 if inverse else 0.0, hi=10.0 if inverse else math.inf))
    params = [Param(("throughput_gmacs", p), inverse=True, lo=1e-6, hi=10.0) for p in d["throughput_gmacs"]]
    params.append(Param(("memory", "dram_bandwidth_gbs"), inverse=True, lo=1e-3, hi=1.0))
    params += [Param(("overhead", k)) for k in ("per_layer_us", "per_inference_us", "other_op_us",
                                                "other_ns_per_element")]
    params += [Param(("conversion", k)) for k in ("per_op_us", "ns_per_element", "dynamic_ns_per_element")]
    params += [Param(("dequantize_ns_per_element", p)) for p in d["dequantize_ns_per_element"]]
    params += [Param(("weight_only_ns_per_element", p)) for p in d["weight_only_ns_per_element"]]
    for key in ("dequantize_spill_ns_per_element", "dequantize_per_tensor_ns_per_element"):
        params += [Param((key, p)) for p in d.get(key, {})]
    return params + kernel_params


def _get(data: dict[str, Any], keys: tuple[str, ...]) -> float:
    node: Any = data
    for k in keys:
        node = node[k]
    return float(node["value"])


def _set(data: dict[str, Any], keys: tuple[str, ...], value: float) -> None:
    node: Any = data
    for k in keys:
        node = node[k]
    node["value"] = float(value)


def to_vector(profile: Profile, params: list[Param]) -> np.ndarray:
    x = []
    for p in params:
        v = _get(profile.data, p.keys)
        x.append(min(max(1.0 / v if p.inverse else v, p.lo), p.hi if math.isfinite(p.hi) else v + 1))
    return np.array(x, dtype=float)


def apply_vector(profile: Profile, params: list[Param], x: np.ndarray) -> None:
    for p, v in zip(params, x):
        _set(profile.data, p.keys, 1.0 / v if p.inverse else v)


def predict_ms(samples: list[Sample], profile: Profile) -> np.ndarray:
    """Predicted latency of each sample; each distinct (layer, class) is costed once."""
    cache: dict[tuple[str, int, ExecClass], float] = {}
    fixed = {}
    out = np.zeros(len(samples))
    per_inf = profile.num("overhead", "per_inference_us")
    for i, s in enumerate(samples):
        total = 0.0
        for j, (layer, c) in enumerate(zip(s.layers, s.classes)):
            ec = ExecClass(*c)
            key = (s.workload, j, ec)
            if key not in cache:
                cache[key] = cost_of(layer, ec, profile).latency_us
            total += cache[key]
        if s.workload not in fixed:
            fixed[s.workload] = (s.graph.other_ops * profile.num("overhead", "other_op_us")
                                 + s.graph.other_elements * profile.num("overhead", "other_ns_per_element") / 1e3)
        out[i] = (total + per_inf + fixed[s.workload]) / 1e3
    return out


def fit(samples: list[Sample], base: Profile) -> tuple[Profile, dict[str, Any]]:
    """Fit ``base``'s coefficients to the ``fit`` samples; returns the fitted profile and a report."""
    train = [s for s in samples if s.role == "fit"]
    if len(train) < 3:
        raise ProfileError(f"calibration has {len(train)} usable fit measurements: at least 3 are needed")
    prof = base.copy()
    params = fit_params(prof, train)
    x0 = to_vector(prof, params)
    lo = np.array([p.lo for p in params])
    hi = np.array([p.hi for p in params])
    x0 = np.clip(x0, lo, np.where(np.isfinite(hi), hi, np.inf))
    y = np.log(np.array([s.measured_ms for s in train]))
    # Scale each coefficient by its starting size so the solver moves them comparably.
    scale = np.where(x0 > 0, x0, 1e-3)

    def residuals(z: np.ndarray) -> np.ndarray:
        apply_vector(prof, params, z * scale)
        pred = predict_ms(train, prof)
        return np.log(np.maximum(pred, 1e-9)) - y

    res = least_squares(residuals, x0 / scale, bounds=(lo / scale, hi / scale), loss="soft_l1",
                        f_scale=0.05, max_nfev=400)
    apply_vector(prof, params, res.x * scale)
    report = {"converged": bool(res.success), "evaluations": int(res.nfev), "cost": float(res.cost),
              "fitted": [".".join(p.keys) for p in params]}
    return prof, report


def errors(samples: list[Sample], profile: Profile) -> dict[str, Any]:
    """MAPE and the share within +-10 % (nn-Meter's metric), overall and per workload, per role."""
    pred = predict_ms(samples, profile)
    rows: list[dict[str, Any]] = []
    for s, p in zip(samples, pred):
        rows.append({"id": s.id, "workload": s.workload, "role": s.role, "measured_ms": s.measured_ms,
                     "predicted_ms": float(p), "error": float(p / s.measured_ms - 1.0)})
    out: dict[str, Any] = {"rows": rows}
    for role in ("fit", "heldout"):
        sel = [r for r in rows if r["role"] == role]
        out[role] = summarize(sel)
        out[role]["by_workload"] = {
            w: summarize([r for r in sel if r["workload"] == w]) for w in sorted({r["workload"] for r in sel})
        }
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"n": 0, "mape": None, "within_10pct": None, "rms_rel": None}
    err = np.array([r["error"] for r in rows])
    return {
        "n": len(rows),
        "mape": float(np.mean(np.abs(err))),
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "rms_rel": float(np.sqrt(np.mean(err**2))),
    }
