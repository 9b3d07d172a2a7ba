"""Model loading, checking and the inventory of quantizable layers.

A ``LayerSpec`` is what the rest of qae knows of a layer: a stable name recovered from the
exporter's node names or metadata (never from initializer names, which both torch exporters
rename), the op type, the weight initializer, its shape and parameter count, and the MACs and
activation sizes of one inference at the shapes the model runs at.

Shapes are never guessed: a symbolic input dimension stays unknown until it is given
(``--input-shape``, or the data's shapes through ``ModelInfo.at_shapes``), and a layer whose shapes
are unknown has ``macs is None``. What ONNX shape inference cannot resolve although every input
shape is known is read from one ONNX Runtime run (``harness.core.shapes``).

What a model file may hold before it is inventoried (external data, constants as nodes, float16,
control flow, an already quantized graph) is handled in ``harness.core.forms``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from harness.core import forms
from harness.core.errors import InputError, ModelError
from harness.core.shapes import resolve_shapes, run_shapes

#: Op types qae can quantize. LSTM and GRU are weight-only (their W and R are dequantized on load).
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv", "Gather", "LSTM", "GRU")
#: Recurrent ops and their gate count (the rows of W per direction are gates x hidden_size).
RECURRENT_GATES = {"LSTM": 4, "GRU": 3}

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "builtin"
BUILTINS = {"digits-vit": "digits_vit", "digits-cnn": "digits_cnn", "minilm-l6": "minilm_l6"}
#: Builtins whose model is too big to ship: a module whose ``ensure_model()`` exports it on first
#: use (from an optional extra) and returns its path. Their data still ships in ``BUILTIN_DIR``.
EXPORTED_BUILTINS = {"minilm-l6": "harness.builtin.minilm"}


@dataclass(frozen=True)
class LayerSpec:
    """One quantizable layer. ``activation`` is None for an embedding Gather (its input is indices).

    ``macs``, ``input_elements`` and ``output_elements`` are per inference at the model's shapes and
    None where those shapes are unknown (a symbolic input dimension nobody gave). ``weight`` is the
    main weight; ``extra_weights`` are the layer's further weights (an LSTM's recurrence R), and
    ``params`` counts them all.
    """

    name: str
    node_name: str
    op_type: str
    weight: str
    weight_shape: tuple[int, ...]
    params: int
    macs: int | None
    activation: str | None
    output: str
    channel_axis: int
    weight_dtype: str = "float32"
    input_elements: int | None = None
    output_elements: int | None = None
    extra_weights: tuple[str, ...] = ()
    #: a Conv's ``group`` attribute (depthwise: as many groups as input channels); 1 for other ops
    groups: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        d["extra_weights"] = list(self.extra_weights)
        return d


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype and shape (None for a symbolic dimension).

    ``symbols`` holds the declared name of each symbolic dimension ("" where it has none), for
    messages; ``rank_known`` is False when the file declares no shape at all.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    symbols: tuple[str, ...] = ()
    rank_known: bool = True

    def declared(self) -> str:
        """The declared shape as a user reads it: ``[batch, 3, 224, 224]``."""
        if not self.rank_known:
            return "[unknown rank]"
        names = self.symbols or ("",) * len(self.shape)
        return "[" + ", ".join(str(d) if d is not None else (s or "?") for d, s in zip(self.shape, names)) + "]"


@dataclass
class ModelInfo:
    """A loaded, checked model and its layer inventory.

    ``proto`` is the model as qae quantizes it (constants folded, float16 converted: see ``notes``),
    which may differ from the file at ``path``. ``shapes_used`` holds the shape of every input whose
    shape for one inference is known; the others are ``unresolved_inputs()``.
    """

    path: Path
    proto: onnx.ModelProto
    sha256: str
    layers: list[LayerSpec]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    builtin: str | None = None
    shapes_used: dict[str, list[int]] = field(default_factory=dict)
    #: bytes of the .onnx file plus every external data file it references
    file_bytes: int = 0
    #: why the model was changed on load or what qae cannot do with part of it; one line each
    notes: list[str] = field(default_factory=list)
    #: static shapes of every tensor resolved at ``shapes_used`` (shape inference, then ORT's run)
    known_shapes: dict[str, list[int]] = field(default_factory=dict, repr=False)
    #: the feed ``at_shapes`` was given, kept for the ONNX Runtime run ``tensor_shapes`` may need
    _sample: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)
    #: True once ONNX Runtime was run for the shapes inference left unknown (it is run at most once)
    _shapes_run: bool = field(default=False, init=False, repr=False, compare=False)

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def tensor_shapes(self) -> dict[str, list[int]]:
        """Static shapes of every main-graph tensor at the shapes the model runs at (a copy).

        What ONNX shape inference leaves unknown is read from one ONNX Runtime run when every input
        shape is known; the inventory runs it only when a layer needs it, this on first call.
        """
        if not self._shapes_run and not self.unresolved_inputs():
            self._shapes_run = True
            missing = [o for n in self.proto.graph.node for o in n.output if o and o not in self.known_shapes]
            if missing:
                self.known_shapes.update(run_shapes(self.proto, self.inputs, self.shapes_used, missing, self._sample))
        return {name: list(dims) for name, dims in self.known_shapes.items()}

    def at_shapes(self, shapes: dict[str, list[int]], sample: dict[str, np.ndarray] | None = None) -> ModelInfo:
        """The same model re-inventoried at these input shapes (given ones win over known ones).

        ``sample`` is one real feed, used when ONNX shape inference cannot resolve a tensor and the
        model is run once with ONNX Runtime to read its shapes. Layer names never change.
        """
        given = {**self.shapes_used, **{k: [int(d) for d in v] for k, v in shapes.items()}}
        resolved = concrete_input_shapes(self.inputs, given)
        layers, known, ran = _inventory(self.proto, self.inputs, resolved, sample)
        info = replace(self, layers=layers, shapes_used=resolved, known_shapes=known)
        info._sample, info._shapes_run = sample, ran
        return info

    def unresolved_inputs(self) -> dict[str, tuple[int | None, ...]]:
        """Inputs whose shape for one inference is unknown: their declared shape, None where symbolic."""
        return {spec.name: spec.shape for spec in self.inputs if spec.name not in self.shapes_used}

    def require_shapes(self, flags: str = "--input-shape NAME=D1xD2x... or --data/--calib") -> None:
        """Raise ``InputError`` naming the first input whose shape is unknown; no-op when all are known."""
        for spec in self.inputs:
            if spec.name not in self.shapes_used:
                raise InputError(
                    f"input {spec.name!r} has shape {spec.declared()} with dimensions the model does not fix: "
                    f"give its shape for one inference with {flags}"
                )


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


#: The data splits every builtin ships, disjoint and fixed (see harness/builtin/__init__.py).
BUILTIN_DATA_KINDS = ("calib", "eval", "test")


def builtin_data(name: str, kind: str) -> Path:
    """The ``.npz`` of one shipped split of a builtin model.

    ``kind`` is ``calib`` (calibration: sets quantization ranges), ``eval`` (validation: what the
    search optimises) or ``test`` (what is reported, never shown to the search). The three are
    disjoint; each builtin's ``meta.json`` gives their sizes under ``splits``.
    """
    if kind not in BUILTIN_DATA_KINDS:
        raise InputError(f"unknown data split {kind!r} of builtin:{name}: use one of {', '.join(BUILTIN_DATA_KINDS)}")
    return BUILTIN_DIR / BUILTINS[name] / f"{kind}.npz"


def builtin_meta(name: str) -> dict[str, Any]:
    """A builtin's ``meta.json`` (its declared ``metric``, default ``input_shapes``...); {} if none."""
    path = BUILTIN_DIR / BUILTINS[name] / "meta.json"
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def file_sha256(path: Path, data_files: list[Path] | tuple[Path, ...] = ()) -> str:
    """sha256 of the .onnx file, then of each external data file in the order given."""
    h = hashlib.sha256()
    for p in (path, *data_files):
        with open(p, "rb") as f:
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
        # A dimension declared as the literal -1 or 0 (some exporters write that) is symbolic too.
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        symbols = tuple(d.dim_param if d.HasField("dim_param") else "" for d in tt.shape.dim)
        specs.append(TensorSpec(vi.name, _np_dtype(tt.elem_type), shape, symbols, tt.HasField("shape")))
    return specs


def load_model(
    spec: str | Path, input_shapes: dict[str, list[int]] | None = None, require_layers: bool = True
) -> ModelInfo:
    """Load, check and inventory a model; every failure is a one-line ``ModelError``.

    Inputs with symbolic dimensions that ``input_shapes`` does not give stay unresolved (their
    layers' ``macs`` are None). ``require_layers=False`` accepts a model with nothing left to
    quantize (an already quantized one).
    """
    path, builtin = resolve_model_path(spec)
    proto, data_files = forms.read_model(path)
    if not proto.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model (empty graph): re-export it")
    forms.check_model(proto, path)
    if require_layers:
        forms.reject_quantized(proto, path)
    # require_layers=False loads a file to run it as it is (qae evaluate): float16 stays float16.
    proto, notes = forms.prepare(proto, path, convert_low_floats=require_layers)
    inits = {t.name for t in proto.graph.initializer}
    inputs = _tensor_specs(proto.graph.input, inits)
    outputs = _tensor_specs(proto.graph.output, set())
    if builtin:  # a builtin may declare shapes for its symbolic dims (MiniLM: 64 tokens); given ones win
        input_shapes = {**builtin_meta(builtin).get("input_shapes", {}), **(input_shapes or {})}
    shapes = concrete_input_shapes(inputs, input_shapes)
    layers, known, ran = _inventory(proto, inputs, shapes, None)
    flow = forms.control_flow_note(proto, path, bool(layers), require_layers)
    if flow:
        notes.append(flow)
    left = forms.float_weighted_ops(proto, {layer.node_name for layer in layers})
    if not layers and require_layers:
        found = "; ".join(f"{op} {name!r}: {why}" for op, name, _, why in left[:3])
        raise ModelError(
            f"{path} has no quantizable layer (MatMul, Gemm or Conv with a constant weight, an "
            "embedding Gather, LSTM or GRU): there is nothing for qae to quantize"
            + (f" (weighted ops found: {found})" if found else "")
        )
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if len(t.dims) >= 2)
    left_note = forms.float_weighted_note(left, params) if require_layers else None
    if left_note:
        notes.append(left_note)
    file_bytes = sum(p.stat().st_size for p in (path, *data_files))
    info = ModelInfo(
        path, proto, file_sha256(path, data_files), layers, inputs, outputs, builtin, shapes, file_bytes, notes, known
    )
    info._shapes_run = ran
    return info


def concrete_input_shapes(inputs: list[TensorSpec], given: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """Shapes for one inference of every input whose shape is known: given ones win, then fully
    declared ones. An input with a symbolic dimension that is not given is left out (unresolved)."""
    given = dict(given or {})
    unknown = set(given) - {i.name for i in inputs}
    if unknown:
        names = ", ".join(i.name for i in inputs)
        raise InputError(f"input shape given for unknown input {sorted(unknown)[0]!r}: inputs are {names}")
    shapes = {}
    for spec in inputs:
        if spec.name in given:
            dims = [int(d) for d in given[spec.name]]
            if any(d <= 0 for d in dims):
                raise InputError(f"input shape {dims} for {spec.name!r} has a size below 1: give positive sizes")
            if spec.rank_known and len(dims) != len(spec.shape):
                raise InputError(
                    f"input shape {'x'.join(map(str, dims))} for {spec.name!r} has {len(dims)} dimensions but the "
                    f"model declares {len(spec.shape)} {spec.declared()}: give one size per dimension"
                )
            for axis, (got, fixed) in enumerate(zip(dims, spec.shape)):
                if fixed is not None and got != fixed:
                    raise InputError(
                        f"input shape {'x'.join(map(str, dims))} for {spec.name!r} contradicts the model's fixed "
                        f"dimension {axis} = {fixed} {spec.declared()}: keep the fixed sizes"
                    )
            shapes[spec.name] = dims
        elif spec.rank_known and all(d is not None for d in spec.shape):
            shapes[spec.name] = [int(d) for d in spec.shape if d is not None]
    return shapes


def _module_path(node: onnx.NodeProto, weight: str | None = None) -> str | None:
    """The torch module path of a node: dynamo metadata first, then legacy node names.

    Legacy names repeat the parent in each scope: ``/layer1/layer1.0/conv1/Conv`` is module
    ``layer1.0.conv1`` (a component that starts with the previous one + "." replaces it).
    """
    props = {p.key: p.value for p in node.metadata_props}
    if "Fuse" in props.get("pkg.onnxscript.rewriter.rule_name", "") and weight and weight.endswith(".weight"):
        # The dynamo exporter's optimizer fuses Conv+BatchNorm into a Conv that carries the
        # BatchNorm's metadata (``bn1``); the fused weight keeps the conv parameter's name.
        return weight[: -len(".weight")]
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
        path: list[str] = []
        for part in (p for p in name.split("/")[:-1] if p):
            joined = ".".join(path)
            if path and part.startswith(joined + "."):
                path = [part]  # a full dotted path (an nn.Sequential child) repeats its parents
            elif path and part.startswith(path[-1] + "."):
                path[-1] = part
            else:
                path.append(part)
        if path:
            return ".".join(path)
    return None


def _dynamo_param_path(node: onnx.NodeProto, weight: str | None, consts: Mapping[str, Any],
                       readers: Callable[[str], list[onnx.NodeProto]]) -> str | None:
    """The module path of a dynamo-exported node (named ``node_<op>_<n>``) that lost its scope metadata: from
    its weight's parameter name (``q.weight``), else, when the exporter renamed a transposed weight
    (``val_0``), from the bias the next Add reads (``q.bias``)."""
    if not node.name.startswith("node_"):
        return None
    if weight and weight.endswith(".weight"):
        return weight[: -len(".weight")]
    after = readers(node.output[0]) if node.output else []
    if len(after) == 1 and after[0].op_type == "Add":
        bias = next((i for i in after[0].input if i in consts and i.endswith(".bias")), None)
        if bias:
            return bias[: -len(".bias")]
    return None


def _fallback_base(node: onnx.NodeProto, index: int) -> str:
    """A name for a node without module path: its own name, or op + index for an unnamed one.

    ``forms.prepare`` names unnamed nodes ``qae_<Op>_<index in the file>``, so the index, and with
    it the layer name, is the one the file's order gives even after constants were folded away.
    """
    m = re.fullmatch(rf"qae_{re.escape(node.op_type)}_(\d+)_*", node.name)
    if m:
        return f"{node.op_type.lower()}_{m.group(1)}"
    return node.name or f"{node.op_type.lower()}_{index}"


def inventory(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[LayerSpec]:
    """List the quantizable layers of ``proto`` in graph order with stable, unique names."""
    inputs = _tensor_specs(proto.graph.input, {t.name for t in proto.graph.initializer})
    return _inventory(proto, inputs, shapes, None)[0]


def _inventory(
    proto: onnx.ModelProto,
    inputs: list[TensorSpec],
    shapes: dict[str, list[int]],
    sample: dict[str, np.ndarray] | None,
) -> tuple[list[LayerSpec], dict[str, list[int]], bool]:
    """Layers with their costs at ``shapes``, every tensor shape resolved, and whether ORT was run."""
    # Only initializers: ONNX Runtime's quantizer quantizes initializers (forms folds Constants).
    consts = {t.name: t for t in proto.graph.initializer}
    found: list[tuple[str, dict[str, Any], onnx.NodeProto]] = []
    by_input: dict[str, list[onnx.NodeProto]] | None = None

    def readers(tensor: str) -> list[onnx.NodeProto]:  # built once, and only if a dynamo name needs it
        nonlocal by_input
        if by_input is None:
            by_input = {}
            for n in proto.graph.node:
                for i in n.input:
                    by_input.setdefault(i, []).append(n)
        return by_input.get(tensor, [])

    for index, node in enumerate(proto.graph.node):
        if node.op_type not in QUANTIZABLE_OPS:
            continue
        info = _layer_fields(node, consts)
        if info is None:
            continue
        # The same fallback name harness.quant.quantize gives unnamed nodes, so the two always agree.
        info["node_name"] = node.name or f"qae_{node.op_type}_{index}"
        found.append((_module_path(node, info["weight"]) or _dynamo_param_path(node, info["weight"], consts, readers)
                      or _fallback_base(node, index), info, node))
    def needed(known: dict[str, list[int]]) -> list[str]:
        return [t for _, info, node in found for t in _cost_tensors(node, info, known)]

    complete = all(spec.name in shapes for spec in inputs)
    known, ran = resolve_shapes(proto, inputs, shapes, needed, sample if complete else None, run=complete)
    counts: dict[str, int] = {}
    for base, _, _ in found:
        counts[base] = counts.get(base, 0) + 1
    seen: dict[str, int] = {}
    layers = []
    for base, info, node in found:
        name = base
        if counts[base] > 1:  # e.g. a module that calls two weighted ops: keep names distinct
            seen[base] = seen.get(base, 0) + 1
            name = f"{base}.{info['op_type'].lower()}{seen[base]}"
        info.update(_layer_costs(node, info, known))
        layers.append(LayerSpec(name=name, **info))
    return layers, known, ran


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _layer_fields(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> dict[str, Any] | None:
    """What a layer is, independent of shapes; None when the node is not a quantizable layer."""
    op = node.op_type
    extra: tuple[str, ...] = ()
    output = node.output[0]
    if op == "Gather":
        if len(node.input) < 2 or node.input[0] not in consts or node.input[1] in consts:
            return None
        weight, activation, axis = node.input[0], None, 0
        if _attrs(node).get("axis", 0) != 0:
            return None
    elif op in ("MatMul", "Gemm"):
        if len(node.input) < 2 or node.input[1] not in consts or node.input[0] in consts:
            return None
        weight, activation = node.input[1], node.input[0]
        axis = 0 if (op == "Gemm" and _attrs(node).get("transB", 0)) else 1
    elif op in RECURRENT_GATES:
        # X, W [dirs, gates*H, I], R [dirs, gates*H, H]: both weights constant, or it is no layer.
        if len(node.input) < 3 or node.input[1] not in consts or node.input[2] not in consts:
            return None
        weight, activation, axis, extra = node.input[1], node.input[0], 1, (node.input[2],)
        output = next((o for o in node.output if o), node.output[0])
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
    if op in RECURRENT_GATES and (len(wshape) != 3 or consts[extra[0]].data_type != tensor.data_type):
        return None
    params = sum(int(np.prod(tuple(consts[w].dims))) for w in (weight, *extra))
    groups = int(_attrs(node).get("group", 1)) if op == "Conv" else 1
    return {
        "node_name": node.name,
        "op_type": op,
        "weight": weight,
        "weight_shape": wshape,
        "params": params,
        "macs": None,
        "activation": activation,
        "output": output,
        "channel_axis": axis,
        "weight_dtype": _np_dtype(tensor.data_type),
        "extra_weights": extra,
        "groups": max(groups, 1),
    }


def _cost_tensors(node: onnx.NodeProto, info: dict[str, Any], known: dict[str, list[int]]) -> list[str]:
    """The tensors whose shapes a layer's costs still need, given the ``known`` ones."""
    op = info["op_type"]
    if op == "Gather":
        tensors = [node.input[1], node.output[0]]
    elif op in RECURRENT_GATES:
        tensors = [node.input[0]]
    elif op in ("MatMul", "Gemm") and (node.input[0] in known or node.output[0] in known):
        return []  # with a 2-D weight, either side gives the other (see _layer_costs)
    else:
        tensors = [node.input[0], node.output[0]]
    return [t for t in tensors if t not in known]


def _elements(shape: list[int] | None) -> int | None:
    return None if shape is None else int(np.prod(shape, dtype=np.int64)) if shape else 1


def _layer_costs(node: onnx.NodeProto, info: dict[str, Any], known: dict[str, list[int]]) -> dict[str, Any]:
    """MACs and activation element counts per inference; None where a shape is unknown."""
    op, w = info["op_type"], info["weight_shape"]
    if op == "Gather":  # a table lookup: no multiply-accumulate; reads the ids, writes rows
        return {"macs": 0, "input_elements": _elements(known.get(node.input[1])),
                "output_elements": _elements(known.get(node.output[0]))}
    if op in RECURRENT_GATES:
        x = known.get(node.input[0])
        if x is None or len(x) != 3:
            return {"macs": None, "input_elements": None, "output_elements": None}
        layout = int(_attrs(node).get("layout", 0))
        steps, batch = (x[1], x[0]) if layout == 1 else (x[0], x[1])
        dirs, gate_rows, size_in = w
        hidden = gate_rows // RECURRENT_GATES[op]
        # Each step: every gate is W x_t (I long) plus R h_{t-1} (H long) per hidden unit and direction.
        macs = steps * gate_rows * (size_in + hidden) * dirs * batch
        return {"macs": int(macs), "input_elements": _elements(x), "output_elements": steps * dirs * batch * hidden}
    x, y = known.get(node.input[0]), known.get(node.output[0])
    out, inp = _elements(y), _elements(x)
    if op in ("MatMul", "Gemm"):
        # With W [K, N] ([N, K] for Gemm transB) the activation is [..., K] and the output [..., N]
        # with the same leading dimensions, so either side's size gives the other's.
        k, n = (w[1], w[0]) if info["channel_axis"] == 0 else (w[0], w[1])
        if out is None and inp is not None:
            out = inp // k * n
        elif inp is None and out is not None:
            inp = out // n * k
    # Every output element of MatMul/Gemm is a K-long dot product; of Conv, Cin/groups*kh*kw long
    # (W is [Cout, Cin/groups, kh, kw], so depthwise reduces over kh*kw only).
    transposed = op == "Gemm" and info["channel_axis"] == 0
    reduce = int(np.prod(w[1:])) if op == "Conv" else w[1] if transposed else w[0]
    macs = None if out is None else out * int(reduce)
    return {"macs": macs, "input_elements": inp, "output_elements": out}
