"""What an agent may say: JSON schemas for every frame the host reads, checked before any value is used.

The agent is another program on another machine (an older version, a foreign process answering
``python3``, a library printing to stdout): its frames are input, not trusted data. ``parse_frame``
refuses JSON's non-finite extensions (``NaN``, ``Infinity``, which Python's ``json`` accepts) and
``check`` validates a frame or a result against its schema (types, ranges, sizes, string lengths).
Any failure is a ``DeviceError("PROTOCOL", ...)``: one line naming the op and the first bad field.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema

from harness.core.errors import QaeError

MAX_RUNS = 20000  # the agent's MAX_RUNS: timed runs one measurement sends back (agent >= 1.4)
MAX_TEXT = 4096  # one message, version or name; a traceback may be longer
MAX_RESULT = 1 << 30  # the agent's MAX_RESULT: larger infer outputs are refused there
FETCH_B64 = ((4 << 20) + 2) // 3 * 4  # base64 of the agent's FETCH_CHUNK

_STR = {"type": "string", "maxLength": MAX_TEXT}
_NN = {"type": "number", "minimum": 0}
_NN_OR_NULL = {"type": ["number", "null"], "minimum": 0}
_INT_NN = {"type": "integer", "minimum": 0}
_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_OBJ = {"type": "object", "maxProperties": 1000}
# kill(2) treats 0, -1 and negatives as groups or everything: only a real process id is accepted
_PID = {"type": "integer", "minimum": 2, "maximum": 2 ** 31 - 1}
#: kinds an agent may report; anything else (e.g. CONNECT, which the host would retry) is a broken protocol
AGENT_KINDS = ("REMOTE_ERROR", "PROTOCOL", "MODEL_LOAD", "RUN_TIMEOUT", "OOM", "RUNTIME_MISSING", "AGENT_CRASHED",
               "UPLOAD", "SENSOR", "INPUT_SHAPE", "UNSUPPORTED", "DATA_LOAD")

GREETING = {
    "type": "object",
    "required": ["type", "protocol"],
    "properties": {
        "type": {"const": "hello"},
        "protocol": {"type": "integer", "minimum": 1, "maximum": 1000},
        "agent_version": _STR,
        "pid": _PID,
        "pgid": _PID,
    },
}

REPLY = {
    "type": "object",
    "required": ["id", "ok"],
    "properties": {
        "id": {"type": ["integer", "null"]},
        "ok": {"type": "boolean"},
        "result": {"type": "object"},
        "error": {
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"enum": list(AGENT_KINDS)}, "message": _STR, "type": {"type": "string",
                           "maxLength": 200}, "traceback": {"type": "string", "maxLength": 64 * 1024}},
        },
    },
    "if": {"properties": {"ok": {"const": True}}},
    "then": {"required": ["result"]},
    "else": {"required": ["error"]},
}

_LATENCY = {
    "type": "object",
    "required": ["p50", "p90", "mean", "std", "min", "max", "n"],
    "properties": {**{k: _NN for k in ("p50", "p90", "mean", "std", "min", "max")},
                   "n": {"type": "integer", "minimum": 1}},
}

RESULTS: dict[str, dict[str, Any]] = {
    "hello": {
        "type": "object",
        "required": ["agent_version", "protocol"],
        "properties": {
            "agent_version": _STR, "protocol": {"type": "integer", "minimum": 1}, "python": _STR, "os": _STR,
            "machine": _STR, "cpu_model": {"type": ["string", "null"], "maxLength": MAX_TEXT},
            "cpu_count": {"type": ["integer", "null"], "minimum": 1}, "runtimes": _OBJ,
            "sensors": {"type": "array", "maxItems": 100}, "governor": {"type": ["string", "null"],
                                                                         "maxLength": MAX_TEXT},
            "temperatures_c": {"type": ["object", "null"], "maxProperties": 1000}, "time": {"type": "number"},
            "pid": _PID,
        },
    },
    "ping": {"type": "object", "required": ["time"], "properties": {"time": {"type": "number"}}},
    "has_model": {"type": "object", "required": ["present"], "properties": {"present": {"type": "boolean"}}},
    "put": {"type": "object", "properties": {"received": _INT_NN, "bytes": _INT_NN, "stored": _STR}},
    "sensors": {"type": "object"},
    "bye": {"type": "object"},
    "measure": {
        "type": "object",
        "required": ["latency_ms", "load_ms", "first_run_ms", "peak_memory_bytes", "memory_growth_bytes"],
        "properties": {
            "latency_ms": _LATENCY, "load_ms": _NN, "first_run_ms": _NN, "peak_memory_bytes": _INT_NN,
            # every timed run in ms (agents before 1.4 send none); finite: parse_frame refuses NaN/inf
            "runs_ms": {"type": "array", "minItems": 1, "maxItems": MAX_RUNS, "items": _NN},
            "memory_growth_bytes": {"type": "integer"}, "timed_seconds": _NN,
            "energy": {
                "type": ["object", "null"],
                "required": ["per_inference_j", "method"],
                "properties": {"per_inference_j": _NN, "method": _STR, "idle_power_w": _NN_OR_NULL,
                               "joules": _NN, "window_s": _NN},
            },
            "op_times_ms": {"type": ["object", "null"], "maxProperties": 100000, "additionalProperties": _NN},
            # agent 1.5: per node ONNX Runtime ran, its op type, provider and median kernel ms per run;
            # 1.5.1 adds the interquartile mean (``iqm_ms``: finer than the profiler's whole microseconds)
            "op_profile": {
                "type": ["object", "null"],
                "required": ["runs", "nodes"],
                "properties": {
                    "runs": {"type": "integer", "minimum": 1}, "run_ms": _NN_OR_NULL,
                    "nodes": {"type": "array", "maxItems": 100000, "items": {
                        "type": "object", "required": ["name", "op_type", "ms"],
                        "properties": {"name": {"type": "string", "maxLength": 4000},
                                       "op_type": {"type": "string", "maxLength": 200},
                                       "provider": {"type": ["string", "null"], "maxLength": 200}, "ms": _NN,
                                       "iqm_ms": _NN},
                    }},
                },
            },
            "method": _OBJ, "environment": _OBJ,
        },
    },
    "infer": {
        "type": "object",
        "required": ["shape", "nbytes", "sha256", "n", "seconds"],
        "properties": {
            "shape": {"type": "array", "maxItems": 8, "items": _INT_NN}, "dtype": {"const": "float32"},
            "nbytes": {"type": "integer", "minimum": 0, "maximum": MAX_RESULT}, "sha256": _SHA, "n": _INT_NN,
            "seconds": _NN, "load_ms": _NN_OR_NULL, "method": _OBJ, "environment": _OBJ,
            "data": {"type": "string", "maxLength": 2 * FETCH_B64},
            "result_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        },
        "oneOf": [{"required": ["data"]}, {"required": ["result_id"]}],
    },
    "fetch": {
        "type": "object",
        "required": ["data", "last"],
        "properties": {"data": {"type": "string", "maxLength": FETCH_B64}, "last": {"type": "boolean"},
                       "offset": _INT_NN, "total": {"type": "integer", "minimum": 0, "maximum": MAX_RESULT}},
    },
}

_VALIDATORS = {name: jsonschema.Draft202012Validator(s) for name, s in
               [("greeting", GREETING), ("reply", REPLY), *RESULTS.items()]}


class BadReply(QaeError):
    """A frame that breaks the protocol; the transport turns it into a PROTOCOL DeviceError."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf without passing parse_constant
        raise ValueError(f"non-finite number {text[:40]}")
    return value


def parse_frame(line: bytes) -> dict[str, Any]:
    """One frame as a dict; ``ValueError`` for anything else (not JSON, NaN/Infinity, not an object)."""
    frame = json.loads(line, parse_constant=_reject_constant, parse_float=_finite_float)
    if not isinstance(frame, dict):
        raise ValueError("not an object")
    return frame


def check(what: str, value: Any) -> None:
    """Validate ``value`` as ``what`` (``greeting``, ``reply`` or an op's result); ``BadReply`` names
    the first bad field (deterministic: the error jsonschema ranks most relevant)."""
    err = jsonschema.exceptions.best_match(_VALIDATORS[what].iter_errors(value))
    if err is None:
        return
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    shown = json.dumps(err.instance, default=str)[:80]
    raise BadReply(f"agent's {what} reply is malformed at {where}: {err.message[:200]} (got {shown})")
