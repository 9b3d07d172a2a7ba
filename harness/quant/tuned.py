"""A fine-tuned candidate as a real artifact: its float model (the ONNX graph with the trained weights)
quantized by qae's quantizer with its genome, the calibration ranges the fine-tune trained with and
the scales it learned (LSQ) as TensorQuantOverrides. Torch-free: what a fine-tune leaves in the run
folder is enough to rebuild, evaluate, export and measure it like any candidate.

Files, under the run folder (``harness.run.finetune`` writes them atomically):
- ``finetuned/<id>/model.onnx``: the float model with the trained weights, graph and names unchanged;
- ``finetuned/<id>/scales.json``: ``{layer: {weight_scale, weight_zero_point, activation_scale,
  activation_zero_point}}``, the learned scales (an empty object without LSQ).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from harness.core.atomic import atomic_write_text
from harness.core.errors import InputError, ModelError
from harness.core.genome import Genome
from harness.core.inputs import read_text
from harness.quant.quantize import LearnedScales, QuantResult, quantize
from harness.quant.workload import Workload

SCALES_MAX_BYTES = 64 * 2**20


def scales_to_json(learned: dict[str, LearnedScales]) -> dict[str, Any]:
    def arr(a: np.ndarray | None) -> Any:
        return None if a is None else np.asarray(a).tolist()

    return {name: {"weight_scale": arr(s.weight_scale), "weight_zero_point": arr(s.weight_zero_point),
                   "activation_scale": s.activation_scale, "activation_zero_point": s.activation_zero_point}
            for name, s in learned.items()}


def scales_from_json(body: Any, where: str) -> dict[str, LearnedScales]:
    if not isinstance(body, dict):
        raise InputError(f"{where} is not a mapping of layer names to scales: fine-tune again")
    out = {}
    for name, s in body.items():
        try:
            out[str(name)] = LearnedScales(
                weight_scale=None if s["weight_scale"] is None else np.asarray(s["weight_scale"], np.float32),
                weight_zero_point=None if s["weight_zero_point"] is None else np.asarray(s["weight_zero_point"],
                                                                                          np.int64),
                activation_scale=None if s["activation_scale"] is None else float(s["activation_scale"]),
                activation_zero_point=None if s["activation_zero_point"] is None else int(s["activation_zero_point"]),
            )
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: layer {name!r} has no valid scales: fine-tune again") from None
        if out[str(name)].weight_scale is not None and not np.all(np.asarray(out[str(name)].weight_scale) > 0):
            raise InputError(f"{where}: layer {name!r} has a scale that is not positive: fine-tune again")
    return out


def write_artifact(folder: Path, proto: onnx.ModelProto, learned: dict[str, LearnedScales]) -> str:
    """Write the float model and the scales into ``folder``; returns the model file's sha256."""
    from harness.core.atomic import atomic_write_bytes

    data = proto.SerializeToString()
    atomic_write_bytes(folder / "model.onnx", data)
    atomic_write_text(folder / "scales.json", json.dumps(scales_to_json(learned), sort_keys=True))
    return hashlib.sha256(data).hexdigest()


def build_tuned(work: Workload, folder: Path, genome: Genome, sha256: str | None = None) -> QuantResult:
    """The quantized model of a fine-tuned candidate from its files (see the module docstring).

    The graph must be the workload's (the trained weights only differ): its layers, and the ranges
    calibrated on the original model, are the workload's. ``sha256`` checks the model file."""
    path = folder / "model.onnx"
    if not path.is_file():
        raise InputError(f"the fine-tuned model {path} is missing: fine-tune the candidate again")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise InputError(f"{path} is not the file the fine-tune wrote (sha256 differs): fine-tune the candidate again")
    proto = onnx.load_from_string(data)
    ours = sorted((t.name, tuple(t.dims)) for t in work.model.proto.graph.initializer)
    if sorted((t.name, tuple(t.dims)) for t in proto.graph.initializer) != ours or \
            [n.op_type for n in proto.graph.node] != [n.op_type for n in work.model.proto.graph.node]:
        raise ModelError(f"{path} is not the run's model with other weights: fine-tune the candidate again")
    scales_path = folder / "scales.json"
    learned = {}
    if scales_path.is_file():
        text = read_text(scales_path, "fine-tuned scales", SCALES_MAX_BYTES)
        try:
            body = json.loads(text)
        except ValueError:
            raise InputError(f"{scales_path} is not JSON: fine-tune the candidate again") from None
        learned = scales_from_json(body, str(scales_path))
    model = replace(work.model, proto=proto, sha256=digest)
    result = quantize(model, genome, work.ranges, learned=learned)
    result.proto.metadata_props.append(onnx.StringStringEntryProto(key="qae.finetuned_model_sha256", value=digest))
    return result
