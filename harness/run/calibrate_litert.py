"""``qae calibrate --runtime litert``: the calibration suite on LiteRT (issue 21).

The same measure-and-fit loop as ``harness.run.calibrate`` (interleaved passes, stored measurements,
the robust fit, held-out error), on .tflite models built by qae's LiteRT path and measured by the
agent with LiteRT's interpreter (XNNPACK):

- micro-benchmarks: one FULLY_CONNECTED layer (a torch ``nn.Linear`` converted with litert-torch) at
  three shapes, at every precision ai-edge-quantizer builds for it (fp32, static w8a8 and w8a16,
  dynamic int8 and int4, weight-only int8 and int4, static w4a8);
- whole candidates of ``builtin:digits-vit`` and ``builtin:digits-cnn`` on LiteRT: float, w8a8,
  dynamic int8 (where LiteRT builds it) and random mixes drawn like ``calibrate.mixed_genome`` but only
  from the genes each layer takes on LiteRT, a part held out.

What it does not have: the block-quantized kernels (ONNX Runtime's) and the ONNX-only MiniLM-sized
``transformer``; per-op profiles (the agent profiles ONNX Runtime sessions only), so the fit uses
whole-model latencies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.run.calibrate import CANDIDATE_GENES, MICRO_GENES, Builder, Item, Suite
from profiles.costmodel import GraphStats
from profiles.microbench import LayerShape

#: single-layer precisions (``MICRO_GENES`` keys) LiteRT builds on a FULLY_CONNECTED layer
LITE_MICRO = ("fp", "w8a8", "w8dyn", "w4a8", "w8a16", "w8fp", "w4fp", "w4dyn")
LITE_GENES = {**MICRO_GENES, "w4dyn": {"weight_bits": 4, "activation_bits": "dynamic"}}


def litert_suite(quick: bool = False, seed: int = 0) -> Suite:
    """Micro FULLY_CONNECTED layers and whole digits-vit / digits-cnn candidates on LiteRT (see the module)."""
    if quick:
        shapes = [LayerShape(8, 64, 64)]
        genes: tuple[str, ...] = ("fp", "w8a8", "w8dyn")
        counts = {"builtin:digits-vit": 2}
    else:
        shapes = [LayerShape(16, 384, 384), LayerShape(16, 384, 1536), LayerShape(1, 384, 384)]
        genes = LITE_MICRO
        counts = {"builtin:digits-vit": 10, "builtin:digits-cnn": 8}
    items = [Item(f"lite-micro-{s.tag}-{g}", f"litert-micro:{s.tag}", {"default": LITE_GENES[g]}, "fit")
             for s in shapes for g in genes]
    rng = np.random.default_rng(seed)
    uniforms = ("fp", "w8a8", "w8dyn")
    for name, count in counts.items():
        short = "lite-" + name.split(":")[-1]
        for i in range(count):
            if i < min(len(uniforms), count - 1):
                items.append(Item(f"{short}-{uniforms[i]}", f"litert:{name}", {"default": LITE_GENES[uniforms[i]]},
                                  "fit"))
                continue
            role = "fit" if i < len(uniforms) + 3 else "heldout"
            items.append(Item(f"{short}-mix{i:02d}", f"litert:{name}", {"mix_seed": int(rng.integers(1 << 30))}, role))
    suite = Suite(items, micro_shapes={s.tag: s for s in shapes})
    suite.builder_factory = LiteBuilder
    return suite


def lite_genome(work: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a genome file's form, or ``{"mix_seed": N}``: a search-like candidate drawn from
    ``CANDIDATE_GENES``) with every layer LiteRT cannot build its gene for moved to int8 weights with the
    same activation, else weight-only int8, else float (``litert_quant.layer_supported``)."""
    from harness.quant.litert_quant import layer_supported

    rng = np.random.default_rng(int(data["mix_seed"])) if "mix_seed" in data else None
    probs = np.array([w for *_, w in CANDIDATE_GENES])
    default = dict(data.get("default") or {})
    layers: dict[str, Any] = {}
    for layer in work.model.layers:
        if rng is not None:
            wb, ab, _ = CANDIDATE_GENES[int(rng.choice(len(CANDIDATE_GENES), p=probs / probs.sum()))]
            want = {"weight_bits": wb, "activation_bits": ab,
                    "scheme": "asymmetric" if rng.random() < 0.3 else "symmetric",
                    "granularity": "per_tensor" if rng.random() < 0.2 else "per_channel"}
        else:
            want = {**default, **((data.get("layers") or {}).get(layer.name) or {})}
        for w, a in ((want.get("weight_bits", 8), want.get("activation_bits", 8)),
                     (8, want.get("activation_bits", 8)), (8, "fp"), ("fp", "fp")):
            gene = {**want, "weight_bits": w, "activation_bits": a}
            try:
                built = work.genome({"default": {"weight_bits": "fp"}, "layers": {layer.name: gene}})[layer.name]
            except Exception:  # a combination the genome rules refuse (16-bit weights with dynamic activations)
                continue
            if not built.quantized or layer_supported(work.model, layer.name, built):
                layers[layer.name] = gene
                break
    return {"default": {"weight_bits": "fp"}, "layers": layers}


class LiteBuilder(Builder):
    """``calibrate.Builder`` for LiteRT items: .tflite models, their workloads and graph statistics."""

    def workload(self, name: str) -> Any:
        from harness.quant.litert_workload import LiteWorkload

        if name not in self._workloads:
            if name.startswith("litert:"):  # a built-in, or a .tflite file with its calibration data
                spec = name.split(":", 1)[1]
                self._workloads[name] = LiteWorkload.open_lite(spec, calib=self.suite.model_calib.get(spec))
            elif name.startswith("litert-micro:"):
                path, calib = self._micro(self.suite.micro_shapes[name.split(":", 1)[1]])
                self._workloads[name] = LiteWorkload.open_lite(path, calib=calib)
            else:
                return super().workload(name)
        return self._workloads[name]

    def _micro(self, shape: LayerShape) -> tuple[Path, Path]:
        """One FULLY_CONNECTED layer [tokens, k] x [k, n] as .tflite (converted in a child process, as every
        conversion: ``litert_convert.in_child``), with 8 calibration samples."""
        from harness.quant.litert_convert import in_child

        folder = self.work / "litert-float"
        folder.mkdir(parents=True, exist_ok=True)
        path, calib = folder / f"{shape.tag}.tflite", folder / f"{shape.tag}.npz"
        if not calib.is_file():  # rows on axis 0: the model's fixed [tokens, k] input takes ``tokens`` of them a run
            x = np.random.default_rng(0).standard_normal((8 * shape.tokens, shape.k)).astype(np.float32)
            np.savez(calib, x=x)
        if not path.is_file():
            in_child("linear", str(shape.k), str(shape.n), str(shape.tokens), str(calib), str(path))
        return path, calib

    def genome(self, item: Item) -> Any:
        work = self.workload(item.workload)
        return work.genome(lite_genome(work, item.genome))

    def build(self, item: Item) -> tuple[Path, Any]:
        from harness.quant.quantize import save_model

        genome = self.genome(item)
        path = self.work / "models" / f"{item.id}-{genome.hash}.tflite"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_model(self.workload(item.workload).build(genome), path)
        return path, genome

    def graph(self, workload: str) -> GraphStats:
        if workload.startswith("litert-micro:"):  # the single layer is the whole model
            return GraphStats()
        return super().graph(workload)


__all__ = ["LITE_MICRO", "LiteBuilder", "lite_genome", "litert_suite"]
