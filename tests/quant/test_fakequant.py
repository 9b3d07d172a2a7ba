"""The torch fake-quantized model of a genome computes what qae's QDQ ONNX model of it computes.

Before any training step, on builtin:digits-vit (its real weights, its validation images), for each grid
kind: symmetric / asymmetric / power-of-two, per-channel / per-tensor / per-block, native and emulated
widths, static, dynamic and float activations, and the MatMulNBits kernel. Whole-model logits are
compared (ONNX Runtime with its default optimisations, as qae evaluates), and, where a single layer is
quantized, to float precision: a difference there is a grid that differs, not a rounding tie.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harness.quant import fakequant  # noqa: E402
from harness.quant.evaluate import session  # noqa: E402
from harness.quant.finetune import torch_model  # noqa: E402

MATMULS = "blocks.0.ffn.fc1", "blocks.1.attn.v_proj"

CASES: list[dict[str, Any]] = [
    {"weight_bits": 4, "activation_bits": 8},
    {"weight_bits": 3, "activation_bits": 8, "scheme": "asymmetric"},
    {"weight_bits": 4, "activation_bits": 8, "scheme": "power_of_two"},
    {"weight_bits": 4, "activation_bits": 8, "granularity": "per_tensor"},
    {"weight_bits": 5, "activation_bits": 6},
    {"weight_bits": 2, "activation_bits": 4, "scheme": "asymmetric"},
    {"weight_bits": 8, "activation_bits": 16},
    {"weight_bits": 8, "activation_bits": "dynamic"},
    {"weight_bits": 6, "activation_bits": "fp", "granularity": "per_tensor", "scheme": "asymmetric"},
]
#: MatMul-only genes (the rest of the model at w8a8): block-wise weights and the packed kernel
MATMUL_CASES: list[dict[str, Any]] = [
    {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_block", "block_size": 16},
    {"weight_bits": 3, "activation_bits": "fp", "granularity": "per_block", "block_size": 32, "scheme": "asymmetric"},
    {"weight_bits": 4, "granularity": "per_block", "block_size": 16, "kernel": "matmulnbits", "accuracy_level": 4},
    {"weight_bits": 2, "granularity": "per_block", "block_size": 32, "kernel": "matmulnbits"},
]


@pytest.fixture(scope="module")
def base(digits_workload):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return torch_model(digits_workload)


def _both(work: Any, base: Any, genome: Any) -> tuple[np.ndarray, np.ndarray]:
    x = work.eval_data.inputs["pixels"]
    ort_out = session(work.build(genome).proto).run(None, {"pixels": x})[0]
    module = copy.deepcopy(base)
    fakequant.attach(module, work.model, genome, work.ranges)
    with torch.no_grad():
        torch_out = module(torch.from_numpy(x)).numpy()
    return ort_out, torch_out


def test_float_weights_are_the_onnx_models(digits_workload, base) -> None:  # type: ignore[no-untyped-def]
    x = digits_workload.eval_data.inputs["pixels"]
    ref = session(digits_workload.model.proto).run(None, {"pixels": x})[0]
    with torch.no_grad():
        out = base(torch.from_numpy(x)).numpy()
    assert np.abs(out - ref).max() < 1e-4


@pytest.mark.parametrize("gene", CASES + [{"default": {"weight_bits": 8}, "layers": dict.fromkeys(MATMULS, g)}
                                          for g in MATMUL_CASES], ids=lambda g: str(g)[:70])
def test_fake_quant_agrees_with_qdq_before_training(digits_workload, base, gene) -> None:  # type: ignore[no-untyped-def]
    genome = digits_workload.genome(gene if "default" in gene else {"default": gene})
    ort_out, torch_out = _both(digits_workload, base, genome)
    diff = np.abs(ort_out - torch_out)
    span = float(np.abs(ort_out).max())
    # a rounding tie that float order breaks the other way moves one activation by one step: rare and small
    assert diff.mean() < 1e-3 * span, (diff.mean(), span)
    assert diff.max() < 0.05 * span, (diff.max(), span)
    assert (ort_out.argmax(1) == torch_out.argmax(1)).mean() >= 0.99


@pytest.mark.parametrize("gene", CASES[:2] + CASES[4:], ids=lambda g: str(g)[:70])
def test_one_layer_agrees_to_float_precision(digits_workload, base, gene) -> None:  # type: ignore[no-untyped-def]
    """One quantized layer at a time (each kind of layer: Conv, MatMul, Gemm): the two models differ by
    float rounding only (the int32 bias and ORT's own int8 input blocks of a MatMulNBits it fuses
    included), except where float order breaks a rounding tie the other way: one step of one value,
    which moves the logits of a few samples (under 5 % of the 2700 logits)."""
    for layer in ("patch_embed", "blocks.0.attn.q_proj", "blocks.1.ffn.fc2", "head"):
        genome = digits_workload.genome({"default": {"weight_bits": "fp"}, "layers": {layer: gene}})
        ort_out, torch_out = _both(digits_workload, base, genome)
        diff = np.abs(ort_out - torch_out)
        assert (diff > 1e-4).mean() < 0.05 and diff.max() < 0.02, (layer, (diff > 1e-4).mean(), diff.max())


def test_power_of_two_is_exact(digits_workload, base) -> None:  # type: ignore[no-untyped-def]
    genome = digits_workload.genome({"default": {"weight_bits": 4, "activation_bits": 8, "scheme": "power_of_two"}})
    ort_out, torch_out = _both(digits_workload, base, genome)
    assert np.abs(ort_out - torch_out).max() < 1e-4


def test_learned_scales_reach_the_quantizer(digits_workload, base) -> None:  # type: ignore[no-untyped-def]
    """LSQ scales, changed by hand, go to the quantizer as overrides: the QDQ model follows them."""
    from harness.quant.quantize import quantize

    work = digits_workload
    genome = work.genome({"default": {"weight_bits": 4, "activation_bits": 8}})
    module = copy.deepcopy(base)
    attached = fakequant.attach(module, work.model, genome, work.ranges, lsq=True)
    with torch.no_grad():
        for wq in attached.weights.values():
            wq.scale.mul_(0.8)
        for aq in attached.activations.values():
            aq.scale.mul_(1.1)
    x = work.eval_data.inputs["pixels"]
    with torch.no_grad():
        torch_out = module(torch.from_numpy(x)).numpy()
    built = quantize(work.model, genome, work.ranges, learned=attached.learned_scales(work.model))
    ort_out = session(built.proto).run(None, {"pixels": x})[0]
    plain = session(work.build(genome).proto).run(None, {"pixels": x})[0]
    assert np.abs(ort_out - torch_out).mean() < 1e-3 * np.abs(ort_out).max()
    assert np.abs(plain - torch_out).mean() > 10 * np.abs(ort_out - torch_out).mean()


def test_gptq_without_samples_is_a_one_line_error(digits_workload, base) -> None:  # type: ignore[no-untyped-def]
    from harness.core.errors import ModelError

    gene = {"weight_bits": 4, "activation_bits": 8, "rounding": "gptq"}
    genome = digits_workload.genome({"default": {"weight_bits": "fp"}, "layers": dict.fromkeys(MATMULS, gene)})
    with pytest.raises(ModelError, match="rounding gptq needs the layer's calibration inputs") as err:
        fakequant.attach(copy.deepcopy(base), digits_workload.model, genome, digits_workload.ranges)
    assert "\n" not in str(err.value)


ROUNDED_MATMULS: list[dict[str, Any]] = [
    {"weight_bits": 4, "activation_bits": 8, "rounding": "gptq"},
    {"weight_bits": 3, "activation_bits": "fp", "scheme": "asymmetric", "rounding": "gptq"},
    {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_block", "block_size": 16, "scheme": "asymmetric",
     "rounding": "gptq"},
    {"weight_bits": 4, "granularity": "per_block", "block_size": 16, "kernel": "matmulnbits", "accuracy_level": 4,
     "rounding": "gptq"},
    {"weight_bits": 3, "activation_bits": "fp", "granularity": "per_block", "block_size": 32, "rounding": "mse"},
    {"weight_bits": 4, "granularity": "per_block", "block_size": 16, "kernel": "matmulnbits", "scheme": "asymmetric",
     "rounding": "hqq"},
]


@pytest.mark.parametrize("lsq", [False, True])
@pytest.mark.parametrize("gene", [
    {"weight_bits": 3, "activation_bits": 8, "scheme": "asymmetric", "rounding": "mse"},
    {"weight_bits": 4, "activation_bits": "fp", "rounding": "hqq"},
] + [{"default": {"weight_bits": 8, "activation_bits": 8}, "layers": {"*matmul*": g}} for g in ROUNDED_MATMULS],
    ids=lambda g: str(g.get("layers", {}).get("*matmul*", g))[:90])
def test_rounding_methods_scales_are_the_grid(digits_workload, base, gene, lsq) -> None:  # type: ignore[no-untyped-def]
    """A gene with rounding mse / hqq / gptq (per channel, and per block with qae's own kernels) trains on
    the grid that method chose on the parent's weights (GPTQ's weights too): before any step the fake
    quantization is qae's model of the gene, and the scales handed to the quantizer (what a fine-tune
    exports) build that same model from the (GPTQ-moved) weights."""
    from harness.quant.quantize import quantize

    work = digits_workload
    if "layers" in gene:  # the rounded gene on every MatMul
        gene = {"default": gene["default"], "layers": dict.fromkeys(
            [layer.name for layer in work.model.layers if layer.op_type == "MatMul"], gene["layers"]["*matmul*"])}
    genome = work.genome(gene if "default" in gene else {"default": gene})
    samples = work.gptq_samples()
    module = copy.deepcopy(base)
    attached = fakequant.attach(module, work.model, genome, work.ranges, lsq=lsq, samples=samples)
    x = work.eval_data.inputs["pixels"]
    with torch.no_grad():
        torch_out = module(torch.from_numpy(x)).numpy()
    plain = session(work.build(genome).proto).run(None, {"pixels": x})[0]
    learned = attached.learned_scales(work.model)
    assert {name for name, s in learned.items() if s.weight_scale is not None} == {
        layer.name for layer in work.model.layers if lsq or genome[layer.name].rounding != "rtn"}
    trained = fakequant.torch_to_onnx(module, work.model)  # the weights as training starts (GPTQ's, for gptq)
    model = replace(work.model, proto=trained)
    exported = session(quantize(model, genome, work.ranges, learned=learned).proto).run(None, {"pixels": x})[0]
    span = float(np.abs(plain).max())
    assert np.abs(exported - plain).max() < 1e-4 * span
    assert np.abs(plain - torch_out).mean() < 1e-3 * span
    assert (plain.argmax(1) == torch_out.argmax(1)).mean() >= 0.99


class _Embedder(torch.nn.Module):
    """An embedding table, a Linear and a mean: the Gather layer kind digits-vit lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 32)
        self.proj = torch.nn.Linear(32, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(input_ids)).mean(1)


def _embedder_workload(tmp_path: Path) -> tuple[_Embedder, Any]:
    """``_Embedder`` exported to ONNX with its calibration and evaluation ids, opened as a workload."""
    from harness.quant.workload import Workload

    torch.manual_seed(0)
    model = _Embedder().eval()
    ids = torch.randint(0, 50, (2, 12))
    torch.onnx.export(model, (ids,), str(tmp_path / "m.onnx"), dynamo=False, opset_version=21,
                      input_names=["input_ids"], output_names=["out"], dynamic_axes={"input_ids": {0: "batch"}})
    rng = np.random.default_rng(0)
    for name in ("calib", "eval"):
        np.savez(tmp_path / f"{name}.npz", input_ids=rng.integers(0, 50, (32, 12)).astype(np.int64))
    return model, Workload.open(tmp_path / "m.onnx", calib=tmp_path / "calib.npz", eval_data=tmp_path / "eval.npz")


@pytest.mark.parametrize("gene", [
    {"weight_bits": 4, "activation_bits": 8},
    {"weight_bits": 3, "activation_bits": 8, "scheme": "asymmetric", "granularity": "per_tensor"},
    {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_block", "block_size": 16},
], ids=str)
def test_embedding_tables_agree(tmp_path, gene) -> None:  # type: ignore[no-untyped-def]
    from harness.quant.finetune import outputs_on

    model, work = _embedder_workload(tmp_path)
    layers: dict[str, Any] = {"embed": dict(gene)}
    if gene.get("granularity") == "per_block":
        layers["embed"].update(kernel="gather_block", granularity="per_block")
    genome = work.genome({"default": {"weight_bits": 8, "activation_bits": 8}, "layers": layers})
    feed = work.eval_data.inputs
    ort_out = session(work.build(genome).proto).run(None, feed)[0]
    fakequant.onnx_to_torch(model, work.model)
    fakequant.attach(model, work.model, genome, work.ranges)
    assert np.abs(ort_out - outputs_on(model, work, feed)).max() < 1e-3 * max(1.0, np.abs(ort_out).max())


@pytest.mark.parametrize("gene", [
    {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_block", "block_size": 16, "scheme": "asymmetric"},
    {"weight_bits": 4, "granularity": "per_block", "block_size": 16, "kernel": "matmulnbits", "accuracy_level": 4},
    {"weight_bits": 4, "granularity": "per_block", "block_size": 16, "kernel": "matmulnbits", "scheme": "asymmetric",
     "rounding": "gptq"},
], ids=["qdq-asym", "matmulnbits-sym", "matmulnbits-gptq"])
def test_learned_block_scales_reach_the_quantizer(digits_workload, base, gene) -> None:  # type: ignore[no-untyped-def]
    """With LSQ a block-wise gene's ``[C, n_blocks]`` scales are parameters; changed by hand, the model qae
    builds from them (block-wise DequantizeLinear, MatMulNBits) follows the fake quantization, not qae's own
    scales."""
    from harness.quant.quantize import quantize

    work = digits_workload
    matmuls = [layer.name for layer in work.model.layers if layer.op_type == "MatMul"]
    genome = work.genome({"default": {"weight_bits": "fp"}, "layers": dict.fromkeys(matmuls, gene)})
    samples = work.gptq_samples()
    module = copy.deepcopy(base)
    attached = fakequant.attach(module, work.model, genome, work.ranges, lsq=True, samples=samples)
    assert all(attached.weights[name].scale.requires_grad and attached.weights[name].scale.ndim == 2
               for name in matmuls)
    with torch.no_grad():
        for k, name in enumerate(matmuls):
            attached.weights[name].scale.mul_(0.85 if k % 2 else 1.2)
    x = work.eval_data.inputs["pixels"]
    with torch.no_grad():
        torch_out = module(torch.from_numpy(x)).numpy()
    learned = attached.learned_scales(work.model)
    assert all(learned[name].weight_scale.shape == attached.weights[name].scale.shape for name in matmuls)
    model = replace(work.model, proto=fakequant.torch_to_onnx(module, work.model))
    ort_out = session(quantize(model, genome, work.ranges, learned=learned).proto).run(None, {"pixels": x})[0]
    plain = session(work.build(genome).proto).run(None, {"pixels": x})[0]
    span = float(np.abs(ort_out).max())
    assert np.abs(ort_out - torch_out).mean() < 1e-3 * span
    assert np.abs(plain - torch_out).mean() > 10 * np.abs(ort_out - torch_out).mean()


def test_learned_table_block_scales_reach_gather_block_quantized(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An embedding table in GatherBlockQuantized with LSQ: its ``[rows, n_blocks]`` scales, changed by
    hand, are the ones the exported model gathers with."""
    from harness.quant.finetune import outputs_on
    from harness.quant.quantize import quantize

    model, work = _embedder_workload(tmp_path)
    gene = {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_block", "block_size": 16,
            "kernel": "gather_block", "scheme": "asymmetric"}
    genome = work.genome({"default": {"weight_bits": "fp"}, "layers": {"embed": gene}})
    fakequant.onnx_to_torch(model, work.model)
    attached = fakequant.attach(model, work.model, genome, work.ranges, lsq=True)
    scale = attached.weights["embed"].scale
    assert scale.requires_grad and tuple(scale.shape) == (50, 2)
    with torch.no_grad():
        scale.mul_(torch.linspace(0.8, 1.25, scale.numel()).reshape(scale.shape))
    feed = work.eval_data.inputs
    torch_out = outputs_on(model, work, feed)
    exported = replace(work.model, proto=fakequant.torch_to_onnx(model, work.model))
    ort_out = session(quantize(exported, genome, work.ranges,
                               learned=attached.learned_scales(work.model)).proto).run(None, feed)[0]
    plain = session(work.build(genome).proto).run(None, feed)[0]
    span = max(1.0, float(np.abs(ort_out).max()))
    assert np.abs(ort_out - torch_out).max() < 1e-3 * span
    assert np.abs(plain - torch_out).max() > 10 * np.abs(ort_out - torch_out).max()
