"""Hardware in the loop: measure the candidates worth measuring on real devices during a search.

A ``DeviceTarget`` is a group of interchangeable devices (same hardware profile) searched as one
target. Each generation:

1. costs are predicted from the group's current cost model (the device's profile, re-fitted online);
2. a measurement policy picks up to ``per_generation`` candidates worth measuring: unmeasured ones on
   the predicted front first, the most uncertain (largest predicted latency x expected error) first,
   then unmeasured survivors; the pool measures them asynchronously while the search goes on;
3. landed measurements go to the archive with provenance (job marked done, the prediction gap, the
   engine's revised record, in one transaction), and the engine is told the merged objectives
   (measured beats predicted) through ``Engine.revise``;
4. with new measurements the cost model is re-fitted (a scale on the base profile with few points,
   the full robust fit of ``profiles.fit`` with enough) and unmeasured candidates are re-predicted.

A device that is this host (transport ``local``) is measured between generations instead, while
the host-side evaluation waits: both would otherwise share the same cores.

Faults: a device failing for device reasons has its job moved to a healthy device of the group;
with none left the search continues on predictions and says so; a device that answers a handshake
again is used again. Jobs live in the archive, so a resumed run queues unfinished ones again and
no measurement is stored twice.

One module (~500 lines) because a device target's lifecycle (schedule, measure, land, re-fit, final
check) shares one state object; the pieces are not used apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.genome import Genome
from harness.devices.config import DeviceConfig
from harness.quant.quantize import save_model
from harness.quant.workload import Workload
from harness.run.archive import Archive, Value
from harness.run.evaluation import latency_statistic_of

DEVICE_FAILURES = (
    "CONNECT",
    "AUTH",
    "HOSTKEY",
    "AGENT_CRASHED",
    "PROTOCOL",
    "UPLOAD",
    "QUARANTINED",
    "NO_DEVICE",
    "RUNTIME_MISSING",
    "HOST_ERROR",
)

#: Device failures whose message holds the fix (trust instructions, credentials): printed once per device.
EXPLAINED = ("HOSTKEY", "AUTH", "RUNTIME_MISSING")


@dataclass
class HilSettings:
    """How much to measure and how: per generation, and the measurement method on the device."""

    per_generation: int = 3
    runs: int = 20
    min_seconds: float = 0.3
    warmup_seconds: float = 0.2
    threads: int | None = 1
    timeout_s: float = 120.0
    refit_min: int = 3
    full_fit_min: int = 12
    final_rounds: int = 4
    #: front points whose accuracy is also measured on the device at the end (0 turns it off)
    accuracy_points: int = 8
    #: measurements per candidate, each a fresh process on the device; the archive keeps every one, and
    #: the latency is the median of their p50s with their spread (MLPerf Mobile's 5 % rule)
    repeats: int = 1
    #: each measurement also profiles per op (5-20 extra runs, never counted in its latency), and the
    #: archive keeps per-layer measured times beside the cost model's per-layer prediction
    profile_ops: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ScaledTable:
    """A cost table whose latency predictions carry the online fit (a scale, or a re-fitted profile).

    ``statistic``: the latency statistic its predictions are: the wrapped table's profile's (``min`` for
    a profile calibrated on min latency) until an online fit, then the measured one it was fitted to."""

    def __init__(self, table: Any, scale: float, calibration_id: str | None, uncertainty: float | None,
                 statistic: str | None = None) -> None:
        self.table, self.scale, self.calibration_id, self.uncertainty = table, scale, calibration_id, uncertainty
        self.statistic = statistic or latency_statistic_of(table)

    def predict(self, genome: Genome) -> Any:
        pred = self.table.predict(genome)
        return replace(
            pred,
            latency_ms=pred.latency_ms * self.scale,
            calibration_id=self.calibration_id or pred.calibration_id,
            uncertainty=self.uncertainty if self.uncertainty is not None else pred.uncertainty,
        )


@dataclass
class _Inflight:
    future: Future[Any]
    path: Path
    genome: Genome
    generation: int
    settings: Any = None
    #: the repeats measured so far (``HilSettings.repeats``)
    done: list[Any] = field(default_factory=list)


class DeviceTarget:
    """One group of interchangeable devices, measured during the search of its target."""

    def __init__(
        self,
        name: str,
        devices: list[DeviceConfig],
        base_profile: Any,
        work: Workload,
        archive: Archive,
        run_dir: Path,
        budgets: dict[str, float],
        settings: HilSettings,
        say: Callable[[str], None] = print,
    ) -> None:
        from harness.devices.pool import DevicePool
        from profiles.costmodel import CostTable, GraphStats

        self.name = name
        self.devices = devices
        self.base = base_profile
        self.profile = base_profile
        self.work = work
        self.archive = archive
        self.models = run_dir / "models"
        self.budgets = budgets
        self.settings = settings
        self.say = say
        self.graph = GraphStats.of(work.model)
        self._cost_table = CostTable
        self.base_table = CostTable(work.model.layers, base_profile, self.graph)
        self.table: Any = ScaledTable(self.base_table, 1.0, None, None)
        self.pool = DevicePool(devices)
        # A device that is this host shares its CPU with the host-side evaluation: measuring it while
        # candidates are evaluated would time the contention, so it is measured between generations.
        self.shares_host = any(d.transport == "local" for d in devices)
        self.inflight: dict[str, _Inflight] = {}
        self.waiting: dict[str, tuple[Genome, int]] = {}
        self.fit_n = 0
        self.no_device_said = False
        self.explained: set[tuple[str, str]] = set()
        self.revive()

    # -- scheduling -----------------------------------------------------------------------------
    def healthy(self) -> list[str]:
        return self.pool.healthy()

    def submit(self, genome: Genome, generation: int) -> None:
        """Build the candidate's model file and hand it to the pool (once per candidate and target)."""
        if genome.hash in self.inflight:
            return
        if not self.healthy():
            self.waiting[genome.hash] = (genome, generation)
            self._no_device()
            return
        from harness.devices.transport import MeasureSettings

        path = self.models / f"{genome.hash}{_suffix(self.work)}"
        if not path.exists():
            save_model(self.work.build(genome), path)
        s = self.settings
        settings = MeasureSettings(
            runs=s.runs,
            min_seconds=s.min_seconds,
            warmup_seconds=s.warmup_seconds,
            timeout_s=s.timeout_s,
            threads=s.threads,
            idle_seconds=0.5,
            profile_ops=s.profile_ops,
            genome=genome,
            base_model=str(self.work.model.path),
            input_shapes=dict(self.work.model.shapes_used),
        )
        self.inflight[genome.hash] = _Inflight(self.pool.submit(path, settings), path, genome, generation,
                                               settings)
        self.waiting.pop(genome.hash, None)

    def queue(self, genome: Genome, generation: int) -> None:
        if self.archive.queue_job(self.name, genome.hash):
            self.submit(genome, generation)

    def requeue_unfinished(self, genome_of: Callable[[str], Genome], generation: int) -> int:
        """On resume: every job still queued in the archive is submitted again."""
        jobs = self.archive.jobs(self.name, "queued")
        for job in jobs:
            self.submit(genome_of(job["hash"]), generation)
        return len(jobs)

    def _no_device(self) -> None:
        if not self.no_device_said:
            self.no_device_said = True
            msg = (
                f"{self.name}: no healthy device left; the search goes on with predictions "
                f"({len(self.waiting)} measurements wait for a device)"
            )
            self.archive.add_event(self.name, None, "NO_DEVICE", msg)
            self.say(msg)

    def revive(self) -> None:
        """Give quarantined devices a handshake; one that answers is used again."""
        from harness.devices.connect import connect

        for device in self.devices:
            if not self.pool.health.quarantined(device.name):
                continue
            try:
                with connect(device) as t:
                    t.handshake()
            except Exception:
                continue
            self.pool.health.reset(device.name)
            self.archive.add_event(self.name, device.name, "DEVICE_BACK", f"{device.name} answers again")
            self.say(f"{self.name}: device {device.name} is back")
            self.no_device_said = False
        if self.waiting and self.healthy():
            for genome, generation in list(self.waiting.values()):
                self.submit(genome, generation)

    # -- landing measurements ---------------------------------------------------------------------
    def poll(
        self,
        engine: Any,
        key_of: dict[str, Any],
        objective_fn: Callable[[Genome, dict[str, Value]], Any],
        generation: int,
        block: bool = False,
    ) -> int:
        """Store every finished measurement; ``block`` waits for all in flight. Returns how many landed."""
        landed = 0
        for h, job in list(self.inflight.items()):
            if not block and not job.future.done():
                continue
            rec = job.future.result()
            if rec.ok and len(job.done) + 1 < max(1, self.settings.repeats):
                job.done.append(rec)  # another fresh process measures it again before it lands
                job.future = self.pool.submit(job.path, job.settings)
                continue
            del self.inflight[h]
            if rec.ok:
                self._land([*job.done, rec], job, engine, key_of, objective_fn, generation)
                landed += 1
                job.path.unlink(missing_ok=True)
            else:
                self._failed(rec, job)
        return landed

    def _land(
        self,
        recs: list[Any],
        job: _Inflight,
        engine: Any,
        key_of: dict[str, Any],
        objective_fn: Callable[[Genome, dict[str, Value]], Any],
        generation: int,
    ) -> None:
        rec = recs[-1]
        try:
            values = self._values_of(rec, recs)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A reply that passed the transport but holds no usable numbers: a failed measurement,
            # closed once (never requeued), not a crash of the search.
            self.archive.fail_job(self.name, job.genome.hash, rec.device, "INVALID_MEASUREMENT",
                                  f"unusable measurement ({exc})", final=True)
            self.say(f"{self.name}: device {rec.device} returned an unusable measurement ({exc}); recorded as failed")
            return
        predicted = self.archive.latest_value(self.name, job.genome.hash, "latency", "predicted")
        gap = None
        if predicted is not None:
            # like with like: a profile calibrated on min latency is compared with the measured min
            statistic, measured = measured_as(values["latency"], predicted.detail.get("statistic"))
            gap = {
                "generation": generation,
                "predicted": predicted.value,
                "measured": measured,
                "statistic": statistic,
                "fit_n": int(predicted.detail.get("fit_n", 0)),
                "calibration_id": predicted.detail.get("calibration_id"),
            }
        update = None
        key = key_of.get(job.genome.hash)
        if key is not None:
            merged = {c.hash: c for c in self.archive.candidates(self.name) if c.hash == job.genome.hash}
            current = dict(merged[job.genome.hash].values) if merged else {}
            current.update(values)
            engine.revise(key, objective_fn(job.genome, current))
            record = next(r for r in reversed(engine.records()) if r.genome == key)
            update = (record.to_dict(), engine.state_dict(include_records=False), engine.generation)
        if self.archive.finish_job(self.name, job.genome.hash, rec.device, values, gap, update):
            try:
                self._layer_times(rec, job)
            except (KeyError, TypeError, ValueError) as exc:  # a profile that does not split: the latency stands
                self.say(f"{self.name}: per-layer times of {job.genome.hash[:10]} from {rec.device} not kept ({exc})")

    def _layer_times(self, rec: Any, job: _Inflight) -> None:
        """Keep the measurement's per-op profile split by layer, beside the per-layer prediction."""
        if not getattr(rec, "op_profile", None) or not job.path.exists():
            return
        import onnx

        from harness.quant.opmap import layer_times

        profiled = layer_times(onnx.load(str(job.path)), self.work.model.layers, rec.op_profile, statistic="iqm_ms")
        # the profile less the profiler's per-node cost, scaled to the timed statistic the prediction is
        # (min for a profile calibrated on min latency, else p50), as calibration fits them
        statistic = self.table.statistic if self.table.statistic in ("min", "p50") else "p50"
        measured = profiled.corrected_to(float(rec.latency_ms[statistic]))
        pred = self.table.predict(job.genome)
        scale = getattr(self.table, "scale", 1.0)
        # like with like: the reorders a profile cannot attribute are the measured split's "unattributed"
        predicted = {"layers": {r["layer"]: (float(r["latency_ms"]) - float(r.get("unattributed_ms", 0.0))) * scale
                                for r in pred.layers},
                     "latency_ms": float(pred.latency_ms), "calibration_id": pred.calibration_id}
        row = measured.to_dict()
        row.pop("nodes")  # the archive keeps the split; the per-node list (ORT's graph, not the model's) is dropped
        row["runs"] = rec.op_profile.get("runs")
        row["profiled_total_ms"] = profiled.total_ms  # the split's sum under the profiler, before scaling
        row["scaled_to"] = f"timed {statistic}, less the profiler's per-node cost"
        row["statistic"] = statistic
        row["order"] = [layer.name for layer in self.work.model.layers]  # the stored dicts lose the model's order
        self.archive.set_layer_times(self.name, job.genome.hash, rec.device, {"measured": row, "predicted": predicted})

    @staticmethod
    def _values_of(rec: Any, repeats: list[Any] | None = None) -> dict[str, Value]:
        """The archive values of a measurement record (or of its ``repeats``, each a fresh process: the
        latency is then the median of their p50s, and every repeat is kept in the detail); raises
        ValueError for a non-finite or missing number."""
        from harness.core.latency_stats import replicability
        from harness.run.archive import check_value

        source = "simulated" if rec.source == "simulated" else "measured"
        detail = {
            "device": rec.device,
            "runtime": (rec.environment.get("runtime") or {}).get("version"),
            "n": rec.latency_ms["n"],
            "p90_ms": rec.latency_ms["p90"],
            "std_ms": rec.latency_ms["std"],
            "method": {k: rec.method.get(k) for k in ("runs_min", "min_seconds", "threads", "process")},
            "time": time.time(),
        }
        p50 = float(rec.latency_ms["p50"])
        # the fastest run too: what a profile calibrated on min latency predicts (``measured_as``)
        latency_detail = {**detail, "unit": "ms", "statistic": "p50", "min_ms": float(rec.latency_ms["min"]),
                          **runs_detail(rec)}
        if repeats and len(repeats) > 1:
            p50s = [float(r.latency_ms["p50"]) for r in repeats]
            p50 = float(np.median(p50s))
            latency_detail.update(
                min_ms=float(np.median([float(r.latency_ms["min"]) for r in repeats])),
                statistic="median of the repeats' p50s",
                repeats=[{"device": r.device, "p50_ms": float(r.latency_ms["p50"]), **runs_detail(r)}
                         for r in repeats],
                spread=replicability(p50s).to_dict(),
            )
            for key in ("runs_ms", "p50_ci95", "p50_ci_method", "no_interval"):
                latency_detail.pop(key, None)  # each repeat keeps its own
        values = {"latency": Value(p50, source, latency_detail)}
        if rec.peak_memory_bytes:
            values["memory"] = Value(
                float(rec.peak_memory_bytes),
                source,
                {**detail, "unit": "bytes", "what": "peak resident memory of the process"},
            )
        if rec.energy_j is not None:
            values["energy"] = Value(
                float(rec.energy_j) * 1e3, source, {**detail, "unit": "mJ", "energy_method": rec.energy_method}
            )
        for objective, value in values.items():
            check_value(objective, value)  # InvalidValueError is a ValueError
        return values

    def _failed(self, rec: Any, job: _Inflight) -> None:
        device_fault = rec.error_kind in DEVICE_FAILURES
        self.archive.fail_job(
            self.name, job.genome.hash, rec.device, rec.error_kind or "UNKNOWN", rec.message, final=not device_fault
        )
        if not device_fault:
            return  # the candidate's own failure (cannot load, timeout): kept as an error record
        self.archive.add_event(self.name, rec.device, "DEVICE_FAILED", f"{rec.device}: {rec.error_kind}: {rec.message}")
        # Said once per device and kind (the events table keeps every failure); "moving" only when
        # another healthy device is there to take the job.
        if (rec.device, rec.error_kind) not in self.explained:
            self.explained.add((rec.device, rec.error_kind))
            others = [d for d in self.healthy() if d != rec.device]
            then = "moving its job to a healthy device" if others else (
                "its job is tried again" if self.healthy() else "no healthy device left")
            self.say(f"{self.name}: device {rec.device} failed ({rec.error_kind}); {then}")
            if rec.error_kind in EXPLAINED:  # the detail says how to fix it (e.g. how to trust a host key)
                self.say(f"{self.name}: {rec.message}")
        self.submit(job.genome, job.generation)

    # -- the online fit -------------------------------------------------------------------------------
    def refit(
        self,
        engine: Any,
        key_of: dict[str, Any],
        genome_of: Callable[[str], Genome],
        objective_fn: Callable[[Genome, dict[str, Value]], Any],
        prediction_values: Callable[..., Any],
        generation: int,
    ) -> bool:
        """Re-fit the cost model when measurements arrived since the last fit; re-predict the rest."""
        from profiles.costmodel import genome_classes
        from profiles.fit import Sample

        cands = self.archive.candidates(self.name)
        measured = [
            c for c in cands if "latency" in c.values and c.values["latency"].source in ("measured", "simulated")
        ]
        if len(measured) < self.settings.refit_min or len(measured) == self.fit_n:
            return False
        layers = self.work.model.layers
        samples = []
        for c in measured:
            genome = genome_of(c.hash)
            samples.append(
                Sample(
                    c.hash,
                    "run",
                    "fit",
                    layers,
                    genome_classes(layers, genome, self.base, self.graph),
                    self.graph,
                    float(c.values["latency"].value),
                )
            )
        method, profile, table_scale, mape = self._choose_fit(samples)
        n = len(samples)
        cal_id = f"online:{self.name}:n{n}"
        self.profile = profile
        table = (
            self.base_table if profile is self.base else self._cost_table(self.work.model.layers, profile, self.graph)
        )
        # fitted to the measured latencies (p50s): its predictions are p50 from now on
        self.table = ScaledTable(table, table_scale, cal_id, max(mape, 0.02), statistic="p50")
        self.fit_n = n
        updates = []
        measured_hashes = {m.hash for m in measured}
        for c in cands:
            if c.hash in measured_hashes or not c.values:
                continue
            genome = genome_of(c.hash)
            values = prediction_values(genome, self.table, n)
            merged = {**c.values, **values}
            key = key_of.get(c.hash)
            if key is None:
                continue
            engine.revise(key, objective_fn(genome, merged))
            record = next(r for r in reversed(engine.records()) if r.genome == key)
            updates.append((c.hash, values, record.to_dict()))
        fit_row = {
            "generation": generation,
            "n": n,
            "calibration_id": cal_id,
            "method": method,
            "hashes": [s.id for s in samples],
            "in_sample_mape": mape,
        }
        self.archive.revise(self.name, updates, engine.state_dict(include_records=False), engine.generation, fit_row)
        return True

    def _choose_fit(self, samples: list[Any]) -> tuple[str, Any, float, float]:
        """Scale-only or full robust fit, whichever predicts held-out measurements better (2-fold).

        In-sample error would always favour the full fit (many coefficients, few points), so the
        choice is made on the half of the measurements each fit did not see.
        """
        from profiles.fit import errors, fit, predict_ms

        def scale_of(part: list[Any]) -> float:
            meas = np.array([s.measured_ms for s in part])
            return float(np.exp(np.median(np.log(meas / np.maximum(predict_ms(part, self.base), 1e-9)))))

        def mape(part: list[Any], pred: np.ndarray) -> float:
            meas = np.array([s.measured_ms for s in part])
            return float(np.mean(np.abs(pred / meas - 1)))

        scale = scale_of(samples)
        in_sample = mape(samples, predict_ms(samples, self.base) * scale)
        if len(samples) < self.settings.full_fit_min:
            return "scale", self.base, scale, in_sample
        halves = (samples[0::2], samples[1::2])
        cv_scale = cv_full = 0.0
        try:
            for train, test in (halves, halves[::-1]):
                cv_scale += mape(test, predict_ms(test, self.base) * scale_of(train)) / 2
                fitted, _ = fit(train, self.base)
                cv_full += mape(test, predict_ms(test, fitted)) / 2
            if cv_full < cv_scale:
                fitted, _ = fit(samples, self.base)
                return "robust least squares", fitted, 1.0, float(errors(samples, fitted)["fit"]["mape"])
        except Exception as exc:  # a failed fit keeps the scale fit; it is not worth stopping a search
            self.say(f"{self.name}: full re-fit failed ({type(exc).__name__}); keeping the scale fit")
        return "scale", self.base, scale, in_sample

    # -- the policy ---------------------------------------------------------------------------------------
    def schedule(
        self,
        engine: Any,
        hash_of: Callable[[Any], str],
        genome_of: Callable[[str], Genome],
        generation: int,
        limit: int | None = None,
    ) -> int:
        """Queue up to ``limit`` (default per generation) unmeasured candidates worth measuring."""
        limit = self.settings.per_generation if limit is None else limit
        done = {j["hash"] for j in self.archive.jobs(self.name)}
        values = {c.hash: c.values for c in self.archive.candidates(self.name)}

        def uncertainty(h: str) -> float:
            lat = values.get(h, {}).get("latency")
            if lat is None:
                return 0.0
            return float(lat.value) * float(lat.detail.get("expected_error") or 0.25)

        front = [hash_of(r.genome) for r in engine.front(feasible_only=False)]
        rest = [hash_of(r.genome) for r in engine.population()]
        picked = 0
        for group in (front, rest):
            for h in sorted((h for h in dict.fromkeys(group) if h not in done), key=uncertainty, reverse=True):
                if picked >= limit:
                    return picked
                self.queue(genome_of(h), generation)
                done.add(h)
                picked += 1
        return picked

    # -- accuracy on the device ---------------------------------------------------------------------
    def device_accuracy(
        self, hashes: list[str], genome_of: Callable[[str], Genome], host_accuracy: dict[str, float]
    ) -> int:
        """Run the eval inputs on a device for front points; keep device accuracy beside host accuracy."""
        from harness.devices.connect import connect
        from harness.devices.transport import InferSettings

        data = self.work.eval_data
        healthy = self.healthy()
        if data is None or not healthy or self.settings.accuracy_points <= 0:
            return 0
        device = next(d for d in self.devices if d.name == healthy[0])
        embedding = getattr(self.work, "metric", "auto") == "embedding"
        settings = InferSettings(
            timeout_s=self.settings.timeout_s,
            threads=self.settings.threads,
            reduce="mean_pool" if embedding else "none",
            mask_input="attention_mask" if embedding and "attention_mask" in data.inputs else None,
        )
        done = 0
        with connect(device) as transport:
            for h in hashes[: self.settings.accuracy_points]:
                path = self.models / f"acc-{h}{_suffix(self.work)}"
                save_model(self.work.build(genome_of(h)), path)
                try:
                    rec = transport.infer(path, data.path, settings)
                finally:
                    path.unlink(missing_ok=True)
                row: dict[str, Any] = {"host_accuracy": host_accuracy.get(h)}
                if rec.ok and rec.outputs is not None:
                    row.update(score_device_outputs(self.work, rec.outputs, embedding))
                else:
                    row.update(error_kind=rec.error_kind, message=rec.message)
                self.archive.set_device_accuracy(self.name, h, rec.device, row)
                done += 1
        gaps = [
            r
            for r in self.archive.device_accuracy(self.name).values()
            if r["accuracy"] is not None
            and r["host_accuracy"] is not None
            and abs(r["accuracy"] - r["host_accuracy"]) > 0.01
        ]
        if gaps:
            self.say(f"{self.name}: {len(gaps)} front points differ by over 1 point between device and host accuracy")
        return done

    def close(self) -> None:
        self.pool.close()


def measured_as(value: Value, statistic: str | None) -> tuple[str, float]:
    """(statistic, number) of a measured latency comparable with a prediction of ``statistic``: the
    measured min (or, over repeats, the median of their mins) beside a prediction of min latency, else
    the measured latency itself (p50, or the median of the repeats' p50s)."""
    low = value.detail.get("min_ms")
    if statistic == "min" and isinstance(low, (int, float)) and 0 < low <= value.value:  # a sane fastest run only
        return "min", float(low)
    return "p50", float(value.value)


def runs_detail(rec: Any) -> dict[str, Any]:
    """What a measured latency keeps of its runs: ``runs_ms`` (rounded to 0.1 us to keep the archive
    small) and ``p50_ci95`` [lo, hi] (``harness.core.latency_stats.median_ci``); a record without runs
    (an agent before 1.4) gets ``no_interval`` saying why instead."""
    from harness.core.latency_stats import MEDIAN_CI_METHOD, median_ci

    runs = getattr(rec, "runs_ms", None)
    if not runs:
        agent = (rec.environment or {}).get("agent_version") or "?"
        return {"no_interval": f"no interval: agent {agent} does not send its runs"}
    lo, hi = median_ci(runs)
    return {"runs_ms": [round(float(t), 4) for t in runs], "p50_ci95": [lo, hi], "p50_ci_method": MEDIAN_CI_METHOD}


def score_device_outputs(work: Workload, outputs: np.ndarray, embedding: bool) -> dict[str, Any]:
    """Accuracy of outputs computed on the device, by the workload's metric, against the host FP32 run."""
    from harness.quant.evaluate import mean_pool, output_names

    data = work.eval_data
    assert data is not None
    reference = work.reference_outputs
    if embedding:
        ref = mean_pool(reference, data.inputs.get("attention_mask"))
        a, b = _unit(outputs.astype(np.float64)), _unit(ref)
        nearest = []
        for emb in (a, b):
            sim = emb @ emb.T
            np.fill_diagonal(sim, -np.inf)
            nearest.append(sim.argmax(axis=1))
        return {
            "accuracy": float(np.mean(nearest[0] == nearest[1])),
            "mean_cosine": float(np.mean(np.sum(a * b, axis=1))),
            "metric": "retrieval_top1_agreement",
        }
    # The device returns the first output: scored by the workload's own plan (the metric the host
    # used), so device and host accuracy are the same number in the same unit.
    first = output_names(work.model.proto)[0]
    got = work.score_outputs({first: outputs})
    return {"accuracy": got["accuracy"], "mean_cosine": got["mean_cosine"], "metric": got["metric"]}


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def gap_statistics(gaps: list[dict[str, Any]]) -> str:
    """The measured statistic(s) the gaps compare with their predictions, for a label: ``min`` where the
    profile was calibrated on min latency, ``p50`` after an online re-fit to the measured p50s."""
    stats = list(dict.fromkeys(g["statistic"] for g in gaps))  # Archive.gaps names one for every gap
    return stats[0] if len(stats) == 1 else " or ".join(stats) + ", as each prediction was made"


def gap_summary(gaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per generation: mean absolute relative error of predictions on candidates measured then."""
    by_gen: dict[int, list[float]] = {}
    for g in gaps:
        if g["measured"] > 0:
            by_gen.setdefault(int(g["generation"]), []).append(abs(g["predicted"] / g["measured"] - 1))
    return [{"generation": k, "n": len(v), "mape": float(np.mean(v))} for k, v in sorted(by_gen.items())]


def _suffix(work: Any) -> str:
    """The model file suffix of ``work``'s candidates: .tflite on LiteRT, else .onnx."""
    return ".tflite" if getattr(work, "runtime", "onnxruntime") == "litert" else ".onnx"
