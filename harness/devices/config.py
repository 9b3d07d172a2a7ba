"""The device inventory: ``devices.yaml``, validated, plus the built-in ``local`` device.

The file is found by ``--devices FILE``, else ``$QAE_DEVICES``, else ``./devices.yaml``; with none of
them the inventory is just ``local`` (this host, transport ``local``). The file holds a ``devices:``
list; each entry is a mapping with the fields of ``DeviceConfig``, checked against ``DEVICE_SCHEMA``
(types and ranges); the file is read through ``harness.core.inputs`` (size cap, UTF-8, nesting
limit). Unknown fields, wrong types and values out of range are ``InputError``s naming the entry, the
field and the fix. Paths (``key_file``, ``known_hosts``) are
resolved relative to the file. ``DeviceConfig`` objects are frozen: treat them as values.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.core.errors import InputError
from harness.core.inputs import load_structured, read_text

TRANSPORTS = ("ssh", "local", "simulated")
SENSOR_NAMES = ("auto", "none", "rapl", "ina3221", "power_supply", "command")


@dataclass(frozen=True)
class DeviceConfig:
    """One device. ``runtime`` is ``onnxruntime`` or ``litert``; ``providers`` are ONNX Runtime
    execution providers; ``sensor`` is ``auto``, ``none``, a sensor name or a mapping
    (``{kind: command, argv: [...], unit: J|W}``); ``profile`` names the hardware profile the device
    is calibrated for; ``simulation`` configures a simulated device (``noise``, ``delay_s``,
    ``failure_rate``, ``failure_kind``, ``seed``, ``latency_ms``, ``memory_bytes``)."""

    name: str
    transport: str = "ssh"
    host: str | None = None
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    python: str = "python3"
    runtime: str = "onnxruntime"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int | None = None
    affinity: tuple[int, ...] | None = None
    sensor: Any = "auto"
    sysfs_root: str = "/"
    profile: str | None = None
    tags: tuple[str, ...] = ()
    cache_dir: str = "~/.cache/qae/agent"
    connect_timeout_s: float = 15.0
    upload_timeout_s: float = 120.0
    measure_timeout_s: float = 600.0
    keepalive_s: float = 15.0
    simulation: dict[str, Any] = field(default_factory=dict)
    source: str = "built-in"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("providers", "affinity", "tags"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


LOCAL = DeviceConfig(name="local", transport="local", python=sys.executable, sensor="auto", profile="host-cpu")

#: Upper bound of a devices file: a list of machines is a few kB; anything near this is the wrong file.
MAX_DEVICES_BYTES = 1 << 20

_TEXT = {"type": "string", "minLength": 1, "maxLength": 4096}
_SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": 86400}
_NAMES = {"type": "array", "maxItems": 100, "items": {"type": "string", "minLength": 1, "maxLength": 200}}

#: One devices.yaml entry (fields left ``null`` take their default and are not checked here).
DEVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^\\S+$", "maxLength": 100},
        "transport": {"enum": list(TRANSPORTS)},
        "host": {"type": "string", "minLength": 1, "maxLength": 255},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "user": {"type": "string", "minLength": 1, "maxLength": 256},
        "key_file": _TEXT, "known_hosts": _TEXT, "python": _TEXT, "sysfs_root": _TEXT, "cache_dir": _TEXT,
        "profile": {"type": "string", "minLength": 1, "maxLength": 200},
        "runtime": {"enum": ["onnxruntime", "litert"]},
        "providers": _NAMES, "tags": _NAMES,
        "threads": {"type": "integer", "minimum": 1, "maximum": 4096},
        "affinity": {"type": "array", "maxItems": 4096, "uniqueItems": True,
                     "items": {"type": "integer", "minimum": 0, "maximum": 65535}},
        "sensor": {"anyOf": [
            {"type": "string"},
            {"type": "object", "properties": {
                "kind": {"type": "string"}, "unit": {"enum": ["J", "W"]}, "rail": {"type": "string", "maxLength": 200},
                "argv": {"type": "array", "minItems": 1, "maxItems": 100,
                         "items": {"type": "string", "maxLength": 4096}}}},
        ]},
        "connect_timeout_s": {**_SECONDS, "maximum": 3600}, "upload_timeout_s": _SECONDS,
        "measure_timeout_s": _SECONDS,
        "keepalive_s": {"type": "number", "minimum": 0, "maximum": 3600},
        "simulation": {"type": "object", "properties": {
            "noise": {"type": "number", "minimum": 0, "maximum": 10},
            "delay_s": {"type": "number", "minimum": 0, "maximum": 3600},
            "failure_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "failure_kind": {"type": "string", "pattern": "^[A-Z_]{1,40}$"},
            "seed": {"type": "integer"},
            "latency_ms": {"type": "number", "exclusiveMinimum": 0},
            "memory_bytes": {"type": "integer", "minimum": 0},
            "energy_j": {"type": ["number", "null"], "minimum": 0},
            "function": {"type": "string", "maxLength": 400}}},
    },
}
_JSON_TYPES = {"integer": "int", "number": "number", "string": "str", "array": "list", "object": "mapping",
               "boolean": "bool", "null": "null"}
_VALIDATOR: Any = None


def _schema_error(entry: dict[str, Any], label: str) -> str | None:
    """The first schema violation of ``entry`` as one line naming the field and its allowed values."""
    global _VALIDATOR
    import jsonschema

    if _VALIDATOR is None:
        _VALIDATOR = jsonschema.Draft202012Validator(DEVICE_SCHEMA)
    errors = sorted(_VALIDATOR.iter_errors(entry), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    err = errors[0]
    path = list(err.absolute_path)
    field = str(path[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:]) if path else ""
    v, kw, value = err.validator, err.validator_value, err.instance
    if v == "additionalProperties":
        known = sorted(DEVICE_SCHEMA["properties"])
        extra = sorted(set(value) - set(known))
        return f"{label}: unknown field {extra[0]!r}; known fields: {', '.join(known)}"
    if v == "type":
        want = " or ".join(_JSON_TYPES.get(t, t) for t in ([kw] if isinstance(kw, str) else kw))
        return f"{label}: field {field!r} must be {want}, not {type(value).__name__} ({value!r})"
    if v == "enum":
        return f"{label}: {field} {value!r} is not one of {', '.join(map(str, kw))}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        return f"{label}: field {field!r} is {value!r}, out of range: it must be {op} {kw}"
    if v == "anyOf" and field == "sensor":
        return f"{label}: sensor must be a name ({', '.join(SENSOR_NAMES)}) or a mapping, not {value!r}"
    return f"{label}: field {field!r}: {err.message[:200]}"


def devices_path(path: str | Path | None = None) -> Path | None:
    """The devices file in force: the argument, else $QAE_DEVICES, else ./devices.yaml if present."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"devices file {p} does not exist: give an existing YAML file to --devices")
        return p
    env = os.environ.get("QAE_DEVICES")
    if env:
        p = Path(env)
        if not p.is_file():
            raise InputError(f"$QAE_DEVICES names {p}, which does not exist: fix or unset it")
        return p
    p = Path("devices.yaml")
    return p if p.is_file() else None


def _entry(raw: Any, i: int, where: Path) -> DeviceConfig:
    label = f"{where}: devices[{i}]"
    if not isinstance(raw, dict):
        raise InputError(f"{label} is not a mapping: each device is 'name: ..., transport: ...'")
    name = raw.get("name")
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise InputError(f"{label} needs a 'name' without spaces")
    label = f"{where}: device {name!r}"
    problem = _schema_error({k: v for k, v in raw.items() if v is not None}, label)
    if problem:
        raise InputError(problem)
    transport = raw.get("transport", "ssh")
    if transport not in TRANSPORTS:
        raise InputError(f"{label}: transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
    if transport == "ssh" and not raw.get("host"):
        raise InputError(f"{label}: an ssh device needs 'host' (a name or address)")
    sensor = raw.get("sensor", "auto")
    if isinstance(sensor, str) and sensor not in SENSOR_NAMES:
        raise InputError(f"{label}: sensor {sensor!r} is not one of {', '.join(SENSOR_NAMES)} or a mapping")
    if isinstance(sensor, dict):
        kind = sensor.get("kind")
        if kind == "command" and (not isinstance(sensor.get("argv"), list) or sensor.get("unit") not in ("J", "W")):
            raise InputError(f"{label}: a command sensor needs 'argv: [program, args...]' and 'unit: J' or 'unit: W'")
        if kind not in SENSOR_NAMES:
            raise InputError(f"{label}: sensor kind {kind!r} is not one of {', '.join(SENSOR_NAMES)}")
    base = where.parent
    values = dict(raw)
    for key in ("key_file", "known_hosts"):
        if values.get(key):
            values[key] = str((base / Path(values[key]).expanduser()).resolve())
    for key in ("providers", "tags", "affinity"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    if transport == "local" and "python" not in raw:
        values["python"] = sys.executable
    return DeviceConfig(**{k: v for k, v in values.items() if v is not None}, source=str(where))


def load_devices(path: str | Path | None = None) -> dict[str, DeviceConfig]:
    """All devices by name; always contains ``local`` (a file may redefine it)."""
    devices = {"local": LOCAL}
    where = devices_path(path)
    if where is None:
        return devices
    data = load_structured(read_text(where, "devices", MAX_DEVICES_BYTES), str(where))
    if data is None:
        return devices
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise InputError(f"{where}: expected a top-level 'devices:' list of device entries")
    seen: set[str] = set()
    for i, raw in enumerate(data["devices"]):
        dev = _entry(raw, i, where)
        if dev.name in seen:
            raise InputError(f"{where}: device name {dev.name!r} appears twice; names must be unique")
        seen.add(dev.name)
        devices[dev.name] = dev
    return devices


def get_device(name: str, path: str | Path | None = None) -> DeviceConfig:
    """The device called ``name``; an ``InputError`` naming the known devices otherwise."""
    devices = load_devices(path)
    if name not in devices:
        raise InputError(f"unknown device {name!r}; known devices: {', '.join(sorted(devices))} "
                         "(add it to devices.yaml, or point --devices / $QAE_DEVICES at the file)")
    return devices[name]
