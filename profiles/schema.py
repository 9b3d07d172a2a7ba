"""The hardware profile file: its JSON schema, loading, and the one-line errors of a bad file.

A profile is YAML. Every number is a mapping ``{value: X, source: "..."}`` so that no number is
without its origin (a document, a paper, "derived: ...", "estimate: ..." or "calibrated on DEVICE
at DATE"). Validation is jsonschema's; this module only turns its first error into one line that
names the field, e.g. ``profiles/x.yaml: throughput_gmacs.int8 must be > 0 (got -3)``.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from profiles.errors import ProfileError

#: Precisions a profile can name: compute and storage types, plus ``dynamic`` activations.
PRECISIONS = ("fp32", "fp16", "int16", "int8", "int4")
#: the execution paths ``op_factors`` may correct (``profiles.costmodel.op_path``)
OP_PATHS = ("float", "weight_only", "native", "native_dynamic", "dequantize", "slower_unit")
ACT_PRECISIONS = (*PRECISIONS, "dynamic")
#: the paths ``grouped_conv`` may cost (``profiles.costmodel.grouped_path``): ``op_path``'s, and
#: static native and dynamic layers with asymmetric weights apart
GROUPED_PATHS = (*OP_PATHS, "native_asymmetric", "native_dynamic_asymmetric")

#: the latency statistics a calibration may fit (keys of a measurement's ``latency_ms``)
LATENCY_STATISTICS = ("min", "p50", "mean", "p90")
PROFILES_DIR = Path(__file__).resolve().parent
CALIBRATED_DIR = PROFILES_DIR / "calibrated"

_SOURCE = {"type": "string", "minLength": 3}


def _num(minimum: float = 0.0, exclusive: bool = False) -> dict[str, Any]:
    bound = {"exclusiveMinimum": minimum} if exclusive else {"minimum": minimum}
    return {
        "type": "object",
        "required": ["value", "source"],
        "additionalProperties": False,
        "properties": {"value": {"type": "number", **bound}, "source": _SOURCE},
    }


POS = _num(0.0, exclusive=True)
NONNEG = _num(0.0)

# -- the kernels a profile runs (issue 15) ---------------------------------------------------------
#: Kernels a gene can name: ``qdq`` (QDQ / dynamic, the rest of the profile), ONNX Runtime's
#: block-quantized weight-only ``matmulnbits`` and block-quantized embedding ``gather_block``.
KERNELS = ("qdq", "matmulnbits", "gather_block")
BLOCK_SIZES = (16, 32, 64, 128)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
KERNEL_BITS = (2, 4, 8)


def _knum(minimum: float = 0.0, exclusive: bool = False) -> dict[str, Any]:
    """A kernel coefficient: value and source, and ``assumption: true`` where no measurement or
    document gives it (the source then says why the value is what it is)."""
    out = _num(minimum, exclusive)
    out["properties"] = {**out["properties"], "assumption": {"type": "boolean"}}
    return out


KPOS, KNONNEG = _knum(0.0, exclusive=True), _knum(0.0)
#: MatMulNBits rate keys: ``int4`` (every accuracy level without its own entry), ``int4_acc4``...
MNB_RATE_KEY = "^int[248](_acc[0-4])?$"
GBQ_RATE_KEY = "^int[248]$"
_KERNEL_COMMON: dict[str, Any] = {
    "source": _SOURCE,
    "assumption": {"type": "boolean"},
    "note": {"type": "string"},
    "bits": {"type": "array", "items": {"enum": list(KERNEL_BITS)}, "minItems": 1, "uniqueItems": True},
    "block_sizes": {"type": "array", "items": {"enum": list(BLOCK_SIZES)}, "minItems": 1, "uniqueItems": True},
}
MNB_RATE = {
    "type": "object",
    "required": ["throughput_gmacs"],
    "additionalProperties": False,
    "properties": {
        # multiply-accumulates per second (1e9) of the M-dependent GEMM work
        "throughput_gmacs": KPOS,
        # per run, independent of M: unpacking / dequantizing each weight, each block
        "ns_per_weight": KNONNEG,
        "ns_per_block": KNONNEG,
        # per row of A and block of B (quantizing A per block at accuracy_level 4, block epilogues)
        "ns_per_block_row": KNONNEG,
        # per call, whatever the shapes (packing, dispatch: what a 32x32 layer takes)
        "us_per_call": KNONNEG,
    },
}
GBQ_RATE = {
    "type": "object",
    "required": ["ns_per_element"],
    "additionalProperties": False,
    "properties": {"ns_per_element": KNONNEG, "ns_per_block": KNONNEG},
}
KERNELS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"enum": list(KERNELS)},
    "additionalProperties": False,
    "properties": {
        "qdq": {"type": "object", "additionalProperties": False, "required": ["source"],
                "properties": {"source": _SOURCE, "note": {"type": "string"}}},
        "matmulnbits": {
            "type": "object",
            "additionalProperties": False,
            "required": ["source", "bits", "block_sizes", "accuracy_levels", "rates"],
            "properties": {
                **_KERNEL_COMMON,
                "accuracy_levels": {"type": "array", "items": {"enum": list(ACCURACY_LEVELS)}, "minItems": 1,
                                    "uniqueItems": True},
                # the accuracy_level ORT gives a QDQ DequantizeLinear(block_size) -> MatMul it fuses into
                # MatMulNBits (session option session.qdq_matmulnbits_accuracy_level); absent: no fusion
                "qdq_per_block_accuracy_level": {"type": "object", "required": ["value", "source"],
                                                 "additionalProperties": False,
                                                 "properties": {"value": {"enum": list(ACCURACY_LEVELS)},
                                                                "source": _SOURCE}},
                # the block size of the MatMulNBits the runtime makes of a per-channel or per-tensor
                # QDQ weight-only MatMul (DequantizeLinear -> MatMul of float activations); absent: none
                "qdq_weight_only_block": {"type": "object", "required": ["value", "source"],
                                          "additionalProperties": False,
                                          "properties": {"value": {"type": "integer", "minimum": 16},
                                                         "source": _SOURCE}},
                "rates": {"type": "object", "propertyNames": {"pattern": MNB_RATE_KEY}, "minProperties": 1,
                          "additionalProperties": MNB_RATE},
            },
        },
        "gather_block": {
            "type": "object",
            "additionalProperties": False,
            "required": ["source", "bits", "block_sizes", "rates"],
            "properties": {
                **_KERNEL_COMMON,
                "rates": {"type": "object", "propertyNames": {"pattern": GBQ_RATE_KEY}, "minProperties": 1,
                          "additionalProperties": GBQ_RATE},
            },
        },
    },
}


def _table(item: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "object", "propertyNames": {"enum": list(keys)}, "additionalProperties": item}


FALLBACK = {
    "type": "object",
    "required": ["action"],
    "additionalProperties": False,
    "properties": {
        "action": {"enum": ["dequantize", "slower_unit"]},
        "to": {"enum": list(PRECISIONS)},
        "unit": {"type": "string"},
        "throughput_gmacs": POS,
        "penalty_us": NONNEG,
        "energy_per_mac_pj": NONNEG,
        "note": {"type": "string"},
    },
    "allOf": [
        {"if": {"properties": {"action": {"const": "dequantize"}}}, "then": {"required": ["to"]}},
        {
            "if": {"properties": {"action": {"const": "slower_unit"}}},
            "then": {"required": ["unit", "throughput_gmacs", "penalty_us", "energy_per_mac_pj"]},
        },
    ],
}

SCHEMA: dict[str, Any] = {
    # No number anywhere in a profile (calibration records included) may be NaN or infinite: YAML
    # reads ``.nan`` and ``.inf`` as floats, and JSON Schema's number bounds let NaN through.
    "finite": True,
    "type": "object",
    "required": [
        "name", "description", "float_type", "native", "throughput_gmacs", "memory", "overhead",
        "conversion", "dequantize_ns_per_element", "weight_only_ns_per_element", "fallback", "energy",
        "budgets", "uncertainty", "process_nm",
    ],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
        "description": {"type": "string"},
        "device": {"type": "string"},
        "runtime": {"type": "string"},
        "process_nm": POS,
        "float_type": {"enum": ["fp32", "fp16"]},
        "native": {
            "type": "object",
            "required": ["weights", "activations"],
            "additionalProperties": False,
            "properties": {
                "weights": {"type": "array", "items": {"enum": list(PRECISIONS)}, "minItems": 1},
                "activations": {"type": "array", "items": {"enum": list(ACT_PRECISIONS)}, "minItems": 1},
            },
        },
        # Sustained multiply-accumulates per second (1e9) of the layer kernel at each compute precision.
        "throughput_gmacs": _table(POS, PRECISIONS),
        "memory": {
            "type": "object",
            "required": ["dram_bandwidth_gbs", "onchip_bytes", "runtime_overhead_bytes"],
            "additionalProperties": False,
            "properties": {"dram_bandwidth_gbs": POS, "onchip_bytes": NONNEG, "runtime_overhead_bytes": NONNEG,
                           # optional: the last-level cache, and what a weight byte read from DRAM costs
                           # when a model's weights read per run exceed it (costmodel.beyond_cache_us)
                           "cache_bytes": NONNEG, "beyond_cache_ns_per_byte": NONNEG,
                           # the L1 data cache of one core (overhead.other_ns_per_element_beyond_l1)
                           "l1_bytes": NONNEG, "dequantize_spill_bytes": NONNEG},
        },
        "overhead": {
            "type": "object",
            "required": ["per_layer_us", "per_inference_us", "other_op_us", "other_ns_per_element"],
            "additionalProperties": False,
            "properties": {
                "per_layer_us": NONNEG, "per_inference_us": NONNEG, "other_op_us": NONNEG,
                "other_ns_per_element": NONNEG,
                # optional: more per element of an op output larger than the L1 data cache
                # (memory.l1_bytes): a 64-token MiniLM's 98-393 KB tensors against 25-98 KB at 16 tokens
                "other_ns_per_element_beyond_l1": NONNEG,
            },
        },
        "conversion": {
            "type": "object",
            "required": ["per_op_us", "ns_per_element", "dynamic_ns_per_element"],
            "additionalProperties": False,
            "properties": {"per_op_us": NONNEG, "ns_per_element": NONNEG, "dynamic_ns_per_element": NONNEG},
        },
        "dequantize_ns_per_element": _table(NONNEG, PRECISIONS),
        "weight_only_ns_per_element": _table(NONNEG, PRECISIONS),
        # Extra cost per dequantized weight beyond what fits on chip (the fallback's output spills).
        "dequantize_spill_ns_per_element": _table(NONNEG, PRECISIONS),
        # Where a per-tensor scale dequantizes faster than per-channel scales (optional).
        "dequantize_per_tensor_ns_per_element": _table(NONNEG, PRECISIONS),
        # Optional: the extra cost per dequantized weight with a zero point per channel (a slower loop).
        "dequantize_asymmetric_ns_per_element": _table(NONNEG, PRECISIONS),
        # Optional: embedding tables of these weight types cannot be indexed in their integer type
        # (ONNX Runtime's Gather takes no int4): the whole table is dequantized on every run, at this cost.
        "gather_table_ns_per_element": _table(NONNEG, PRECISIONS),
        # Optional: a latency factor per op type and execution path (float, weight_only, native,
        # native_dynamic, dequantize, slower_unit) relative to MatMul, which the shared rates describe;
        # fitted from per-layer times where one op type's kernel runs faster or slower than the shared
        # rates say (a ConvInteger against a MatMulInteger).
        "op_factors": {"type": "object", "additionalProperties": _table(POS, OP_PATHS)},
        # Optional: how much slower an integer layer runs with asymmetric (zero-pointed) weights, per
        # path (native: static activations; native_dynamic: dynamic ones).
        # a path's factor, or an op type's own on it ("Conv:native_dynamic": ORT's ConvInteger runs
        # unsigned weights faster than signed ones, its MatMuls the other way round)
        "asymmetric_weight_factor": _table(POS, ("native", "native_dynamic", "Conv:native", "Conv:native_dynamic",
                                                 "Gemm:native", "Gemm:native_dynamic")),
        # Optional: the paths on which a grouped (depthwise) Conv has no grouped kernel and runs a
        # GEMM per group (ONNX Runtime's ConvInteger, QLinearConv with unsigned weights): the cost
        # per group and per output element added to the layer's.
        "grouped_conv": _table({
            "type": "object",
            "required": ["us_per_group", "ns_per_output_element"],
            "additionalProperties": False,
            "properties": {"us_per_group": NONNEG, "ns_per_output_element": NONNEG,
                           # optional: per call (unfolding the input, setting up the per-group GEMMs)
                           "us_per_layer": NONNEG},
        }, GROUPED_PATHS),
        # Optional: what a Conv with a spatial kernel (k x k, k > 1, not grouped) costs beyond the
        # layer formula, per path: an im2col pass of (output positions x k x k x input channels)
        # elements before the GEMM, and a cost per call (ONNX Runtime's integer Convs on small inputs).
        "spatial_conv": _table({
            "type": "object",
            "required": ["us_per_layer", "ns_per_element"],
            "additionalProperties": False,
            "properties": {"us_per_layer": NONNEG, "ns_per_element": NONNEG},
        }, OP_PATHS),
        # Optional: the runtime has no integer Conv with a float output (ONNX Runtime's CPU provider:
        # QLinearConv only), so a static integer Conv runs as a float Conv of dequantized tensors
        # unless its output is quantized for it: read by one layer whose input activations are one of
        # these widths (exactly: an emulated width's Clip is in the way), or by no float layer and
        # never negative (qae then quantizes the output itself). ``costmodel.genome_classes``.
        "conv_output": {
            "type": "object",
            "required": ["fused_reader_bits", "source"],
            "additionalProperties": False,
            "properties": {"fused_reader_bits": {"type": "array", "items": {"type": "integer", "minimum": 2,
                                                                             "maximum": 16}},
                           # elementwise ops rescaling a dynamic Conv's int32 output (ConvInteger)
                           "dynamic_rescale_ops": {"type": "integer", "minimum": 0, "maximum": 16},
                           # the Relu / Clip after a dynamic Conv runs as an op of its own (the runtime
                           # fuses it into a float or QLinear Conv only)
                           "dynamic_activation_unfused": {"type": "boolean"},
                           # a float Conv of constant weights runs in a blocked channel layout
                           # (ONNX Runtime's NCHWc, this many channels a block): a reorder op goes
                           # between it and a Conv layer that does not
                           "layout_block": {"type": "integer", "minimum": 1, "maximum": 64},
                           # an integer Conv (QLinearConv) runs channels-last (ONNX Runtime's NHWC
                           # transformer): a Transpose goes into each run of them and out of it
                           "nhwc_integer_conv": {"type": "boolean"},
                           "source": {"type": "string", "minLength": 1}},
        },
        # the paths whose kernel takes a MatMul layer's bias Add; on the others it runs as an op of its
        # own, costed with the layer. Without it the bias Adds are in the rest of the graph whatever
        # the genome (``costmodel.bias_with_layer``)
        "matmul_bias": {
            "type": "object",
            "required": ["fused_paths", "source"],
            "additionalProperties": False,
            "properties": {"fused_paths": {"type": "array", "uniqueItems": True,
                                           "items": {"enum": [*OP_PATHS, "matmulnbits"]}},
                           "source": _SOURCE},
        },
        # The runtime quantizes an activation read by several dynamic layers once (ONNX Runtime merges
        # their identical DynamicQuantizeLinear nodes): each pays a share (``ExecClass.shared_input``).
        # Without it every dynamic layer quantizes its input itself
        "shared_dynamic_quantize": {
            "type": "object",
            "required": ["source"],
            "additionalProperties": False,
            "properties": {"source": _SOURCE},
        },
        "fallback": _table(FALLBACK, ACT_PRECISIONS),
        "energy": {
            "type": "object",
            "required": ["per_mac_pj", "dram_pj_per_byte", "onchip_pj_per_byte", "static_power_w",
                         "active_power_w"],
            "additionalProperties": False,
            "properties": {
                "per_mac_pj": _table(POS, PRECISIONS),
                "dram_pj_per_byte": POS, "onchip_pj_per_byte": NONNEG,
                "static_power_w": NONNEG, "active_power_w": NONNEG,
            },
        },
        "budgets": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"latency_ms": POS, "energy_mj": POS, "memory_mb": POS},
        },
        # Relative error of a prediction (one standard deviation), a default until calibrated.
        "uncertainty": POS,
        "calibration": {"type": "object"},
        # Optional: the kernels besides QDQ the target's runtime runs, with their cost coefficients.
        "kernels": KERNELS_SCHEMA,
    },
}


def _finite(validator: Any, enabled: Any, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    """The ``finite`` keyword: every float in the instance, at any depth, is finite (one error each)."""
    if not enabled:
        return
    stack: list[tuple[Any, tuple[Any, ...]]] = [(instance, ())]
    while stack:  # iterative: a profile's depth is small, but this walks whatever YAML gave
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            yield jsonschema.ValidationError(f"must be a finite number (got {node!r})", path=where, instance=node)
        elif isinstance(node, dict):
            stack.extend((v, (*where, k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*where, i)) for i, v in enumerate(node))


_VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"finite": _finite})(SCHEMA)


@dataclass
class Profile:
    """A validated profile. ``data`` is the parsed YAML (numbers still with their sources)."""

    name: str
    path: Path | None
    data: dict[str, Any]

    def num(self, *keys: str) -> float:
        """The value of the number at ``keys`` (e.g. ``num("memory", "dram_bandwidth_gbs")``)."""
        node: Any = self.data
        for key in keys:
            node = node[key]
        return float(node["value"])

    def table(self, key: str, sub: str | None = None) -> dict[str, float]:
        node = self.data[key] if sub is None else self.data[key][sub]
        return {k: float(v["value"]) for k, v in node.items()}

    @property
    def kernels(self) -> set[str]:
        """The kernels this target runs (``kernels_of``)."""
        return kernels_of(self)

    @property
    def calibration(self) -> dict[str, Any] | None:
        return self.data.get("calibration")

    @functools.cached_property
    def uncalibrated_uncertainty(self) -> float | None:
        """The expected relative error of what a calibration does not fit: energy and memory (it fits latency
        from timings; no energy sensor). A calibrated profile keeps its base profile's error for them (None
        when that profile is not installed here); any other profile has one error, ``uncertainty``."""
        cal = self.calibration or {}
        if not str(cal.get("energy", "")).startswith("not calibrated"):
            return self.num("uncertainty")
        try:
            return load_profile(str(cal.get("base_profile"))).num("uncertainty")
        except ProfileError:
            return None

    @property
    def calibration_id(self) -> str | None:
        cal = self.calibration
        return None if cal is None else str(cal.get("id"))

    @property
    def latency_statistic(self) -> str | None:
        """Which latency statistic a calibrated profile predicts (``min``, ``p50``, ...: the first word of
        its ``calibration.statistic``); None for a profile from public figures, which names none."""
        text = str((self.calibration or {}).get("statistic") or "").strip()
        word = text.split(" ", 1)[0].rstrip(",;:").lower() if text else ""
        return word if word in LATENCY_STATISTICS else None

    @property
    def budgets(self) -> dict[str, float]:
        """Default budgets in qae's units: latency_ms, energy_j, memory_bytes."""
        b = self.data.get("budgets", {})
        out: dict[str, float] = {}
        if "latency_ms" in b:
            out["latency_ms"] = float(b["latency_ms"]["value"])
        if "energy_mj" in b:
            out["energy_j"] = float(b["energy_mj"]["value"]) / 1e3
        if "memory_mb" in b:
            out["memory_bytes"] = float(b["memory_mb"]["value"]) * 1e6
        return out

    def copy(self) -> Profile:
        return Profile(self.name, self.path, copy.deepcopy(self.data))


def _field(path: Any) -> str:
    parts = [str(p) for p in path]
    if parts and parts[-1] == "value":  # a number's value: name the number, not its wrapper
        parts = parts[:-1]
    return ".".join(parts) or "(top level)"


def error_line(err: jsonschema.ValidationError) -> str:
    """One line for a schema error, naming the field and what it must be."""
    where = _field(err.absolute_path)
    v, kw = err.validator, err.validator_value
    if v == "required":
        missing = [k for k in kw if k not in (err.instance or {})]
        name = missing[0] if missing else "?"
        full = f"{where}.{name}" if err.absolute_path else name
        return f"missing field {full}"
    if v == "finite":
        return f"{where} must be a finite number (got {err.instance!r}): give its measured or documented value"
    if v == "exclusiveMinimum":
        return f"{where} must be > {kw:g} (got {err.instance!r})"
    if v == "minimum":
        return f"{where} must be >= {kw:g} (got {err.instance!r})"
    if v == "enum":
        kind = "precision" if set(kw) & set(ACT_PRECISIONS) else "kernel" if set(kw) == set(KERNELS) else "value"
        return f"{where}: unknown {kind} {err.instance!r}: use one of {', '.join(map(str, kw))}"
    if v == "propertyNames":
        return _bad_key(err)
    if v == "pattern":  # a mapping key its pattern refuses (propertyNames)
        return f"{where}: unknown key {err.instance!r}: use {_KEY_HINTS.get(kw, kw)}"
    if v == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        return f"{where}: unknown field {extra[0] if extra else '?'!r}"
    if v == "type":
        return f"{where} must be a {kw} (got {err.instance!r})"
    return f"{where}: {err.message}"


def validate(data: Any, source: str) -> None:
    """Raise ``ProfileError`` with one line naming the first bad field; the order is deterministic."""
    # A non-finite number also breaks its bounds (NaN > 0 is false): name it as what it is.
    errors = sorted(
        _VALIDATOR.iter_errors(data),
        key=lambda e: (len(e.absolute_path), list(map(str, e.path)), e.validator != "finite"),
    )
    if not errors:
        return
    err = errors[0]
    # A propertyNames failure reports at the parent: name the offending key as the field.
    if err.validator == "propertyNames" or (err.parent is not None and err.parent.validator == "propertyNames"):
        parent = err.parent if err.parent is not None else err
        raise ProfileError(f"{source}: {_bad_key(parent)}")
    raise ProfileError(f"{source}: {error_line(err)}")


#: How a key pattern reads in a message.
_KEY_HINTS = {MNB_RATE_KEY: "int2, int4 or int8, optionally with _accN for accuracy_level N (int4_acc4)",
              GBQ_RATE_KEY: "int2, int4 or int8"}


def _bad_key(err: jsonschema.ValidationError) -> str:
    """One line for a mapping with a key its schema does not allow (a precision, kernel, rate key)."""
    rule = err.schema.get("propertyNames", {}) if isinstance(err.schema, dict) else {}
    where = _field(err.absolute_path)
    if "enum" in rule:
        allowed = [str(k) for k in rule["enum"]]
        keys = [k for k in err.instance if k not in allowed]
        kind = "precision" if set(allowed) & set(ACT_PRECISIONS) else "kernel" if "qdq" in allowed else "key"
        return f"{where}: unknown {kind} {keys[0] if keys else '?'!r}: use one of {', '.join(allowed)}"
    pattern = str(rule.get("pattern", ""))
    keys = [k for k in err.instance if not re.search(pattern, str(k))]
    return f"{where}: unknown key {keys[0] if keys else '?'!r}: use {_KEY_HINTS.get(pattern, pattern)}"


def parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{source} is not valid YAML{at}: fix the syntax") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a mapping of fields")
    validate(data, source)
    _check_consistency(data, source)
    return data


def _check_consistency(data: dict[str, Any], source: str) -> None:
    """What the schema cannot say: every precision the profile computes in has a throughput."""
    thr = data["throughput_gmacs"]
    for p in [data["float_type"], *(w for w in data["native"]["weights"])]:
        if p not in thr:
            raise ProfileError(f"{source}: missing field throughput_gmacs.{p} (a native precision needs one)")
    for p, fb in data["fallback"].items():
        if fb["action"] == "dequantize" and fb["to"] not in thr:
            raise ProfileError(f"{source}: missing field throughput_gmacs.{fb['to']} (fallback.{p}.to)")
    for p in thr:
        if p not in data["energy"]["per_mac_pj"]:
            raise ProfileError(f"{source}: missing field energy.per_mac_pj.{p} (it has a throughput)")
    _check_kernels(data.get("kernels", {}), source)


def _check_kernels(kernels: dict[str, Any], source: str) -> None:
    """Every listed width (and accuracy level) of a kernel has a rate, and every rate a listed width."""
    for name in ("matmulnbits", "gather_block"):
        spec = kernels.get(name)
        if spec is None:
            continue
        levels = spec.get("accuracy_levels", [0])
        rates = spec["rates"]
        for key in rates:
            bits, _, acc = key.partition("_acc")
            if int(bits[3:]) not in spec["bits"]:
                raise ProfileError(f"{source}: kernels.{name}.rates.{key}: {bits} is not in kernels.{name}.bits "
                                   f"{spec['bits']}: list it or remove the rate")
            if acc and int(acc) not in levels:
                raise ProfileError(f"{source}: kernels.{name}.rates.{key}: accuracy_level {acc} is not in "
                                   f"kernels.{name}.accuracy_levels {levels}: list it or remove the rate")
        for b in spec["bits"]:
            for a in levels:
                if f"int{b}_acc{a}" not in rates and f"int{b}" not in rates:
                    what = f"int{b}" + (f" (or int{b}_acc{a})" if name == "matmulnbits" else "")
                    raise ProfileError(f"{source}: missing field kernels.{name}.rates.{what}: a listed width "
                                       "needs a rate")


def kernels_of(profile: Profile) -> set[str]:
    """The kernels ``profile``'s target runs: always ``qdq``, plus those its ``kernels:`` lists.

    A search offers a gene's ``kernel`` only where this holds it, and then only the widths, block
    sizes and accuracy levels ``kernel_options`` gives."""
    return {"qdq", *profile.data.get("kernels", {})}


def kernel_options(profile: Profile, kernel: str) -> dict[str, list[int]]:
    """What ``kernel`` runs on ``profile``'s target: ``bits``, ``block_sizes`` and (MatMulNBits)
    ``accuracy_levels`` (only the levels that change speed are listed); empty where it does not run."""
    spec = profile.data.get("kernels", {}).get(kernel)
    if spec is None or kernel == "qdq":
        return {}
    out = {"bits": sorted(spec["bits"]), "block_sizes": sorted(spec["block_sizes"])}
    if kernel == "matmulnbits":
        out["accuracy_levels"] = sorted(spec["accuracy_levels"])
    return out


def resolve(name_or_path: str | Path) -> Path:
    """``NAME`` -> profiles/NAME.yaml or profiles/calibrated/NAME.yaml; a path is taken as is."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or "/" in text:
        if not path.is_file():
            raise ProfileError(f"profile file {text} not found: `qae profiles list` shows the profiles")
        return path
    for folder in (PROFILES_DIR, CALIBRATED_DIR):
        candidate = folder / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    known = ", ".join(p["name"] for p in list_profiles())
    raise ProfileError(f"unknown profile {text!r}: use one of {known}, or give a .yaml path")


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile by name or path; every failure is a one-line ``ProfileError``."""
    path = resolve(name_or_path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"profile file {path} cannot be read ({exc.strerror}): check the path") from None
    data = parse(text, _display(path))
    return Profile(str(data["name"]), path, data)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROFILES_DIR.parent))
    except ValueError:
        return str(path)


def list_profiles() -> list[dict[str, Any]]:
    """Shipped and calibrated profiles: name, path, kind (base|calibrated), description, kernels."""
    out = []
    for kind, folder in (("base", PROFILES_DIR), ("calibrated", CALIBRATED_DIR)):
        for path in sorted(folder.glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError):
                data = {}
            raw = data.get("kernels")
            kernels: dict[str, Any] = raw if isinstance(raw, dict) else {}
            out.append({"name": path.stem, "path": str(path), "kind": kind,
                        "description": str(data.get("description", "")).strip().splitlines()[0:1] or [""],
                        "kernels": sorted({"qdq", *map(str, kernels)})})
    for row in out:
        row["description"] = row["description"][0]
    return out
