"""The analytic cost model: latency, energy and peak memory of a model's layers under a genome.

Per layer (DESIGN.md): ``latency = max(MACs / throughput(p), DRAM bytes / bandwidth) + per-layer
overhead`` plus the conversions its precision needs (quantizing its input, dequantizing weights on a
fallback path) and the fallback penalty when the target lacks a precision. The rest of the graph
(LayerNorm, Softmax, residual Adds...) is genome-independent and costed from ``GraphStats``: one
overhead per op and a cost per element. Energy = MACs x energy per MAC of the precision + bytes
moved x energy per byte + (static + active power) x time. Memory = weights at storage width + peak
live activations (+ weights dequantized at run time) + runtime overhead.

How a gene maps to an execution path (``path_of``): weights ``fp`` run at the profile's float type;
integer weights with float activations run as weight-only (float compute plus a per-weight cost,
zero where the runtime folds or decompresses for free); integer weights with integer or dynamic
activations run natively when both are in ``native``, else they take the profile's ``fallback`` for
the first missing precision. Emulated widths (2, 3, 5, 6 bits) are costed at their storage width,
so an emulated width is never predicted faster than its storage type.

Block-quantized kernels (issue 15; a gene's optional ``kernel``, ``block_size`` and
``accuracy_level``, read with ``getattr`` so that genes without them are ``qdq``): a layer whose
gene names ``matmulnbits`` costs, with ``M`` the GEMM's rows (the activation's elements over K),
``per_layer + max(MACs / throughput, DRAM / bandwidth) + weights x ns_per_weight + blocks x
ns_per_block + M x blocks x ns_per_block_row`` from the profile's ``kernels.matmulnbits.rates``
entry for its width and accuracy level; ``gather_block`` costs ``per_layer + M x dim x
ns_per_element + M x blocks per row x ns_per_block`` (only gathered rows are dequantized). Their
weights take ``bits / 8`` bytes each plus one scale (and a packed zero point when asymmetric) per
block. A kernel, width or op the profile does not list is costed as the QDQ path of the same
precision (what the target would run instead). A QDQ per-block weight-only MatMul is costed as
MatMulNBits where the profile says the runtime fuses it (``qdq_per_block_accuracy_level``).

What per-layer profiles taught (issue 18): the rest of the graph also holds the MatMuls between
two activations (attention), costed at the float rate from ``GraphStats.other_macs``, but not a
MatMul layer's bias Add, which ONNX Runtime folds into the kernels that take a bias
(DynamicQuantizeMatMul, MatMulNBits) and runs after any other: it is costed with its layer where it
runs (``ExecClass.bias_add``), as one of the rest's ops, so a genome of bias-taking kernels does not
pay for 36 Adds MiniLM's fast int8-dynamic candidates never ran; an input read by several dynamic
layers (attention's query, key and value) is quantized once where the runtime merges the identical
DynamicQuantizeLinear nodes (``shared_dynamic_quantize``), each layer paying its share; an embedding
table of a type the runtime cannot index (``gather_table_ns_per_element``: int4 on ONNX Runtime) is
dequantized whole on every run where qae cannot write it as an indexed kernel (a 4-bit QDQ table of
even width becomes GatherBlockQuantized, costed as that kernel: ``indexed_int4_table``);
``op_factors`` scale one op type's path against MatMul's (a ConvInteger is not a MatMulInteger),
fitted from per-layer times only; an integer layer of asymmetric weights is slower by
``asymmetric_weight_factor`` (ONNX Runtime stores them unsigned, and its u8u8 GEMM lacks the u8s8
VNNI path: MiniLM's 384x1536 MatMul 2.0-2.3x measured); a grouped (depthwise) Conv on a path the
runtime has no grouped kernel for pays per group and per output element (``grouped_conv``: ONNX
Runtime runs ConvInteger, QLinearConv with per-channel zero points and a float Conv of dequantized
weights as a GEMM per group, up to 9x the time of its depthwise kernels on digits-cnn's layers; a
dynamic one of asymmetric weights has its own entry, ``native_dynamic_asymmetric``: ConvInteger's
u8u8 GEMMs cost less per output than its u8s8 ones); weights dequantized every run with a zero point
per channel pay ``dequantize_asymmetric_ns_per_element`` more (int4 and int16 on ONNX Runtime); a
Conv's kernel depends on who reads it (``genome_classes``): ONNX Runtime has no integer Conv with a
float output, so a static int8 Conv read by a 16-bit, 4-bit, emulated-width or float layer runs as a
float Conv of dequantized tensors (``unfused``, costed as the dequantizing fallback), and the ops a
runtime adds around a Conv depend on its neighbours too (``conv_output``: the Relu / Clip a dynamic
Conv cannot fuse, the NCHWc layout reorders on either side of a float Conv, each costed as one of
the rest of the graph's ops; an op type may have its own ``asymmetric_weight_factor``,
``Conv:native_dynamic``); and where the weights a
run reads (dequantized copies included) exceed the last-level cache (``memory.cache_bytes``), every
byte streams from DRAM on every run (``beyond_cache_us``: MiniLM in fp32 does, the 384-wide two-block
transformer does not).

``CostTable`` precomputes every layer's cost for each of the few execution classes, so that
predicting a population is a table lookup and a sum (``predict_many``); a class first seen in a
genome (a kernel, block size or accuracy level) adds its column once.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from profiles.errors import ProfileError
from profiles.protocols import GeneLike, GenomeLike, LayerLike, ModelLike
from profiles.schema import Profile

#: Nodes that cost nothing at run time (removed by graph optimisation, or constants).
_FREE_OPS = {"Identity", "Constant", "Shape"}
#: Activations a runtime fuses into the Conv before them (ONNX Runtime's FusedConv; a QLinearConv's
#: clipping output range; TFLite, QNN and Core ML fuse them too): no op of their own at run time.
_CONV_FUSED = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"}


@dataclass(frozen=True)
class ConvOutput:
    """Who reads a Conv layer's output past the Relu / Clip chain a runtime fuses into it: the layers
    (past an Identity), how many other ops (a pool, a residual Add), whether it is a graph output, and
    whether the chain keeps it never negative (a Relu, or a Clip from >= 0). ``genome_classes`` reads
    it to tell whether the Conv can run as an integer kernel."""

    readers: tuple[str, ...] = ()
    others: int = 0
    output: bool = False
    never_negative: bool = False
    #: the Relu / Clip ops of that chain (a runtime fuses them into a float or QLinear Conv, not
    #: into ONNX Runtime's ConvInteger)
    activations: int = 0


@dataclass(frozen=True)
class GraphStats:
    """The genome-independent rest of a model: op count and elements those ops write per inference."""

    other_ops: int = 0
    other_elements: int = 0
    #: multiply-accumulates of the MatMuls between two activations (attention's Q K^T and its
    #: weighting of V): float GEMMs as costly as a layer's, though no layer's
    other_macs: int = 0
    #: (Conv layer name, who reads its output) per Conv layer
    conv_outputs: tuple[tuple[str, ConvOutput], ...] = ()
    #: the elements of each output those ops write (``other_elements`` is their sum): what a profile
    #: with ``other_ns_per_element_beyond_l1`` splits by the L1 data cache
    other_outputs: tuple[int, ...] = ()
    #: the MatMul layers whose output goes through an Add of a constant alone (the layer's bias), and
    #: the elements each such Add writes. The counts above include those Adds; on a profile that says
    #: which kernels take the bias (``matmul_bias``) they leave the rest of the graph, since whether
    #: they run depends on the genome (``genome_classes`` marks them, ``cost_of`` prices them where
    #: the layer's kernel leaves them out)
    bias_layers: tuple[str, ...] = ()
    bias_outputs: tuple[int, ...] = ()
    #: the layers that read one activation tensor, per tensor read by two or more (attention's query,
    #: key and value): a runtime that merges identical nodes quantizes such an input once for all its
    #: dynamic readers (``shared_dynamic_quantize``; ``genome_classes`` marks them)
    input_groups: tuple[tuple[str, ...], ...] = ()

    @functools.cached_property
    def conv_output_map(self) -> dict[str, ConvOutput]:
        """``conv_outputs`` by layer name, made once (``genome_classes`` reads it for every genome)."""
        return dict(self.conv_outputs)

    @functools.cached_property
    def conv_producers(self) -> dict[str, tuple[str, ...]]:
        """The Conv layers whose output each layer reads (past their fused activations)."""
        out: dict[str, list[str]] = {}
        for name, conv in self.conv_outputs:
            for reader in conv.readers:
                out.setdefault(reader, []).append(name)
        return {k: tuple(v) for k, v in out.items()}

    @classmethod
    def of(cls, model: ModelLike) -> GraphStats:
        layer_nodes = {layer.node_name for layer in model.layers}
        conv_out = {node.output[0] for node in model.proto.graph.node
                    if node.name in layer_nodes and node.op_type == "Conv" and node.output}
        readers: dict[str, int] = {}
        for node in model.proto.graph.node:
            for name in node.input:
                readers[name] = readers.get(name, 0) + 1
        shapes = model.tensor_shapes()
        bias_adds, bias_layers = _bias_adds(model, readers)
        ops = elements = macs = 0
        outputs: list[int] = []
        bias_outputs = [0] * len(bias_layers)
        for node in model.proto.graph.node:
            if node.name in layer_nodes or node.op_type in _FREE_OPS:
                continue
            if node.op_type in _CONV_FUSED and node.input and node.input[0] in conv_out and readers[node.input[0]] == 1:
                continue  # fused into its Conv layer
            ops += 1
            for out in node.output:
                # A 0-d tensor is shape arithmetic (a gathered dimension): its cost is the op's overhead,
                # and the calibrated profiles were fitted without it.
                if shapes.get(out):
                    outputs.append(int(np.prod(shapes[out])))
                    elements += outputs[-1]
                    if node.name in bias_adds:
                        bias_outputs[bias_adds[node.name]] = outputs[-1]
            a = shapes.get(node.input[0]) if node.input else None
            out_shape = shapes.get(node.output[0]) if node.output else None
            if node.op_type == "MatMul" and a and out_shape:
                macs += int(np.prod(out_shape)) * int(a[-1])  # every output element sums K products
        groups: dict[str, list[str]] = {}
        for layer in model.layers:
            tensor = getattr(layer, "activation", None)
            if tensor:
                groups.setdefault(tensor, []).append(layer.name)
        shared = tuple(tuple(g) for g in groups.values() if len(g) > 1)
        return cls(ops, elements, macs, _conv_outputs(model), tuple(outputs), bias_layers, tuple(bias_outputs),
                   shared)

    def fixed_us(self, profile: Profile) -> float:
        """The rest of the graph's time per inference: op overheads, elements written (those of outputs
        larger than the L1 data cache at a further rate, where the profile has one), and the
        activation-by-activation MatMuls at the float rate. The MatMul layers' bias Adds are in it
        unless the profile costs them with their layers (``matmul_bias``)."""
        ft = profile.data["float_type"]
        over, mem = profile.data["overhead"], profile.data["memory"]
        # integer counts, so that a profile without ``matmul_bias`` gets exactly the sums it was fitted with
        ops, elements, outputs = self.other_ops, self.other_elements, list(self.other_outputs)
        if bias_with_layer(profile):
            ops -= len(self.bias_outputs)
            elements -= sum(self.bias_outputs)
            for n in self.bias_outputs:
                if n:  # an Add of unknown shape was counted as an op only
                    outputs.remove(n)
        beyond = 0.0
        if "other_ns_per_element_beyond_l1" in over and "l1_bytes" in mem:
            limit = float(mem["l1_bytes"]["value"]) / _BYTES[ft]
            beyond = sum(n for n in outputs if n > limit) * float(
                over["other_ns_per_element_beyond_l1"]["value"]) / 1e3
        return (ops * profile.num("overhead", "other_op_us")
                + elements * profile.num("overhead", "other_ns_per_element") / 1e3
                + self.other_macs / (profile.num("throughput_gmacs", ft) * 1e3) + beyond)


def bias_with_layer(profile: Profile) -> bool:
    """Whether ``profile`` costs a MatMul layer's bias Add with the layer (``matmul_bias``: the paths
    whose kernel takes the bias) rather than in the genome-independent rest of the graph."""
    return "matmul_bias" in profile.data


def _bias_adds(model: ModelLike, readers: Mapping[str, int]) -> tuple[dict[str, int], tuple[str, ...]]:
    """The bias Adds of MatMul layers (an Add of a MatMul layer's output, read by it alone, and of an
    initializer or Constant): node name -> index into the layers' names, and those names. ONNX Runtime folds such an Add
    into the kernels that take a bias (``DynamicQuantizeMatMul``, ``MatMulNBits``); after any other
    MatMul it runs as an Add of its own or inside a larger fused op (``BiasGelu``,
    ``SkipLayerNormalization`` with a bias), at the cost of a pass over the output either way."""
    graph = model.proto.graph
    layer_of = {layer.node_name: layer.name for layer in model.layers if layer.op_type == "MatMul"}
    made_by = {t: n.name for n in graph.node if n.name in layer_of for t in n.output if t}
    constants = {t.name for t in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    adds: dict[str, int] = {}
    layers: list[str] = []
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        a, b = node.input
        for x, y in ((a, b), (b, a)):
            if x in made_by and y in constants and readers.get(x, 0) == 1 and layer_of[made_by[x]] not in layers:
                adds[node.name] = len(layers)
                layers.append(layer_of[made_by[x]])
                break
    return adds, tuple(layers)


def rest_op_us(profile: Profile, elements: float) -> float:
    """One op of the rest of the graph writing ``elements``, as ``GraphStats.fixed_us`` prices it:
    ``other_op_us`` and ``other_ns_per_element``, and past the L1 data cache the further rate where
    the profile has one."""
    us = other_op_us(profile, elements)
    over, mem = profile.data["overhead"], profile.data["memory"]
    if ("other_ns_per_element_beyond_l1" in over and "l1_bytes" in mem
            and elements > float(mem["l1_bytes"]["value"]) / _BYTES[profile.data["float_type"]]):
        us += elements * float(over["other_ns_per_element_beyond_l1"]["value"]) / 1e3
    return us


def _conv_outputs(model: ModelLike) -> tuple[tuple[str, ConvOutput], ...]:
    graph = model.proto.graph
    layer_of = {layer.node_name: layer.name for layer in model.layers}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant" and n.output
                      for a in n.attribute if a.name == "value"})
    outputs = {o.name for o in graph.output}

    def floor_of(clip: Any) -> float | None:
        if len(clip.input) > 1 and clip.input[1] in constants:
            from onnx import numpy_helper  # onnx ships with every model qae loads

            return float(numpy_helper.to_array(constants[clip.input[1]]).reshape(-1)[0])
        return next((float(a.f) for a in clip.attribute if a.name == "min"), None)  # opset < 11

    out = []
    for node in graph.node:
        if node.op_type != "Conv" or node.name not in layer_of or not node.output:
            continue
        tensor, never_negative, activations = node.output[0], False, 0
        while len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in ("Relu", "Clip"):
            act = consumers[tensor][0]
            activations += 1
            floor = 0.0 if act.op_type == "Relu" else floor_of(act)
            never_negative = never_negative or (floor is not None and floor >= 0.0)
            tensor = act.output[0]
        readers, others = [], 0
        for user in consumers.get(tensor, []):
            while user.op_type == "Identity" and len(consumers.get(user.output[0], [])) == 1:
                user = consumers[user.output[0]][0]
            if user.name in layer_of:
                readers.append(layer_of[user.name])
            else:
                others += 1
        out.append((layer_of[node.name],
                    ConvOutput(tuple(readers), others, tensor in outputs, never_negative, activations)))
    return tuple(out)


def conv_output_quantized(out: ConvOutput, genome: GenomeLike | Mapping[str, GeneLike],
                          fused_bits: Sequence[int]) -> bool:
    """Whether a static integer Conv's output is quantized for it, so that a runtime without an
    integer Conv of float output (``conv_output`` in the profile) runs its integer kernel: one reader,
    a layer whose input activations are ``fused_bits`` wide exactly (an emulated width puts its Clip
    between), or, where no layer quantizes it, no float or weight-only reader and a never-negative
    output (``harness.quant.quantize._quantize_conv_outputs`` then gives it its own 8-bit Q/DQ)."""
    if out.output:
        return False
    static = [r for r in out.readers if genome[r].static_activation]
    if static:
        return (len(out.readers) + out.others == 1
                and int(genome[static[0]].activation_bits) in {int(b) for b in fused_bits})
    if any(not genome[r].dynamic for r in out.readers):
        return False
    return out.never_negative and bool(out.readers or out.others)


class ExecClass(NamedTuple):
    """How a layer's gene executes: what the cost model prices. The first three fields are the
    classic ``(weight type, activation type, granularity)`` tokens; a plain 3-tuple is the same
    class with the QDQ defaults (``ExecClass(*tokens)``)."""

    weight: str  # fp32 | int2 | int4 | int8 | int16 (storage type)
    activation: str  # fp32 | dynamic | int4 | int8 | int16
    granularity: str  # channel | tensor | block
    kernel: str = "qdq"  # qdq | matmulnbits | gather_block
    block: int = 0  # block size with granularity block
    accuracy: int = 0  # MatMulNBits accuracy_level (0: unset)
    #: zero points stored: asymmetric weights (per block, or for a QDQ layer per channel / tensor,
    #: which makes ONNX Runtime store the weights unsigned: a different kernel for some ops)
    zero_points: bool = False
    #: a static integer Conv whose output is not quantized for it, on a runtime without an integer
    #: Conv of float output (``genome_classes``): it runs as a float Conv of dequantized tensors
    unfused: bool = False
    #: ops the runtime adds around the layer under this genome (``genome_classes``), each costed as
    #: one of the rest of the graph's over the layer's output elements: the Relu / Clip after a
    #: dynamic Conv, which it cannot fuse, and the layout conversions before (over the input elements)
    #: and after (over the output): NCHWc reorders around a blocked-layout float Conv, NHWC Transposes
    #: around a run of integer (QLinear) Convs
    activations: int = 0
    reorders_in: int = 0
    reorders_out: int = 0
    #: the MatMul layer's bias Add is in the graph (``GraphStats.bias_layers``): ``cost_of`` adds it,
    #: as one of the rest of the graph's ops over the output, where the layer's kernel does not take
    #: the bias itself (ONNX Runtime's ``DynamicQuantizeMatMul`` and ``MatMulNBits`` do)
    bias_add: int = 0
    #: how many dynamic layers share this layer's input quantization (``GraphStats.input_groups`` on a
    #: profile with ``shared_dynamic_quantize``: ONNX Runtime merges their identical
    #: DynamicQuantizeLinear nodes into one, read by a MatMulIntegerToFloat each); each pays its share.
    #: 0: its own
    shared_input: int = 0


def precision_tokens(gene: GeneLike) -> ExecClass:
    """The gene's execution class: weight and activation types as the target stores them (emulated
    widths count as int8), granularity ``channel``, ``tensor`` or ``block`` (it matters where weights
    are dequantized), and for block-quantized genes the kernel, block size and accuracy level.
    Genes without the issue-15 fields (``kernel``, ``block_size``, ``accuracy_level``) are ``qdq``."""
    if not gene.quantized:
        return ExecClass("fp32", "fp32", "channel")
    kernel = str(getattr(gene, "kernel", None) or "qdq")
    block = int(getattr(gene, "block_size", None) or 0)
    zps = block > 0 and getattr(gene, "scheme", "symmetric") == "asymmetric"
    if kernel != "qdq":
        acc = int(getattr(gene, "accuracy_level", None) or 0) if kernel == "matmulnbits" else 0
        return ExecClass(f"int{int(gene.weight_bits)}", "fp32", "block", kernel, block, acc, zps)
    gran = "tensor" if gene.granularity == "per_tensor" else "block" if gene.granularity == "per_block" else "channel"
    asym = getattr(gene, "scheme", "symmetric") == "asymmetric"
    extra = (block, 0, zps) if gran == "block" else (0, 0, True) if asym else ()
    wt = f"int{gene.weight_storage_bits}"
    if gene.dynamic:
        return ExecClass(wt, "dynamic", gran, "qdq", *extra)
    if not gene.static_activation:
        return ExecClass(wt, "fp32", gran, "qdq", *extra)
    bits = int(gene.activation_bits)
    return ExecClass(wt, f"int{bits if bits in (4, 8, 16) else 8}", gran, "qdq", *extra)


def genome_classes(layers: Sequence[LayerLike], genome: GenomeLike, profile: Profile,
                   graph: GraphStats | None = None) -> list[ExecClass]:
    """Every layer's execution class under ``genome``: ``precision_tokens``, and where the profile
    says the runtime has no integer Conv of float output (``conv_output``), a static Conv on the
    native path whose output is not quantized for it (``conv_output_quantized``) marked ``unfused``:
    a Conv's kernel depends on the layers that read it."""
    genes = {lay.name: genome[lay.name] for lay in layers}  # a genome's lookup merges: once a layer
    classes = [precision_tokens(genes[lay.name]) for lay in layers]
    if graph is not None and graph.bias_layers and bias_with_layer(profile):
        biased = set(graph.bias_layers)
        classes = [c._replace(bias_add=1) if lay.name in biased else c for lay, c in zip(layers, classes)]
    if graph is not None and graph.input_groups and "shared_dynamic_quantize" in profile.data:
        index = {lay.name: i for i, lay in enumerate(layers)}
        for group in graph.input_groups:
            dynamic = [index[n] for n in group if n in index and classes[index[n]].activation == "dynamic"
                       and classes[index[n]].kernel == "qdq"]
            if len(dynamic) > 1:
                for i in dynamic:
                    classes[i] = classes[i]._replace(shared_input=len(dynamic))
    rule = profile.data.get("conv_output")
    outs = graph.conv_output_map if graph is not None else {}
    if rule is None or not outs:
        return classes
    kinds: dict[tuple[str, str], str] = {}  # path_of builds tables: once per type pair, not per layer
    for i, (lay, c) in enumerate(zip(layers, classes)):
        out = outs.get(lay.name)
        if out is None or c.kernel != "qdq" or c.granularity == "block" or c.activation in ("fp32", "dynamic"):
            continue
        pair = (c.weight, c.activation)
        if pair not in kinds:
            kinds[pair] = path_of(c.weight, c.activation, profile).kind
        if kinds[pair] != "native":
            continue
        if not conv_output_quantized(out, genes, rule["fused_reader_bits"]):
            classes[i] = c._replace(unfused=True)
    if rule.get("dynamic_activation_unfused"):
        for i, (lay, c) in enumerate(zip(layers, classes)):
            out = outs.get(lay.name)
            if (out is not None and out.activations and c.activation == "dynamic" and c.kernel == "qdq"
                    and not _clip_meets_its_quantize(out, genes)):
                classes[i] = classes[i]._replace(activations=out.activations)
    if rule.get("nhwc_integer_conv") and graph is not None:
        nhwc = {lay.name: lay.op_type == "Conv" and c.kernel == "qdq" and c.activation not in ("fp32", "dynamic")
                and not c.unfused and kinds.get((c.weight, c.activation)) == "native"
                for lay, c in zip(layers, classes)}
        _layout_changes(layers, classes, nhwc, graph)
    block = int(rule.get("layout_block", 0) or 0)
    if block and graph is not None:
        blocked = {lay.name: blocked_layout(lay, c, block) for lay, c in zip(layers, classes)}
        _layout_changes(layers, classes, blocked, graph, from_any_input=False, to_any_output=False)
    return classes


def _layout_changes(layers: Sequence[LayerLike], classes: list[ExecClass], inside: Mapping[str, bool],
                    graph: GraphStats, from_any_input: bool = True, to_any_output: bool = True) -> None:
    """Mark the layout conversions a runtime adds around the Conv layers that run in a layout of their
    own (``inside``): one into it where a producing Conv layer is not in it, and one out of it where a
    reading layer is not. ``from_any_input``: also into it where no Conv layer produces the input (ORT's
    NHWC Transpose after a QuantizeLinear of the graph input; an NCHWc Conv reads a plain input itself);
    ``to_any_output``: also out of it before a graph output or another op (a pool, an Add).
    Exact on random digits-cnn mixes (a chain of Convs); approximate where a residual Add joins runs:
    ONNX Runtime carries the NHWC layout through a QLinearAdd and places Transposes around a float Add
    by its own rules (a 5-layer residual CNN, 30 random mixes: exact on 8, 40 layout ops off in all,
    against 1 and 94 without these Transposes)."""
    outs = graph.conv_output_map
    for i, lay in enumerate(layers):
        if not inside.get(lay.name):
            continue
        c = classes[i]
        out = outs.get(lay.name)
        producers = graph.conv_producers.get(lay.name, ())
        if any(not inside.get(p, False) for p in producers) or (from_any_input and not producers):
            c = c._replace(reorders_in=1)
        if out is not None and (any(not inside.get(r, False) for r in out.readers)
                                or (to_any_output and (out.output or bool(out.others)))):
            c = c._replace(reorders_out=1)
        classes[i] = c


def _clip_meets_its_quantize(out: ConvOutput, genes: Mapping[str, GeneLike]) -> bool:
    """Whether a Conv's Relu / Clip chain is followed by one QuantizeLinear alone (its one reader
    quantizes its input statically, at a width stored as such: an emulated width puts qae's own Clip
    between), which the runtime folds the chain into (ONNX Runtime's Relu/Clip-QuantizeLinear fusion)."""
    if out.output or out.others or len(out.readers) != 1:
        return False
    gene = genes[out.readers[0]]
    return bool(gene.static_activation) and int(gene.activation_bits) in (4, 8, 16)


def blocked_layout(layer: LayerLike, c: ExecClass, block: int) -> bool:
    """Whether a Conv layer runs in the runtime's blocked channel layout (ONNX Runtime's NCHWc): a
    float Conv of constant weights whose output channels, and input channels (or, for one group, an
    input of fewer channels than a block) fill whole blocks."""
    if layer.op_type != "Conv" or c.weight != "fp32" or len(layer.weight_shape) < 2:
        return False
    groups = int(getattr(layer, "groups", 1) or 1)
    cout, cin = int(layer.weight_shape[0]), int(layer.weight_shape[1]) * groups
    return cout % block == 0 and (cin % block == 0 or (groups == 1 and cin < block))


def exec_kind(c: ExecClass, profile: Profile) -> str:
    """The QDQ path kind a class runs (``path_of``), ``dequantize`` for an unfused native Conv."""
    kind = path_of(c.weight, c.activation, profile).kind
    return "dequantize" if c.unfused and kind == "native" else kind


def gemm_rows(layer: LayerLike) -> float:
    """The M of the layer's GEMM per inference: the activation's elements over K (a MatMul's rows,
    batch and sequence together); for an embedding Gather, the ids it looks up."""
    if layer.op_type == "Gather":
        ids = getattr(layer, "input_elements", None)
        out = getattr(layer, "output_elements", None)
        if ids is None and out is not None and len(layer.weight_shape) == 2:
            ids = out / max(layer.weight_shape[1], 1)
        if ids is None:
            raise ProfileError(
                f"layer {layer.name} (Gather) has an unknown number of ids because the model's input shapes are "
                "unknown: give input shapes (--input-shape NAME=D1xD2x..., or data with --data/--calib)"
            )
        return float(ids)
    in_el, _ = layer_io(layer)
    w = layer.weight_shape
    k = w[1] if layer.op_type == "Gemm" and layer.channel_axis == 0 else w[0]
    return in_el / max(int(k), 1) if len(w) == 2 else 0.0


def layer_macs(layer: LayerLike) -> int:
    """The layer's MACs per inference; unknown MACs (input shapes not given) are an error, never 0."""
    macs = layer.macs
    if macs is None:
        raise ProfileError(
            f"layer {layer.name} ({layer.op_type}) has unknown MACs because the model's input shapes are "
            "unknown: give input shapes (--input-shape NAME=D1xD2x..., or data with --data/--calib)"
        )
    return int(macs)


def layer_io(layer: LayerLike) -> tuple[float, float]:
    """Elements of the layer's input and output activations per inference.

    The layer's own counts (``input_elements`` / ``output_elements``, from shape inference at the
    shapes the model runs at) when it has them; otherwise inferred from MACs and weight shape, which
    is exact for MatMul and Gemm but assumes stride = kernel for a Conv (a patch embedding). An
    embedding Gather has none here: ``layer_cost`` costs it by the rows it reads (``gemm_rows`` ids
    x the table's width; the whole table only where the ids are unknown), and an op without a rule
    (LSTM, GRU) by what it reports, else nothing.
    """
    if layer.op_type == "Gather":
        return 0.0, 0.0
    given_in, given_out = getattr(layer, "input_elements", None), getattr(layer, "output_elements", None)
    macs = layer_macs(layer)
    w = layer.weight_shape
    if given_in is not None and given_out is not None:
        return float(given_in), float(given_out)
    inferred = (0.0, 0.0)
    if macs > 0 and layer.op_type == "Conv" and len(w) >= 2:
        reduce = float(np.prod(w[1:]))
        out = macs / reduce
        inferred = (out / w[0] * reduce, out)
    elif macs > 0 and layer.op_type in ("MatMul", "Gemm") and len(w) == 2:
        k, n = (w[1], w[0]) if layer.op_type == "Gemm" and layer.channel_axis == 0 else (w[0], w[1])
        inferred = (macs / n, macs / k)
    return (
        float(given_in) if given_in is not None else inferred[0],
        float(given_out) if given_out is not None else inferred[1],
    )


@dataclass
class Path:
    """How one layer runs: compute precision, rate, and which extra costs apply."""

    kind: str  # float | weight_only | native | dequantize | slower_unit
    compute: str
    weight: str
    activation: str
    throughput_gmacs: float
    energy_per_mac_pj: float
    penalty_us: float = 0.0


def _int_key(wt: str, at: str) -> str:
    if "int16" in (wt, at):
        return "int16"
    if wt == "int4" and at in ("int4", "int8", "dynamic"):
        return "int4"
    return "int8"


def path_of(wt: str, at: str, profile: Profile) -> Path:
    thr = profile.table("throughput_gmacs")
    epm = profile.table("energy", "per_mac_pj")
    ft = profile.data["float_type"]
    native = profile.data["native"]
    fallback = profile.data["fallback"]

    def floating(kind: str, to: str = ft) -> Path:
        return Path(kind, to, wt, at, thr[to], epm[to])

    if wt == "fp32":
        return floating("float")
    missing = [p for p, ok in ((wt, wt in native["weights"]),) if not ok]
    if at != "fp32" and at not in native["activations"]:
        missing.append(at)
    if not missing:
        if at == "fp32":
            return floating("weight_only")
        key = _int_key(wt, at)
        rate = thr.get(key) or min(v for k, v in thr.items() if k.startswith("int"))
        return Path("native", key, wt, at, rate, epm.get(key, epm[ft]))
    fb = fallback.get(missing[0])
    if fb is None or fb["action"] == "dequantize":
        kind = "weight_only" if at == "fp32" else "dequantize"
        return floating(kind, ft if fb is None else fb["to"])
    return Path("slower_unit", str(fb["unit"]), wt, at, float(fb["throughput_gmacs"]["value"]),
                float(fb["energy_per_mac_pj"]["value"]), float(fb["penalty_us"]["value"]))


def beyond_cache_us(read_bytes: float, profile: Profile) -> float:
    """Extra time of a run whose weights read (``LayerCost.read_bytes`` summed over the model) exceed
    the profile's last-level cache (``memory.cache_bytes``): they stream from DRAM on every run, at
    ``memory.beyond_cache_ns_per_byte``; zero where the profile states no cache."""
    mem = profile.data["memory"]
    if "cache_bytes" not in mem or "beyond_cache_ns_per_byte" not in mem:
        return 0.0
    if read_bytes <= float(mem["cache_bytes"]["value"]):
        return 0.0
    return read_bytes * float(mem["beyond_cache_ns_per_byte"]["value"]) / 1e3


def op_path(kind: str, activation: str) -> str:
    """The ``op_factors`` key of a QDQ execution path: its kind, with dynamic-activation native
    layers apart (ONNX Runtime runs them as MatMulInteger / ConvInteger, not QLinear kernels)."""
    return "native_dynamic" if kind == "native" and activation == "dynamic" else kind


_BYTES = {"fp32": 4.0, "fp16": 2.0, "int16": 2.0, "int8": 1.0, "int4": 0.5, "int2": 0.25, "dynamic": 1.0}


@dataclass
class LayerCost:
    latency_us: float
    energy_j: float
    weight_bytes: float
    activation_bytes: float
    transient_bytes: float
    path: str
    compute: str
    #: bytes of weights (and of weights dequantized on the fly) a run reads: what streams from DRAM
    #: when the model's sum of them exceeds the last-level cache (``beyond_cache_us``)
    read_bytes: float = 0.0
    #: of ``latency_us``, what a per-op profile cannot attribute to the layer (its layout reorders)
    unattributed_us: float = 0.0


def kernel_rate(profile: Profile, kernel: str, bits: int, accuracy: int = 0) -> dict[str, float] | None:
    """The profile's coefficients for ``kernel`` at ``bits`` (and MatMulNBits' ``accuracy`` level):
    ``{name: value}``, or None where the profile does not list the kernel or the width."""
    spec = profile.data.get("kernels", {}).get(kernel)
    if spec is None or kernel == "qdq" or bits not in spec["bits"]:
        return None
    rates = spec["rates"]
    node = rates.get(f"int{bits}_acc{accuracy}") or rates.get(f"int{bits}")
    return None if node is None else {k: float(v["value"]) for k, v in node.items()}


def rate_key(profile: Profile, kernel: str, bits: int, accuracy: int = 0) -> str | None:
    """The key under ``kernels.KERNEL.rates`` that ``kernel_rate`` reads, or None."""
    spec = profile.data.get("kernels", {}).get(kernel)
    if spec is None or kernel == "qdq" or bits not in spec["bits"]:
        return None
    for key in (f"int{bits}_acc{accuracy}", f"int{bits}"):
        if key in spec["rates"]:
            return key
    return None


def _block_bytes(params: float, bits: int, block: int, zero_points: bool, scale_bytes: float) -> float:
    """Packed weights plus one scale (and a packed zero point) per block."""
    blocks = math.ceil(params / block) if block else 0
    return params * bits / 8 + blocks * scale_bytes + (blocks * bits / 8 if zero_points else 0.0)


def _kernel_cost(layer: LayerLike, c: ExecClass, profile: Profile) -> LayerCost | None:
    """A MatMulNBits or GatherBlockQuantized layer's cost; None where the profile or op cannot run it."""
    bits = int(c.weight[3:])
    rate = kernel_rate(profile, c.kernel, bits, c.accuracy)
    w = layer.weight_shape
    ft = profile.data["float_type"]
    if rate is None or len(w) != 2 or c.block <= 0:
        return None
    onchip = profile.num("memory", "onchip_bytes")
    bw = profile.num("memory", "dram_bandwidth_gbs") * 1e3  # bytes per us
    e = profile.data["energy"]
    dram_pj, onchip_pj = float(e["dram_pj_per_byte"]["value"]), float(e["onchip_pj_per_byte"]["value"])
    wbytes = _block_bytes(layer.params, bits, c.block, c.zero_points, _BYTES[ft])
    per_layer = profile.num("overhead", "per_layer_us")
    m = gemm_rows(layer)
    if c.kernel == "matmulnbits" and layer.op_type == "MatMul":
        k, n = int(w[0]), int(w[1])
        blocks = math.ceil(k / c.block) * n
        macs = layer_macs(layer)
        in_el, out_el = layer_io(layer)
        abytes = (in_el + out_el) * _BYTES[ft]
        dram = wbytes + (abytes if abytes > onchip else 0.0)
        compute_us = macs / (rate["throughput_gmacs"] * 1e3)
        us = (per_layer + rate.get("us_per_call", 0.0) + max(compute_us, dram / bw)
              + layer.params * rate.get("ns_per_weight", 0.0) / 1e3
              + blocks * rate.get("ns_per_block", 0.0) / 1e3 + m * blocks * rate.get("ns_per_block_row", 0.0) / 1e3)
        compute = "int8" if c.accuracy == 4 and "int8" in e["per_mac_pj"] else ft
        epm = profile.num("energy", "per_mac_pj", compute)
        joules = (macs * epm + dram * dram_pj + (abytes if abytes <= onchip else 0.0) * onchip_pj) * 1e-12
        return LayerCost(us, joules, wbytes, abytes, 0.0, "matmulnbits", compute, wbytes)
    if c.kernel == "gather_block" and layer.op_type == "Gather":
        dim = int(w[1])
        out_el = m * dim
        row_blocks = m * math.ceil(dim / c.block)
        moved = out_el * bits / 8 + row_blocks * _BYTES[ft]  # the gathered rows and their scales only
        us = per_layer + max(out_el * rate["ns_per_element"] / 1e3 + row_blocks * rate.get("ns_per_block", 0.0) / 1e3,
                             moved / bw)
        joules = (moved * dram_pj + out_el * _BYTES[ft] * onchip_pj) * 1e-12
        return LayerCost(us, joules, wbytes, 0.0, 0.0, "gather_block", ft, moved)
    return None


def _fused_qdq_block(layer: LayerLike, c: ExecClass, profile: Profile) -> ExecClass | None:
    """The MatMulNBits class a QDQ per-block weight-only MatMul runs as, where the profile says its
    runtime fuses DequantizeLinear(block_size) -> MatMul (ONNX Runtime's CPU provider does)."""
    spec = profile.data.get("kernels", {}).get("matmulnbits")
    if (spec is None or "qdq_per_block_accuracy_level" not in spec or c.activation != "fp32"
            or layer.op_type != "MatMul"):
        return None
    acc = int(spec["qdq_per_block_accuracy_level"]["value"])
    return ExecClass(c.weight, "fp32", "block", "matmulnbits", c.block, acc, c.zero_points)


def _fused_qdq_weight_only(layer: LayerLike, c: ExecClass, profile: Profile) -> ExecClass | None:
    """The MatMulNBits class a per-channel or per-tensor QDQ weight-only MatMul runs as, where the
    profile says its runtime makes one of it (``qdq_weight_only_block``: ONNX Runtime 1.32's CPU
    provider does, at block size 32, for 4- and 8-bit weights)."""
    spec = profile.data.get("kernels", {}).get("matmulnbits")
    if (spec is None or "qdq_weight_only_block" not in spec or "qdq_per_block_accuracy_level" not in spec
            or c.kernel != "qdq" or c.activation != "fp32" or c.granularity == "block"
            or c.weight not in ("int4", "int8") or layer.op_type != "MatMul"):
        return None
    block = int(spec["qdq_weight_only_block"]["value"])
    return ExecClass(c.weight, "fp32", "block", "matmulnbits", block,
                     int(spec["qdq_per_block_accuracy_level"]["value"]), c.zero_points)


def kernel_class(layer: LayerLike, c: ExecClass, profile: Profile) -> ExecClass | None:
    """The contrib-kernel class a QDQ class runs as on ``profile``'s runtime (an indexed 4-bit table,
    a fused per-block or weight-only MatMul), or None where it runs as QDQ."""
    if c.kernel != "qdq":
        return None
    if (indexed := indexed_int4_table(layer, c)) is not None:
        return indexed
    if c.granularity == "block":
        return _fused_qdq_block(layer, c, profile)
    return _fused_qdq_weight_only(layer, c, profile)


def indexed_int4_table(layer: LayerLike, c: ExecClass) -> ExecClass | None:
    """The GatherBlockQuantized class a QDQ weight-only 4-bit embedding table runs as: qae writes one
    (a block per row: ``harness.quant.quantize._gather_block_int4``) where the table's width packs two
    values to a byte and its scales are per row or per tensor, since the runtime's Gather takes no int4
    table. None where that does not apply (then the QDQ path, a whole-table dequantize where the
    profile says so)."""
    w = layer.weight_shape
    if (layer.op_type != "Gather" or c.weight != "int4" or c.activation != "fp32" or c.granularity == "block"
            or len(w) != 2 or int(w[1]) % 2):
        return None
    return ExecClass("int4", "fp32", "block", "gather_block", max(16, 1 << (int(w[1]) - 1).bit_length()), 0, False)


def bias_path(lc: LayerCost, c: ExecClass) -> str:
    """The ``matmul_bias.fused_paths`` name of the path a layer's cost took: ``op_path``'s for a QDQ
    path (``native_dynamic`` for dynamic activations), ``matmulnbits`` for that kernel, whether named
    by the gene or fused from QDQ weights."""
    path = lc.path.split(" (no ")[0]
    if path.endswith("matmulnbits"):
        return "matmulnbits"
    return op_path(path, c.activation)


def cost_of(layer: LayerLike, c: ExecClass | tuple[Any, ...], profile: Profile) -> LayerCost:
    """The cost of ``layer`` in execution class ``c`` (an ``ExecClass`` or a classic 3-tuple), with
    its bias Add (``ExecClass.bias_add``, marked on profiles with ``matmul_bias``) where the path's
    kernel leaves that to an op of its own (a path not in ``matmul_bias.fused_paths``, or static
    activations, whose output is quantized before the Add): one of the
    rest of the graph's ops over the output (``rest_op_us``), which a per-op profile leaves
    unattributed (a model's own Add, or folded into the next op)."""
    c = ExecClass(*c)
    if not c.bias_add:
        return _cost_of(layer, c, profile)
    lc = _cost_of(layer, c._replace(bias_add=0), profile)
    # static activations put a QuantizeLinear of the output between any kernel and the Add
    static = c.activation not in ("fp32", "fp16", "dynamic")
    if not static and bias_path(lc, c) in profile.data["matmul_bias"]["fused_paths"]:
        return lc
    bias = rest_op_us(profile, layer_io(layer)[1])
    lc.latency_us += bias
    lc.unattributed_us += bias
    return lc


def _cost_of(layer: LayerLike, c: ExecClass, profile: Profile) -> LayerCost:
    if c.kernel != "qdq":
        kc = _kernel_cost(layer, c, profile)
        if kc is not None:
            return kc
        # Not runnable there (kernel, width or op not listed): the QDQ path of the same precision.
        wt = c.weight if c.weight in ("int4", "int8") else "int8"
        lc = layer_cost(layer, wt, "fp32", profile, "channel")
        lc.path = f"{lc.path} (no {c.kernel})"
        return lc
    indexed = indexed_int4_table(layer, c)
    kc = _kernel_cost(layer, indexed, profile) if indexed is not None else None
    if kc is not None:
        kc.path = "qdq->gather_block"
        return kc
    fused_wo = _fused_qdq_weight_only(layer, c, profile)
    kc = _kernel_cost(layer, fused_wo, profile) if fused_wo is not None else None
    if kc is not None:  # the file keeps its per-channel / per-tensor weights: their bytes
        kc.weight_bytes = layer_cost(layer, c.weight, c.activation, profile, c.granularity).weight_bytes
        kc.path = "qdq->matmulnbits"
        return kc
    if c.granularity == "block":
        fused = _fused_qdq_block(layer, c, profile)
        kc = _kernel_cost(layer, fused, profile) if fused is not None else None
        if kc is not None:
            kc.path = "qdq->matmulnbits"
            return kc
        lc = layer_cost(layer, c.weight, c.activation, profile, "channel")
        if c.weight != "fp32" and c.block:
            scale_bytes = _BYTES[profile.data["float_type"]]
            lc.weight_bytes = _block_bytes(layer.params, int(c.weight[3:]), c.block, c.zero_points, scale_bytes)
        return lc
    return layer_cost(layer, c.weight, c.activation, profile, c.granularity, c.zero_points, c.unfused,
                      c.activations, c.reorders_in, c.reorders_out, c.shared_input)


def grouped_path(layer: LayerLike, kind: str, activation: str, granularity: str, asymmetric: bool) -> str | None:
    """The ``grouped_conv`` key of a grouped Conv (``groups`` > 1) on a QDQ path: ``op_path``'s, with
    asymmetric weights apart where they change the kernel: static native layers of per-channel zero
    points (ONNX Runtime's depthwise QLinearConv kernel takes one weight zero point, or none) and
    dynamic ones of any (its ConvInteger runs per-group GEMMs of unsigned weights, u8u8, at other
    costs than of signed ones). None for other layers."""
    if layer.op_type != "Conv" or int(getattr(layer, "groups", 1) or 1) <= 1:
        return None
    key = op_path(kind, activation)
    if asymmetric and (key == "native_dynamic" or (key == "native" and granularity == "channel")):
        return f"{key}_asymmetric"
    return key


#: where a profile lists no entry of its own for an asymmetric grouped path, the path it runs like
#: (the same per-group GEMMs of other signedness); the static depthwise kernel has none: it is
#: ``native``'s own kernel, which ``grouped_conv`` does not cost
_GROUPED_FALLBACK = {"native_dynamic_asymmetric": "native_dynamic"}


def grouped_entry(key: str | None, profile: Profile) -> str | None:
    """The ``grouped_conv`` entry of ``profile`` that costs path ``key``: its own, or the one it runs
    like (``_GROUPED_FALLBACK``); None where the profile has neither."""
    node = profile.data.get("grouped_conv", {})
    if key is None:
        return None
    if key in node:
        return key
    other = _GROUPED_FALLBACK.get(key)
    return other if other in node else None


def grouped_conv_us(layer: LayerLike, key: str | None, profile: Profile) -> float:
    """What a grouped Conv costs beyond ``layer_cost``'s formula where the profile says its path has
    no grouped (depthwise) kernel: ``us_per_layer (optional) + groups x us_per_group + output elements
    x ns_per_output_element``
    (a GEMM per group over an unfolded input: ONNX Runtime's ConvInteger, QLinearConv with per-channel
    zero points, a float Conv whose weights are dequantized at run time). Zero where the profile lists
    no ``grouped_conv`` entry for the path (``grouped_entry``)."""
    entry = grouped_entry(key, profile)
    if entry is None:
        return 0.0
    node = profile.data["grouped_conv"][entry]
    _, out_el = layer_io(layer)
    return (float(node.get("us_per_layer", {}).get("value", 0.0))
            + int(getattr(layer, "groups", 1)) * float(node["us_per_group"]["value"])
            + out_el * float(node["ns_per_output_element"]["value"]) / 1e3)


def spatial_conv_us(layer: LayerLike, key: str, profile: Profile) -> float:
    """What a Conv with a spatial kernel (any kernel dimension > 1, one group) costs beyond
    ``layer_cost``'s formula on path ``key`` (``op_path``'s): ``us_per_layer + im2col elements x
    ns_per_element``, the elements being output positions x kernel area x input channels (MACs over
    output channels). Zero for other layers and where the profile lists no ``spatial_conv`` entry."""
    node = profile.data.get("spatial_conv", {}).get(key)
    w = layer.weight_shape
    if (node is None or layer.op_type != "Conv" or int(getattr(layer, "groups", 1) or 1) > 1 or len(w) < 3
            or int(np.prod(w[2:])) <= 1 or not w[0]):
        return 0.0
    im2col = layer_macs(layer) / w[0]
    return float(node["us_per_layer"]["value"]) + im2col * float(node["ns_per_element"]["value"]) / 1e3


def dynamic_rescale_us(layer: LayerLike, profile: Profile) -> float:
    """The elementwise ops after a dynamically quantized Conv where the runtime's integer Conv returns
    int32 (``conv_output.dynamic_rescale_ops``; ONNX Runtime's ConvInteger: Cast, a Mul by the weight
    scales, a Mul by the input scale, the Conv's bias Add), each costed as one of the rest of the
    graph's ops (``overhead.other_op_us`` and ``other_ns_per_element`` over the output)."""
    ops = int(profile.data.get("conv_output", {}).get("dynamic_rescale_ops", 0))
    if not ops or layer.op_type != "Conv":
        return 0.0
    _, out_el = layer_io(layer)
    return ops * other_op_us(profile, out_el)


def other_op_us(profile: Profile, elements: float) -> float:
    """One of the rest of the graph's ops writing ``elements``: ``overhead.other_op_us`` plus
    ``other_ns_per_element`` over them (what a runtime adds around a layer is costed as one)."""
    return profile.num("overhead", "other_op_us") + elements * profile.num("overhead", "other_ns_per_element") / 1e3


def asymmetric_key(profile: Profile, op_type: str, path: str) -> str | None:
    """The ``asymmetric_weight_factor`` entry an op type's asymmetric layer on ``path`` takes: its op
    type's own (``Conv:native_dynamic``) where the profile has one, else the path's."""
    node = profile.data.get("asymmetric_weight_factor", {})
    for key in (f"{op_type}:{path}", path):
        if key in node:
            return key
    return None


def asymmetric_factor(profile: Profile, op_type: str, path: str) -> Any:
    key = asymmetric_key(profile, op_type, path)
    return None if key is None else profile.data["asymmetric_weight_factor"][key]


def layer_cost(layer: LayerLike, wt: str, at: str, profile: Profile, gran: str = "channel",
               asymmetric: bool = False, unfused: bool = False, activations: int = 0, reorders_in: int = 0,
               reorders_out: int = 0, shared_input: int = 0) -> LayerCost:
    """The cost of one layer on one QDQ execution path (see the module docstring for the formula);
    ``unfused``: a native Conv that runs as a float Conv of dequantized tensors (``genome_classes``),
    costed as the dequantizing fallback of its types; ``shared_input``: the input's quantization is
    shared by that many layers (``ExecClass.shared_input``), each paying its share."""
    p = path_of(wt, at, profile)
    unfused = unfused and p.kind == "native"
    if unfused:
        ft = profile.data["float_type"]
        p = Path("dequantize", ft, wt, at, profile.table("throughput_gmacs")[ft],
                 profile.table("energy", "per_mac_pj")[ft])
    macs = layer_macs(layer)
    in_el, out_el = layer_io(layer)
    ft = profile.data["float_type"]
    wbytes = layer.params * (_BYTES[wt] if wt != "fp32" else _BYTES[ft])
    abytes = in_el * _BYTES[ft] + out_el * _BYTES[ft]
    onchip = profile.num("memory", "onchip_bytes")
    bw = profile.num("memory", "dram_bandwidth_gbs") * 1e3  # bytes per us
    # The weights a run reads and dequantizes: all of them, but an embedding Gather only the rows it
    # looks up (qae gathers quantized rows, then dequantizes them) when the number of ids is known.
    touched = float(layer.params)
    whole_table = profile.data.get("gather_table_ns_per_element", {}).get(wt) if layer.op_type == "Gather" else None
    if layer.op_type == "Gather" and len(layer.weight_shape) == 2 and whole_table is None:
        try:
            touched = min(touched, gemm_rows(layer) * layer.weight_shape[1])
        except ProfileError:
            pass  # ids unknown: the whole table, as before
    dram = touched * (_BYTES[wt] if wt != "fp32" else _BYTES[ft]) + (abytes if abytes > onchip else 0.0)
    compute_us = macs / (p.throughput_gmacs * 1e3)
    us = max(compute_us, dram / bw) + profile.num("overhead", "per_layer_us")
    conv = profile.data["conversion"]
    extra_j = 0.0
    transient = 0.0
    if p.kind == "weight_only":
        us += touched * profile.table("weight_only_ns_per_element").get(wt, 0.0) / 1e3
    if whole_table is not None:  # the runtime dequantizes the whole table each run, then gathers
        us += touched * float(whole_table["value"]) / 1e3
        transient = touched * _BYTES[ft]
    if p.kind in ("native", "dequantize") and at != "fp32":
        # Quantize the float input on entry; dynamic activations also find their range at run time.
        per_el = conv["dynamic_ns_per_element"] if at == "dynamic" else conv["ns_per_element"]
        entry = float(conv["per_op_us"]["value"]) + in_el * float(per_el["value"]) / 1e3
        us += entry / shared_input if shared_input > 1 else entry
    if p.kind == "dequantize":
        # The fallback: weights (and activations) are dequantized every run, then float compute.
        dq = profile.table("dequantize_ns_per_element")
        if gran == "tensor" and "dequantize_per_tensor_ns_per_element" in profile.data:
            dq = profile.table("dequantize_per_tensor_ns_per_element")  # one scale: a faster loop
        us += float(conv["per_op_us"]["value"]) + touched * dq.get(wt, 0.0) / 1e3
        if asymmetric and gran == "channel" and "dequantize_asymmetric_ns_per_element" in profile.data:
            # a zero point per channel: a slower dequantizing loop for some types
            us += touched * profile.table("dequantize_asymmetric_ns_per_element").get(wt, 0.0) / 1e3
        spill = profile.data.get("dequantize_spill_ns_per_element", {})
        if wt in spill:  # dequantized weights that do not fit on chip cost more per element
            start = profile.data["memory"].get("dequantize_spill_bytes", {}).get("value", onchip)
            spilled = max(0.0, touched - float(start) / _BYTES[p.compute])
            us += spilled * float(spill[wt]["value"]) / 1e3
        us += (in_el + out_el) * float(conv["ns_per_element"]["value"]) / 1e3
        transient = touched * _BYTES[p.compute]
        extra_j += touched * profile.num("energy", "per_mac_pj", p.compute) * 1e-12
    if p.kind == "slower_unit":
        us += p.penalty_us
        dram += abytes  # handing the tensors to another unit goes through shared memory
    factor = profile.data.get("op_factors", {}).get(layer.op_type, {}).get(op_path(p.kind, at))
    if factor is not None:
        us *= float(factor["value"])
    kind = p.kind
    gkey = grouped_path(layer, p.kind, at, gran, asymmetric)
    grouped = grouped_conv_us(layer, gkey, profile)
    if asymmetric and p.kind == "native" and gkey is None:
        # unsigned weights with zero points: ONNX Runtime's u8u8 GEMMs lack the u8s8 VNNI path (a
        # grouped Conv runs a depthwise kernel or per-group GEMMs: ``grouped_conv`` costs those)
        asym = asymmetric_factor(profile, layer.op_type, op_path(p.kind, at))
        if asym is not None:
            us *= float(asym["value"])
    us += spatial_conv_us(layer, op_path(p.kind, at), profile)
    if p.kind == "native" and at == "dynamic":
        us += dynamic_rescale_us(layer, profile)
    unattributed = 0.0
    if activations or reorders_in or reorders_out:
        us += activations * other_op_us(profile, out_el)
        # a per-op profile names a reorder after no node of the model: it cannot be told whose it is
        unattributed = reorders_in * other_op_us(profile, in_el) + reorders_out * other_op_us(profile, out_el)
        us += unattributed
    if unfused:
        kind = "unfused"
    if grouped > 0:
        us += grouped
        kind = f"{kind} grouped"
    e = profile.data["energy"]
    joules = (
        macs * p.energy_per_mac_pj * 1e-12
        + dram * float(e["dram_pj_per_byte"]["value"]) * 1e-12
        + (abytes if abytes <= onchip else 0.0) * float(e["onchip_pj_per_byte"]["value"]) * 1e-12
        + extra_j
    )
    read = touched * (_BYTES[wt] if wt != "fp32" else _BYTES[ft]) + 2 * transient  # written, then read
    return LayerCost(us, joules, wbytes, abytes, transient, kind, p.compute, read, unattributed)


@dataclass
class Prediction:
    """Predicted objectives of one genome on one profile; never a measurement."""

    profile: str
    calibration_id: str | None
    latency_ms: float
    energy_j: float
    memory_bytes: float
    uncertainty: float
    layers: list[dict[str, Any]] = field(default_factory=list)
    emulated_layers: list[str] = field(default_factory=list)
    #: the expected error of the energy and memory figures (``Profile.uncalibrated_uncertainty``: a
    #: calibration fits latency only); None: not known here
    energy_memory_uncertainty: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": "predicted",
            "profile": self.profile,
            "calibration_id": self.calibration_id,
            "latency_ms": self.latency_ms,
            "energy_j": self.energy_j,
            "memory_bytes": self.memory_bytes,
            "uncertainty": self.uncertainty,
            "energy_memory_uncertainty": self.energy_memory_uncertainty,
            "emulated_layers": self.emulated_layers,
            "layers": self.layers,
        }


_CLASSES: list[ExecClass] = [
    ExecClass(w, a, g) for w in ("fp32", "int4", "int8", "int16") for a in ("fp32", "dynamic", "int4", "int8", "int16")
    for g in ("channel", "tensor") if not (w == "fp32" and (a != "fp32" or g != "channel"))
]


class CostTable:
    """Every layer's cost on every execution class, so a population costs a lookup and a sum.

    Built once per (layers, profile, graph) over the classic classes; a class first seen in a genome
    (a kernel, block size, accuracy level) adds one column under a lock, so a table stays safe to
    share between threads (columns are only ever appended; arrays are swapped, never resized in place).
    """

    def __init__(self, layers: Sequence[LayerLike], profile: Profile, graph: GraphStats | None = None) -> None:
        self.layers = list(layers)
        self.profile = profile
        self.graph = graph or GraphStats()
        n = len(self.layers)
        self.lat = np.zeros((n, 0))
        self.energy = np.zeros((n, 0))
        self.wbytes = np.zeros((n, 0))
        self.transient = np.zeros((n, 0))
        self.rbytes = np.zeros((n, 0))
        self.abytes = np.zeros(n)
        self.costs: list[list[LayerCost]] = [[] for _ in range(n)]
        self.index: dict[ExecClass, int] = {}
        self._lock = threading.Lock()
        self._add(_CLASSES)
        for i in range(n):
            self.abytes[i] = self.costs[i][0].activation_bytes
        self.fixed_us = profile.num("overhead", "per_inference_us") + self.graph.fixed_us(profile)
        e = profile.data["energy"]
        self.power_w = float(e["static_power_w"]["value"]) + float(e["active_power_w"]["value"])
        self.runtime_bytes = profile.num("memory", "runtime_overhead_bytes")

    def _add(self, classes: Sequence[ExecClass]) -> None:
        """Cost every layer in the new ``classes`` and publish their columns (callers hold the lock
        or own the table)."""
        new = [c for c in dict.fromkeys(classes) if c not in self.index]
        if not new:
            return
        n = len(self.layers)
        cols = np.zeros((5, n, len(new)))
        for i, layer in enumerate(self.layers):
            row = [cost_of(layer, c, self.profile) for c in new]
            self.costs[i] = [*self.costs[i], *row]
            for j, lc in enumerate(row):
                cols[:, i, j] = (lc.latency_us, lc.energy_j, lc.weight_bytes, lc.transient_bytes, lc.read_bytes)
        self.lat = np.concatenate([self.lat, cols[0]], axis=1)
        self.energy = np.concatenate([self.energy, cols[1]], axis=1)
        self.wbytes = np.concatenate([self.wbytes, cols[2]], axis=1)
        self.transient = np.concatenate([self.transient, cols[3]], axis=1)
        self.rbytes = np.concatenate([self.rbytes, cols[4]], axis=1)
        start = len(self.index)
        self.index.update({c: start + j for j, c in enumerate(new)})  # published last

    def classes(self, genome: GenomeLike) -> np.ndarray:
        tokens = genome_classes(self.layers, genome, self.profile, self.graph)
        missing = [c for c in tokens if c not in self.index]
        if missing:
            with self._lock:
                self._add(missing)
        return np.array([self.index[c] for c in tokens], dtype=np.int64)

    def totals(self, idx: np.ndarray) -> np.ndarray:
        """Rows of (latency_ms, energy_j, memory_bytes) for class matrices ``idx`` [genomes, layers]."""
        idx = np.atleast_2d(idx)
        rows = np.arange(len(self.layers))[None, :]
        lat_us = self.lat[rows, idx].sum(axis=1) + self.fixed_us
        mem = self.profile.data["memory"]
        if "cache_bytes" in mem and "beyond_cache_ns_per_byte" in mem:
            read = self.rbytes[rows, idx].sum(axis=1)
            lat_us = lat_us + np.where(read > float(mem["cache_bytes"]["value"]),
                                       read * float(mem["beyond_cache_ns_per_byte"]["value"]) / 1e3, 0.0)
        energy = self.energy[rows, idx].sum(axis=1) + self.power_w * lat_us * 1e-6
        peak_act = float(self.abytes.max()) if len(self.layers) else 0.0
        transient = self.transient[rows, idx].max(axis=1) if len(self.layers) else 0.0
        memory = self.wbytes[rows, idx].sum(axis=1) + peak_act + transient + self.runtime_bytes
        return np.stack([lat_us / 1e3, energy, memory], axis=1)

    def predict_many(self, genomes: Iterable[GenomeLike]) -> np.ndarray:
        """(latency_ms, energy_j, memory_bytes) per genome: a population of 100 in about a millisecond."""
        idx = np.stack([self.classes(g) for g in genomes])
        return self.totals(idx)

    def predict(self, genome: GenomeLike) -> Prediction:
        idx = self.classes(genome)
        lat_ms, energy, memory = self.totals(idx[None, :])[0]
        rows = []
        for i, layer in enumerate(self.layers):
            lc = self.costs[i][int(idx[i])]
            gene = genome[layer.name]
            rows.append({
                "layer": layer.name, "op_type": layer.op_type, "macs": layer.macs,
                "weight_bits": gene.weight_bits, "activation_bits": gene.activation_bits,
                "kernel": str(getattr(gene, "kernel", None) or "qdq"), "gemm_rows": _rows_or_none(layer),
                "path": lc.path, "compute": lc.compute, "latency_ms": lc.latency_us / 1e3,
                # of it, the ops a per-op profile cannot tie to the layer (layout reorders)
                "unattributed_ms": lc.unattributed_us / 1e3,
                "energy_j": lc.energy_j + self.power_w * lc.latency_us * 1e-6,
                "weight_bytes": lc.weight_bytes,
            })
        return Prediction(
            profile=self.profile.name,
            calibration_id=self.profile.calibration_id,
            latency_ms=float(lat_ms),
            energy_j=float(energy),
            memory_bytes=float(memory),
            uncertainty=self.profile.num("uncertainty"),
            layers=rows,
            emulated_layers=genome.emulated_layers,
            energy_memory_uncertainty=self.profile.uncalibrated_uncertainty,
        )


def _rows_or_none(layer: LayerLike) -> float | None:
    if layer.op_type not in ("MatMul", "Gemm", "Gather"):
        return None
    try:
        return gemm_rows(layer)
    except ProfileError:
        return None


def predict(
    layers: Sequence[LayerLike], genome: GenomeLike, profile: Profile, graph: GraphStats | None = None
) -> Prediction:
    """Predicted latency, energy and memory of ``genome`` over ``layers`` on ``profile``.

    ``graph`` adds the genome-independent rest of the model (``GraphStats.of(model)``); without it the
    prediction covers the quantizable layers and the per-inference overhead only.
    """
    return CostTable(layers, profile, graph).predict(genome)


def predict_model(model: ModelLike, genome: GenomeLike, profile: Profile) -> Prediction:
    """``predict`` over a whole loaded model, rest of the graph included."""
    return predict(model.layers, genome, profile, GraphStats.of(model))
