"""The argparse set-up several command groups share: one definition per flag, so that a flag means
the same and reads the same in every command that takes it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.core.errors import InputError

if TYPE_CHECKING:  # imported when used: numpy and onnx stay out of `qae --help`
    from harness.core.model import ModelInfo
    from harness.quant.data import DataOptions

MODEL_HELP = "an .onnx or .tflite file, or builtin:NAME (omit with --torch)"


def add_model(p: argparse.ArgumentParser, help: str = MODEL_HELP, optional: bool = False) -> None:
    p.add_argument("model", nargs="?" if optional else None, help=help)


def add_json(p: argparse.ArgumentParser, help: str = "print one JSON object on stdout") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_calib(p: argparse.ArgumentParser, help: str = "calibration data (.npz); builtins default to their shipped set"
              ) -> None:
    p.add_argument("--calib", help=help)


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="evaluation data (.npz); builtins default to their held-out set")


def add_splits(p: argparse.ArgumentParser) -> None:
    """``--test`` / ``--holdout``: the test split a search reports on (it optimises on ``--data``)."""
    split = p.add_mutually_exclusive_group()
    split.add_argument("--test", metavar="TEST.npz",
                       help="test data: the front is re-scored on it once after the search, with 95 %% intervals "
                       "(the search itself only sees --data, the validation split); builtins ship their own")
    split.add_argument("--holdout", type=float, metavar="FRACTION",
                       help="split --data once (fixed seed, stratified by label) into validation and this fraction "
                       "for test; the run records which samples went where")


def add_genome(p: argparse.ArgumentParser, required: bool = False, help: str = "genome file (YAML or JSON)") -> None:
    p.add_argument("--genome", required=required, help=help)


def add_devices_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", metavar="FILE", help="devices.yaml (default $QAE_DEVICES, else ./devices.yaml)")


def add_runtime(p: argparse.ArgumentParser) -> None:
    """``--runtime`` and ``--torch``: which backend builds and runs the model (``harness.quant.litert_workload``)."""
    p.add_argument("--runtime", choices=("onnxruntime", "litert"), default=None,
                   help="the runtime to quantize for: onnxruntime (default for .onnx and builtins) or litert "
                        "(LiteRT .tflite through ai-edge-quantizer; default for .tflite; needs qae[litert])")
    p.add_argument("--torch", metavar="MODULE:FUNCTION",
                   help="with --runtime litert: a function returning the torch nn.Module to convert to .tflite "
                        "(traced with the first --calib sample; in place of MODEL)")


def model_spec(args: argparse.Namespace) -> str | None:
    """The model a command names: MODEL, or ``torch:MODULE:FUNCTION`` for ``--torch`` (LiteRT only)."""
    from harness.core.errors import InputError

    torch_spec = getattr(args, "torch", None)
    if torch_spec:
        if getattr(args, "model", None):
            raise InputError("give either MODEL or --torch MODULE:FUNCTION, not both")
        if getattr(args, "runtime", None) != "litert":
            raise InputError("--torch converts a torch module to .tflite: give --runtime litert with it "
                             "(for ONNX Runtime, export the module to .onnx and give that file)")
        return f"torch:{torch_spec}"
    return getattr(args, "model", None)


def add_input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D1xD2x...",
        help="shape of one inference for an input with symbolic dimensions (default: from --data/--calib; "
        "NAME= for a 0-d input)",
    )


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    """``--input-shape NAME=D1xD2x...`` items as {name: dims}; a malformed one is a one-line error."""
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            # NAME= (nothing after the sign) is a 0-d input: a scalar such as a sample rate
            shapes[name] = [int(d) for d in dims.lower().split("x")] if dims.strip() else []
        except ValueError:
            raise InputError(f"--input-shape {item!r} is not NAME=D1xD2x...: e.g. input_ids=1x64") from None
        if not name or not sep or any(d <= 0 for d in shapes[name]):
            raise InputError(f"--input-shape {item!r} is not NAME=D1xD2x... with positive sizes")
    return shapes


def add_data_options(p: argparse.ArgumentParser, scoring: bool = True) -> None:
    """How the data is laid out and (``scoring``) how outputs are scored (``harness.quant.data``,
    ``harness.quant.metrics``). Commands that only predict or measure take the layout flags alone."""
    if scoring:
        _add_scoring_options(p)
    p.add_argument(
        "--constant-input",
        action="append",
        default=[],
        metavar="NAME",
        help="feed this input's array as stored with every batch (a scalar, an initial state); repeatable",
    )
    p.add_argument(
        "--sample-axis",
        action="append",
        default=[],
        metavar="NAME=K",
        help="this input holds its samples along axis K (default 0); repeatable",
    )


def _add_scoring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metric",
        default="auto",
        metavar="NAME|module:function",
        help="auto (default): top1 with labels, agreement for class scores [N, C], else sqnr (dB); or one of "
        "top1, agreement, cosine, sqnr, embedding, mse, max_abs (the last two as negatives: higher is better), "
        "or a function (outputs, reference, labels) -> float, higher is better",
    )
    p.add_argument(
        "--outputs",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="score only these outputs (default: every output; the score is the worst of them)",
    )


def data_options(args: argparse.Namespace) -> DataOptions:
    """The ``add_data_options`` flags as ``DataOptions``; a malformed one is a one-line error."""
    from harness.quant.data import DataOptions

    axes: dict[str, int] = {}
    for item in getattr(args, "sample_axis", []) or []:
        name, sep, axis = item.partition("=")
        try:
            k = int(axis)
        except ValueError:
            k = -1
        if not sep or not name or k < 0:
            raise InputError(f"--sample-axis {item!r} is not NAME=K with K >= 0: e.g. --sample-axis frames=1")
        axes[name] = k
    outputs = [n.strip() for item in getattr(args, "outputs", []) or [] for n in item.split(",") if n.strip()]
    return DataOptions(
        constant_inputs=tuple(dict.fromkeys(getattr(args, "constant_input", []) or [])),
        sample_axes=tuple(axes.items()),
        metric=getattr(args, "metric", None) or "auto",
        outputs=tuple(dict.fromkeys(outputs)),
    )


def print_notes(model: ModelInfo) -> None:
    """What qae changed or left out while loading the model (a float16 conversion, layers kept float
    inside control flow...), one ``qae: note:`` line each on stderr."""
    for note in model.notes:
        print(f"qae: note: {note}", file=sys.stderr)


def loads_or_removed(path: Path) -> None:
    """ONNX Runtime loads the written model with its default (all) graph optimizations, as a user's session
    would; else the file is removed and the error says so, rather than "wrote" a model nobody can run."""
    import onnxruntime as ort

    from harness.core.errors import ModelError

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        path.unlink(missing_ok=True)  # save_model writes one file, no external data
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"ONNX Runtime cannot load the quantized model built for this genome ({msg}); {path} was "
                         "removed: give the layers involved float or dynamic activations") from None
