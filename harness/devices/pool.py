"""Device health and the device pool.

Health (after LAVA): a device is GOOD until it fails ``max_failures`` times in a row for reasons
that are the device's (``DEVICE_KINDS``: cannot connect, auth, host key, agent crashed, ...; a model
that does not load is not the device's fault). Then it is QUARANTINED: out of scheduling and shown
by ``qae devices check`` until a check or a measurement on it succeeds. Health lives in a JSON file
(``$QAE_CACHE_DIR/devices/health.json``, else ``~/.cache/qae/devices/health.json``) so it survives
the process; writes are atomic and serialised by a lock within a process. Health is keyed by the
device's name AND a hash of its connection config (``health_key``): two devices files that both call a
machine ``pi`` do not share (or poison) each other's health.

The pool keeps every healthy device busy: one worker thread and one queue per device; ``submit``
pins a job to a device or gives it to the healthy device with the shortest queue. A transient failure
(``TRANSIENT_KINDS``) is retried on a fresh connection after an exponential back-off; other failures
are returned at once. Every job ends in a ``MeasureRecord`` future: nothing raises out of a worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.atomic import atomic_write_text
from harness.devices.config import DeviceConfig
from harness.devices.connect import connect
from harness.devices.transport import DEVICE_KINDS, TRANSIENT_KINDS, MeasureRecord, MeasureSettings, Transport

GOOD, QUARANTINED = "GOOD", "QUARANTINED"


def health_path() -> Path:
    root = os.environ.get("QAE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "qae") / "devices" / "health.json"


def health_key(device: DeviceConfig) -> str:
    """``name@hash``: the hash covers what reaches the machine (transport, host, port, user, python,
    cache), not the file it was read from, so moving devices.yaml keeps the history."""
    conn = [device.transport, device.host, device.port, device.user, device.python, device.cache_dir]
    return f"{device.name}@{hashlib.sha256(json.dumps(conn).encode()).hexdigest()[:12]}"


class HealthStore:
    """Consecutive device failures per device, persisted; thread-safe within a process. Methods take
    a ``DeviceConfig`` (keyed by ``health_key``) or a name: a name registered with ``register`` (the
    pool registers its devices) means that device, any other name is used as the key itself."""

    def __init__(self, path: Path | None = None, max_failures: int = 3) -> None:
        self.path = path or health_path()
        self.max_failures = max_failures
        self.lock = threading.Lock()
        self.names: dict[str, str] = {}

    def register(self, devices: list[DeviceConfig]) -> None:
        for d in devices:
            self.names[d.name] = health_key(d)

    def key(self, device: DeviceConfig | str) -> str:
        if isinstance(device, str):
            return self.names.get(device, device)
        return health_key(device)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, device: DeviceConfig | str) -> dict[str, Any]:
        name = self.key(device)
        with self.lock:
            return self._load().get(name, {"state": GOOD, "consecutive_failures": 0})

    def quarantined(self, device: DeviceConfig | str) -> bool:
        return self.get(device).get("state") == QUARANTINED

    def record(self, device: DeviceConfig | str, ok: bool, kind: str | None = None,
               message: str = "") -> dict[str, Any]:
        """Count one outcome; failures of kinds that are not the device's leave health unchanged."""
        name = self.key(device)
        with self.lock:
            data = self._load()
            entry = data.get(name, {"state": GOOD, "consecutive_failures": 0})
            if ok:
                entry = {"state": GOOD, "consecutive_failures": 0, "since": time.time()}
            elif kind in DEVICE_KINDS:
                entry["consecutive_failures"] = int(entry.get("consecutive_failures", 0)) + 1
                entry["last_error_kind"], entry["last_error"] = kind, message[:300]
                if entry["consecutive_failures"] >= self.max_failures and entry.get("state") != QUARANTINED:
                    entry["state"], entry["since"] = QUARANTINED, time.time()
            else:
                return entry
            data[name] = entry
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))
            return entry

    def reset(self, device: DeviceConfig | str) -> None:
        self.record(device, ok=True)


def measure_with_retries(transport: Transport, model_path: Path, settings: MeasureSettings, retries: int = 2,
                         backoff_s: float = 0.5) -> MeasureRecord:
    """Measure, retrying transient failures with exponential back-off (never a real timeout or a
    model that does not load: those would only fail again). ``method['host_attempts']`` says how many
    tries it took."""
    attempt = 0
    while True:
        attempt += 1
        try:
            rec = transport.measure(model_path, settings)
        except Exception as exc:  # a bug on the host side still ends in a record
            rec = MeasureRecord.failure(transport.device.name, "HOST_ERROR", f"{type(exc).__name__}: {exc}")
        if rec.ok or rec.error_kind not in TRANSIENT_KINDS or attempt > retries:
            rec.method = dict(rec.method, host_attempts=attempt)
            return rec
        transport.close()  # start the next try on a fresh connection and agent
        time.sleep(backoff_s * 2 ** (attempt - 1))


@dataclass
class _Job:
    model_path: Path
    settings: MeasureSettings
    future: Future[MeasureRecord]
    pinned: bool


class DevicePool:
    """A queue and a worker per device. Thread-safe: ``submit`` may be called from any thread.
    ``close()`` waits for queued jobs, then closes every transport."""

    def __init__(self, devices: list[DeviceConfig], health: HealthStore | None = None, retries: int = 2,
                 backoff_s: float = 0.5, connect_fn: Callable[[DeviceConfig], Transport] = connect) -> None:
        self.devices = {d.name: d for d in devices}
        self.health = health or HealthStore()
        self.health.register(devices)
        self.retries = retries
        self.backoff_s = backoff_s
        self.connect_fn = connect_fn
        self.queues: dict[str, queue.Queue[_Job | None]] = {n: queue.Queue() for n in self.devices}
        self.busy: dict[str, int] = dict.fromkeys(self.devices, 0)
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._work, args=(n,), daemon=True, name=f"qae-pool-{n}")
                        for n in self.devices]
        for w in self.workers:
            w.start()

    def healthy(self) -> list[str]:
        return [n for n, d in self.devices.items() if not self.health.quarantined(d)]

    def submit(self, model_path: Path, settings: MeasureSettings, device: str | None = None) -> Future[MeasureRecord]:
        fut: Future[MeasureRecord] = Future()
        self._route(_Job(Path(model_path), settings, fut, pinned=device is not None), device)
        return fut

    def _route(self, job: _Job, device: str | None) -> None:
        with self.lock:
            if device is None:
                candidates = self.healthy()
                if not candidates:
                    job.future.set_result(MeasureRecord.failure(
                        "-", "NO_DEVICE", "every device in the pool is quarantined; see qae devices check"))
                    return
                device = min(candidates, key=lambda n: self.queues[n].qsize() + self.busy[n])
            elif device not in self.devices:
                job.future.set_result(MeasureRecord.failure(device, "NO_DEVICE", f"{device} is not in this pool"))
                return
            self.queues[device].put(job)

    def _work(self, name: str) -> None:
        transport: Transport | None = None
        q = self.queues[name]
        while True:
            job = q.get()
            if job is None:
                break
            if self.health.quarantined(self.devices[name]):
                if job.pinned or not self.healthy():
                    h = self.health.get(self.devices[name])
                    job.future.set_result(MeasureRecord.failure(
                        name, "QUARANTINED", f"device {name} is quarantined after {h.get('consecutive_failures')} "
                        f"failures in a row (last: {h.get('last_error_kind')}); run qae devices check {name}"))
                else:
                    self._route(job, None)
                continue
            with self.lock:
                self.busy[name] += 1
            try:
                if transport is None:
                    transport = self.connect_fn(self.devices[name])
                rec = measure_with_retries(transport, job.model_path, job.settings, self.retries, self.backoff_s)
            except Exception as exc:
                rec = MeasureRecord.failure(name, "HOST_ERROR", f"{type(exc).__name__}: {exc}")
            finally:
                with self.lock:
                    self.busy[name] -= 1
            self.health.record(self.devices[name], rec.ok, rec.error_kind, rec.message)
            job.future.set_result(rec)
        if transport is not None:
            transport.close()

    def close(self) -> None:
        for q in self.queues.values():
            q.put(None)
        for w in self.workers:
            w.join()

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
