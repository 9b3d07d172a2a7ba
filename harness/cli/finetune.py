"""``qae finetune``: quantization-aware fine-tuning of chosen candidates of a run (``harness.run.finetune``),
and the settings ``qae search --finetune-front K`` shares with it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.core.errors import InputError


def register(sub: Any) -> None:
    p = sub.add_parser("finetune", help="quantization-aware fine-tuning of front points: new candidates in the run")
    p.add_argument("run", help="a run folder written by qae search")
    pick = p.add_mutually_exclusive_group(required=True)
    pick.add_argument("--pick", action="append", metavar="HASH",
                      help="fine-tune this candidate (a genome hash or unique prefix; repeatable)")
    pick.add_argument("--front", type=int, metavar="K",
                      help="fine-tune the K smallest front points within --max-loss of FP32 (first target)")
    pick.add_argument("--genome", action="append", metavar="FILE",
                      help="fine-tune this genome (YAML/JSON; repeatable): it enters the run first, built and scored "
                      "like a search candidate, so the report shows the fine-tune's gain over it")
    add_settings(p)
    p.add_argument("--torch", metavar="module:function",
                   help="a function returning the torch nn.Module the ONNX model was exported from, weights loaded "
                   "(builtin:digits-vit brings its own)")
    p.add_argument("--train", metavar="DATA.npz",
                   help="training data: the model's inputs and, optionally, labels (without: distillation from the "
                   "FP32 outputs); builtin:digits-vit uses its training split. Never the validation or test data")
    p.set_defaults(func=cmd_finetune)


def add_settings(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The fine-tune's settings (``harness.quant.finetune.FinetuneConfig``)."""
    p.add_argument(f"--{prefix}steps", type=int, default=300, help="training steps (default %(default)s)")
    p.add_argument(f"--{prefix}lr", type=float, default=3e-4,
                   help="peak learning rate, cosine to 0 (default %(default)s)")
    p.add_argument(f"--{prefix}batch-size", type=int, default=64, help="samples a step (default %(default)s)")
    p.add_argument(f"--{prefix}seed", type=int, default=0, help="batch order and initialisation (default %(default)s)")
    p.add_argument(f"--{prefix}lsq", action="store_true", help="learn the step sizes too (LSQ)")
    p.add_argument(f"--{prefix}checkpoint-every", type=int, default=50, metavar="N",
                   help="checkpoint every N steps; a killed fine-tune continues from the last (default %(default)s)")
    p.add_argument(f"--{prefix}eval-every", type=int, default=50, metavar="N",
                   help="score on validation every N steps; the best state is kept (default %(default)s)")
    p.add_argument(f"--{prefix}distill-modules", default="", metavar="A,B",
                   help="distillation (no labels): also learn these torch submodules' outputs from the FP32 model, "
                   "comma-separated (e.g. encoder.layer.0,encoder.layer.1)")
    p.add_argument(f"--{prefix}cosine-loss", action="store_true",
                   help="distillation: add 1 - cosine of the mean-pooled outputs (the embedding metric's own)")
    p.add_argument(f"--{prefix}select-on", default="accuracy", choices=("accuracy", "mean_cosine"),
                   help="the validation score that chooses the fine-tune's state (default: the workload's metric)")
    p.add_argument(f"--{prefix}max-loss", type=float, default=0.05,
                   help="with --front: parents within this validation accuracy of FP32 (default %(default)s)")


def settings_of(args: argparse.Namespace, prefix: str = "") -> Any:
    from harness.quant.finetune import FinetuneConfig

    key = prefix.replace("-", "_")
    cfg = FinetuneConfig(
        steps=getattr(args, f"{key}steps"), batch_size=getattr(args, f"{key}batch_size"), lr=getattr(args, f"{key}lr"),
        seed=getattr(args, f"{key}seed"), lsq=getattr(args, f"{key}lsq"),
        checkpoint_every=getattr(args, f"{key}checkpoint_every"), eval_every=getattr(args, f"{key}eval_every"),
        distill_modules=tuple(m.strip() for m in getattr(args, f"{key}distill_modules").split(",") if m.strip()),
        cosine_loss=getattr(args, f"{key}cosine_loss"), select=getattr(args, f"{key}select_on"),
    )
    cfg.check()
    return cfg


def cmd_finetune(args: argparse.Namespace) -> int:
    from harness.quant.finetune import require_torch
    from harness.run.finetune import Request

    require_torch()
    run = Path(args.run).resolve()
    if not (run / "archive.sqlite").is_file():
        raise InputError(f"no archive at {run / 'archive.sqlite'}: give a run folder that `qae search` wrote")
    request = Request(picks=tuple(args.pick or ()), front=args.front, max_loss=args.max_loss, torch=args.torch,
                      train=args.train, genomes=tuple(args.genome or ()))
    from harness.run.lock import RunLock

    with RunLock(run):  # no search or other fine-tune writes the run meanwhile
        finetune_with_progress(run, request, settings_of(args))
    from harness.report.html import build_report

    print(build_report(run))
    return 0


def finetune_with_progress(run: Path, request: Any, settings: Any) -> list[dict[str, Any]]:
    """``harness.run.finetune.finetune_run`` under a progress bar (loss and ETA per parent)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from harness.run.finetune import finetune_run

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]fine-tune {task.fields[parent]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=not console.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        def on_step(parent: str, step: int, steps: int, loss: float) -> None:
            if parent not in tasks:
                tasks[parent] = bar.add_task("", total=steps, parent=parent[:12], loss="-", completed=step - 1)
            bar.update(tasks[parent], completed=step, loss=f"{loss:.4f}")

        say: Callable[[str], None] = lambda m: bar.console.print(m, markup=False, soft_wrap=True)  # noqa: E731
        return finetune_run(run, request, settings, say=say, on_step=on_step)
