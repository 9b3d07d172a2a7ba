"""``qae search``: the evolution engine driven over a workload, one run per target profile.

For each target the engine (``search.Engine``) proposes genomes; qae builds and evaluates each on
the host (accuracy and exact bytes: ``computed``, cached across targets and runs), predicts its
latency, energy and memory from the target's profile (``predicted``), and tells the engine the
objective vector and the budget violations. Every told evaluation and the engine state that counts
it are written to the run archive in one transaction, so ``--resume`` continues a killed run and
reaches the same result as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.core.errors import ClusterLostError, InputError, QaeError, RunChangedError
from harness.quant.workload import Workload
from harness.run.archive import Archive
from harness.run.config import (
    BUDGET_KEYS,
    OBJECTIVES,
    SENSITIVITY_LADDER,
    SearchConfig,
    identity_changes,
    run_identity,
)
from harness.run.driver import Driver
from harness.run.evaluation import HostEvaluator, Progress, Target, open_workload, violations
from harness.run.failures import failure_summary
from harness.run.seeds import (
    choice_distance,
    gene_value,
    layer_choices,
    layer_sensitivity,
    seed_values,
)
from harness.run.shapes import SHAPE_FLAGS, Shaped, shape_sources
from harness.run.testsplit import score_test


def device_targets(
    cfg: SearchConfig, work: Workload, archive: Archive, out: Path, say: Callable[[str], None]
) -> list[Any]:
    """Group the --device devices by hardware profile; each group is one measured target."""
    from harness.devices.config import DeviceConfig, get_device
    from harness.run.hil import DeviceTarget, HilSettings
    from profiles import load_profile

    groups: dict[str, list[DeviceConfig]] = {}
    for name in cfg.devices:
        device = get_device(name, cfg.devices_file)
        profile_name = device_profile(device, cfg)
        if profile_name is None:
            raise InputError(
                f"device {name} has no profile: set `profile:` for it in devices.yaml "
                "(`qae profiles list` shows the profiles)"
            )
        groups.setdefault(profile_name, []).append(device)
    targets = []
    for profile_name, devices in groups.items():
        profile = load_profile(profile_name)
        targets.append(
            DeviceTarget(
                "+".join(d.name for d in devices),
                devices,
                profile,
                work,
                archive,
                out,
                {**profile.budgets, **cfg.budgets},
                HilSettings(**cfg.hil),
                say,
            )
        )
    return targets


def device_profile(device: Any, cfg: SearchConfig) -> str | None:
    """A device's profile for this run: its own, and for this host (``local``) the one of the run's
    runtime: ``host-cpu`` (ONNX Runtime) or ``litert-xnnpack`` (a LiteRT run, ``--runtime litert``)."""
    from harness.quant.litert_workload import wants_litert

    name = device.profile or ("host-cpu" if device.transport == "local" else None)
    if device.transport == "local" and name == "host-cpu" and wants_litert(cfg.model, cfg.runtime):
        return "litert-xnnpack"
    return name


def device_profiles(cfg: SearchConfig) -> list[str]:
    """The profile of each --device (a run's identity includes them: they seed the cost model)."""
    from harness.devices.config import get_device

    names = []
    for name in cfg.devices:
        device = get_device(name, cfg.devices_file)
        profile = device_profile(device, cfg)
        if profile is not None:
            names.append(profile)
    return names


def set_aside(path: Path) -> Path:
    """Move an archive (and its WAL files) to archive-N.sqlite beside it; returns the new path."""
    n = 1
    while (path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    dest = path.with_name(f"{path.stem}-{n}{path.suffix}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(str(dest) + suffix)
    return dest


#: the sensitivity probes may take at most this share of a --time-limit
PROBE_SHARE = 1 / 3
#: a probe (build + score) against one FP32 scoring of the validation split, from runs here
PROBE_COST = 1.5


def probes_too_dear(cfg: SearchConfig, n_layers: int, one_eval: float, say: Callable[[str], None]) -> bool:
    """Whether the one-per-layer sensitivity probes would cost more than a bounded share of the run:
    more than ``search.PROBE_BUDGET_SHARE`` of its evaluations (population x generations), or more
    than ``PROBE_SHARE`` of the time limit (estimated from one FP32 scoring, ``one_eval`` seconds).
    Says so when they are skipped."""
    from search import PROBE_BUDGET_SHARE, probes_affordable

    if cfg.generations is not None and not probes_affordable(n_layers, cfg.population * cfg.generations):
        say(f"sensitivity probes skipped: {n_layers} of them would be more than {PROBE_BUDGET_SHARE:.0%} of the "
            f"{cfg.population * cfg.generations} evaluations (--population x --generations); the first generation "
            "holds the uniform and kernel seeds instead")
        return True
    if cfg.time_limit is None:
        return False
    cost = n_layers * PROBE_COST * one_eval
    if cost <= PROBE_SHARE * cfg.time_limit:
        return False
    say(f"sensitivity probes skipped: {n_layers} of them would take about {cost:.0f} s, more than a third of "
        f"--time-limit {cfg.time_limit:g} s; the first generation holds the uniform and kernel seeds instead")
    return True


def run_search(
    cfg: SearchConfig,
    out: Path,
    resume: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    say: Callable[[str], None] = print,
    force: bool = False,
    on_cluster: Callable[[Any], None] | None = None,
) -> Archive:
    """Run (or resume) the search for every target profile and device group; returns the archive.

    A resume first compares the run's identity (content hashes of model, data and profiles) with the
    files found now: a change refuses (``RunChangedError``), or with ``force`` moves the old archive
    aside and starts a new search in the same folder, so results of two models never mix.

    With ``cfg.cluster`` the host evaluations run on a Dask cluster (``harness.run.cluster``);
    ``on_cluster`` then gets its ``ClusterStatus`` (workers, tasks in flight) as tasks come back."""
    from search import Engine, EngineConfig, Record, SearchError, SearchSpace

    deadline = None if cfg.time_limit is None else time.time() + cfg.time_limit
    for name in cfg.objectives:
        if name not in OBJECTIVES:
            raise InputError(f"unknown objective {name!r}: use any of {', '.join(OBJECTIVES)}")
    if "accuracy" not in cfg.objectives:
        raise InputError("the objectives must include accuracy: qae trades accuracy against cost")
    work = open_workload(cfg)
    if work.eval_data is None:
        raise InputError("--data is required for a model that is not a builtin: give an evaluation .npz")
    work.model.require_shapes(SHAPE_FLAGS)  # the cost model needs every layer's MACs at real shapes
    targets: list[Any] = [Target.open(name, work, cfg.budgets) for name in cfg.profiles]
    identity = run_identity(cfg, work, [*cfg.profiles, *device_profiles(cfg)])
    # Everything the stored config derives is computed before the archive exists: an input error
    # found here (e.g. labels the model cannot score) leaves no half-made archive behind.
    fresh = {**cfg.to_dict(), "model_sha256": work.model.sha256, "layers": work.model.layer_names,
             "shapes_used": work.model.shapes_used, "metric_note": work.metric_note, "identity": identity,
             "splits": work.splits}
    archive = Archive(out / "archive.sqlite")
    if resume:
        stored = archive.config()
        # Archives written before identities were stored know only the model's hash.
        old = stored.get("identity") or {"model": {"path": stored["model"], "sha256": stored.get("model_sha256", "")}}
        # The test split is not the search's input (it never sees it): a changed test file is re-scored.
        current = {k: v for k, v in identity.items() if (k in old or "identity" in stored) and k != "test"}
        changes = identity_changes({k: v for k, v in old.items() if k != "test"}, current)
        if changes and not force:
            archive.close()
            more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
            raise RunChangedError(
                f"cannot resume {out}: {changes[0]}{more} since the run started; restore the original files, or "
                f"add --force to keep the old archive aside and start a new search in {out} (never mixed)"
            )
        if changes:
            archive.close()
            aside = set_aside(out / "archive.sqlite")
            say(f"--force: {changes[0]}; the old archive is kept as {aside}, a new search starts in {out}")
            archive = Archive(out / "archive.sqlite")
            resume = False
        else:
            archive.update_config({**stored, **cfg.to_dict(), "identity": identity, "splits": work.splits})
    if not resume:
        archive.start(fresh)
    fixed = {i.name for i in work.model.inputs if i.rank_known and None not in i.shape}
    sources = shape_sources(work.model, cfg.input_shapes, set(work.model.shapes_used) - fixed)
    for line in Shaped(work.model, sources, cfg.calib).lines():
        say(line)
    for note in work.model.notes:
        say(f"note: {note}")
    if work.metric_note:
        say(work.metric_note)
    targets += device_targets(cfg, work, archive, out, say)
    evaluator: HostEvaluator | None = None
    try:
        runner = None
        if cfg.cluster:
            from harness.run.cluster import ClusterRunner

            runner = ClusterRunner(cfg.cluster, work, on_cluster)
            say(f"cluster {cfg.cluster}: scheduler {runner.address}, {runner.workers_at_start} workers")
        evaluator = HostEvaluator(work, cfg, runner)
        clock = time.perf_counter()
        reference = work.evaluate(None)
        one_eval = time.perf_counter() - clock
        fp32 = reference.accuracy
        names = [layer.name for layer in work.model.layers]
        probes = cfg.sensitivity_probes and not probes_too_dear(cfg, len(names), one_eval, say)
        sensitivity = None
        if probes:
            say(f"sensitivity probes: {len(names)} evaluations, one layer at a time at w4a8")
            sensitivity = layer_sensitivity(work, evaluator, cfg)
            # kept with the run (not the engine state: a resume probes again) so its report can show them
            archive.update_config({**archive.config(), "sensitivity": dict(zip(names, sensitivity))})
        started = time.time()
        for target in targets:
            # Each target's menu: the QDQ genes, plus the block-quantized kernels its profile runs.
            choices = layer_choices(work, cfg, getattr(target, "profile", None))
            space = SearchSpace(names, [[gene_value(g) for g in genes] for genes in choices],
                                distance=choice_distance)
            baselines = seed_values(work, cfg, choices, sensitivity)
            engine_cfg = EngineConfig(
                n_objectives=len(cfg.objectives),
                n_constraints=len(violations({k: 0.0 for k in BUDGET_KEYS}, target.budgets)),
                objective_names=tuple(cfg.objectives),
                pop_size=cfg.population,
                max_generations=cfg.generations,
                seed=cfg.seed,
                baselines=tuple(baselines),
                sensitivity=None if sensitivity is None else tuple(sensitivity),
                sensitivity_ladder=tuple((*v, cfg.scheme, cfg.granularity) for v in SENSITIVITY_LADDER),
            )
            state = archive.engine_state(target.name)
            try:
                if state:
                    records = [Record.from_dict(r) for r in archive.engine_records(target.name)]
                    engine = Engine.from_state(space, engine_cfg, state, records=records)
                else:
                    engine = Engine(space, engine_cfg)
            except SearchError as exc:
                raise InputError(f"cannot resume the run in {out} ({exc}): start a new run with --out") from None
            driver = Driver(engine, space, work, evaluator, target, cfg, fp32, archive, started, on_progress,
                            reference.metric, deadline)
            driver.run()
            if driver.timed_out:
                say(f"{target.name}: --time-limit {cfg.time_limit:g} s reached after generation {engine.generation} "
                    f"({engine.n_evaluations} evaluations): `qae search --resume {out}` continues the search")
            summary = failure_summary(archive, target.name)
            if summary.failed:
                say(summary.line())
            if hasattr(target, "requeue_unfinished"):
                queued = len(archive.jobs(target.name, "queued"))
                if queued:
                    say(f"{target.name}: {queued} measurements still queued (no device took them): "
                        f"`qae search --resume {out}` measures them")
        # Only now, with every target's front final, is the test split read: once, for the front
        # points, the uniform baselines and FP32 (the engine never saw a test score).
        if work.test_data is not None:
            score_test(work, archive, cfg, reference, say)
        else:
            say("note: no test split (give --test TEST.npz or --holdout FRACTION): the front's accuracy is its "
                "validation score, chosen on the same samples, so it reads optimistic")
        archive.set_status("finished")
    except BaseException as exc:
        if evaluator is not None:
            evaluator.close(abort=True)  # Ctrl-C, SIGTERM, a crash: workers go now, not after their tasks
        empty = isinstance(exc, QaeError) and not resume and not any(archive.count(t.name) for t in targets)
        if empty:
            # An input error before the first evaluation: a run with nothing in it is not kept, so
            # the same command can simply be run again once the input is fixed.
            archive.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(out / "archive.sqlite") + suffix).unlink(missing_ok=True)
        if isinstance(exc, ClusterLostError):  # every recorded candidate is kept: say how to go on
            then = "then run the same command again" if empty else f"then `qae search --resume {out}` continues"
            raise ClusterLostError(f"{exc}; {then}") from None
        raise
    else:
        evaluator.close()
    finally:
        for target in targets:
            if hasattr(target, "close"):
                target.close()
    return archive


