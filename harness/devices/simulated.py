"""The ``simulated`` transport: answers from a cost model or a given function, labelled
``simulated`` on every record, with configurable noise, delay and failure injection.

A simulated device is a transport like the others (it is registered in ``connect``), not a mock
inside the code under test. Its numbers come from, in order:

1. ``fn`` given to the constructor, or ``simulation.function: "module:callable"`` in devices.yaml:
   ``fn(model_path, settings) -> {"latency_ms": float, "peak_memory_bytes": int, "energy_j": float|None}``;
2. the device's ``profile`` through ``profiles.costmodel`` (the genome from ``settings.genome``,
   fp32 everywhere when none is given);
3. ``simulation.latency_ms`` (and ``memory_bytes``) as constants.

``simulation`` also takes ``noise`` (relative, log-normal per run), ``delay_s`` (per call),
``failure_rate`` with ``failure_kind`` (default CONNECT) and ``seed``.
"""

from __future__ import annotations

import importlib
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import InputError
from harness.devices.config import DeviceConfig
from harness.devices.replies import MAX_RUNS
from harness.devices.transport import (
    DeviceError,
    InferRecord,
    InferSettings,
    MeasureRecord,
    MeasureSettings,
    Transport,
    model_sha256,
)

SimFn = Callable[[Path, MeasureSettings], dict[str, Any]]


def _import_fn(spec: str) -> SimFn:
    mod, _, attr = spec.partition(":")
    try:
        fn: SimFn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"simulation.function {spec!r} cannot be imported ({exc}): give 'module:callable'") from None
    return fn


class SimulatedTransport(Transport):
    """A device that exists only as numbers; see the module docstring."""

    def __init__(self, device: DeviceConfig, fn: SimFn | None = None) -> None:
        self.device = device
        sim = dict(device.simulation)
        self.noise = float(sim.get("noise", 0.0))
        self.delay_s = float(sim.get("delay_s", 0.0))
        self.failure_rate = float(sim.get("failure_rate", 0.0))
        self.failure_kind = str(sim.get("failure_kind", "CONNECT"))
        self.rng = np.random.default_rng(sim.get("seed", 0))
        self.sim = sim
        if fn is None and sim.get("function"):
            fn = _import_fn(str(sim["function"]))
        self.fn = fn
        self.mode = "function" if fn else ("profile" if device.profile else "constant")
        if self.mode == "constant" and "latency_ms" not in sim:
            raise InputError(f"simulated device {device.name!r} needs a profile, simulation.function or "
                             "simulation.latency_ms")
        self.closed = False

    def _fail(self) -> str | None:
        if self.failure_rate > 0 and self.rng.random() < self.failure_rate:
            return self.failure_kind
        return None

    def handshake(self) -> dict[str, Any]:
        if self.delay_s:
            time.sleep(self.delay_s)
        kind = self._fail()
        if kind:
            raise DeviceError(kind, f"injected failure on simulated device {self.device.name}")
        return {
            "agent_version": "simulated", "protocol": 1, "python": platform.python_version(), "os": "simulated",
            "cpu_model": f"simulated ({self.mode} {self.device.profile or ''})".replace(" )", ")"),
            "cpu_count": None, "runtimes": {"simulated": {"version": self.mode}}, "sensors": [], "governor": None,
            "temperatures_c": {}, "time": time.time(), "clock_offset_s": 0.0, "rtt_s": 0.0,
            "transport": "simulated", "simulated": True,
        }

    def _predict(self, model_path: Path, settings: MeasureSettings) -> dict[str, Any]:
        if self.fn is not None:
            return dict(self.fn(model_path, settings))
        if self.mode == "profile":
            from harness.core.genome import Gene, Genome
            from harness.core.model import load_model
            from profiles.costmodel import predict_model

            try:
                from profiles import load_profile  # type: ignore[attr-defined]
            except ImportError:
                from profiles.schema import load_profile
            model = load_model(_base_model(model_path, settings), settings.input_shapes, require_layers=False)
            assumed = list(model.unresolved_inputs()) if settings.input_shapes is None else []
            if assumed:
                # As the agent does for a host that sends no shapes: 1 for a symbolic dimension, said
                # in the record (``method.symbolic_dims_set_to_1``), never silently.
                model = model.at_shapes({k: [d or 1 for d in v] for k, v in model.unresolved_inputs().items()})
            genome = settings.genome
            if genome is None:
                genome = Genome.uniform(Gene(weight_bits="fp", activation_bits="fp"),
                                        {la.name: la.op_type for la in model.layers})
            pred = predict_model(model, genome, load_profile(str(self.device.profile)))
            return {"latency_ms": pred.latency_ms, "peak_memory_bytes": int(pred.memory_bytes),
                    "energy_j": pred.energy_j, "profile": pred.profile, "calibration_id": pred.calibration_id,
                    "input_shapes": dict(model.shapes_used), "symbolic_dims_set_to_1": assumed}
        return {"latency_ms": float(self.sim["latency_ms"]), "peak_memory_bytes": int(self.sim.get("memory_bytes", 0)),
                "energy_j": self.sim.get("energy_j")}

    def measure(self, model_path: Path, settings: MeasureSettings) -> MeasureRecord:
        name = self.device.name
        model_path = Path(model_path)
        try:
            sha = model_sha256(model_path)
        except OSError as exc:
            return MeasureRecord.failure(name, "MODEL_LOAD", f"cannot read {model_path}: {exc}", source="simulated")
        if self.delay_s:
            time.sleep(self.delay_s)
        kind = self._fail()
        if kind:
            return MeasureRecord.failure(name, kind, f"injected failure on simulated device {name}",
                                         source="simulated", model_sha256=sha)
        try:
            pred = self._predict(model_path, settings)
        except Exception as exc:  # the model or the cost model failed: a record, as a device would give
            return MeasureRecord.failure(name, "MODEL_LOAD", f"simulation failed: {type(exc).__name__}: {exc}",
                                         source="simulated", model_sha256=sha)
        n = max(1, int(settings.runs))
        mean = float(pred["latency_ms"])
        samples = mean * np.exp(self.rng.normal(0.0, self.noise, n)) if self.noise else np.full(n, mean)
        lat = {"p50": float(np.percentile(samples, 50)), "p90": float(np.percentile(samples, 90)),
               "mean": float(samples.mean()), "std": float(samples.std()), "min": float(samples.min()),
               "max": float(samples.max()), "n": n}
        energy = pred.get("energy_j")
        method = {"simulated": True, "mode": self.mode, "noise": self.noise, "runs": n, "delay_s": self.delay_s,
                  "input_shapes": pred.get("input_shapes", settings.input_shapes),
                  "symbolic_dims_set_to_1": pred.get("symbolic_dims_set_to_1", [])}
        if self.mode == "profile":
            method.update(profile=pred.get("profile"), calibration_id=pred.get("calibration_id"))
        return MeasureRecord(
            ok=True, source="simulated", device=name, model_sha256=sha, latency_ms=lat, load_ms=0.0,
            first_run_ms=mean, peak_memory_bytes=int(pred.get("peak_memory_bytes") or 0), memory_growth_bytes=None,
            energy_j=None if energy is None else float(energy),
            energy_method=None if energy is None else f"simulated ({self.mode})",
            method=method, environment={"transport": "simulated", "simulated": True},
            runs_ms=[float(x) for x in samples[np.linspace(0, n - 1, min(n, MAX_RUNS)).round().astype(int)]],
        )

    def infer(self, model_path: Path, data_path: Path, settings: InferSettings) -> InferRecord:
        """Always an UNSUPPORTED failure record: a simulated device has no runtime to run inputs on."""
        try:
            sha: str | None = model_sha256(Path(model_path))
        except OSError:
            sha = None
        return InferRecord.failure(
            self.device.name, "UNSUPPORTED", f"simulated device {self.device.name} has no runtime to run inputs "
            "on: on-device accuracy needs a real device (transport local or ssh)", source="simulated",
            model_sha256=sha, environment={"transport": "simulated", "simulated": True})

    def close(self) -> None:
        self.closed = True


def _base_model(model_path: Path, settings: MeasureSettings) -> str:
    """The float model whose layers a genome describes: a quantized file has no float layers left, so
    a simulated device costs the genome over its base (``settings.base_model``, or the builtin the
    file's qae stamp names)."""
    if settings.genome is None:
        return str(model_path)
    if settings.base_model:
        return settings.base_model
    import onnx

    props = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    base = props.get("qae.base_model", "")
    return base if base.startswith("builtin:") else str(model_path)
