"""Static tensor shapes of one inference: ONNX shape inference first, one ONNX Runtime run for the rest.

Shape inference misses what depends on values it cannot see (a Reshape whose target is computed
from a Shape, a custom op, a dimension the exporter wrote as -1). When every input shape is known,
qae then runs the model once with ONNX Runtime, the unresolved tensors added as graph outputs, and
reads their real shapes. The feed is a real ``sample`` when one is given, else zeros of the
inputs' dtypes at their shapes (zeros are valid indices and valid masks, so most models run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import shape_inference


class InputLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...


def infer_shapes(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Static shapes ONNX shape inference resolves, the inputs set to ``shapes``.

    Inputs not in ``shapes`` keep only their symbolic dimensions (a declared -1 or 0 becomes a
    symbol, so it never propagates into a negative size); declared output shapes are dropped when
    an input shape was set, since they may have been written for other input shapes.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for vi in model.graph.input:
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if vi.name in shapes and axis < len(shapes[vi.name]):
                d.Clear()
                d.dim_value = int(shapes[vi.name][axis])
            elif d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()
                d.dim_param = f"qae_unknown_{vi.name}_{axis}"
    if shapes:
        for vo in model.graph.output:
            if vo.type.HasField("tensor_type"):
                vo.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference gives up on some models (custom domains, bad value infos)
        inferred = model
    out: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            out[vi.name] = [int(d.dim_value) for d in dims]
    return out


def run_shapes(
    proto: onnx.ModelProto,
    inputs: Sequence[InputLike],
    shapes: dict[str, list[int]],
    tensors: Iterable[str],
    sample: dict[str, np.ndarray] | None = None,
) -> dict[str, list[int]]:
    """Shapes of ``tensors`` (main-graph node outputs) from one ONNX Runtime run; {} if it cannot run."""
    import onnxruntime as ort

    produced = {o for n in proto.graph.node for o in n.output if o}
    outputs = {o.name for o in proto.graph.output}
    names = [t for t in dict.fromkeys(tensors) if t in produced]
    if not names:
        return {}
    feed: dict[str, Any] = {}
    for spec in inputs:
        if sample is not None and spec.name in sample:
            feed[spec.name] = np.asarray(sample[spec.name])
        elif spec.name in shapes and not spec.dtype.startswith("onnx:"):
            feed[spec.name] = np.zeros(shapes[spec.name], dtype=np.dtype(spec.dtype))
        else:
            return {}
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    # A bare ValueInfo lets ONNX Runtime take the type it infers itself.
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No graph optimisation: fused or removed nodes would take the tensors asked for with them.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = sess.run(names, feed)
    except Exception:  # a model zeros cannot drive (or too big to serialise): those shapes stay unknown
        return {}
    return {n: [int(d) for d in np.shape(v)] for n, v in zip(names, values) if isinstance(v, np.ndarray)}


def resolve_shapes(
    proto: onnx.ModelProto,
    inputs: Sequence[InputLike],
    shapes: dict[str, list[int]],
    needed: Callable[[dict[str, list[int]]], list[str]],
    sample: dict[str, np.ndarray] | None = None,
    run: bool = True,
) -> tuple[dict[str, list[int]], bool]:
    """Every shape inference resolves; if ``needed(known)`` still names tensors and ``run``, every
    unresolved main-graph tensor is read from one ONNX Runtime run (the cost model counts them all).
    Returns the shapes and whether ONNX Runtime was run."""
    known = infer_shapes(proto, shapes)
    wanted = [t for t in needed(known) if t and t not in known]
    if not (run and wanted):
        return known, False
    missing = [o for n in proto.graph.node for o in n.output if o and o not in known]
    found = run_shapes(proto, inputs, shapes, missing, sample)
    if not found:  # another tensor may have stopped the run (a sequence type): ask for less
        found = run_shapes(proto, inputs, shapes, wanted, sample)
    known.update(found)
    return known, True
