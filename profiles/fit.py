"""Fitting a profile's coefficients to measurements, and the held-out error of the result.

The model fitted is the cost model itself (``profiles.costmodel.layer_cost``), so a calibrated
profile predicts with exactly the formula it was fitted with. Two kinds of data enter one robust
fit: whole-model latencies (``Sample``), which alone identify the per-inference overhead and the
genome-independent rest of the graph, and, where the device sent a per-op profile, each layer's
measured time (``LayerSample``: its kernel and the Q/DQ, casts and rescaling serving it alone, from
``harness.quant.opmap``), so that one measurement teaches the fit one number per layer and a wrong
kernel rate shows up in its own op type's error (``layer_errors``). Each group carries the same total
weight, so hundreds of layer times do not drown the latencies the predictions are judged on.
Coefficients stay physical: every fitted value is >= 0, throughputs and bandwidth are fitted as
their inverses (time per MAC, per byte) with bounds, and the loss is robust (``soft_l1`` on log
ratios) so that one disturbed measurement cannot drag the fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from profiles.costmodel import (
    ExecClass,
    GraphStats,
    asymmetric_key,
    beyond_cache_us,
    cost_of,
    exec_kind,
    grouped_entry,
    grouped_path,
    kernel_class,
    op_path,
    rate_key,
    spatial_conv_us,
)
from profiles.errors import ProfileError
from profiles.protocols import LayerLike
from profiles.schema import Profile

#: a measured model is fitted (``fit``), held out while the model was developed (``heldout``), or
#: held out and looked at only for the final figures (``reported``, benchmarks)
ROLES = ("fit", "heldout", "reported")


@dataclass
class Sample:
    """One measured model: its layers with their execution classes (``ExecClass``, or classic
    ``(weight, activation, granularity)`` tuples), and the measured latency."""

    id: str
    workload: str
    role: str  # one of ROLES
    layers: Sequence[LayerLike]
    classes: Sequence[tuple[Any, ...]]
    graph: GraphStats
    measured_ms: float


@dataclass
class LayerSample:
    """One layer's measured time in one measured model (``harness.quant.opmap.layer_times``): the
    kernel and the quantization plumbing serving it alone, as its share of the per-op profile
    scaled to the model's timed latency."""

    id: str  # the measured model's id
    workload: str
    role: str  # one of ROLES, the model's
    layer: LayerLike
    cls: tuple[Any, ...]
    measured_ms: float
    #: the weight bytes its whole model reads per run (``LayerCost.read_bytes`` summed): whether the
    #: weights stream from DRAM (``beyond_cache_us``)
    model_read_bytes: float = 0.0


def layer_kind(layer: LayerLike, cls: tuple[Any, ...], profile: Profile) -> str:
    """What the error table groups by: op type, weight / activation types and execution path
    (``MatMul int8/int8 native``, ``MatMul int4/fp32 matmulnbits``, ``Gather fp32/fp32 float``)."""
    ec = ExecClass(*cls)
    path = cost_of(layer, ec, profile).path
    return f"{layer.op_type} {ec.weight}/{ec.activation} {path}"


@dataclass(frozen=True)
class Param:
    """A fitted coefficient: its key path in the profile and whether it is fitted as an inverse."""

    keys: tuple[str, ...]
    inverse: bool = False
    lo: float = 0.0
    hi: float = math.inf


def fit_params(profile: Profile, samples: Sequence[Sample | LayerSample] = ()) -> list[Param]:
    """The coefficients a latency calibration can identify: rates, overheads, conversion costs, and
    the coefficients of each kernel rate (``kernels.K.rates.R``) some sample's layer runs on."""
    d = profile.data
    kernel_params: list[Param] = []
    seen: set[tuple[str, str]] = set()
    for layer, ec in _layer_classes(samples):
        ec = kernel_class(layer, ec, profile) or ec  # the kernel a QDQ class runs as (a table, a fusion)
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
    if "beyond_cache_ns_per_byte" in d["memory"] and streams_beyond_cache(profile, samples):
        params.append(Param(("memory", "beyond_cache_ns_per_byte")))
    params += [Param(("overhead", k)) for k in ("per_layer_us", "per_inference_us", "other_op_us",
                                                "other_ns_per_element")]
    if "other_ns_per_element_beyond_l1" in d["overhead"]:
        params.append(Param(("overhead", "other_ns_per_element_beyond_l1")))
    params += [Param(("conversion", k)) for k in ("per_op_us", "ns_per_element", "dynamic_ns_per_element")]
    params += [Param(("dequantize_ns_per_element", p)) for p in d["dequantize_ns_per_element"]]
    params += [Param(("weight_only_ns_per_element", p)) for p in d["weight_only_ns_per_element"]]
    for key in ("dequantize_spill_ns_per_element", "dequantize_per_tensor_ns_per_element",
                "dequantize_asymmetric_ns_per_element", "gather_table_ns_per_element"):
        params += [Param((key, p)) for p in d.get(key, {})]
    params += grouped_params(profile, samples)
    params += spatial_params(profile, samples)
    params += asymmetric_params(profile, samples)
    return params + kernel_params + op_factor_params(profile, [s for s in samples if isinstance(s, LayerSample)])


def streams_beyond_cache(profile: Profile, samples: Sequence[Sample | LayerSample]) -> bool:
    """Whether some sample's model reads more weights per run than the profile's last-level cache
    (``beyond_cache_us``): only then can the data say what streaming them costs. Without one the
    profile's value stands; fitted freely it went where nothing held it (a calibration without
    MiniLM's own candidates: 3.5 ns a byte, MiniLM predicted 18x too slow)."""
    mem = profile.data["memory"]
    if "cache_bytes" not in mem:
        return False
    cache = float(mem["cache_bytes"]["value"])
    # a layer time carries its model's read bytes: look there before costing whole models' layers
    if any(isinstance(s, LayerSample) and s.model_read_bytes > cache for s in samples):
        return True
    for s in samples:
        if isinstance(s, LayerSample):
            continue
        read = 0.0
        for layer, c in zip(s.layers, s.classes):
            read += cost_of(layer, ExecClass(*c), profile).read_bytes  # shapes and classes only
            if read > cache:
                return True
    return False


def _layer_classes(samples: Sequence[Sample | LayerSample]) -> Iterator[tuple[LayerLike, ExecClass]]:
    """Every (layer, execution class) the samples hold: a whole model's layers, or one layer time's."""
    for s in samples:
        pairs = zip(s.layers, s.classes) if isinstance(s, Sample) else [(s.layer, s.cls)]
        for layer, c in pairs:
            yield layer, ExecClass(*c)


def grouped_params(profile: Profile, samples: Sequence[Sample | LayerSample]) -> list[Param]:
    """The ``grouped_conv`` coefficients of the paths some sample's grouped Conv runs on; a path no
    sample runs keeps the profile's value (nothing in the data could move it but noise)."""
    node = profile.data.get("grouped_conv", {})
    used = {grouped_entry(grouped_path(layer, exec_kind(ec, profile), ec.activation, ec.granularity,
                                       ec.zero_points), profile)
            for layer, ec in _layer_classes(samples) if ec.kernel == "qdq"}
    keys = sorted(k for k in used if k is not None and k in node)
    return [Param(("grouped_conv", key, coef)) for key in keys for coef in node[key]]


def spatial_params(profile: Profile, samples: Sequence[Sample | LayerSample]) -> list[Param]:
    """The ``spatial_conv`` coefficients of the paths some sample's spatial Conv runs on."""
    node = profile.data.get("spatial_conv", {})
    used = set()
    for layer, ec in _layer_classes(samples):
        key = op_path(exec_kind(ec, profile), ec.activation)
        if ec.kernel == "qdq" and spatial_conv_us(layer, key, profile) > 0:
            used.add(key)
    return [Param(("spatial_conv", key, coef)) for key in sorted(used) if key in node for coef in node[key]]


def asymmetric_params(profile: Profile, samples: Sequence[Sample | LayerSample]) -> list[Param]:
    """The ``asymmetric_weight_factor`` of each path some sample's asymmetric integer layer runs on
    (a grouped Conv's are the grouped term's, not a GEMM's)."""
    used = set()
    for layer, ec in _layer_classes(samples):
        if ec.kernel != "qdq" or not ec.zero_points or ec.granularity == "block":
            continue
        kind = exec_kind(ec, profile)
        if kind == "native" and grouped_path(layer, kind, ec.activation, ec.granularity, True) is None:
            key = asymmetric_key(profile, layer.op_type, op_path(kind, ec.activation))
            if key is not None:
                used.add(key)
    return [Param(("asymmetric_weight_factor", key), lo=OP_FACTOR_BOUNDS[0], hi=OP_FACTOR_BOUNDS[1])
            for key in sorted(used)]


#: bounds of a fitted op factor: a kernel 20x off the shared rates is a model to fix, not to fit
OP_FACTOR_BOUNDS = (0.05, 20.0)


def op_factor_params(profile: Profile, layers: Sequence[LayerSample]) -> list[Param]:
    """One ``op_factors.OP.PATH`` coefficient per op type other than MatMul (the reference the
    shared rates describe) and QDQ execution path that some measured layer time runs on: only
    per-layer times tell an op type's kernels apart (in whole-model latencies the factor of a Conv
    and the shared int8 rate are confounded). Added to ``profile`` at 1.0 where it has none."""
    factors = profile.data.setdefault("op_factors", {})
    out: list[Param] = []
    for s in layers:
        ec = ExecClass(*s.cls)
        if ec.kernel != "qdq" or s.layer.op_type == "MatMul":
            continue  # block kernels have rates of their own; MatMul is what the shared rates describe
        key = op_path(exec_kind(ec, profile), ec.activation)
        node = factors.setdefault(s.layer.op_type, {})
        if key not in node:
            node[key] = {"value": 1.0, "source": "neutral start of the per-layer fit"}
        param = Param(("op_factors", s.layer.op_type, key), lo=OP_FACTOR_BOUNDS[0], hi=OP_FACTOR_BOUNDS[1])
        if param not in out:
            out.append(param)
    if not factors:
        profile.data.pop("op_factors")
    return out


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
    cache: dict[tuple[str, int, ExecClass], tuple[float, float]] = {}
    fixed = {}
    out = np.zeros(len(samples))
    per_inf = profile.num("overhead", "per_inference_us")
    for i, s in enumerate(samples):
        total = read = 0.0
        for j, (layer, c) in enumerate(zip(s.layers, s.classes)):
            ec = ExecClass(*c)
            key = (s.workload, j, ec)
            if key not in cache:
                lc = cost_of(layer, ec, profile)
                cache[key] = (lc.latency_us, lc.read_bytes)
            total += cache[key][0]
            read += cache[key][1]
        total += beyond_cache_us(read, profile)
        if s.workload not in fixed:
            fixed[s.workload] = s.graph.fixed_us(profile)
        out[i] = (total + per_inf + fixed[s.workload]) / 1e3
    return out


def predict_layers_ms(samples: Sequence[LayerSample], profile: Profile) -> np.ndarray:
    """Predicted time of each measured layer (its ``cost_of`` latency)."""
    out = []
    for s in samples:
        lc = cost_of(s.layer, ExecClass(*s.cls), profile)
        # the layer's share of its model's DRAM streaming, where the model's weights exceed the cache
        stream = beyond_cache_us(s.model_read_bytes, profile) * lc.read_bytes / s.model_read_bytes \
            if s.model_read_bytes > 0 else 0.0
        out.append((lc.latency_us - lc.unattributed_us + stream) / 1e3)
    return np.array(out)


def fit(samples: list[Sample], base: Profile, layers: Sequence[LayerSample] = ()) -> tuple[Profile, dict[str, Any]]:
    """Fit ``base``'s coefficients to the ``fit`` samples and the per-layer times of ``fit`` models
    (``layers``); returns the fitted profile and a report."""
    train = [s for s in samples if s.role == "fit"]
    if len(train) < 3:
        raise ProfileError(f"calibration has {len(train)} usable fit measurements: at least 3 are needed")
    train_layers = [s for s in layers if s.role == "fit" and s.measured_ms > 0]
    prof = base.copy()
    params = fit_params(prof, [*train, *train_layers])
    x0 = to_vector(prof, params)
    lo = np.array([p.lo for p in params])
    hi = np.array([p.hi for p in params])
    x0 = np.clip(x0, lo, np.where(np.isfinite(hi), hi, np.inf))
    y = np.log(np.array([s.measured_ms for s in train]))
    y_layers = np.log(np.array([s.measured_ms for s in train_layers]))
    # the layer times as a group weigh as much as the whole-model latencies
    w_layers = math.sqrt(len(train) / len(train_layers)) if train_layers else 0.0
    # Scale each coefficient by its starting size so the solver moves them comparably.
    scale = np.where(x0 > 0, x0, 1e-3)

    def residuals(z: np.ndarray) -> np.ndarray:
        apply_vector(prof, params, z * scale)
        pred = predict_ms(train, prof)
        whole = np.log(np.maximum(pred, 1e-9)) - y
        if not train_layers:
            return whole
        per_layer = np.log(np.maximum(predict_layers_ms(train_layers, prof), 1e-9)) - y_layers
        return np.concatenate([whole, w_layers * per_layer])

    res = least_squares(residuals, x0 / scale, bounds=(lo / scale, hi / scale), loss="soft_l1",
                        f_scale=0.05, max_nfev=400)
    apply_vector(prof, params, res.x * scale)
    report = {"converged": bool(res.success), "evaluations": int(res.nfev), "cost": float(res.cost),
              "models": len(train), "layer_times": len(train_layers),
              "fitted": [".".join(p.keys) for p in params]}
    return prof, report


def errors(samples: list[Sample], profile: Profile) -> dict[str, Any]:
    """MAPE and the share within +-10 % (nn-Meter's metric), overall and per workload, per role; for
    held-out whole models, the Kendall tau of predicted against measured latency per workload (does
    the model rank a front's candidates as the device does)."""
    pred = predict_ms(samples, profile)
    rows: list[dict[str, Any]] = []
    for s, p in zip(samples, pred):
        rows.append({"id": s.id, "workload": s.workload, "role": s.role, "measured_ms": s.measured_ms,
                     "predicted_ms": float(p), "error": float(p / s.measured_ms - 1.0)})
    out: dict[str, Any] = {"rows": rows}
    for role in ROLES:
        sel = [r for r in rows if r["role"] == role]
        out[role] = summarize(sel)
        out[role]["by_workload"] = {
            w: summarize([r for r in sel if r["workload"] == w]) for w in sorted({r["workload"] for r in sel})
        }
    return out


def layer_errors(layers: Sequence[LayerSample], profile: Profile, base: Profile | None = None) -> dict[str, Any]:
    """Per-layer error by op type and path (``layer_kind``, classified on ``base`` or ``profile``),
    per role: which kernel the profile gets wrong. ``rows`` holds every layer's numbers."""
    pred = predict_layers_ms(layers, profile) if layers else np.zeros(0)
    rows: list[dict[str, Any]] = []
    for s, p in zip(layers, pred):
        rows.append({"id": s.id, "workload": s.workload, "role": s.role, "layer": s.layer.name,
                     "kind": layer_kind(s.layer, s.cls, base or profile), "measured_ms": s.measured_ms,
                     "predicted_ms": float(p), "error": float(p / s.measured_ms - 1.0)})
    out: dict[str, Any] = {"rows": rows}
    for role in ROLES:
        sel = [r for r in rows if r["role"] == role]
        out[role] = summarize(sel)
        out[role]["by_kind"] = {k: {**summarize([r for r in sel if r["kind"] == k]),
                                    "measured_ms": float(np.median([r["measured_ms"] for r in sel if r["kind"] == k]))}
                                for k in sorted({r["kind"] for r in sel})}
    return out


def kendall_tau(rows: Sequence[dict[str, Any]]) -> float | None:
    """Kendall's tau-b (scipy) of predicted against measured over ``rows``; None below 3 rows."""
    if len(rows) < 3:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]).statistic
    return None if tau is None or not math.isfinite(float(tau)) else float(tau)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """n, MAPE, the share within +-10 %, RMS relative error, median signed error (a bias: > 0 is
    predicted too slow) and Kendall's tau of the ranking."""
    if not rows:
        return {"n": 0, "mape": None, "within_10pct": None, "rms_rel": None, "bias": None, "kendall_tau": None}
    err = np.array([r["error"] for r in rows])
    return {
        "n": len(rows),
        "mape": float(np.mean(np.abs(err))),
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "rms_rel": float(np.sqrt(np.mean(err**2))),
        "bias": float(np.median(err)),
        "kendall_tau": kendall_tau(rows),
    }
