"""Which layer each node of a quantized model belongs to, and per-layer times from a device's per-op
profile (agent 1.5 ``op_profile``).

A layer owns its main node (the MatMul / Conv / Gemm / Gather that reads its weight, or the node a
block kernel replaced it with) and the quantization plumbing that feeds only it: the Quantize /
DequantizeLinear pairs on its activation, the DequantizeLinear of its weight and bias, and the
helper nodes qae inserts for it; a Conv also owns the Relu / Clip its output alone goes through
(fused into a float or QLinear Conv, an op of its own after ConvInteger). Walking back from the main
node through plumbing ops finds them without relying on names. Everything else (layer norms,
softmax, reshapes, bias adds, residuals, a runtime's layout reorders) is "unattributed" and reported
by op type, so per-layer times and the rest add up to the profile.

ONNX Runtime profiles the graph it ran, after its fusions. A fused kernel keeps the name of the node
it replaced (a QDQ MatMul runs as ``MatMulIntegerToFloat`` under the MatMul's name, its
DequantizeLinear nodes folded away) or takes a name that starts with it (``.../MatMul/MatMulScaleFusion/``,
``<node>_token_<k>`` for a QDQ Conv run as ``QLinearConv``),
or is named after the replaced node's output (the NCHWc layout transformer's ``<output>_nchwc``, where
the output may be that of an activation fused into it, such as a Conv's Clip); a
profiled name that matches no node or output of the model sent, by name or prefix, is unattributed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: ops that only move a layer's tensors between representations
PLUMBING = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Identity", "Cast",
                      "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Gather", "Sub", "Mul"})
#: activations ONNX Runtime fuses into the kernel before them (a Conv's Relu or Clip): its fused kernel
#: may be named after the activation's output
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "HardSwish"})
#: plumbing that may feed a layer only through its weight side (read from initializers alone)
_ONLY_FROM_CONSTANTS = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Gather", "Sub", "Mul", "Cast"})


def _main_node(layer: Any, nodes: Sequence[Any], readers: dict[str, list[int]]) -> int | None:
    """The node index that is ``layer``'s op in the quantized graph: the first non-plumbing node that
    reads its weight (or an initializer named after it, such as ``<weight>_quantized``) through
    plumbing only; else the node of its name."""
    todo = sorted(t for t in readers if t == layer.weight or t.startswith(layer.weight + "_"))
    seen: set[str] = set()
    while todo:
        tensor = todo.pop(0)
        if tensor in seen:
            continue
        seen.add(tensor)
        for i in readers.get(tensor, []):
            # an embedding layer's op is itself a Gather: plumbing elsewhere, the layer here
            if nodes[i].op_type not in PLUMBING or nodes[i].op_type == layer.op_type:
                return i
            todo += list(nodes[i].output)
    return next((i for i, node in enumerate(nodes) if node.name == layer.node_name), None)


def node_layers(proto: Any, layers: Sequence[Any]) -> dict[str, str]:
    """{node name: layer name} for every node of ``proto`` (a quantized ONNX model) that belongs to a
    layer of ``layers`` (``harness.core.model.LayerSpec``): its main node, the plumbing feeding it
    alone, and the rescaling after an integer kernel (ONNX Runtime's dynamic quantization: Cast, and
    Muls by the scales)."""
    nodes = list(proto.graph.node)
    readers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for t in node.input:
            readers.setdefault(t, []).append(i)
        for t in node.output:
            producer[t] = i
    constants = {t.name for t in proto.graph.initializer}
    constants |= {n.output[0] for n in nodes if n.op_type == "Constant" and n.output}
    quant_ops = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}

    def plumbing(k: int) -> bool:
        """Quantization plumbing; a Clip only where it bounds a QuantizeLinear's input (qae's clip of an
        emulated width), never a ReLU6 between layers."""
        if nodes[k].op_type == "Clip":
            return all(nodes[j].op_type == "QuantizeLinear" for o in nodes[k].output for j in readers.get(o, []))
        return nodes[k].op_type in PLUMBING

    def from_(i: int, allowed: set[int]) -> bool:
        return all(not t or t in constants or producer.get(t) in allowed for t in nodes[i].input)

    out: dict[str, str] = {}
    for layer in layers:
        main = _main_node(layer, nodes, readers)
        if main is None:
            continue
        mine = {main}
        integer = nodes[main].op_type.endswith("Integer")
        changed = True
        while changed:
            changed = False
            for i in sorted(mine):
                # back: plumbing whose every reader is this layer's (or a Mul of its scale by constants)
                for t in nodes[i].input:
                    k = producer.get(t)
                    if k is None or k in mine or nodes[k].name in out or not plumbing(k):
                        continue  # not plumbing, or an earlier layer's already
                    side = [j for o in nodes[k].output for j in readers.get(o, []) if j not in mine]
                    if not all(nodes[j].op_type == "Mul" and from_(j, {k}) for j in side):
                        continue  # read elsewhere too: shared, not this layer's
                    if nodes[k].op_type in _ONLY_FROM_CONSTANTS and not _from_constants(k, nodes, producer, constants):
                        continue  # a reshape or gather of activations is the model's, not quantization's
                    mine.add(k)
                    changed = True
                # forward, after an integer kernel only: its Cast, and Muls of quantization scales
                if not integer:
                    continue
                for o in nodes[i].output:
                    for j in readers.get(o, []):
                        op = nodes[j].op_type
                        # a Conv's own bias (reshaped from constants), added after the rescale; a
                        # MatMul's bias Add is the model's own node
                        bias = op == "Add" and layer.op_type == "Conv" and nodes[i].op_type == "Mul" and all(
                            t == o or t in constants or (t in producer and _from_constants(
                                producer[t], nodes, producer, constants)) for t in nodes[j].input)
                        if j in mine or not (bias or from_(j, mine)):
                            continue
                        if bias or (op == "Cast" and i == main) or (op == "Mul" and any(
                                nodes[producer[t]].op_type in quant_ops | {"Cast", "Mul"} and producer[t] != main
                                for t in nodes[j].input if producer.get(t) in mine)):
                            mine.add(j)
                            changed = True
        if layer.op_type == "Conv":
            # the Relu / Clip a Conv's output alone goes through: fused into a float or QLinear Conv
            # (its kernel is then named after it), an op of its own after ConvInteger's rescaling
            for i in sorted(mine):
                tensor = nodes[i].output[0] if nodes[i].output else None
                while tensor is not None and len(readers.get(tensor, [])) == 1:
                    j = readers[tensor][0]
                    if j in mine or nodes[j].op_type not in ("Relu", "Clip") or plumbing(j) or nodes[j].name in out:
                        break
                    mine.add(j)
                    tensor = nodes[j].output[0] if nodes[j].output else None
        for i in mine:
            out[nodes[i].name] = layer.name
    return out


def _from_constants(i: int, nodes: Sequence[Any], producer: dict[str, int], constants: set[str]) -> bool:
    """Whether node ``i`` computes from initializers and constants only (through plumbing)."""
    todo, seen = [i], set()
    while todo:
        k = todo.pop()
        if k in seen:
            continue
        seen.add(k)
        for t in nodes[k].input:
            if not t or t in constants:
                continue
            p = producer.get(t)
            if p is None or nodes[p].op_type not in PLUMBING:
                return False
            todo.append(p)
    return True


@dataclass
class LayerTimes:
    """A profile split by layer: ``layers`` {layer: ms}, ``unattributed`` {op type: ms}, and each
    profiled node's layer (None when unattributed)."""

    layers: dict[str, float] = field(default_factory=dict)
    unattributed: dict[str, float] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    run_ms: float | None = None

    @property
    def total_ms(self) -> float:
        return sum(self.layers.values()) + sum(self.unattributed.values())

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "unattributed": self.unattributed, "nodes": self.nodes,
                "run_ms": self.run_ms, "total_ms": self.total_ms}

    def scaled_to(self, latency_ms: float) -> LayerTimes:
        """The same split scaled so that it sums to ``latency_ms`` (a timed run's latency): under the
        profiler every kernel runs slower than in a timed run (digits-vit's microsecond kernels about
        5x, a 0.1 ms MatMul 1.1-1.4x), so the profile gives each layer's share and the timed runs the
        scale."""
        total = self.total_ms
        f = latency_ms / total if total > 0 else 1.0
        return LayerTimes(layers={k: v * f for k, v in self.layers.items()},
                          unattributed={k: v * f for k, v in self.unattributed.items()},
                          nodes=[{**n, "ms": n["ms"] * f} for n in self.nodes], run_ms=self.run_ms)

    def add(self, node: dict[str, Any], ms: float, layer: str | None, shares: dict[str, float] | None = None) -> None:
        """Count one profiled node: to its layer, or unattributed under its op type; a node the
        runtime ran for several layers at once (``shares``: {layer: fraction}, a merged quantization
        of a shared input) to each in its share."""
        shares = shares if shares is not None else node.get("shares")
        if shares:
            for name, f in shares.items():
                self.layers[name] = self.layers.get(name, 0.0) + ms * f
        elif layer is None:
            op = str(node.get("op_type") or "?")
            self.unattributed[op] = self.unattributed.get(op, 0.0) + ms
        else:
            self.layers[layer] = self.layers.get(layer, 0.0) + ms
        entry = {"name": str(node["name"]), "op_type": node.get("op_type"), "ms": ms, "layer": layer}
        if shares:
            entry["shares"] = dict(shares)
        self.nodes.append(entry)

    def corrected_to(self, latency_ms: float, floor: float = 0.1, cap_by_cheapest: bool = True) -> LayerTimes:
        """The split less the profiler's cost per node, then scaled to ``latency_ms``: the profiler adds
        about the same time to every kernel it times (measured here: 2-3 us a node, so digits-cnn's
        1 us Convs profile at 3-5 us while a 0.5 ms MatMul barely moves), so shares of the raw profile
        make small kernels look as costly as large ones. The same amount ``c`` is taken off every node,
        chosen so that the nodes sum to the timed latency, no node below ``floor`` of its profiled
        time, and never more than the cheapest node took less its floor (``cap_by_cheapest``): the
        profiled runs are also slower as a whole than the fastest timed run (digits-cnn's 1.2-2.1x,
        digits-vit's about 2x, as their median run is), an excess no per-node cost explains, and
        taking it off every node alike crushed the small kernels to their floor and gave the large
        ones the rest (a depthwise Conv's share of one model 4x its share of the next). What remains
        is scaled to the latency exactly (``scaled_to``). Where the profile does not exceed the
        latency it is only scaled."""
        ms = np.array([float(n["ms"]) for n in self.nodes])
        if not len(ms) or ms.sum() <= latency_ms or latency_ms <= 0:
            return self.scaled_to(latency_ms)

        def total(c: float) -> float:
            return float(np.maximum(ms - c, floor * ms).sum())

        lo, hi = 0.0, float(ms.max())
        for _ in range(60):  # total(c) falls as c grows: bisect for total(c) = latency
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(mid) > latency_ms else (lo, mid)
        if cap_by_cheapest:
            # The profiler's cost per node is at most what the cheapest node took (less its floor): a
            # profile still above the latency after that ran slower as a whole (a busy sibling core, a
            # lower clock), which the scaling below takes off in proportion, never off the small nodes.
            hi = min(hi, (1.0 - floor) * float(ms.min()))
        kept = np.maximum(ms - hi, floor * ms)
        out = LayerTimes(layers={k: 0.0 for k in self.layers}, run_ms=self.run_ms)
        for node, t in zip(self.nodes, kept):
            out.add(node, float(t), node.get("layer"))
        return out.scaled_to(latency_ms)


def layer_times(proto: Any, layers: Sequence[Any], op_profile: dict[str, Any], statistic: str = "ms") -> LayerTimes:
    """Per-layer times from a device's ``op_profile`` of ``proto``: each profiled node goes to the
    layer of the node of that name in ``proto``, or of the longest node name it starts with
    (a fused kernel); the rest is unattributed, by op type. ``statistic`` is the per-node figure
    summed: ``ms`` (the median per run) or ``iqm_ms`` (the interquartile mean, agent 1.5.1; the
    median where a node lacks it)."""
    owner = node_layers(proto, layers)
    names = sorted((n.name for n in proto.graph.node if n.name), key=len, reverse=True)
    # a layout transformer names its kernel after the node's output (``<output>_nchwc``)
    made_by = {t: n.name for n in proto.graph.node for t in n.output if t}
    tensors = sorted(made_by, key=len, reverse=True)
    known = {n.name for n in proto.graph.node}
    by_name = {n.name: n for n in proto.graph.node}

    def made(tensor: str) -> str | None:
        """The node a kernel named after ``tensor`` stands for: its producer, or, for an activation
        fused into the kernel before it, that kernel's node."""
        node = by_name.get(made_by[tensor])
        if node is not None and node.op_type in FUSED_ACTIVATIONS and node.input and node.input[0] in made_by:
            before = made_by[node.input[0]]
            if before in owner:
                return before
        return made_by[tensor]

    merged = _merged_quantizers(proto, owner, {str(n["name"]) for n in op_profile["nodes"]})
    out = LayerTimes(layers={layer.name: 0.0 for layer in layers}, run_ms=op_profile.get("run_ms"))
    for node in op_profile["nodes"]:
        name, ms = str(node["name"]), float(node.get(statistic, node["ms"]))
        if name in merged:
            out.add(node, ms, owner.get(name), merged[name])
            continue
        layer = owner.get(name)
        if layer is None and name not in known:
            # a fusion's kernel: "<node>/...", or "<node>_token_<k>" (ORT's unique-name suffix)
            base = next((n for n in names if name.startswith(n + "/") or name.startswith(n + "_token_")), None)
            if base is None:
                tensor = next((t for t in tensors if name.startswith(t + "_")), None)
                base = made(tensor) if tensor else None
            layer = owner.get(base) if base else None
        out.add(node, ms, layer)
    return out


def _merged_quantizers(proto: Any, owner: dict[str, str], profiled: set[str]) -> dict[str, dict[str, float]]:
    """The DynamicQuantizeLinear nodes the runtime ran for several layers: qae writes one per dynamic
    layer, each on its own Identity of the input, and ONNX Runtime merges those of one input into one
    (common subexpression elimination), which the profile names after one of them. Where exactly one
    of a group of such nodes on the same input was profiled, its time is shared equally by the layers
    of the group, as the cost model charges it (``ExecClass.shared_input``): {profiled name: {layer:
    fraction}}. A runtime that ran each of them keeps them apart."""
    made_by = {t: n for n in proto.graph.node for t in n.output if t}

    def source(tensor: str) -> str:
        seen = set()
        while tensor in made_by and made_by[tensor].op_type == "Identity" and tensor not in seen:
            seen.add(tensor)
            tensor = made_by[tensor].input[0]
        return tensor

    groups: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.op_type == "DynamicQuantizeLinear" and node.input and node.name in owner:
            groups.setdefault(source(node.input[0]), []).append(node.name)
    out: dict[str, dict[str, float]] = {}
    for names in groups.values():
        ran = [n for n in names if n in profiled]
        if len(names) < 2 or len(ran) != 1:
            continue
        layers = [owner[n] for n in names]
        out[ran[0]] = {layer: layers.count(layer) / len(layers) for layer in dict.fromkeys(layers)}
    return out
