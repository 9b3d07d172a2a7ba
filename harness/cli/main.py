"""The ``qae`` command line.

Each group of commands lives in its own module with a ``register(subparsers)`` function that adds
its sub-commands and sets ``func`` on each; this module only assembles them and turns a
``QaeError`` into one line on stderr and its exit code (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from harness import __version__
from harness.core.errors import Interrupted, QaeError
from profiles.errors import ProfileError

#: Modules whose ``register(subparsers)`` adds commands, in the order ``qae --help`` lists them.
COMMAND_MODULES = [
    "harness.cli.model",
    "harness.cli.profiles",
    "harness.cli.devices",
    "harness.cli.search",
    "harness.cli.finetune",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qae",
        description="Quantization-Aware Evolution: per-layer mixed-precision search with hardware in the loop.",
    )
    parser.add_argument("--version", action="version", version=f"qae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM behaves like Ctrl-C: every ``finally`` runs (workers stopped, archive consistent)."""
    raise Interrupted(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        code = args.func(args)
    except (QaeError, ProfileError) as exc:
        print(f"qae: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        run = exc.run if isinstance(exc, Interrupted) else None
        hint = f": continue with `qae search --resume {run}`" if run else ""
        print(f"qae: interrupted{hint}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, Interrupted) else 130
    except BrokenPipeError:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
