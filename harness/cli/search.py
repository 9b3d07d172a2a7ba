"""``qae search``, ``qae report``, ``qae export`` and ``qae demo``: the search and what comes out of it."""

from __future__ import annotations

import argparse
import errno
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.cli.common import (
    add_calib,
    add_data,
    add_data_options,
    add_devices_file,
    add_input_shape,
    add_model,
    add_runtime,
    add_splits,
    data_options,
    loads_or_removed,
    model_spec,
    parse_shapes,
)
from harness.cli.finetune import add_settings, finetune_with_progress, settings_of
from harness.core.errors import InputError, SearchFailedError

DEMO_PROFILES = ["arm-neon-a76", "hexagon-htp", "apple-ane"]
#: OS errors of writing the run folder (disk full, file size limit, quota, I/O, read-only): one line.
WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS)


def register(sub: Any) -> None:
    p = sub.add_parser("search", help="evolve per-layer precision: a Pareto front per target profile")
    add_model(p, "an .onnx or .tflite file or builtin:NAME (omit with --resume or --torch)", optional=True)
    add_runtime(p)
    p.add_argument("--profile", action="append", default=[], help="target profile (repeat for several)")
    add_calib(p)
    add_data(p)
    add_splits(p)
    add_input_shape(p)
    add_data_options(p)
    p.add_argument(
        "--objectives",
        default="accuracy,size,latency",
        help="comma-separated subset of accuracy,size,latency,energy,memory (default %(default)s)",
    )
    p.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="latency=MS, energy=MJ, memory=MB, size=KB, accuracy=LOSS (in the metric's unit: a fraction, "
        "or dB for sqnr); overrides the profile's",
    )
    _common(p)
    _devices(p)
    p.add_argument("--emulated", action="store_true", help="also search emulated widths (2, 3, 6 bits)")
    p.add_argument("--sensitivity-probes", action="store_true",
                   help="before the search, evaluate one probe per layer (that layer alone at w4a8) and seed "
                   "sensitivity-guided and fallback genomes from it; skipped when the probes would be more than 15%% "
                   "of the evaluations or a third of --time-limit (default: off, the search learns per-layer "
                   "effects from its own evaluations)")
    p.add_argument("--rounding", choices=("rtn", "mse", "hqq", "gptq"), default="rtn",
                   help="how the block kernels' weights under 8 bits are rounded (MatMulNBits, GatherBlockQuantized, "
                   "offered where the target's profile runs them): round to nearest, an MSE clipping search, HQQ, "
                   "or GPTQ on the calibration data (default %(default)s)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop starting generations after this many seconds; the front so far is the result, and "
                   "--resume RUN goes on (with --resume: a new limit for the resumed part)")
    p.add_argument("--resume", metavar="RUN", help="continue a killed run from its folder (--devices may be given "
                   "again: it replaces the stored devices file)")
    p.add_argument("--force", action="store_true",
                   help="with --resume: if the model, data or a profile changed since the run started, keep the "
                   "old archive aside (archive-N.sqlite) and start a new search in the same folder")
    p.add_argument("--finetune-front", type=int, metavar="K",
                   help="after the search, fine-tune the K smallest front points within --finetune-max-loss of FP32 "
                   "(quantization-aware training, needs qae[train]; see `qae finetune`)")
    add_settings(p, prefix="finetune-")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("report", help="rebuild report.html, the PNGs and front.json of a run")
    p.add_argument("run", help="a run folder written by qae search")
    p.add_argument("--weights", default=None, help="recommendation weights, e.g. accuracy=2,size=1,latency=1")
    p.add_argument("--format", choices=("html", "md"), default="html",
                   help="html: report.html (interactive, one file that opens offline), the PNGs and front.json; "
                   "md: report.md, a Markdown summary for CI logs, also printed (default %(default)s)")
    p.add_argument("--serve", action="store_true",
                   help="serve the live report on 127.0.0.1 (a free port, printed) and refresh it as the archive "
                   "grows, e.g. while the search runs; until interrupted. Writes nothing to the run folder")
    p.add_argument("--port", type=int, default=0, help="with --serve: the port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="write a front point's genome, ORT overrides and quantized model")
    p.add_argument("run", help="a run folder written by qae search")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--pick", metavar="ID", help="candidate id (genome hash, or a unique prefix)")
    pick.add_argument("--best", action="store_true", help="the recommended point (default)")
    p.add_argument("--target", help="target profile of the front (default: the first)")
    p.add_argument("-o", "--output", help="output folder (default RUN/export-ID)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the embedded default end to end: builtin:digits-vit on three NPU/CPU profiles")
    p.add_argument("--out", help="run folder (default results/digits-vit-TIMESTAMP)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-device", action="store_true", help="skip measuring on this machine (local device)")
    p.set_defaults(func=cmd_demo)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generations", type=int, default=12)
    p.add_argument("--population", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="evaluation worker processes")
    p.add_argument("--cluster", metavar="local:N|ADDRESS",
                   help="build and score candidates as tasks of a Dask cluster: local:N starts N worker processes "
                   "here, ADDRESS (tcp://HOST:8786) is a running scheduler; needs the extra qae[cluster] (with "
                   "--resume: replaces the stored cluster)")
    p.add_argument("--out", help="run folder (default results/MODEL-TIMESTAMP)")


def _devices(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", action="append", default=[], metavar="NAME",
                   help="measure on this device during the search (repeat; devices of one profile form a pool)")
    add_devices_file(p)
    p.add_argument("--measure-per-gen", type=int, default=3, metavar="K",
                   help="measurements per generation and device group (default %(default)s)")
    p.add_argument("--measure-runs", type=int, default=20, help="timed runs per measurement (default %(default)s)")
    p.add_argument("--measure-seconds", type=float, default=0.3,
                   help="minimum timed seconds per measurement (default %(default)s)")
    p.add_argument("--measure-repeat", type=int, default=1, metavar="N",
                   help="measure each candidate N times, each a fresh process; the archive keeps every repeat and "
                   "the latency is the median of their p50s, with their spread (default %(default)s)")


def _hil(args: argparse.Namespace) -> dict[str, Any]:
    if args.measure_per_gen < 0 or args.measure_runs < 1 or args.measure_seconds < 0 or args.measure_repeat < 1:
        raise InputError("--measure-per-gen must be >= 0, --measure-runs >= 1, --measure-seconds >= 0 and "
                         "--measure-repeat >= 1")
    return {"per_generation": args.measure_per_gen, "runs": args.measure_runs, "min_seconds": args.measure_seconds,
            "repeats": args.measure_repeat}


def _weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, _, raw = item.partition("=")
        try:
            out[name.strip()] = float(raw)
        except ValueError:
            raise InputError(f"--weights {text!r} is not NAME=NUMBER,...: e.g. accuracy=2,size=1") from None
    return out


def _time_limit(args: argparse.Namespace) -> float | None:
    limit = args.time_limit
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        raise InputError(f"--time-limit {limit:g} is not a positive number of seconds: e.g. --time-limit 600")
    return limit  # type: ignore[no-any-return]


def _finetune_request(args: argparse.Namespace) -> tuple[Any, Any] | None:
    """``--finetune-front K``: checked (torch there, settings sane) before any search work."""
    if args.finetune_front is None:
        return None
    from harness.quant.finetune import require_torch
    from harness.run.finetune import Request

    require_torch()
    if args.finetune_front < 1:
        raise InputError(f"--finetune-front {args.finetune_front} is not a positive number of points: e.g. 3")
    return Request(front=args.finetune_front, max_loss=args.finetune_max_loss), settings_of(args, "finetune-")


def cmd_search(args: argparse.Namespace) -> int:
    from harness.run.config import SearchConfig, absolute_paths, default_out, parse_budgets

    finetune = _finetune_request(args)

    if args.resume:
        out = Path(args.resume).resolve()
        with _locked(out):
            from harness.run.archive import Archive

            archive = Archive.open_existing(out / "archive.sqlite", readonly=True)
            cfg = SearchConfig.from_dict(archive.config())
            archive.close()
            if args.devices:  # a --devices given again replaces the stored one (the run moved, or the file did)
                cfg.devices_file = args.devices
            if args.cluster:  # so does a --cluster (the cluster moved; its results are the same anywhere)
                cfg.cluster = _cluster(args)
            elif cfg.cluster:
                _cluster_installed(cfg.cluster)
            cfg.time_limit = _time_limit(args)  # a limit is for this process's part, never inherited
            return _run(absolute_paths(cfg), out, resume=True, force=args.force, finetune=finetune)
    if args.force:
        raise InputError("--force goes with --resume RUN: it starts a new search there when the inputs changed")
    if args.holdout is not None and not 0.0 < args.holdout < 1.0:
        raise InputError(f"--holdout {args.holdout} is not a fraction between 0 and 1: e.g. --holdout 0.3")
    if (args.test or args.holdout is not None) and not args.data and not str(args.model or "").startswith("builtin:"):
        raise InputError("--test and --holdout go with --data VALIDATION.npz: give the data the search scores")
    args.model = model_spec(args)
    if not args.model:
        raise InputError("give a MODEL (an .onnx or .tflite file, or builtin:NAME), or --resume RUN")
    if not args.profile and not args.device:
        raise InputError("give at least one --profile (see `qae profiles list`) or --device")
    if args.generations < 1 or args.population < 2 or args.workers < 1:
        raise InputError("--generations must be >= 1, --population >= 2 and --workers >= 1")
    cluster = _cluster(args)
    cfg = SearchConfig(
        model=args.model,
        profiles=list(args.profile),
        calib=args.calib,
        data=args.data,
        objectives=[o.strip() for o in args.objectives.split(",") if o.strip()],
        budgets=parse_budgets(args.budget),
        generations=args.generations,
        population=args.population,
        seed=args.seed,
        workers=args.workers,
        emulated=args.emulated,
        sensitivity_probes=args.sensitivity_probes,
        devices=list(args.device),
        devices_file=args.devices,
        hil=_hil(args),
        input_shapes=parse_shapes(args.input_shape),
        data_options=data_options(args).to_dict(),
        test=args.test,
        holdout=args.holdout,
        rounding=args.rounding,
        time_limit=_time_limit(args),
        cluster=cluster,
        runtime=args.runtime,
    )
    out = (Path(args.out) if args.out else default_out(args.model)).resolve()
    with _locked(out):
        if (out / "archive.sqlite").exists():
            raise InputError(f"{out} already holds a run: use --resume {out}, or another --out")
        return _run(absolute_paths(cfg), out, resume=False, finetune=finetune)


def _line(evals: Any = 0, hv: str = "-", best: str = "-", hit: str = "-") -> str:
    """A target's progress line after its bar."""
    return f"gen | {evals} evals | HV {hv} | best {best} | cache {hit}"


def _cluster(args: argparse.Namespace) -> str | None:
    """``--cluster``, checked (its form, and the extra installed) before any work."""
    if not args.cluster:
        return None
    if args.workers > 1:
        raise InputError("give either --workers N (processes here) or --cluster (a Dask cluster's workers), not both")
    return _cluster_installed(args.cluster)


def _cluster_installed(spec: str) -> str:
    from harness.run.cluster import check_spec

    return check_spec(spec)


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold the run folder's lock for the run's life; an interrupt or OS error names the resume command."""
    from harness.core.errors import ArchiveWriteError, Interrupted
    from harness.run.lock import RunLock

    with RunLock(out):
        try:
            yield
        except KeyboardInterrupt as exc:
            code = exc.exit_code if isinstance(exc, Interrupted) else 130
            raise Interrupted(code, str(out)) from None
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            started = (out / "archive.sqlite").is_file() and (out / "archive.sqlite").stat().st_size > 0
            then = f"continue with `qae search --resume {out}`" if started else "run the same command again"
            raise ArchiveWriteError(
                f"cannot write {exc.filename or out} ({exc.strerror or exc}): free disk space (or raise the file "
                f"size limit) there, then {then}"
            ) from None


def _run(cfg: Any, out: Path, resume: bool, force: bool = False, finetune: tuple[Any, Any] | None = None) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from harness.core.model import load_model
    from harness.devices.config import get_device

    # An unknown or broken model fails here, before any work; so does one whose shapes nothing gives.
    from harness.quant.litert_workload import load_lite_model, wants_litert
    from harness.report.html import build_report
    from harness.report.labels import Accuracy
    from harness.run.evaluation import Progress as Step
    from harness.run.search import run_search
    from harness.run.shapes import SHAPE_FLAGS
    from profiles import load_profile

    if wants_litert(cfg.model, cfg.runtime):
        model: Any = load_lite_model(cfg.model, cfg.input_shapes or None, cfg.calib)
    else:
        model = load_model(cfg.model, cfg.input_shapes or None)
    if not (cfg.calib or cfg.data or model.builtin):  # a builtin's shipped data gives its shapes
        model.require_shapes(SHAPE_FLAGS)
    for name in cfg.devices:
        get_device(name, cfg.devices_file)  # so does an unknown device
    for name in cfg.profiles:
        load_profile(name)  # so does an unknown profile
    from harness.run.config import OBJECTIVES

    for name in cfg.objectives:
        if name not in OBJECTIVES:
            raise InputError(f"unknown objective {name!r}: use any of {', '.join(OBJECTIVES)}")
    if cfg.cluster:
        import logging

        # qae reports the cluster itself (its progress line, one-line errors); Dask's client logs (reconnect
        # attempts, tracebacks of comms closed by a dying worker) would break that
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
    console = Console(stderr=True)
    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("[bold]{task.fields[target]:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[line]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,
    ) as bar:
        for name in cfg.profiles:
            tasks[name] = bar.add_task("", total=cfg.generations, target=name, line=_line())
        cluster_task = None
        if cfg.cluster:  # one more line: the cluster's workers and the tasks in flight, as they change
            cluster_task = bar.add_task("", total=None, target="cluster", line=f"{cfg.cluster}: connecting")

        def on_cluster(status: Any) -> None:
            if cluster_task is not None:
                bar.update(cluster_task, line=status.line())

        def task_for(target: str) -> Any:
            if target not in tasks:
                tasks[target] = bar.add_task("", total=cfg.generations, target=target, line=_line())
            return tasks[target]

        def on_progress(step: Step) -> None:
            task = task_for(step.target)
            best = (
                (
                    f"{Accuracy(step.metric or 'top1').short(step.best.get('accuracy', 0))} / "
                    f"{step.best.get('size', 0) / 1e3:.1f}KB / {step.best.get('latency', 0):.3f}ms"
                )
                if step.best
                else "-"
            )
            evals = step.evaluations if step.measured is None else f"{step.evaluations} ({step.measured} measured)"
            bar.update(task, completed=step.generation,
                       line=_line(evals, f"{step.hypervolume:.3f}", best, f"{step.hit_rate * 100:.0f}%"))

        archive = run_search(cfg, out, resume=resume, on_progress=on_progress,
                             say=lambda m: bar.console.print(m, markup=False, soft_wrap=True), force=force,
                             on_cluster=on_cluster)
    archive.close()
    if finetune is not None:  # the front is final: fine-tune its chosen points, then score and report them
        finetune_with_progress(out, *finetune)
    report = build_report(out)
    failed = _summary(console, out)
    console.print(f"report: {report}")
    if failed:
        # Written and reported first, so nothing is lost; the exit code says the front is not to be trusted.
        raise SearchFailedError("; ".join(s.line() for s in failed) + f" (see {report})")
    return 0


def _summary(console: Any, out: Path) -> list[Any]:
    """Print each target's front and failures; returns the targets where most candidates failed."""
    from harness.report.scores import recommended_line
    from harness.run.archive import Archive
    from harness.run.failures import failure_summaries

    data = json.loads((out / "front.json").read_text())
    fronts = data["targets"]
    archive = Archive.open_existing(out / "archive.sqlite", readonly=True)
    try:
        summaries = {s.target: s for s in failure_summaries(archive)}
    finally:
        archive.close()
    for target, front in fronts.items():
        note = "" if front["feasible"] or not front["points"] else " (no candidate met the budgets; closest kept)"
        s = summaries.get(target)
        failed = f" ({s.failed} of {s.candidates} candidates failed)" if s and s.failed else ""
        console.print(f"{target}: {len(front['points'])} points on the front{failed}{note}", markup=False)
        if front["recommended"]:  # chosen on validation, reported on test
            console.print(recommended_line(target, front, out, data.get("splits")), markup=False, soft_wrap=True)
    for s in summaries.values():
        if s.failed:
            console.print(s.line(), markup=False, soft_wrap=True)
    return [s for s in summaries.values() if s.mostly_failed]


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report.html import build_report
    from harness.report.scores import recommended_line

    run, weights = Path(args.run), _weights(args.weights)
    port = getattr(args, "port", 0)
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port: give 1-65535, or 0 for a free one")
    if port and not getattr(args, "serve", False):
        raise InputError("--port goes with --serve: a report opens no port unless asked to serve")
    if getattr(args, "serve", False):
        from harness.report.serve import serve

        if getattr(args, "format", "html") != "html":
            raise InputError("--serve serves the HTML report: leave out --format md")
        serve(run, weights, port, say=lambda m: print(m, flush=True))
        return 0
    if getattr(args, "format", "html") == "md":
        from harness.report.markdown import write_markdown

        _path, text = write_markdown(run, weights)
        print(text, end="")
        return 0
    path = build_report(run, weights)
    print(path)
    # the recommended point of each target: chosen on validation, reported on test with its interval
    data = json.loads((Path(args.run) / "front.json").read_text())
    for target, front in data["targets"].items():
        print(recommended_line(target, front, Path(args.run), data.get("splits")))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.core.atomic import atomic_write_text
    from harness.quant.quantize import model_suffix, save_model
    from harness.report.html import build_report
    from harness.run.config import SearchConfig
    from harness.run.evaluation import open_workload

    run = Path(args.run)
    build_report(run)
    fronts = json.loads((run / "front.json").read_text())["targets"]
    if not fronts:
        raise InputError(f"{run} has no evaluated candidate to export")
    target = args.target or next(iter(fronts))
    if target not in fronts:
        raise InputError(f"--target {target!r} is not in this run: use one of {', '.join(fronts)}")
    points = fronts[target]["points"]
    if args.pick:
        chosen = [p for p in points if p["id"].startswith(args.pick)]
        if len(chosen) != 1:
            raise InputError(
                f"--pick {args.pick!r} matches {len(chosen)} front points: give a longer id from front.json"
            )
        point = chosen[0]
    else:
        point = next((p for p in points if p["id"] == fronts[target]["recommended"]), None)
        if point is None:
            raise InputError(f"{run} has no front point on {target} to export")
    from harness.run.archive import Archive

    archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
    cfg = archive.config()
    archive.close()
    work = open_workload(SearchConfig.from_dict(cfg))
    genome = work.genome(point["genome"])
    tuned = point.get("finetuned")
    if tuned:  # a fine-tuned point: its own trained weights and learned scales (harness.quant.tuned)
        from harness.quant.tuned import build_tuned

        result = build_tuned(work, run / tuned["model"], genome, tuned.get("model_sha256"))
    else:
        result = work.build(genome)
    dest = Path(args.output) if args.output else run / f"export-{point['id'][:12]}"
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "genome.yaml", genome.to_yaml())
    recipe = getattr(result, "recipe", None)
    if recipe is not None:  # LiteRT: the ai-edge-quantizer recipe that built it, reusable as it is
        atomic_write_text(dest / "recipe.json", json.dumps(recipe, indent=1))
    else:
        atomic_write_text(dest / "overrides.json", json.dumps({"TensorQuantOverrides": result.overrides}, indent=1))
    written = save_model(result, dest / f"model{model_suffix(result)}")
    if recipe is None:  # an ONNX model: ONNX Runtime loads it as a user's session would, or it is not left there
        loads_or_removed(written)
    # objectives as the search saw them (accuracy on validation), and the point's test score beside them
    atomic_write_text(dest / "objectives.json", json.dumps({**point["objectives"], "test": point.get("test")},
                                                           indent=1))
    if not fronts[target].get("feasible", True):
        print(f"qae: warning: no candidate of {target} met the run's budgets: {point['id'][:12]} is among the closest, "
              "not within them", file=sys.stderr)
    print(dest)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from harness.run.config import SearchConfig, default_out

    cfg = SearchConfig(
        model="builtin:digits-vit",
        profiles=list(DEMO_PROFILES),
        generations=args.generations,
        population=args.population,
        seed=args.seed,
        workers=args.workers,
        devices=[] if args.no_device else ["local"],
        hil={"per_generation": 3, "runs": 20, "min_seconds": 0.3},
    )
    out = (Path(args.out) if args.out else default_out("builtin:digits-vit")).resolve()
    with _locked(out):
        if (out / "archive.sqlite").exists():
            raise InputError(f"{out} already holds a run: give another --out")
        return _run(cfg, out, resume=False)
