"""The ask/evaluate/tell loop of one search target, with the hardware-in-the-loop hooks.

``harness.run.search.run_search`` builds one ``Driver`` per target (a profile, or a group of devices)
and calls ``run()``. The driver keeps the mapping between the engine's genomes (choice indices) and
qae's genome hashes, tells the engine each evaluation, and writes each to the archive in the same
transaction as the engine state; for a device group it lands measurements, re-fits the group's cost
model and schedules the next measurements between generations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harness.core.genome import Genome
from harness.quant.workload import Workload
from harness.run.archive import Archive, Value
from harness.run.config import SearchConfig
from harness.run.evaluation import (
    HostEvaluator,
    Progress,
    best_values,
    engine_state,
    evaluation_of,
    front_hypervolume,
    host_values,
    layers_dict,
    prediction_values,
)
from search import Evaluation


class Driver:
    """The ask/evaluate/tell loop of one target, with the hardware-in-the-loop hooks of a device group."""

    def __init__(
        self,
        engine: Any,
        space: Any,
        work: Workload,
        evaluator: HostEvaluator,
        target: Any,
        cfg: SearchConfig,
        fp32: float,
        archive: Archive,
        started: float,
        on_progress: Callable[[Progress], None] | None,
        metric: str = "",
        deadline: float | None = None,
    ) -> None:
        """``deadline`` (``time.time()``): no generation is asked for after it (``--time-limit``)."""
        from harness.run.hil import DeviceTarget

        self.engine, self.space, self.work, self.evaluator = engine, space, work, evaluator
        self.target, self.cfg, self.fp32, self.archive = target, cfg, fp32, archive
        self.started, self.on_progress, self.metric = started, on_progress, metric
        self.deadline = deadline
        self.timed_out = False
        self.hil: DeviceTarget | None = target if isinstance(target, DeviceTarget) else None
        self.key_of: dict[str, Any] = {}
        self.hash_by_key: dict[Any, str] = {}
        self.genomes: dict[str, Genome] = {}
        # the engine's records pair with the candidates it proposed (a fine-tuned one is none of them)
        for record, genome_hash in zip(archive.engine_records(target.name), archive.proposed(target.name)):
            self._remember(tuple(int(x) for x in record["genome"]), genome_hash)

    def _remember(self, key: Any, genome_hash: str, genome: Genome | None = None) -> None:
        self.key_of[genome_hash] = key
        self.hash_by_key[key] = genome_hash
        if genome is not None:
            self.genomes[genome_hash] = genome

    def genome_of(self, genome_hash: str) -> Genome:
        if genome_hash not in self.genomes:
            key = self.key_of[genome_hash]
            self.genomes[genome_hash] = Genome.from_dict(
                {"layers": layers_dict(self.space.decode(key))}, self.work.layer_ops
            )
        return self.genomes[genome_hash]

    def hash_of(self, key: Any) -> str:
        return self.hash_by_key[tuple(int(x) for x in key)]

    def objective(self, genome: Genome, values: dict[str, Value]) -> Any:
        return evaluation_of(values, self.fp32, self.cfg.objectives, self.target.budgets)[0]

    def run(self) -> None:
        engine, hil = self.engine, self.hil
        if hil is not None:
            requeued = hil.requeue_unfinished(self.genome_of, engine.generation + 1)
            if requeued:
                hil.say(f"{hil.name}: {requeued} unfinished measurements queued again")
        while not engine.done:
            batch = engine.ask()
            if not batch:
                break
            self._evaluate(batch)
            if hil is not None:
                generation = engine.generation
                hil.poll(engine, self.key_of, self.objective, generation)
                hil.revive()
                hil.refit(engine, self.key_of, self.genome_of, self.objective, prediction_values, generation)
                hil.schedule(engine, self.hash_of, self.genome_of, generation + 1)
                if hil.shares_host:  # measure this host in a quiet window, not under the evaluation load
                    hil.poll(engine, self.key_of, self.objective, generation + 1, block=True)
            self._progress()
            if self.deadline is not None and time.time() >= self.deadline and not engine.done:
                self.timed_out = True  # the front so far is the answer; --resume goes on from here
                break
        if hil is not None:
            self._finish()

    def _evaluate(self, batch: list[Any]) -> None:
        engine, target, archive = self.engine, self.target, self.archive
        genomes = [Genome.from_dict({"layers": layers_dict(self.space.decode(g))}, self.work.layer_ops) for g in batch]
        fit_n = self.hil.fit_n if self.hil is not None else 0
        # recorded one by one as each is evaluated: the front of a run is current to the candidate,
        # and a killed run loses at most what was in flight
        for g, genome, host in zip(batch, genomes, self.evaluator.evaluate_iter(genomes)):
            self._remember(tuple(g), genome.hash, genome)
            generation = engine.generation + 1
            if "error_kind" in host:
                evaluation = Evaluation.failure(host["message"])
                feasible, total, values = False, None, {}
                errors = [(host["error_kind"], host["message"])]
            else:
                values = {**host_values(host, getattr(self.work, "runtime", "onnxruntime")),
                          **prediction_values(genome, target.table, fit_n)}
                evaluation, total = evaluation_of(values, self.fp32, self.cfg.objectives, target.budgets)
                feasible, errors = total == 0.0, []
            engine.tell([g], [evaluation])
            archive.record(target.name, genome.hash, genome.to_dict(), generation, genome.emulated, feasible, total,
                           values, errors, *engine_state(engine, g))
            if self.hil is not None and not errors:
                self.hil.poll(engine, self.key_of, self.objective, generation)

    def _finish(self) -> None:
        """After the last generation: measure every front point (the front may move as they land)."""
        hil, engine = self.hil, self.engine
        assert hil is not None
        generation = engine.generation + 1
        for _ in range(hil.settings.final_rounds):
            hil.poll(engine, self.key_of, self.objective, generation, block=True)
            hil.refit(engine, self.key_of, self.genome_of, self.objective, prediction_values, generation)
            front = engine.front(feasible_only=True) or engine.front(feasible_only=False)
            picked = hil.schedule(engine, self.hash_of, self.genome_of, generation, limit=len(front))
            if not picked and not hil.inflight:
                break
        hil.poll(engine, self.key_of, self.objective, generation, block=True)
        front = engine.front(feasible_only=True) or engine.front(feasible_only=False)
        hashes = [self.hash_of(r.genome) for r in front]
        host = {c.hash: c.values["accuracy"].value for c in self.archive.candidates(hil.name) if "accuracy" in c.values}
        hil.device_accuracy(hashes, self.genome_of, host)
        self._progress()

    def _progress(self) -> None:
        engine, target = self.engine, self.target
        hv = front_hypervolume(self.archive, target.name, self.cfg.objectives, self.fp32)
        self.archive.add_history(
            target.name, engine.generation, engine.n_evaluations, hv, self.evaluator.cache.hit_rate
        )
        if not self.on_progress:
            return
        measured = len(self.archive.jobs(target.name, "done")) if self.hil is not None else None
        self.on_progress(
            Progress(
                target.name,
                engine.generation,
                self.cfg.generations,
                engine.n_evaluations,
                hv,
                self.evaluator.cache.hit_rate,
                best_values(self.archive, target.name),
                time.time() - self.started,
                measured,
                self.metric,
            )
        )
