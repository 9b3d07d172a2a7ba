"""Model loading, checking and the inventory of quantizable layers.

A ``LayerSpec`` is what the rest of qae knows of a layer: a stable name recovered from the
exporter's node names or metadata (never from initializer names, which both torch exporters
rename), the op type, the weight initializer, its shape and parameter count, and the MACs of one
inference at the model's input shapes.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, shape_inference

from harness.core.errors import ModelError

#: Op types qae can quantize, with the input index that holds the weight.
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv", "Gather")

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "builtin"
BUILTINS = {"digits-vit": "digits_vit", "minilm-l6": "minilm_l6"}
#: Builtins whose model is too big to ship: a module whose ``ensure_model()`` exports it on first
#: use (from an optional extra) and returns its path. Their data still ships in ``BUILTIN_DIR``.
EXPORTED_BUILTINS = {"minilm-l6": "harness.builtin.minilm"}


@dataclass(frozen=True)
class LayerSpec:
    """One quantizable layer. ``activation`` is None for an embedding Gather (its input is indices)."""

    name: str
    node_name: str
    op_type: str
    weight: str
    weight_shape: tuple[int, ...]
    params: int
    macs: int
    activation: str | None
    output: str
    channel_axis: int
    weight_dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        return d


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype and shape (None for a symbolic dimension)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass
class ModelInfo:
    """A loaded, checked model and its layer inventory."""

    path: Path
    proto: onnx.ModelProto
    sha256: str
    layers: list[LayerSpec]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    builtin: str | None = None
    shapes_used: dict[str, list[int]] = field(default_factory=dict)

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def tensor_shapes(self) -> dict[str, list[int]]:
        """Static shapes of every tensor shape inference resolves at the shapes the model runs at."""
        return _shape_map(self.proto, self.shapes_used)


def resolve_model_path(spec: str | Path) -> tuple[Path, str | None]:
    """Turn ``builtin:NAME`` or a path into a file path; returns (path, builtin name or None)."""
    text = str(spec)
    if text.startswith("builtin:"):
        name = text.split(":", 1)[1]
        if name not in BUILTINS:
            known = ", ".join(f"builtin:{n}" for n in sorted(BUILTINS))
            raise ModelError(f"unknown builtin model {text!r}: use one of {known}")
        if name in EXPORTED_BUILTINS:
            return Path(importlib.import_module(EXPORTED_BUILTINS[name]).ensure_model()), name
        return BUILTIN_DIR / BUILTINS[name] / "model.onnx", name
    path = Path(text)
    if not path.is_file():
        raise ModelError(f"model file {text} not found: give the path of an .onnx file or builtin:NAME")
    return path, None


def builtin_data(name: str, kind: str) -> Path:
    """The shipped calibration (``calib``) or evaluation (``eval``) set of a builtin model."""
    return BUILTIN_DIR / BUILTINS[name] / f"{kind}.npz"


def builtin_meta(name: str) -> dict[str, Any]:
    """A builtin's ``meta.json`` (its declared ``metric``, default ``input_shapes``...); {} if none."""
    path = BUILTIN_DIR / BUILTINS[name] / "meta.json"
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _np_dtype(elem_type: int) -> str:
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, TypeError, ValueError):
        return f"onnx:{elem_type}"


def _tensor_specs(values: Any, skip: set[str]) -> list[TensorSpec]:
    specs = []
    for vi in values:
        if vi.name in skip:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append(TensorSpec(vi.name, _np_dtype(tt.elem_type), shape))
    return specs


def load_model(
    spec: str | Path, input_shapes: dict[str, list[int]] | None = None, require_layers: bool = True
) -> ModelInfo:
    """Load, check and inventory a model; every failure is a one-line ``ModelError``.

    ``require_layers=False`` accepts a model with nothing left to quantize (an already quantized one).
    """
    path, builtin = resolve_model_path(spec)
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError... for bad files
        raise ModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}): "
            "check the file is complete, or re-export it with torch.onnx.export"
        ) from None
    if not proto.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model (empty graph): re-export it")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} fails the ONNX checker ({first}): re-export the model") from None
    inits = {t.name for t in proto.graph.initializer}
    inputs = _tensor_specs(proto.graph.input, inits)
    outputs = _tensor_specs(proto.graph.output, set())
    if builtin:  # a builtin may declare shapes for its symbolic dims (MiniLM: 64 tokens); given ones win
        input_shapes = {**builtin_meta(builtin).get("input_shapes", {}), **(input_shapes or {})}
    shapes = concrete_input_shapes(inputs, input_shapes)
    layers = inventory(proto, shapes)
    if not layers and require_layers:
        raise ModelError(
            f"{path} has no quantizable layer (MatMul, Gemm or Conv with a constant weight, or an "
            "embedding Gather): there is nothing for qae to quantize"
        )
    return ModelInfo(path, proto, file_sha256(path), layers, inputs, outputs, builtin, shapes)


def concrete_input_shapes(inputs: list[TensorSpec], given: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """Shapes for one inference: given ones win; a symbolic dimension counts as 1."""
    given = dict(given or {})
    unknown = set(given) - {i.name for i in inputs}
    if unknown:
        names = ", ".join(i.name for i in inputs)
        raise ModelError(f"input shape given for unknown input {sorted(unknown)[0]!r}: inputs are {names}")
    shapes = {}
    for spec in inputs:
        if spec.name in given:
            shapes[spec.name] = [int(d) for d in given[spec.name]]
        else:
            shapes[spec.name] = [d if d else 1 for d in spec.shape]
    return shapes


def _initializer_arrays(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    # Only initializers: ONNX Runtime's quantizer quantizes initializers, not Constant nodes.
    return {t.name: t for t in proto.graph.initializer}


def _module_path(node: onnx.NodeProto) -> str | None:
    """The torch module path of a node: dynamo metadata first, then legacy node names."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            # The last scope is the aten call itself ("linear_3"); the one before is the module.
            scopes = [s for s in scopes[:-1] if s]
            if scopes:
                return str(scopes[-1])
    name = node.name
    if name.startswith("/") and name.count("/") >= 2:
        parts = [p for p in name.split("/")[:-1] if p]
        if parts:
            return ".".join(parts)
    return None


def _shape_map(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Static shapes of every tensor for one inference at the given input shapes."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for vi in model.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[vi.name]):
                d.Clear()
                d.dim_value = int(v)
    del model.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    out: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    return out


def inventory(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[LayerSpec]:
    """List the quantizable layers of ``proto`` in graph order with stable, unique names."""
    consts = _initializer_arrays(proto)
    tshape = _shape_map(proto, shapes)
    found: list[tuple[str, dict[str, Any]]] = []
    for index, node in enumerate(proto.graph.node):
        if node.op_type not in QUANTIZABLE_OPS:
            continue
        info = _layer_fields(node, consts, tshape)
        if info is None:
            continue
        # The same fallback name harness.quant.quantize gives unnamed nodes, so the two always agree.
        info["node_name"] = node.name or f"qae_{node.op_type}_{index}"
        base = _module_path(node) or node.name or f"{node.op_type.lower()}_{index}"
        found.append((base, info))
    counts: dict[str, int] = {}
    for base, _ in found:
        counts[base] = counts.get(base, 0) + 1
    seen: dict[str, int] = {}
    layers = []
    for base, info in found:
        name = base
        if counts[base] > 1:  # e.g. a module that calls two weighted ops: keep names distinct
            seen[base] = seen.get(base, 0) + 1
            name = f"{base}.{info['op_type'].lower()}{seen[base]}"
        layers.append(LayerSpec(name=name, **info))
    return layers


def _layer_fields(
    node: onnx.NodeProto, consts: dict[str, onnx.TensorProto], tshape: dict[str, list[int]]
) -> dict[str, Any] | None:
    op = node.op_type
    if op == "Gather":
        if len(node.input) < 2 or node.input[0] not in consts or node.input[1] in consts:
            return None
        weight, activation, axis = node.input[0], None, 0
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("axis", 0) != 0:
            return None
    elif op in ("MatMul", "Gemm"):
        if len(node.input) < 2 or node.input[1] not in consts or node.input[0] in consts:
            return None
        weight, activation = node.input[1], node.input[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = 0 if (op == "Gemm" and attrs.get("transB", 0)) else 1
    else:  # Conv
        if len(node.input) < 2 or node.input[1] not in consts:
            return None
        weight, activation, axis = node.input[1], node.input[0], 0
    tensor = consts[weight]
    if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        return None
    wshape = tuple(int(d) for d in tensor.dims)
    if op in ("MatMul", "Gemm", "Gather") and len(wshape) != 2:
        return None
    params = int(np.prod(wshape)) if wshape else 1
    out_shape = tshape.get(node.output[0])
    macs = 0
    if out_shape is not None and op != "Gather":
        # Every output element of MatMul/Gemm is a K-long dot product; of Conv, Cin/g*kh*kw long.
        reduce = wshape[1] if (op == "Gemm" and axis == 0) else wshape[0]
        if op == "Conv":
            reduce = int(np.prod(wshape[1:]))
        macs = int(np.prod(out_shape)) * int(reduce)
    return {
        "node_name": node.name,
        "op_type": op,
        "weight": weight,
        "weight_shape": wshape,
        "params": params,
        "macs": macs,
        "activation": activation,
        "output": node.output[0],
        "channel_axis": axis,
        "weight_dtype": _np_dtype(tensor.data_type),
    }
