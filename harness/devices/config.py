"""The device inventory: ``devices.yaml``, validated, plus the built-in ``local`` device.

The file is found by ``--devices FILE``, else ``$QAE_DEVICES``, else ``./devices.yaml``; with none of
them the inventory is just ``local`` (this host, transport ``local``). The file holds a ``devices:``
list; each entry is a mapping with the fields of ``DeviceConfig``. Unknown fields and wrong types are
``InputError``s naming the entry, the field and the fix. Paths (``key_file``, ``known_hosts``) are
resolved relative to the file. ``DeviceConfig`` objects are frozen: treat them as values.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.core.errors import InputError

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

_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "transport": (str,), "host": (str,), "port": (int,), "user": (str,), "key_file": (str,),
    "known_hosts": (str,), "python": (str,), "runtime": (str,), "providers": (list,), "threads": (int,),
    "affinity": (list,), "sensor": (str, dict), "sysfs_root": (str,), "profile": (str,), "tags": (list,),
    "cache_dir": (str,), "connect_timeout_s": (int, float), "upload_timeout_s": (int, float),
    "measure_timeout_s": (int, float), "keepalive_s": (int, float), "simulation": (dict,),
}


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
    known = {f.name for f in fields(DeviceConfig)} - {"source"}
    for key, value in raw.items():
        if key not in known:
            raise InputError(f"{label}: unknown field {key!r}; known fields: {', '.join(sorted(known))}")
        types = _FIELD_TYPES[key]
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            want = " or ".join(t.__name__ for t in types)
            raise InputError(f"{label}: field {key!r} must be {want}, not {type(value).__name__} ({value!r})")
    transport = raw.get("transport", "ssh")
    if transport not in TRANSPORTS:
        raise InputError(f"{label}: transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
    if transport == "ssh" and not raw.get("host"):
        raise InputError(f"{label}: an ssh device needs 'host' (a name or address)")
    port = raw.get("port", 22)
    if not 0 < port < 65536:
        raise InputError(f"{label}: port {port} is not in 1..65535")
    sensor = raw.get("sensor", "auto")
    if isinstance(sensor, str) and sensor not in SENSOR_NAMES:
        raise InputError(f"{label}: sensor {sensor!r} is not one of {', '.join(SENSOR_NAMES)} or a mapping")
    if isinstance(sensor, dict):
        kind = sensor.get("kind")
        if kind == "command" and (not isinstance(sensor.get("argv"), list) or sensor.get("unit") not in ("J", "W")):
            raise InputError(f"{label}: a command sensor needs 'argv: [program, args...]' and 'unit: J' or 'unit: W'")
        if kind not in SENSOR_NAMES:
            raise InputError(f"{label}: sensor kind {kind!r} is not one of {', '.join(SENSOR_NAMES)}")
    if raw.get("runtime", "onnxruntime") not in ("onnxruntime", "litert"):
        raise InputError(f"{label}: runtime must be onnxruntime or litert")
    if raw.get("threads") is not None and raw["threads"] < 1:
        raise InputError(f"{label}: threads must be >= 1")
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
    import yaml

    try:
        data = yaml.safe_load(where.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
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
