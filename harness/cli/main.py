"""The ``qae`` command line.

Each group of commands lives in its own module with a ``register(subparsers)`` function that adds
its sub-commands and sets ``func`` on each; this module only assembles them and turns a
``QaeError`` into one line on stderr and its exit code (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harness import __version__
from harness.core.errors import QaeError
from profiles.errors import ProfileError

#: Modules whose ``register(subparsers)`` adds commands, in the order ``qae --help`` lists them.
COMMAND_MODULES = [
    "harness.cli.model",
    "harness.cli.profiles",
    "harness.cli.devices",
    "harness.cli.search",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except (QaeError, ProfileError) as exc:
        print(f"qae: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qae: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
