"""LiteRT (.tflite) models: loading, checking and the inventory of quantizable layers.

The LiteRT backend sits behind the same interfaces as the ONNX one: a ``LiteModelInfo`` is a
``ModelInfo`` whose ``layers`` are ``LayerSpec``s, so genomes, the search, the cost model and the
reports read it unchanged. What differs is kept here:

- the layers are the ops ai-edge-quantizer quantizes per layer: FULLY_CONNECTED, CONV_2D,
  DEPTHWISE_CONV_2D, BATCH_MATMUL with a constant operand, and EMBEDDING_LOOKUP / GATHER on a
  constant table. ``op_type`` is the ONNX family the rest of qae prices and checks genes against
  (FULLY_CONNECTED -> Gemm with a [N, K] weight, BATCH_MATMUL -> MatMul, CONV_2D and DEPTHWISE_CONV_2D
  -> Conv, EMBEDDING_LOOKUP / GATHER -> Gather); ``node_name`` keeps the TFLite op (``FULLY_CONNECTED:12``).
- layer names: the torch module path when the model was converted here from a torch module (the
  converter writes module locations such as ``pkg.Net/pkg.Block_0/torch.nn.modules.linear.Linear_fc1``
  into tensor names, and ``harness.quant.litert_convert`` maps them back to ``blocks.0.fc1``); else the
  attribute path read from such a location; else the weight tensor's name. Unique, stable.
- ``proto`` is a stand-in ONNX graph (one node per TFLite op, tensor names as edges, no weights) so
  that the cost model's graph statistics (``profiles.costmodel.GraphStats``) count the rest of the graph.
- shapes come from LiteRT's own interpreter after resizing the inputs to the shapes of one inference.

Everything here needs the ``litert`` extra; ``require()`` is the one-line error naming it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from harness.core.errors import InputError, ModelError
from harness.core.model import LayerSpec, ModelInfo, TensorSpec

MISSING = "a .tflite model (or --runtime litert) needs the litert extra: pip install 'qae[litert]'"
#: TFLite op -> the ONNX op family qae prices and checks genes against
FAMILY = {
    "FULLY_CONNECTED": "Gemm",
    "BATCH_MATMUL": "MatMul",
    "CONV_2D": "Conv",
    "DEPTHWISE_CONV_2D": "Conv",
    "EMBEDDING_LOOKUP": "Gather",
    "GATHER": "Gather",
}
#: torch module classes whose locations name a weighted layer (to pick one out of a fused tensor name)
_WEIGHTED = ("Linear", "Conv1d", "Conv2d", "Embedding")


def available() -> bool:
    """True when ai-edge-quantizer and ai-edge-litert import (an import blocked or broken counts as missing)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("ai_edge_quantizer", "ai_edge_litert"))
    except (ImportError, ValueError):  # find_spec raises ValueError for a module set to None in sys.modules
        return False


def require() -> None:
    """Raise the one-line ``ModelError`` naming the extra when it is not installed."""
    if not available():
        raise ModelError(MISSING)


def litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "?"


def interpreter(content: bytes, threads: int | None = None) -> Any:
    """LiteRT's interpreter on ``content`` (XNNPACK, the default CPU delegate), tensors allocated."""
    require()
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_content=content, num_threads=threads or 1)
        it.allocate_tensors()
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"LiteRT cannot load the model ({msg}): check the .tflite file or its genome") from None
    return it


@dataclass
class LiteModelInfo(ModelInfo):
    """A .tflite model and its inventory. ``content`` is the file's bytes (what is quantized);
    ``input_map`` maps each input's qae name to its signature input name (they differ when a
    converted builtin keeps its ONNX names), ``output_map`` the same for outputs."""

    content: bytes = b""
    runtime: str = "litert"
    input_map: dict[str, str] = field(default_factory=dict)
    output_map: dict[str, str] = field(default_factory=dict)
    #: where the model came from when converted here (``builtin:digits-vit``, ``--torch mod:fn``)
    source: str | None = None

    def tensor_shapes(self) -> dict[str, list[int]]:
        return {name: list(dims) for name, dims in self.known_shapes.items()}

    def at_shapes(self, shapes: dict[str, list[int]], sample: dict[str, np.ndarray] | None = None) -> ModelInfo:
        given = {**self.shapes_used, **{k: [int(d) for d in v] for k, v in shapes.items()}}
        return _inventory_info(self.path, self.content, self.builtin, given, self.notes, self.names,
                               self.input_map, self.output_map, self.source)

    names: dict[str, str] = field(default_factory=dict)
    #: per layer, the TFLite op's options qae's checks need (``depth_multiplier`` of a DEPTHWISE_CONV_2D)
    op_options: dict[str, dict[str, int]] = field(default_factory=dict)


def _signature(it: Any) -> tuple[list[str], list[str]]:
    sigs = it.get_signature_list()
    if len(sigs) != 1:
        raise ModelError(f"the .tflite model has {len(sigs)} signatures: qae runs models with exactly one")
    sig = next(iter(sigs.values()))
    return list(sig["inputs"]), list(sig["outputs"])


def load_tflite(path: str | Path, input_shapes: dict[str, list[int]] | None = None, builtin: str | None = None,
                names: dict[str, str] | None = None, input_map: dict[str, str] | None = None,
                output_map: dict[str, str] | None = None, source: str | None = None,
                require_layers: bool = True) -> LiteModelInfo:
    """Load, check and inventory a .tflite file; every failure is a one-line ``ModelError``.

    ``names`` maps tensor locations to torch module paths (``litert_convert``); ``input_map`` /
    ``output_map`` rename signature inputs and outputs (a converted builtin keeps its ONNX names)."""
    require()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found: give the path of a .tflite file")
    content = path.read_bytes()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ModelError(f"{path} is not a LiteRT model (no TFL3 identifier): give a .tflite flatbuffer")
    info = _inventory_info(path, content, builtin, dict(input_shapes or {}), [], names or {}, input_map or {},
                           output_map or {}, source)
    if not info.layers and require_layers:
        raise ModelError(f"{path} has no quantizable layer (FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D, BATCH_MATMUL "
                         "with a constant operand, EMBEDDING_LOOKUP/GATHER on a float table): nothing to quantize")
    return info


def read_flatbuffer(content: bytes) -> Any:
    """The model as LiteRT's schema objects (``ai_edge_litert.schema_py_generated.ModelT``)."""
    require()
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    try:
        return fu.read_model(bytearray(content))
    except Exception as exc:
        raise ModelError(f"the .tflite flatbuffer cannot be read ({type(exc).__name__}): re-export it") from None


_OP_NAMES: dict[int, str] = {}


def op_name(model: Any, op: Any) -> str:
    """The op's builtin name from LiteRT's schema (``FULLY_CONNECTED``, ``DEQUANTIZE``...)."""
    if not _OP_NAMES:
        from ai_edge_litert import schema_py_generated as schema

        _OP_NAMES.update({int(v): k for k, v in vars(schema.BuiltinOperator).items()
                          if re.fullmatch(r"[A-Z0-9_]+", k)})
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    return _OP_NAMES.get(builtin, f"OP_{builtin}")


def tensor_name(tensor: Any) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


def _const(model: Any, tensor: Any) -> bool:
    buf = model.buffers[tensor.buffer] if 0 <= tensor.buffer < len(model.buffers) else None
    return buf is not None and ((buf.data is not None and len(buf.data) > 0) or int(getattr(buf, "size", 0) or 0) > 0)


def _inventory_info(path: Path, content: bytes, builtin: str | None, given: dict[str, list[int]], notes: list[str],
                    names: dict[str, str], input_map: dict[str, str], output_map: dict[str, str],
                    source: str | None) -> LiteModelInfo:
    it = interpreter(content)
    sig_in, sig_out = _signature(it)
    runner = it.get_signature_runner()
    in_details, out_details = runner.get_input_details(), runner.get_output_details()
    rename_in = {sig: qae for qae, sig in input_map.items()}
    rename_out = {sig: qae for qae, sig in output_map.items()}
    inputs, shapes = [], {}
    for sig in sig_in:
        d = in_details[sig]
        declared = [int(x) for x in d.get("shape_signature", d["shape"])]
        qname = rename_in.get(sig, sig)
        spec = TensorSpec(qname, np.dtype(d["dtype"]).name, tuple(x if x > 0 else None for x in declared))
        inputs.append(spec)
        if qname in given:
            shapes[qname] = [int(x) for x in given[qname]]
        elif all(x > 0 for x in declared):
            shapes[qname] = declared
    unknown = set(given) - {s.name for s in inputs}
    if unknown:
        raise InputError(f"input shape given for unknown input {sorted(unknown)[0]!r}: inputs are "
                         f"{', '.join(s.name for s in inputs)}")
    outputs = [TensorSpec(rename_out.get(sig, sig), np.dtype(out_details[sig]["dtype"]).name,
                          tuple(int(x) for x in out_details[sig]["shape"])) for sig in sig_out]
    complete = len(shapes) == len(inputs)
    if complete and any(shapes[s.name] != [int(x) for x in in_details[rename_inv(s.name, input_map)]["shape"]]
                        for s in inputs):
        for s in inputs:
            it.resize_tensor_input(in_details[rename_inv(s.name, input_map)]["index"], shapes[s.name])
        it.allocate_tensors()
    known = {}
    if complete:
        for d in it.get_tensor_details():
            if d["name"]:
                known[d["name"]] = [int(x) for x in d["shape"]]
    model = read_flatbuffer(content)
    layers, proto = _layers(model, known, names)
    options = {}
    for layer in layers:
        op = model.subgraphs[0].operators[int(layer.node_name.split(":", 1)[1])]
        if layer.node_name.startswith("DEPTHWISE_CONV_2D") and op.builtinOptions is not None:
            options[layer.name] = {"depth_multiplier": int(getattr(op.builtinOptions, "depthMultiplier", 1) or 1)}
    info = LiteModelInfo(path, proto, hashlib.sha256(content).hexdigest(), layers, inputs, outputs, builtin,
                         shapes, len(content), list(notes), known, content=content, input_map=dict(input_map),
                         output_map=dict(output_map), source=source, names=dict(names), op_options=options)
    return info


def rename_inv(qname: str, input_map: dict[str, str]) -> str:
    """The signature name of input ``qname``."""
    return input_map.get(qname, qname)


def _layers(model: Any, known: dict[str, list[int]], names: dict[str, str]) -> tuple[list[LayerSpec], Any]:
    """The quantizable layers of subgraph 0 in op order, and the stand-in ONNX graph."""
    if len(model.subgraphs) != 1:
        raise ModelError(f"the .tflite model has {len(model.subgraphs)} subgraphs (control flow): qae quantizes "
                         "models with one")
    sg = model.subgraphs[0]
    tensors = sg.tensors
    found: list[tuple[str, dict[str, Any]]] = []
    nodes = []
    for index, op in enumerate(sg.operators):
        kind = op_name(model, op)
        ins = [tensor_name(tensors[i]) if i >= 0 else "" for i in op.inputs]
        outs = [tensor_name(tensors[i]) for i in op.outputs]
        node = f"{kind}:{index}"
        onnx_op = "MatMul" if kind == "BATCH_MATMUL" else kind  # GraphStats counts activation x activation MatMuls
        nodes.append(helper.make_node(onnx_op, ins, outs, name=node))
        fields = _layer_fields(model, op, kind, known)
        if fields is None:
            continue
        fields["node_name"] = node
        found.append((_layer_name(fields["weight"], tensors[op.inputs[fields.pop("_w")]], names), fields))
    counts: dict[str, int] = {}
    for base, _ in found:
        counts[base] = counts.get(base, 0) + 1
    seen: dict[str, int] = {}
    layers = []
    for base, fields in found:
        name = base
        if counts[base] > 1:
            seen[base] = seen.get(base, 0) + 1
            name = f"{base}.{fields['op_type'].lower()}{seen[base]}"
        layers.append(LayerSpec(name=name, **fields))
    graph = helper.make_graph(nodes, "litert", [], [])
    return layers, helper.make_model(graph, producer_name="qae-litert-standin")


def _layer_fields(model: Any, op: Any, kind: str, known: dict[str, list[int]]) -> dict[str, Any] | None:
    from ai_edge_litert import schema_py_generated as schema

    if kind not in FAMILY:
        return None
    tensors = model.subgraphs[0].tensors
    ins = list(op.inputs)
    if kind in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"):
        if len(ins) < 2 or ins[1] < 0 or not _const(model, tensors[ins[1]]) or _const(model, tensors[ins[0]]):
            return None
        w_at, a_at = 1, 0
    elif kind == "BATCH_MATMUL":
        if len(ins) < 2 or not _const(model, tensors[ins[1]]) or _const(model, tensors[ins[0]]):
            return None
        w_at, a_at = 1, 0
    elif kind == "EMBEDDING_LOOKUP":  # ids, table
        if len(ins) < 2 or not _const(model, tensors[ins[1]]) or _const(model, tensors[ins[0]]):
            return None
        w_at, a_at = 1, None
    else:  # GATHER: params, indices, axis option
        if len(ins) < 2 or not _const(model, tensors[ins[0]]) or _const(model, tensors[ins[1]]):
            return None
        opts = op.builtinOptions
        if opts is not None and int(getattr(opts, "axis", 0)) != 0:
            return None
        w_at, a_at = 0, None
    wt = tensors[ins[w_at]]
    if int(wt.type) != schema.TensorType.FLOAT32 or (wt.quantization is not None and wt.quantization.scale is not None):
        return None  # already quantized, or another float type: not for qae to quantize again
    wshape = tuple(int(d) for d in wt.shape)
    if kind in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP", "GATHER") and len(wshape) != 2:
        return None
    out = tensor_name(tensors[op.outputs[0]])
    act = tensor_name(tensors[ins[a_at]]) if a_at is not None else None
    out_shape = known.get(out)
    in_shape = known.get(act) if act else known.get(tensor_name(tensors[ins[1 - w_at]]))
    out_el = int(np.prod(out_shape)) if out_shape is not None else None
    in_el = int(np.prod(in_shape)) if in_shape is not None else None
    if kind == "FULLY_CONNECTED":  # W [N, K]
        axis, reduce = 0, wshape[1]
    elif kind == "CONV_2D":  # W [Cout, kh, kw, Cin]
        axis, reduce = 0, int(np.prod(wshape[1:]))
    elif kind == "DEPTHWISE_CONV_2D":  # W [1, kh, kw, C * multiplier]: each output sums kh * kw products
        axis, reduce = 3, wshape[1] * wshape[2]
    elif kind == "BATCH_MATMUL":  # W [..., K, N] (adj_y: [..., N, K])
        adj_y = bool(getattr(op.builtinOptions, "adjY", False)) if op.builtinOptions is not None else False
        axis = len(wshape) - (2 if adj_y else 1)
        reduce = wshape[-1] if adj_y else wshape[-2]
    else:
        axis, reduce = 0, 0
    macs = None if out_el is None else (0 if FAMILY[kind] == "Gather" else out_el * int(reduce))
    return {
        "_w": w_at,
        "op_type": FAMILY[kind],
        "weight": tensor_name(wt),
        "weight_shape": wshape,
        "params": int(np.prod(wshape)),
        "macs": macs,
        "activation": act,
        "output": out,
        "channel_axis": axis,
        "input_elements": in_el,
        "output_elements": out_el,
    }


def _layer_name(weight: str, tensor: Any, names: dict[str, str]) -> str:
    """The stable name of a layer from its weight tensor's name (see the module docstring)."""
    shape = tuple(int(d) for d in tensor.shape)
    parts = [p for p in weight.split(";") if p]
    for part in parts:  # a converter location that names a torch module of this weight's size
        key = f"{part}|{int(np.prod(shape))}"
        if key in names:
            return names[key]
    # a constant the converter named after itself (``arith.constant38``: MiniLM's embedding tables): the one
    # module whose weight has this many elements, when exactly one has
    numel = int(np.prod(shape))
    same = {path for key, path in names.items() if key.rsplit("|", 1)[-1] == str(numel)}
    if len(same) == 1 and not any("/" in part for part in parts):
        return same.pop()
    for part in parts:
        if "/" in part and part.rsplit("/", 1)[-1].split(".")[-1].split("_", 1)[0] in _WEIGHTED:
            attrs = [c.split(".")[-1].split("_", 1)[1] for c in part.split("/")[1:] if "_" in c.split(".")[-1]]
            if attrs:
                return ".".join(attrs)
    return weight


# -- sizes --------------------------------------------------------------------------------------
def weight_bytes(content: bytes) -> int:
    """Bytes of every constant tensor's buffer (weights, biases, scales' tensors): what the file stores.
    int4 and int2 weights are stored packed by ai-edge-quantizer, so stored bytes are exact, not nominal."""
    model = read_flatbuffer(content)
    total = 0
    for tensor in model.subgraphs[0].tensors:
        buf = model.buffers[tensor.buffer] if 0 <= tensor.buffer < len(model.buffers) else None
        if buf is not None and buf.data is not None:
            total += len(buf.data)
        elif buf is not None and int(getattr(buf, "size", 0) or 0) > 0:
            total += int(buf.size)
    return total


_TYPE_NAMES: dict[int, str] = {}


def tensor_type_name(code: int) -> str:
    """LiteRT's name of a tensor type code (``INT8``, ``INT4``...)."""
    if not _TYPE_NAMES:
        from ai_edge_litert import schema_py_generated as schema

        _TYPE_NAMES.update({int(v): k for k, v in vars(schema.TensorType).items() if re.fullmatch(r"[A-Z0-9_]+", k)})
    return _TYPE_NAMES.get(int(code), str(code))


__all__ = ["FAMILY", "MISSING", "LiteModelInfo", "available", "interpreter", "load_tflite", "require",
           "tensor_type_name", "weight_bytes"]
_ = onnx  # the stand-in graph is an onnx.ModelProto
