"""The argparse set-up several command groups share: one definition per flag, so that a flag means
the same and reads the same in every command that takes it."""

from __future__ import annotations

import argparse

from harness.core.errors import InputError

MODEL_HELP = "an .onnx file or builtin:NAME"


def add_model(p: argparse.ArgumentParser, help: str = MODEL_HELP, optional: bool = False) -> None:
    p.add_argument("model", nargs="?" if optional else None, help=help)


def add_json(p: argparse.ArgumentParser, help: str = "print one JSON object on stdout") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_calib(p: argparse.ArgumentParser, help: str = "calibration data (.npz); builtins default to their shipped set"
              ) -> None:
    p.add_argument("--calib", help=help)


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="evaluation data (.npz); builtins default to their held-out set")


def add_genome(p: argparse.ArgumentParser, required: bool = False, help: str = "genome file (YAML or JSON)") -> None:
    p.add_argument("--genome", required=required, help=help)


def add_devices_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", metavar="FILE", help="devices.yaml (default $QAE_DEVICES, else ./devices.yaml)")


def add_input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D1xD2x...",
        help="shape of one inference for an input with symbolic dimensions (default: 1 for each)",
    )


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    """``--input-shape NAME=D1xD2x...`` items as {name: dims}; a malformed one is a one-line error."""
    shapes = {}
    for item in items:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise InputError(f"--input-shape {item!r} is not NAME=D1xD2x...: e.g. input_ids=1x64") from None
        if not name or any(d <= 0 for d in shapes[name]):
            raise InputError(f"--input-shape {item!r} is not NAME=D1xD2x... with positive sizes")
    return shapes
