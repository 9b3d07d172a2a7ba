"""Exact int8 arithmetic for host-side evaluation, on CPUs where ONNX Runtime's kernels saturate.

ONNX Runtime multiplies uint8 activations by int8 weights (its u8s8 kernels: QLinearMatMul,
MatMulIntegerToFloat, MatMulInteger, QLinearConv, ConvInteger) on x86-64 CPUs without VNNI through
VPMADDUBSW, which adds each pair of products in int16 and saturates there. ONNX Runtime's
quantization guide names the case ("reduce_range ... to mitigate saturation issues on AVX2 and
AVX512 (non-VNNI) machines"). On such a host a quantized model scores lower than the same model
scores on an ARM phone, an NPU or a VNNI CPU, where the integer products are exact: a MatMul with
uint8 inputs near 255 and int8 weights near +-127 was off by 44 % here (AVX2, ORT 1.32).

What qae reports is the model's accuracy in exact integer arithmetic, wherever it is evaluated. On a
host whose u8s8 kernels saturate (found by running one, ``u8s8_saturates``), ``exact_int8`` rewrites
a copy of the model for evaluation only: every int8 weight initializer of an integer op becomes
uint8 with its zero point shifted by 128. ``(w - z) == ((w + 128) - (z + 128))``, so it is the same
model, and ONNX Runtime runs it with its u8u8 kernels, which widen to int16 before multiplying and do
not saturate. The model a user ships keeps its int8 weights; its latency is measured as it is.
A model meant for an x86 CPU without VNNI under ONNX Runtime scores lower there than qae says;
``reduce_range`` (7-bit weights) is ONNX Runtime's remedy for that target.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["exact_int8", "u8s8_saturates"]

log = logging.getLogger(__name__)

#: op type -> (weight slot, weight zero-point slot, weight scale slot or None): the ops whose int8
#: weights ORT may run through a u8s8 kernel (a DequantizeLinear's reach one when ORT fuses the QDQ
#: pattern). An absent zero point is 0 in int8 and must be written as 128 in uint8, shaped like the
#: scale (a scalar where the op has no scale input).
_WEIGHT_SLOTS: dict[str, tuple[int, int, int | None]] = {
    "DequantizeLinear": (0, 2, 1),
    "MatMulInteger": (1, 3, None),
    "ConvInteger": (1, 3, None),
    "QLinearMatMul": (3, 5, 4),
    "QLinearConv": (3, 5, 4),
    "MatMulIntegerToFloat": (1, 5, 3),
    "DynamicQuantizeMatMul": (1, 3, 2),
}


@functools.lru_cache(maxsize=1)
def u8s8_saturates() -> bool:
    """Whether this host's ONNX Runtime gets a uint8 x int8 MatMulInteger wrong (int16 saturation).

    Run once per process on a [8, 64] x [64, 16] product whose exact value ORT's saturating kernels
    cannot reach; a probe that fails to run counts as saturating (the rewrite is exact either way).
    """
    import onnxruntime as ort

    a = np.full((8, 64), 255, np.uint8)
    w = np.full((64, 16), 127, np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [8, 16])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        y = sess.run(None, {"a": a})[0]
    except Exception as exc:
        log.debug("u8s8 probe failed (%s): evaluating with uint8 weights", exc)
        return True
    saturates = bool(np.any(y != 255 * 127 * 64))
    if saturates:
        log.info("ONNX Runtime's u8s8 kernels saturate on this CPU (no VNNI): quantized models are "
                 "evaluated with their int8 weights as uint8, which is exact")
    return saturates


def exact_int8(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``proto`` whose int8 weight initializers (and their zero points) feeding the ops in
    ``_WEIGHT_SLOTS`` are uint8 shifted by 128, or None when it has none. The copy computes the same
    function in exact arithmetic; only the storage type of those weights differs."""
    inits = {t.name: t for t in proto.graph.initializer}

    def int8_init(name: str) -> bool:
        return name in inits and inits[name].data_type == TensorProto.INT8

    plan: list[tuple[int, tuple[int, ...] | None]] = []  # (node index, shape of a zero point to add)
    for index, node in enumerate(proto.graph.node):
        slots = _WEIGHT_SLOTS.get(node.op_type)
        if slots is None or node.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        w_slot, z_slot, s_slot = slots
        if len(node.input) <= w_slot or not int8_init(node.input[w_slot]):
            continue
        zp = node.input[z_slot] if len(node.input) > z_slot else ""
        if zp:
            if int8_init(zp):
                plan.append((index, None))
            continue  # else a zero point computed at run time: leave the node as it is
        if s_slot is None:
            plan.append((index, ()))
        elif len(node.input) > s_slot and node.input[s_slot] in inits:
            plan.append((index, tuple(inits[node.input[s_slot]].dims)))
    if not plan:
        return None

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    taken = {t.name for t in out.graph.initializer} | {o for n in out.graph.node for o in n.output}
    taken |= {i.name for i in out.graph.input}
    shifted: dict[str, str] = {}
    added: list[onnx.TensorProto] = []

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def as_uint8(name: str) -> str:
        if name not in shifted:
            value = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
            shifted[name] = fresh(f"{name}_u8")
            added.append(numpy_helper.from_array(value.astype(np.uint8), shifted[name]))
        return shifted[name]

    for index, zp_shape in plan:
        node = out.graph.node[index]
        w_slot, z_slot, _ = _WEIGHT_SLOTS[node.op_type]
        if zp_shape is None:
            node.input[z_slot] = as_uint8(node.input[z_slot])
        else:
            new = fresh(f"{node.input[w_slot]}_zp_u8")
            added.append(numpy_helper.from_array(np.full(zp_shape, 128, np.uint8), new))
            while len(node.input) <= z_slot:
                node.input.append("")
            node.input[z_slot] = new
        node.input[w_slot] = as_uint8(node.input[w_slot])
    # the int8 originals stay (a subgraph may read one): ONNX Runtime drops initializers nothing reads
    out.graph.initializer.extend(added)
    return out
