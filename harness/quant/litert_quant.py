"""Genome -> ai-edge-quantizer recipe -> quantized .tflite, and running .tflite models on the host.

A gene becomes one recipe entry per layer, matched exactly: the entry's ``regex`` is the layer op's
scope (its output tensor names joined the way ai-edge-quantizer joins them) escaped and anchored, and
its ``operation`` is the layer's TFLite op, so no other op can match it. What a gene means here:

- ``weight_bits``: the weight tensor's integer width (``num_bits``), ``fp`` leaves the layer out of
  the recipe (float).
- ``activation_bits``: ``fp`` is weight-only (``compute_precision FLOAT``, ``explicit_dequantize``:
  the weights are stored as integers and dequantized into a float op); ``dynamic`` is dynamic range
  quantization (``INTEGER`` compute, activations quantized at run time); 8 or 16 is static
  quantization of the layer's input and output, from the calibration ranges (8-bit activations are
  asymmetric, LiteRT's int8 convention; 16-bit ones symmetric, as the quantizer requires).
- ``scheme``: the weights' ``symmetric`` flag; ``granularity``: CHANNELWISE / TENSORWISE.

ai-edge-quantizer skips a recipe entry it does not support without a word (it falls back to float),
so every entry is checked first with its own ``algorithm_manager.check_op_quantization_config``: a
gene it cannot build is a ``GenomeError`` naming the layer and the values that op takes. Choices it
has no notion of (power-of-two scales, qae's packed ONNX kernels, MatMulNBits accuracy levels,
rounding other than round-to-nearest) are refused the same way. ``per_block`` is refused too:
ai-edge-quantizer 0.10 runs block-wise weights only with dynamic activations, and a qae gene keeps
block-wise weights weight-only (``harness.core.genome``).

Calibration runs once per workload (a static int8 recipe over every op, so every tensor gets its
range) and its result is reused by every genome, as the ONNX path reuses its ranges.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.atomic import atomic_write_bytes
from harness.core.errors import GenomeError, ModelError
from harness.core.genome import Gene, Genome
from harness.quant.litert_model import LiteModelInfo, interpreter, read_flatbuffer, tensor_name

ALGORITHM = "min_max_uniform_quantize"
#: what the search may offer a LiteRT layer, checked per op against the quantizer (``allowed``)
WEIGHT_CHOICES = (2, 4, 8, 16)
ACTIVATION_CHOICES: tuple[Any, ...] = ("fp", "dynamic", 8, 16)


@dataclass
class LiteResult:
    """A quantized .tflite model: the counterpart of ``harness.quant.quantize.QuantResult``."""

    content: bytes
    genome: Genome
    recipe: list[dict[str, Any]] = field(default_factory=list)
    nominal_bits: dict[str, int] = field(default_factory=dict)
    emulated_layers: list[str] = field(default_factory=list)
    suffix: str = ".tflite"

    @property
    def emulated(self) -> bool:
        return False


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """ai-edge-quantizer prints progress bars and reports; a CLI's stdout is for its own output."""
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            # calibration keeps every tensor (``experimental_preserve_all_tensors``), which LiteRT warns about
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def op_config(gene: Gene) -> dict[str, Any] | None:
    """The recipe's ``op_config`` for a quantized gene (None for a float one); no checks."""
    if not gene.quantized:
        return None
    granularity = {"per_channel": "CHANNELWISE", "per_tensor": "TENSORWISE"}.get(gene.granularity,
                                                                               f"BLOCKWISE_{gene.block_size}")
    config: dict[str, Any] = {
        "weight_tensor_config": {"num_bits": int(gene.weight_bits), "symmetric": gene.scheme != "asymmetric",
                                 "granularity": granularity, "dtype": "INT"},
        "compute_precision": "FLOAT" if gene.activation_bits == "fp" else "INTEGER",
        "explicit_dequantize": gene.activation_bits == "fp",
        "skip_checks": False,
        "min_weight_elements": 0,
    }
    if gene.static_activation:
        bits = int(gene.activation_bits)
        config["activation_tensor_config"] = {"num_bits": bits, "symmetric": bits != 8,
                                              "granularity": "TENSORWISE", "dtype": "INT"}
    return config


def _supported(tfl_op: str, config: dict[str, Any]) -> bool:
    from ai_edge_quantizer import algorithm_manager, qtyping

    try:
        op_cfg = qtyping.OpQuantizationConfig.from_dict(config)
        algorithm_manager.check_op_quantization_config(ALGORITHM, qtyping.TFLOperationName(tfl_op), op_cfg)
    except (ValueError, KeyError, TypeError):
        return False
    return True


def supported(tfl_op: str, gene: Gene) -> bool:
    """True when ai-edge-quantizer builds ``gene`` on a ``tfl_op`` layer as the gene says."""
    if not gene.quantized:
        return True
    if gene.kernel != "qdq" or gene.accuracy_level is not None or gene.rounding != "rtn":
        return False
    if gene.scheme == "power_of_two" or gene.granularity == "per_block":
        return False
    config = op_config(gene)
    return config is not None and _supported(tfl_op, config)


#: Why a gene the quantizer builds is still refused on a layer: LiteRT computes wrong outputs for it.
WRONG_OUTPUTS = ("LiteRT 2.3 computes wrong outputs for a dynamic-range DEPTHWISE_CONV_2D with one weight scale and "
                 "a depth multiplier above 1 (measured here: cosine 0.11 to FP32 on digits-vit's patch embedding, "
                 "1.0 with per-channel scales), and qae holds a dynamic Conv per tensor (ONNX Runtime's ConvInteger "
                 "takes one weight scale): use static 8-bit or fp activations on this layer")


def layer_refusal(model: LiteModelInfo, layer_name: str, gene: Gene) -> str | None:
    """Why ``gene`` is refused on this layer although ai-edge-quantizer builds it, or None."""
    multiplier = model.op_options.get(layer_name, {}).get("depth_multiplier", 1)
    if gene.quantized and gene.dynamic and gene.granularity == "per_tensor" and multiplier > 1:
        return WRONG_OUTPUTS
    return None


def layer_supported(model: LiteModelInfo, layer_name: str, gene: Gene) -> bool:
    """``supported`` for one layer of ``model`` (its op, and what LiteRT gets wrong on it)."""
    layer = model.layer(layer_name)
    return supported(tfl_op(layer.node_name), gene) and layer_refusal(model, layer_name, gene) is None


def allowed(tfl_op: str) -> list[str]:
    """The (weight_bits, activation_bits, scheme, granularity) a ``tfl_op`` layer takes, for messages."""
    out = []
    for w in WEIGHT_CHOICES:
        for a in ACTIVATION_CHOICES:
            for scheme in ("symmetric", "asymmetric"):
                for gran in ("per_channel", "per_tensor"):
                    if supported(tfl_op, Gene(w, a, scheme, gran)):
                        out.append(f"w{w}/{a}/{scheme}/{gran}")
    return out


def check_gene(gene: Gene, layer_name: str, tfl_op: str) -> None:
    """A one-line ``GenomeError`` naming the layer and its allowed values when ``gene`` cannot be built."""
    if supported(tfl_op, gene):
        return
    why = ""
    if gene.kernel != "qdq" or gene.accuracy_level is not None:
        why = f"kernel {gene.kernel} is ONNX Runtime's; LiteRT layers take kernel qdq. "
    elif gene.rounding != "rtn":
        why = f"rounding {gene.rounding} is qae's ONNX path's; ai-edge-quantizer rounds to nearest (rtn). "
    elif gene.scheme == "power_of_two":
        why = "ai-edge-quantizer has no power-of-two scales. "
    elif gene.granularity == "per_block":
        why = "ai-edge-quantizer 0.10 runs block-wise weights only with dynamic activations. "
    choices = ", ".join(allowed(tfl_op)) or "none"
    raise GenomeError(
        f"layer {layer_name} ({tfl_op}): weight_bits {gene.weight_bits}, activation_bits {gene.activation_bits}, "
        f"{gene.scheme}, {gene.granularity} cannot be built for LiteRT; {why}allowed "
        f"(weight_bits/activation_bits/scheme/granularity): {choices}"
    )


def tfl_op(layer_node: str) -> str:
    return layer_node.split(":", 1)[0]


def scopes(model: LiteModelInfo) -> dict[str, str]:
    """Each layer's op scope as ai-edge-quantizer computes it (output tensor names, ';'-joined)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    fb = read_flatbuffer(model.content)
    sg = fb.subgraphs[0]
    out = {}
    for layer in model.layers:
        index = int(layer.node_name.split(":", 1)[1])
        out[layer.name] = fu.get_op_scope(sg.operators[index], sg.tensors)
    return out


def recipe(model: LiteModelInfo, genome: Genome) -> list[dict[str, Any]]:
    """The ai-edge-quantizer recipe of ``genome``: one exactly matching entry per quantized layer."""
    where = scopes(model)
    entries = []
    for layer in model.layers:
        gene = genome[layer.name]
        op = tfl_op(layer.node_name)
        check_gene(gene, layer.name, op)
        refusal = layer_refusal(model, layer.name, gene)
        if refusal:
            raise GenomeError(f"layer {layer.name} ({op}): weight_bits {gene.weight_bits}, activation_bits dynamic "
                              f"cannot be built for LiteRT: {refusal}")
        config = op_config(gene)
        if config is None:
            continue
        entries.append({"regex": "^" + re.escape(where[layer.name]) + "$", "operation": op,
                        "algorithm_key": ALGORITHM, "op_config": config})
    return entries


def calibrate(model: LiteModelInfo, feeds: Sequence[dict[str, np.ndarray]], data_sha256: str | None = None
              ) -> tuple[dict[str, Any], bool]:
    """Ranges of every tensor over ``feeds`` (signature-named), from a static int8 recipe on all ops, and
    whether they came from the cache: keyed by the model's and the data's sha256 and the quantizer's
    version, stored as a plain .npz (no pickle) under the qae cache folder, written atomically."""
    import hashlib
    import json
    from importlib.metadata import version

    from harness.core.paths import cache_dir

    path = None
    if data_sha256 is not None:
        key = hashlib.sha256(json.dumps([model.sha256, data_sha256, version("ai-edge-quantizer")]).encode())
        path = cache_dir() / "litert-calibration" / f"{key.hexdigest()[:24]}.npz"
        cached = _read_ranges(path)
        if cached is not None:
            return cached, True
    ranges = _calibrate(model, feeds)
    if path is not None:
        _write_ranges(path, ranges)
    return ranges, False


def _write_ranges(path: Path, ranges: dict[str, Any]) -> None:
    import json

    from harness.core.atomic import atomic_path

    arrays: dict[str, np.ndarray] = {}
    index = []
    for i, (tensor, qsv) in enumerate(ranges.items()):
        keys = [k for k, v in qsv.items() if isinstance(v, np.ndarray)]
        index.append([tensor, keys])
        for k in keys:
            arrays[f"t{i}_{k}"] = qsv[k]
    arrays["index"] = np.array(json.dumps(index))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # (numpy stubs read a key as allow_pickle)


def _read_ranges(path: Path) -> dict[str, Any] | None:
    """The cached ranges, or None when there are none or the file is not a readable cache (then recalibrated)."""
    import json
    import zipfile

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            index = json.loads(str(npz["index"]))
            return {tensor: {k: npz[f"t{i}_{k}"] for k in keys} for i, (tensor, keys) in enumerate(index)}
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
        return None


def _calibrate(model: LiteModelInfo, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(bytearray(model.content))
    q.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                        activation_num_bits=8, weight_num_bits=8)
    sig = _signature_key(model)
    with quiet():
        try:
            return dict(q.calibrate({sig: list(feeds)}, num_threads=1))
        except Exception as exc:
            raise ModelError(f"ai-edge-quantizer cannot calibrate the model ({type(exc).__name__}: "
                             f"{str(exc)[:200]}): check the calibration data") from None


def _signature_key(model: LiteModelInfo) -> str:
    it = interpreter(model.content)
    return str(next(iter(it.get_signature_list())))


def quantize(model: LiteModelInfo, genome: Genome, calibration: dict[str, Any]) -> LiteResult:
    """Build ``genome``'s .tflite (a float genome is the model itself)."""
    from ai_edge_quantizer import quantizer

    entries = recipe(model, genome)
    if not entries:
        return LiteResult(model.content, genome, [])
    q = quantizer.Quantizer(bytearray(model.content), entries)
    with quiet():
        try:
            result = q.quantize(calibration if q.need_calibration else None, enable_progress_report=False)
        except Exception as exc:
            raise ModelError(f"ai-edge-quantizer cannot quantize genome {genome.hash} ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    return LiteResult(bytes(result.quantized_model), genome, entries)


def save(result: LiteResult, out: str | Path) -> Path:
    path = Path(out)
    atomic_write_bytes(path, result.content)
    return path


# -- running on the host --------------------------------------------------------------------------
class Runner:
    """A .tflite model on LiteRT's interpreter (XNNPACK), fed with qae's input names."""

    def __init__(self, model: LiteModelInfo, content: bytes | None = None, threads: int | None = None) -> None:
        self.model = model
        self.it = interpreter(content if content is not None else model.content, threads)
        self.runner = self.it.get_signature_runner()
        self.details = self.runner.get_input_details()
        self.resized: dict[str, list[int]] = {}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kwargs = {}
        for spec in self.model.inputs:
            sig = self.model.input_map.get(spec.name, spec.name)
            arr = np.asarray(feed[spec.name])
            want = np.dtype(self.details[sig]["dtype"])
            kwargs[sig] = np.ascontiguousarray(arr.astype(want, copy=False))
        try:
            out = self.runner(**kwargs)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"LiteRT cannot run the model ({msg}): check the data's shapes") from None
        rename = {sig: qae for qae, sig in self.model.output_map.items()}
        return {rename.get(k, k): np.asarray(v) for k, v in out.items()}


def run_all(model: LiteModelInfo, content: bytes | None, data: Any, names: Sequence[str] | None = None,
            threads: int | None = None) -> dict[str, np.ndarray]:
    """Every output (or ``names``) for every sample of ``data``, one inference's batch at a time."""
    runner = Runner(model, content, threads)
    names = list(names or [o.name for o in model.outputs])
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    step = data.batch_size(None) if model.inputs and all(s.shape and s.shape[0] for s in model.inputs) else None
    for feed in data.batches(step or 1):
        got = runner.run(feed)
        for n in names:
            parts[n].append(got[n])
    return {n: np.concatenate(p, axis=0) for n, p in parts.items()}


def layer_weight_ops(content: bytes) -> dict[str, dict[str, Any]]:
    """The weight each layer op reads, followed through a DEQUANTIZE (weight-only layers), as written."""
    from harness.quant.litert_model import FAMILY, op_name, tensor_type_name

    fb = read_flatbuffer(content)
    sg = fb.subgraphs[0]
    producer = {o: i for i, op in enumerate(sg.operators) for o in op.outputs}
    out: dict[str, dict[str, Any]] = {}
    for index, op in enumerate(sg.operators):
        kind = op_name(fb, op)
        if kind not in FAMILY:
            continue
        w_at = 0 if kind == "GATHER" else 1
        if len(op.inputs) <= w_at or op.inputs[w_at] < 0:
            continue
        t_index = op.inputs[w_at]
        via = None
        if t_index in producer and op_name(fb, sg.operators[producer[t_index]]) == "DEQUANTIZE":
            via = "DEQUANTIZE"
            t_index = sg.operators[producer[t_index]].inputs[0]
        tensor = sg.tensors[t_index]
        q = tensor.quantization
        scales = 0 if q is None or q.scale is None else len(q.scale)
        details = getattr(q, "details", None) if q is not None else None
        block = int(getattr(details, "blockSize", 0) or 0) if details is not None else 0
        out[f"{kind}:{index}"] = {"type": tensor_type_name(tensor.type), "scales": scales, "via": via,
                                  "axis": None if q is None else int(q.quantizedDimension), "block_size": block,
                                  "name": tensor_name(tensor),
                                  "input_type": tensor_type_name(sg.tensors[op.inputs[1 - w_at]].type)
                                  if kind != "GATHER" and op.inputs[0] >= 0 else None}
    return out
