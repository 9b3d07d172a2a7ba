"""Torch modules to .tflite with litert-torch: the built-ins once (cached), and ``--torch module:function``.

A built-in on LiteRT (``builtin:digits-vit --runtime litert``) is converted from its torch definition
with the shipped ONNX model's weights loaded into it (``harness.quant.fakequant.onnx_to_torch``, the
fine-tune path's loader), so both runtimes run the same weights; MiniLM comes from its weights
package. The result lives in ``<qae cache>/builtin/<name>/model.tflite`` beside a stamp
(``litert.json``: recipe, torch, litert-torch and weight versions, the model's sha256, and the
layer names); a stale or damaged one is converted again, and both files are written atomically, the
model first, like MiniLM's ONNX export (``harness.builtin.minilm``).

Every conversion runs in a child process (``python -m harness.quant.litert_convert``): litert-torch
brings JAX, which warns, rightly, that a process that loaded it must not fork (a search forks its
evaluation workers), so qae's own process never imports it. The child's one-line error becomes this
process's ``ModelError``.

The converted model keeps qae's input names (litert-torch names signature inputs after the keyword
arguments it was traced with) and the ONNX output name (mapped from ``output_0``), and its layers
take the torch module paths (``blocks.0.attn.q_proj``): the converter writes module locations into
tensor names, and ``module_locations`` maps each back to its module path. A conversion whose output
differs from torch's is refused (a converter bug, not noise).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.atomic import atomic_path, atomic_write_text
from harness.core.errors import ModelError
from harness.core.model import BUILTINS, builtin_data, builtin_meta
from harness.quant.litert_model import LiteModelInfo, load_tflite, require
from harness.quant.litert_quant import quiet

#: Bump when the conversion changes, so every cached .tflite is rebuilt. 2: digits-cnn's BatchNorms folded first.
RECIPE = 2
CONVERT_MISSING = "converting a torch model to .tflite needs the litert extra (litert-torch): pip install 'qae[litert]'"
_CONTAINERS = ("ModuleList", "ModuleDict")


def require_converter() -> None:
    require()
    if importlib.util.find_spec("litert_torch") is None or importlib.util.find_spec("torch") is None:
        raise ModelError(CONVERT_MISSING)


def module_locations(module: Any) -> dict[str, str]:
    """``<converter location>|<weight elements>`` -> module path, for every module with a weight.

    litert-torch names a tensor after the chain of modules that computed it: each called module as
    ``<class module>.<class name>_<attribute>``, '/'-separated under the root's class; containers that
    are never called (ModuleList, ModuleDict) leave no component."""
    out: dict[str, str] = {}
    root = f"{type(module).__module__}.{type(module).__qualname__}"
    for path, sub in module.named_modules():
        if not path:
            continue
        weight = getattr(sub, "weight", None)
        if weight is None or not hasattr(weight, "numel"):
            continue
        parts, chain, node = path.split("."), [root], module
        for part in parts:
            node = getattr(node, part) if not part.isdigit() else node[int(part)]
            if type(node).__name__ in _CONTAINERS:
                continue
            chain.append(f"{type(node).__module__}.{type(node).__qualname__}_{part}")
        out[f"{'/'.join(chain)}|{int(weight.numel())}"] = path
    return out


def convert(module: Any, example: dict[str, np.ndarray], out: Path, output_names: list[str]) -> dict[str, Any]:
    """Convert ``module`` traced with keyword inputs ``example`` to ``out`` (atomically), check it against
    torch and return its naming stamp (``names``, ``output_map``)."""
    require_converter()
    import warnings

    import litert_torch
    import torch

    module = module.eval()
    kwargs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.items()}
    with torch.no_grad():
        want = module(**kwargs)
    if isinstance(want, (tuple, list)):
        want = want[0]
    with atomic_path(out) as tmp, warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        try:
            litert_torch.convert(module, sample_kwargs=kwargs).export(str(tmp))
        except Exception as exc:
            raise ModelError(f"litert-torch cannot convert the module ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from None
        from harness.quant.litert_model import interpreter

        it = interpreter(tmp.read_bytes())
        sig = it.get_signature_runner()
        outs = sig.get_output_details()
        feed = {k: v.astype(np.dtype(sig.get_input_details()[k]["dtype"])) for k, v in example.items()}
        got = sig(**feed)
        first = sorted(outs)[0]
        err = float(np.abs(np.asarray(got[first]) - want.numpy()).max())
        if err > 1e-3:
            raise ModelError(f"the LiteRT conversion differs from torch by {err:.3g}: report this bug")
    output_map = {name: sig_name for name, sig_name in zip(output_names, sorted(outs))}
    return {"names": module_locations(module), "output_map": output_map}


# -- built-ins --------------------------------------------------------------------------------------
def _builtin_module(name: str) -> tuple[Any, dict[str, np.ndarray], list[str], dict[str, str]]:
    """(torch module with the shipped weights, example inputs, output names, versions the result depends on)."""
    from importlib.metadata import version

    from harness.core.model import load_model

    meta = builtin_meta(name)
    if name == "minilm-l6":
        from harness.builtin import minilm

        module = minilm.bind_forward(minilm.load_torch_model())
        ids = np.array([[101] + [2000 + i for i in range(62)] + [102]], dtype=np.int64)
        example = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return module, example, [minilm.OUTPUT], {"weights": version(minilm.DISTRIBUTION)}
    from harness.quant import fakequant

    onnx_model = load_model(f"builtin:{name}")
    arch = meta["architecture"]
    if name == "digits-vit":
        from harness.builtin.train_digits_vit import DigitsViT, VitConfig

        module = DigitsViT(VitConfig(**{k: arch[k] for k in VitConfig.__dataclass_fields__ if k in arch}))
    elif name == "digits-cnn":
        from harness.builtin.train_digits_cnn import CnnConfig, DigitsCNN

        module = DigitsCNN(CnnConfig(**{k: arch[k] for k in CnnConfig.__dataclass_fields__ if k in arch})).eval()
        module.fold_batch_norm()  # the shipped ONNX model has its BatchNorms folded into the Convs
    else:
        raise ModelError(f"builtin:{name} has no torch definition to convert to LiteRT")
    fakequant.onnx_to_torch(module, onnx_model)
    module.eval()
    with np.load(builtin_data(name, "calib")) as calib:
        samples = {spec.name: calib[spec.name][:8] for spec in onnx_model.inputs}
    _same_as_onnx(name, module, onnx_model, samples)
    example = {k: v[:1] for k, v in samples.items()}
    return module, example, [o.name for o in onnx_model.outputs], {"onnx_sha256": onnx_model.sha256}


def _same_as_onnx(name: str, module: Any, onnx_model: Any, samples: dict[str, np.ndarray]) -> None:
    """Refuse a torch definition that does not compute the shipped ONNX model (one sample at a time, as the
    model's fixed batch of 1 wants): the LiteRT built-in must hold the same weights as the ONNX one."""
    import torch

    from harness.quant.evaluate import session

    sess = session(onnx_model.proto)
    n = len(next(iter(samples.values())))
    want = np.concatenate([sess.run(None, {k: v[i:i + 1] for k, v in samples.items()})[0] for i in range(n)])
    with torch.no_grad():
        got = module(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in samples.items()}).numpy()
    err = float(np.abs(got - want).max())
    if err > 1e-3:
        raise ModelError(f"builtin:{name}'s torch definition differs from its ONNX model by {err:.3g} with the ONNX "
                         "weights loaded: report this bug")


def builtin_dir(name: str) -> Path:
    from harness.core.paths import cache_dir

    return cache_dir() / "builtin" / name


def ensure_builtin(name: str) -> LiteModelInfo:
    """The built-in converted to .tflite (converted now when missing or stale), loaded and inventoried."""
    from importlib.metadata import version

    require_converter()
    if name not in BUILTINS:
        raise ModelError(f"unknown builtin model builtin:{name}: use one of "
                         f"{', '.join('builtin:' + n for n in sorted(BUILTINS))}")
    folder = builtin_dir(name)
    path, stamp_path = folder / "model.tflite", folder / "litert.json"
    want = {"recipe": RECIPE, "torch": version("torch"), "litert-torch": version("litert-torch")}
    if name == "minilm-l6":
        from harness.builtin import minilm

        minilm.require()
        want["weights"] = version(minilm.DISTRIBUTION)
    else:
        from harness.core.model import BUILTIN_DIR, file_sha256

        want["onnx_sha256"] = file_sha256(BUILTIN_DIR / BUILTINS[name] / "model.onnx")
    have = _read_stamp(stamp_path)
    if not (have and have.get("stamp") == want and path.is_file()
            and have.get("sha256") == _sha256(path.read_bytes())):
        naming = in_child("builtin", name, str(path))
        have = {"stamp": want, "sha256": _sha256(path.read_bytes()), **naming,
                "rebuild": "delete this folder; qae converts it again"}
        atomic_write_text(stamp_path, json.dumps(have, indent=1, sort_keys=True) + "\n")
    input_map = {k: k for k in builtin_meta(name).get("input_shapes", {})}
    shapes = builtin_meta(name).get("input_shapes") or None
    return load_tflite(path, shapes, builtin=name, names=have["names"], input_map=input_map,
                       output_map=have["output_map"], source=f"builtin:{name}")


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- --torch module:function --------------------------------------------------------------------------
def torch_module(spec: str) -> Any:
    """The nn.Module ``module:function`` returns (imported from the user's code, as the fine-tune does)."""
    require_converter()
    from harness.quant.finetune import user_module

    return user_module(spec)


def convert_torch(spec: str, calib: str | Path, out_dir: Path) -> LiteModelInfo:
    """``--torch module:function --runtime litert``: convert the module, traced with the first sample of
    ``calib`` (its arrays named like the forward's parameters), into ``out_dir`` (cached by content)."""
    from importlib.metadata import version

    require_converter()
    with np.load(calib, allow_pickle=False) as data:
        inputs = [k for k in data.files if k not in ("labels", "qae_inputs")]
    # converted again when the module's source file, the data or the converter changes (found without importing it)
    module_name = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name) if module_name else None
    except (ImportError, ValueError):
        found = None
    origin = Path(found.origin) if found is not None and found.origin else None
    key = json.dumps([RECIPE, spec, _sha256(Path(calib).read_bytes()),
                      _sha256(origin.read_bytes()) if origin is not None and origin.is_file() else None,
                      version("torch"), version("litert-torch")])
    folder = out_dir / _sha256(key.encode())[:16]
    path, stamp_path = folder / "model.tflite", folder / "litert.json"
    have = _read_stamp(stamp_path)
    if not (have and path.is_file() and have.get("sha256") == _sha256(path.read_bytes())):
        have = {**in_child("torch", spec, str(calib), str(path)), "sha256": _sha256(path.read_bytes())}
        atomic_write_text(stamp_path, json.dumps(have, indent=1, sort_keys=True) + "\n")
    return load_tflite(path, None, names=have["names"], input_map={k: k for k in inputs},
                       output_map=have["output_map"], source=f"--torch {spec}")


def in_child(*argv: str) -> dict[str, Any]:
    """Run one conversion (``_child``'s commands) in a child Python; its naming stamp, or its one-line error
    as a ``ModelError``. The arguments go to the child as a list (no shell)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qae-litert-") as tmp:
        stamp = Path(tmp) / "naming.json"
        proc = subprocess.run([sys.executable, "-m", "harness.quant.litert_convert", str(stamp), *argv],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0 or not stamp.is_file():
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("qae: error: ")]
            msg = lines[-1][len("qae: error: "):] if lines else (
                f"the conversion process exited with {proc.returncode}: "
                f"{(proc.stderr.strip().splitlines() or ['no message'])[-1][:200]}")
            raise ModelError(msg)
        return dict(json.loads(stamp.read_text()))


def linear_layer(k: int, n: int) -> Any:
    """A torch module of one ``nn.Linear(k, n)`` (one FULLY_CONNECTED), seeded: calibration's micro layer."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(k, n)

        def forward(self, x: Any) -> Any:
            return self.fc(x)

    torch.manual_seed(0)
    return Layer().eval()


def _child(argv: list[str]) -> int:
    """``python -m harness.quant.litert_convert STAMP.json COMMAND ARGS``: ``builtin NAME OUT``, ``torch SPEC
    CALIB OUT`` or ``linear K N TOKENS CALIB OUT``; writes the naming stamp to STAMP.json."""
    import sys

    from harness.core.errors import QaeError

    stamp, command, *rest = argv
    try:
        if command == "builtin":
            name, out = rest
            module, example, outputs, _ = _builtin_module(name)
        elif command == "torch":
            spec, calib, out = rest
            module, outputs = torch_module(spec), ["output"]
            with np.load(calib, allow_pickle=False) as data:
                example = {k: data[k][:1] for k in data.files if k not in ("labels", "qae_inputs")}
        elif command == "linear":
            k, n, tokens, calib, out = rest
            module, outputs = linear_layer(int(k), int(n)), ["y"]
            with np.load(calib, allow_pickle=False) as data:
                example = {"x": data["x"][: int(tokens)]}
        else:
            raise ModelError(f"unknown conversion {command!r}")
        naming = convert(module, example, Path(out), outputs)
    except QaeError as exc:
        print(f"qae: error: {exc}", file=sys.stderr)
        return exc.exit_code
    atomic_write_text(Path(stamp), json.dumps(naming))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_child(sys.argv[1:]))
