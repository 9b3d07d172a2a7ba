"""The forms a model file comes in, brought to the one form qae inventories and quantizes.

Each function either makes a model usable (reading external data, folding constants, float16 to
float32) or says in one line why it cannot be used and what to give instead (an already quantized
graph, layers only inside control flow, external data outside the model's folder).

Why an explicit fold and not ONNX Runtime's own preprocessing: ``quant_pre_process`` and a session
with ``ORT_ENABLE_BASIC`` + ``optimized_model_filepath`` fold constants too, but they also fuse and
rename nodes: on ONNX Runtime 1.32 (run here) MatMul ``fc`` + Add became Gemm ``fc/MatMulAddFusion``,
and a float16 model gained ``InsertedPrecisionFreeCast_*`` nodes; the optimized file of a model with
external data points at a data file it does not write. Layer names come from node names and
exporter metadata, and a genome file is keyed by layer names, so qae folds only ``Constant`` nodes
and ``Identity`` of a constant, which touches no other node and keeps every name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from harness.core.errors import ModelError

#: Op types whose presence means a graph is already quantized (ONNX and com.microsoft).
QUANTIZED_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "MatMulNBits",
    "DynamicQuantizeMatMul",
    "GatherBlockQuantized",
    "QGemm",
    "QAttention",
)
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
#: Op types qae counts as weighted when they sit inside a subgraph (with the weight's input index).
_WEIGHTED = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0, "LSTM": 1, "GRU": 1}
_LOW_FLOATS: dict[int, str] = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}


# -- reading -----------------------------------------------------------------------------------
def read_model(path: Path) -> tuple[onnx.ModelProto, list[Path]]:
    """Load a model and its external data; returns the proto and the data files, sorted by path."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError... for bad files
        raise ModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}): "
            "check the file is complete, or re-export it with torch.onnx.export"
        ) from None
    files = external_files(proto, path)
    if files:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:
            raise ModelError(
                f"{path}: its external data cannot be read ({type(exc).__name__}): keep the model's data "
                f"files ({', '.join(f.name for f in files)}) complete and next to it"
            ) from None
    return proto, files


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in it, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for g in _graphs(graph):
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def external_files(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """The external data files ``proto``'s tensors reference, each checked to lie inside the model's folder."""
    root = path.resolve().parent
    found: dict[str, Path] = {}
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(root):
            raise ModelError(
                f"{path}: tensor {tensor.name!r} points to external data {location!r} outside the model's folder: "
                "keep the data files next to the model and re-save it with a relative location"
            )
        if not target.is_file():
            raise ModelError(
                f"{path}: external data file {location!r} (tensor {tensor.name!r}) is missing: copy it next to "
                "the model, or re-save the model with onnx.save(..., save_as_external_data=False)"
            )
        found[target.relative_to(root).as_posix()] = target
    return [found[k] for k in sorted(found)]


def check_model(proto: onnx.ModelProto, path: Path) -> None:
    """Run the ONNX checker; a failure is a one-line ``ModelError``."""
    try:
        # The checker refuses protos over 2 GB in memory; the path form reads external data itself.
        onnx.checker.check_model(str(path) if proto.ByteSize() >= 2**31 - 1 else proto)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} fails the ONNX checker ({first}): re-export the model") from None


# -- what qae refuses --------------------------------------------------------------------------
def quantized_ops(proto: onnx.ModelProto) -> dict[str, int]:
    """Counts of the quantized op kinds in the model (subgraphs included), by kind."""
    counts: dict[str, int] = {}
    for g in _graphs(proto.graph):
        for node in g.node:
            op = node.op_type
            if op in ("QuantizeLinear", "DequantizeLinear"):
                kind = "QuantizeLinear/DequantizeLinear"
            elif op.startswith("QLinear") or op in QUANTIZED_OPS:
                kind = op
            else:
                continue
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def reject_quantized(proto: onnx.ModelProto, path: Path) -> None:
    """A ``ModelError`` for a graph that is quantized already: qae quantizes float models."""
    counts = quantized_ops(proto)
    if counts:
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        raise ModelError(
            f"{path} is already quantized ({found}): give the float model it was made from "
            "(qae evaluate still takes this file)"
        )


def control_flow(proto: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """(op type, node name, weighted ops inside) for each main-graph If/Loop/Scan with weighted ops inside."""
    consts = {t.name for t in proto.graph.initializer}
    out = []
    for index, node in enumerate(proto.graph.node):
        if node.op_type not in CONTROL_FLOW_OPS:
            continue
        count = 0
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                for g in _graphs(sub):
                    local = consts | {t.name for t in g.initializer}
                    local |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
                    for inner in g.node:
                        slot = _WEIGHTED.get(inner.op_type)
                        if slot is not None and len(inner.input) > slot and inner.input[slot] in local:
                            count += 1
        if count:
            out.append((node.op_type, node.name or f"{node.op_type.lower()}_{index}", count))
    return out


def control_flow_note(proto: onnx.ModelProto, path: Path, has_layers: bool, require_layers: bool = True) -> str | None:
    """Why the weighted ops inside If/Loop/Scan stay float: a note, or a ``ModelError`` when they
    are all the model has."""
    flows = control_flow(proto)
    if not flows:
        return None
    total = sum(n for _, _, n in flows)
    where = ", ".join(f"{op} {name!r} ({n})" for op, name, n in flows)
    fix = "export the model without control flow (resolve the branch, or unroll the loop at a fixed length)"
    if not has_layers and require_layers:
        raise ModelError(
            f"{path}: all {total} weighted ops sit inside control flow ({where}), whose subgraphs ONNX Runtime's "
            f"QDQ quantizer does not quantize here: {fix}"
        )
    return f"{total} weighted ops inside control flow ({where}) stay float (not quantized): to quantize them, {fix}"


#: ops that compute with a weight: one reading a constant of >= 2 dims that qae did not make a layer stays float
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "Gather", "LSTM", "GRU", "RNN",
                          "Attention", "MultiHeadAttention", "QAttention", "EmbedLayerNormalization"})
#: ops a weight may pass through on its way to the op that uses it (an exporter's unfolded Transpose)
_WEIGHT_PATH_OPS = frozenset({"Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten"})


def float_weighted_ops(proto: onnx.ModelProto, layer_nodes: set[str]) -> list[tuple[str, str, int, str]]:
    """Weighted ops that are not among ``layer_nodes`` (qae's layers' node names): (op type, node name,
    weight parameters, why) for each node of ``WEIGHTED_OPS`` reading a float constant of >= 2 dims,
    directly or through ``_WEIGHT_PATH_OPS`` nodes. They run float in every quantized model."""
    consts = {t.name: t for t in proto.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT,
                                                                             onnx.TensorProto.FLOAT16,
                                                                             onnx.TensorProto.DOUBLE,
                                                                             onnx.TensorProto.BFLOAT16)}
    producers = {out: n for n in proto.graph.node for out in n.output}

    def source(name: str) -> tuple[str | None, bool]:
        """The constant a tensor comes from (None if it does not) and whether a path op was on the way."""
        via = False
        for _ in range(8):
            if name in consts:
                return name, via
            node = producers.get(name)
            if node is None or node.op_type not in _WEIGHT_PATH_OPS or not node.input:
                return None, via
            name, via = node.input[0], True
        return None, via

    out = []
    for index, node in enumerate(proto.graph.node):
        name = node.name or f"qae_{node.op_type}_{index}"
        if node.op_type not in WEIGHTED_OPS or name in layer_nodes:
            continue
        weights = []
        for slot, tensor in enumerate(node.input):
            const, via = source(tensor)
            if const is None or len(consts[const].dims) < 2:
                continue
            if node.op_type == "Gather" and slot != 0:
                continue
            weights.append((slot, const, via))
        if not weights:
            continue
        n = sum(int(np.prod(consts[c].dims)) for c in {c for _, c, _ in weights})
        slot, _, via = weights[0]
        if via:
            why = "its weight passes through a Transpose/Reshape qae does not fold (export with constant folding)"
        elif node.op_type in ("MatMul", "Gemm") and slot == 0:
            why = "its constant is the first input (qae quantizes x @ W, not W @ x)"
        elif node.op_type == "MatMul" and len(consts[weights[0][1]].dims) > 2:
            why = f"its weight is {len(consts[weights[0][1]].dims)}-D (a batched MatMul; qae quantizes 2-D weights)"
        elif node.op_type not in ("Conv", "MatMul", "Gemm", "Gather", "LSTM", "GRU"):
            why = f"qae has no quantizer for {node.op_type}"
        else:
            why = "its form is not one qae quantizes"
        out.append((node.op_type, name, n, why))
    return out


def float_weighted_note(ops: list[tuple[str, str, int, str]], total_params: int) -> str | None:
    """One note for ``float_weighted_ops``'s list, with the share of the model's weights they hold."""
    if not ops:
        return None
    held = sum(n for _, _, n, _ in ops)
    share = f", {held / total_params * 100:.0f} % of the model's weights" if total_params else ""
    shown = "; ".join(f"{op} {name!r} ({n:,} weights: {why})" for op, name, n, why in ops[:6])
    more = f"; and {len(ops) - 6} more" if len(ops) > 6 else ""
    return (f"{len(ops)} weighted op(s) stay float in every quantized model ({held:,} weights{share}), counted at "
            f"their float size: {shown}{more}")


# -- what qae changes --------------------------------------------------------------------------
def prepare(proto: onnx.ModelProto, path: Path, convert_low_floats: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """Name unnamed nodes, fold constants into initializers and (if asked) float16 into float32.

    Edits ``proto`` in place and returns it with one note per change a user should know of.
    """
    notes: list[str] = []
    name_nodes(proto)
    reject_training_mode(proto, path)
    notes += inline_constant_ifs(proto)
    fold_constants(proto)
    if convert_low_floats:
        low = low_float_kinds(proto)
        if low:
            to_float32(proto, path, low)
            notes.append(
                f"converted {'/'.join(sorted(low))} -> float32 for quantization: the quantized model computes in "
                "float32 and keeps the file's input and output types (Casts at the boundary)"
            )
    return proto, notes


def reject_training_mode(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse a model exported in training mode: a BatchNormalization with ``training_mode=1`` normalises
    each batch by its own statistics (so every score would depend on how many samples run together), and a
    Dropout with a true ``training_mode`` input drops at random."""
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        training = False
        if node.op_type == "BatchNormalization":
            training = any(a.name == "training_mode" and a.i for a in node.attribute)
        elif node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            flag = inits.get(node.input[2])
            training = flag is None or bool(numpy_helper.to_array(flag).any())  # a computed flag may be true
        if training:
            raise ModelError(
                f"{path}: {node.op_type} {node.name!r} runs in training mode (the model was exported from a module in "
                "train()), so its outputs depend on the batch or are random: export it after model.eval()"
            )


def _constant_condition(graph: onnx.GraphProto, name: str) -> bool | None:
    """The value of a scalar boolean ``name`` that a Constant node or an initializer holds, else None."""
    tensor = next((t for t in graph.initializer if t.name == name), None)
    if tensor is None:
        node = next((n for n in graph.node if n.op_type == "Constant" and n.output[0] == name), None)
        value_attr = None if node is None else next((a for a in node.attribute if a.name == "value"), None)
        tensor = None if value_attr is None else value_attr.t
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return bool(value.reshape(())) if value.size == 1 and value.dtype == np.bool_ else None


def inline_constant_ifs(proto: onnx.ModelProto) -> list[str]:
    """Replace each main-graph ``If`` whose condition is a constant by the branch it always takes.

    Exporters leave such Ifs behind (a flag fixed at export time); inlined, the branch's layers are
    ordinary layers that qae lists, quantizes and costs. A branch's own tensor and node names are kept
    unless they collide with the main graph's (then they get the If's name as a prefix); a branch
    holding nested subgraphs is inlined only without collisions, since those subgraphs may read its
    names. Returns one note per If resolved.
    """
    graph = proto.graph
    notes = []
    index = 0
    while index < len(graph.node):
        node = graph.node[index]
        cond = _constant_condition(graph, node.input[0]) if node.op_type == "If" and node.input else None
        if cond is None:
            index += 1
            continue
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch"))
        taken = [n.name for n in graph.node] + [o for n in graph.node for o in n.output]
        taken += [t.name for t in graph.initializer] + [i.name for i in graph.input]
        used = set(taken)
        produced = {o for n in branch.node for o in n.output} | {t.name for t in branch.initializer}
        clash = (produced | {n.name for n in branch.node}) & used
        nested = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                     for n in branch.node for a in n.attribute)
        if clash and nested:
            index += 1
            continue
        rename = {t: f"{node.name}/{t}" for t in produced & used}

        def named(t: str, rename: dict[str, str] = rename) -> str:
            return rename.get(t, t)

        spliced: list[onnx.NodeProto] = []
        for inner in branch.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(inner)
            copy.name = f"{node.name}/{inner.name}" if inner.name in used else inner.name
            copy.input[:] = [named(t) for t in inner.input]
            copy.output[:] = [named(t) for t in inner.output]
            spliced.append(copy)
        for init in branch.initializer:
            moved = onnx.TensorProto()
            moved.CopyFrom(init)
            moved.name = named(init.name)
            graph.initializer.append(moved)
        for out, result in zip(branch.output, node.output):
            spliced.append(helper.make_node("Identity", [named(out.name)], [result], name=f"{node.name}/{result}"))
        other = next((a.g for a in node.attribute if a.name == ("else_branch" if cond else "then_branch")), None)
        dropped = {node.input[0]} | ({t for g in _graphs(other) for n in g.node for t in n.input} if other else set())
        del graph.node[index]
        for offset, new in enumerate(spliced):
            graph.node.insert(index + offset, new)
        index += len(spliced)
        index -= _drop_unread(graph, dropped, before=index)
        side = "then" if cond else "else"
        notes.append(f"If {node.name!r} has a constant condition ({str(cond).lower()}): its {side} branch is "
                     "inlined (the other branch never runs)")
    return notes


def _drop_unread(graph: onnx.GraphProto, names: set[str], before: int) -> int:
    """Remove the initializers and Constant nodes among ``names`` that nothing reads any more (what
    only a discarded branch read); returns how many nodes before index ``before`` went."""
    read = {t for g in _graphs(graph) for n in g.node for t in n.input} | {o.name for o in graph.output}
    gone = names - read
    for init in [t for t in graph.initializer if t.name in gone]:
        graph.initializer.remove(init)
    removed = 0
    for i in reversed(range(len(graph.node))):
        n = graph.node[i]
        if n.op_type == "Constant" and n.output[0] in gone:
            del graph.node[i]
            removed += i < before
    return removed


def name_nodes(proto: onnx.ModelProto) -> None:
    """Give each unnamed main-graph node the name ``qae_<Op>_<index>`` (its index in the file), the
    name ``harness.quant.quantize`` gives it too; folding nodes away later keeps every name."""
    used = {n.name for n in proto.graph.node if n.name}
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"qae_{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(attr), np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(helper.get_attribute_value(attr), np.int64)
    return None  # sparse or string values stay nodes


#: The weight and bias inputs of the ops qae quantizes, by op type.
_PARAMETER_SLOTS = {
    "MatMul": (1,), "Gemm": (1, 2), "Conv": (1, 2), "Gather": (0,), "LSTM": (1, 2, 3), "GRU": (1, 2, 3)
}


def _parameter_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors read as a weight or bias by a quantizable op, directly or through a chain of Identity."""
    found = {
        node.input[i]
        for node in graph.node
        for i in _PARAMETER_SLOTS.get(node.op_type, ())
        if i < len(node.input) and node.input[i]
    }
    for node in reversed(graph.node):  # graph order: walking back reaches each chain's start
        if node.op_type == "Identity" and node.output[0] in found:
            found.add(node.input[0])
    return found


def fold_constants(proto: onnx.ModelProto) -> None:
    """``Constant`` nodes and ``Identity`` of a constant that feed a weight or bias become
    initializers: ONNX Runtime's quantizer (and qae's inventory) treat only initializers as weights.

    Other constants (shapes, axes, scalars) stay nodes, so the model's initializers, and the weight
    bytes counted over them, stay those of the file.
    """
    graph = proto.graph
    parameters = _parameter_tensors(graph)
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    graph_inputs = {i.name for i in graph.input}
    uses: dict[str, int] = {}
    for g in _graphs(graph):
        for n in g.node:
            for name in n.input:
                uses[name] = uses.get(name, 0) + 1
    kept = []
    added: list[onnx.TensorProto] = []
    for node in graph.node:
        out = node.output[0] if len(node.output) == 1 else ""
        if not out or out in graph_outputs or out not in parameters:
            kept.append(node)
            continue
        if node.op_type == "Constant":
            value_attr = next((a for a in node.attribute if a.name == "value"), None)
            if value_attr is not None:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value_attr.t)  # keeps the exact stored type (float16, bfloat16...)
                tensor.name = out
            else:
                value = _constant_value(node)
                if value is None:
                    kept.append(node)
                    continue
                tensor = numpy_helper.from_array(value, out)
        elif node.op_type == "Identity" and node.input[0] in inits:
            source = node.input[0]
            tensor = onnx.TensorProto()
            tensor.CopyFrom(inits[source])
            tensor.name = out
            # A copy, not a rename, when the source has other readers: a tied weight then gets one
            # copy per layer, and each layer can take its own precision.
            if uses.get(source, 0) <= 1 and source not in graph_outputs and source not in graph_inputs:
                graph.initializer.remove(inits.pop(source))
        else:
            kept.append(node)
            continue
        graph.initializer.append(tensor)
        inits[out] = graph.initializer[-1]
        added.append(tensor)
    if len(kept) == len(graph.node):
        return
    del graph.node[:]
    graph.node.extend(kept)
    if proto.ir_version < 4:  # before IR 4 every initializer must also be a graph input
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in added)


def low_float_kinds(proto: onnx.ModelProto) -> set[str]:
    """The low-precision float types (float16, bfloat16) of the model's initializers and inputs."""
    kinds = {_LOW_FLOATS[t.data_type] for t in _tensors(proto.graph) if t.data_type in _LOW_FLOATS}
    kinds |= {
        _LOW_FLOATS[vi.type.tensor_type.elem_type]
        for vi in proto.graph.input
        if vi.type.tensor_type.elem_type in _LOW_FLOATS
    }
    return kinds


def to_float32(proto: onnx.ModelProto, path: Path, kinds: set[str]) -> None:
    """Convert every float16/bfloat16 tensor, value type and cast target to float32, then check
    that ONNX Runtime loads the result; a ``ModelError`` says what was found when it does not.

    No packaged converter does this: onnxconverter-common 1.16 and onnxruntime.transformers only
    convert float32 -> float16. The conversion is complete for standard ONNX ops because the only
    places a float type is spelled are tensors, value infos and the ``to``/``dtype`` attributes.

    Graph inputs and outputs keep their type, with a Cast at the boundary, so the quantized model
    takes the same feeds and gives the same types as the file: it is a drop-in replacement.
    """
    low = set(_LOW_FLOATS)
    graph = proto.graph
    boundary_in = {vi.name: vi.type.tensor_type.elem_type for vi in graph.input if vi.type.tensor_type.elem_type in low}
    boundary_out = {
        vi.name: vi.type.tensor_type.elem_type for vi in graph.output if vi.type.tensor_type.elem_type in low
    }
    for tensor in _tensors(proto.graph):
        if tensor.data_type in low:
            name = tensor.name
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), name))
    for g in _graphs(proto.graph):
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.tensor_type.elem_type in low:
                vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        for node in g.node:
            for attr in node.attribute:
                if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i in low:
                    attr.i = onnx.TensorProto.FLOAT
    _cast_at_boundary(graph, boundary_in, boundary_out)
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path} holds {'/'.join(sorted(kinds))} tensors and its float32 conversion does not load in "
            f"ONNX Runtime ({first}): give the float32 model (export before .half())"
        ) from None


def _cast_at_boundary(graph: onnx.GraphProto, inputs: dict[str, int], outputs: dict[str, int]) -> None:
    """Give the (now float32) graph back its inputs' and outputs' original types through Casts."""
    produced = {o for n in graph.node for o in n.output}
    outputs = {k: v for k, v in outputs.items() if k in produced}  # not an input or initializer passed through
    inputs = {k: v for k, v in inputs.items() if k not in outputs}
    rename: dict[str, str] = {}
    first: list[onnx.NodeProto] = []
    last: list[onnx.NodeProto] = []
    for name in inputs:
        rename[name] = f"{name}__qae_float32"
        cast = helper.make_node("Cast", [name], [rename[name]], name=f"qae_cast_in/{name}", to=onnx.TensorProto.FLOAT)
        first.append(cast)
    for name, elem in outputs.items():
        rename[name] = f"{name}__qae_float32"
        last.append(helper.make_node("Cast", [rename[name]], [name], name=f"qae_cast_out/{name}", to=elem))
    for g in _graphs(graph):
        for node in g.node:
            for i, t in enumerate(node.input):
                if t in rename:
                    node.input[i] = rename[t]
            if g is graph:
                for i, t in enumerate(node.output):
                    if t in outputs and t in rename:
                        node.output[i] = rename[t]
    for vi in (*graph.input, *graph.output):
        if vi.name in inputs:
            vi.type.tensor_type.elem_type = inputs[vi.name]
        elif vi.name in outputs:
            vi.type.tensor_type.elem_type = outputs[vi.name]
    del graph.value_info[:]  # stale after the renames; shape inference recomputes what is needed
    nodes = [*first, *graph.node, *last]
    del graph.node[:]
    graph.node.extend(nodes)
