"""Fake quantization in PyTorch that is a genome, exactly: the grids ``harness.quant.quantize`` writes.

Needs torch (the ``qae[train]`` extra): import this module only where torch is known to be there
(``harness.quant.finetune`` checks first and says which extra to install).

Per quantized layer, found by its qae name (the torch module path, e.g. ``blocks.0.attn.q_proj``):

- The weight goes through a ``WeightQuant`` parametrization: ``clip(round(w / s) + z, qlo, qhi)``,
  dequantized, with round-to-nearest-even as ONNX Runtime and numpy round. Its scales and zero points
  are qae's own (``harness.quant.kernels.quantize_rows``, which is ``quantize.weight_qparams``'
  formula per channel, per tensor and per block, and ``power_of_two``), computed from the current
  weights at every forward pass, so the QDQ model qae builds from the trained weights has exactly
  the grid the training saw. With ``lsq`` the scales are parameters instead (LSQ, S. K. Esser et al.,
  "Learned Step Size Quantization", ICLR 2020: gradient scaled by ``1 / sqrt(n * qmax)``), started at
  qae's values, zero points fixed at theirs; the export then hands them to the quantizer as
  ``LearnedScales`` (TensorQuantOverrides per channel or tensor; ``[C, n_blocks]`` for a block-wise
  gene, which qae's own kernels write as they are). Power-of-two scales are never learned (a power of
  two is not a free step size).
- The layer's input goes through an ``ActQuant`` pre-hook: static activations on the grid of
  ``quantize.activation_qparams`` from the calibration range (never-negative inputs on the unsigned
  grid), saturated to the storage type (native widths) or clipped to the b-bit grid (emulated widths,
  the Clip qae inserts); ``dynamic`` activations as ONNX Runtime's DynamicQuantizeLinear does it, per
  run over the whole tensor (uint8, asymmetric); ``fp`` not at all.
- The straight-through estimator passes the gradient through the rounding; the clip passes none
  outside the range (and, with LSQ, the step size learns from both).

Where the QDQ model still differs (covered by the agreement tolerance, tests/quant/test_fakequant.py):
floating-point order inside ONNX Runtime's integer kernels; a Gemm's or Conv's bias, which ORT stores
as int32 at scale ``s_x * s_w`` (an error of at most half that step per output); the output Q/DQ
qae gives a static 8-bit Conv + ReLU feeding a pool (``quantize._quantize_conv_outputs``), which is
not emulated. A gene with rounding ``mse``, ``hqq`` or ``gptq`` starts from the scales and zero points
that method chooses on the parent's weights (per channel, per tensor or per block); with ``gptq`` the
weights start from GPTQ's too (it moves them as it rounds). The grid stays fixed (or is learned, with
LSQ, per channel, tensor or block) and the export hands it to the quantizer as ``LearnedScales``, so the
trained weights are rounded to nearest on exactly that grid. LSTM/GRU layers are refused (one-line
error).

Weights move between the ONNX file and the torch module by name (``onnx_to_torch``, ``torch_to_onnx``):
a layer's weight is its initializer (transposed for a MatMul's ``[K, N]``), every other parameter
the initializer of the same name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import parametrize

from harness.core.errors import InputError, ModelError
from harness.core.genome import NATIVE_BITS, WEIGHT_ONLY_OPS, Gene, Genome
from harness.core.model import LayerSpec, ModelInfo
from harness.quant import kernels
from harness.quant.calibration import Ranges
from harness.quant.quantize import LearnedScales, activation_qparams
from harness.quant.rounding import grid

#: Storage type name -> the integer range QuantizeLinear saturates to.
STORAGE_BOUNDS = {
    "QInt4": (-8, 7), "QUInt4": (0, 15), "QInt8": (-128, 127), "QUInt8": (0, 255),
    "QInt16": (-32768, 32767), "QUInt16": (0, 65535),
}
#: A parametrized tensor's original in ``named_parameters``: ``<module>.parametrizations.<name>.original``
_ORIGINAL = re.compile(r"\.parametrizations\.(\w+)\.original$")
#: DynamicQuantizeLinear's grid: uint8
DYNAMIC_BOUNDS = (0, 255)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """``x`` forward, its gradient times ``g`` backward (LSQ's step-size gradient scale)."""
    return (x - x * g).detach() + x * g


def transposed(layer: LayerSpec) -> bool:
    """Whether the ONNX weight is the torch weight transposed: a Linear exported as MatMul ``[K, N]``
    (or a Gemm without transB); Conv, a Gemm with transB and an embedding table keep torch's layout."""
    return layer.op_type in ("MatMul", "Gemm") and layer.channel_axis == 1


class WeightQuant(nn.Module):
    """A weight on its gene's grid, rows = output channels (torch layout), blocks along each row."""

    zero: torch.Tensor
    scale: torch.Tensor

    def __init__(self, gene: Gene, weight: torch.Tensor, lsq: bool, x: np.ndarray | None = None) -> None:
        super().__init__()
        self.gene = gene
        self.bits = int(gene.weight_bits)
        self.symmetric = gene.scheme != "asymmetric"
        self.qlo, self.qhi = grid(self.bits, self.symmetric)
        self.per_tensor = gene.granularity == "per_tensor"
        self.block = int(gene.block_size) if gene.granularity == "per_block" and gene.block_size else None
        self.learned = lsq and gene.scheme != "power_of_two"
        # A rounding method's scales (mse, hqq, gptq) are a search over the parent's weights: chosen
        # once, then fixed (or learned, with LSQ) and handed to the quantizer like learned ones.
        self.fixed = gene.rounding != "rtn" and not self.learned
        if gene.rounding == "gptq":
            # GPTQ moves the weights as it rounds them (the error of each column spread over the columns not
            # yet rounded): training starts from its weights, which round to themselves on its grid
            rq = kernels.quantize_rows(self.rows(weight.detach()).to(torch.float32).cpu().numpy(), gene,
                                       block_size=self.block, x=x)
            with torch.no_grad():
                weight.copy_(torch.from_numpy(rq.dequantize()).reshape(weight.shape).to(weight.dtype))
            scale, zero = self._params(rq)
        else:
            scale, zero = self.qae_params(weight)
        self.register_buffer("zero", zero)
        if self.learned:
            self.scale = nn.Parameter(scale)
            per_scale = weight.numel() // max(1, scale.numel())
            self.g = 1.0 / math.sqrt(per_scale * self.qhi)
        elif self.fixed:
            self.register_buffer("scale", scale)

    def rows(self, w: torch.Tensor) -> torch.Tensor:
        return w.reshape(1, -1) if self.per_tensor else w.reshape(w.shape[0], -1)

    def qae_params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """qae's scale and zero point (``[C, n_blocks]``) of ``w``: ``kernels.quantize_rows``, in numpy."""
        rows = self.rows(w.detach()).to(torch.float32).cpu().numpy()
        return self._params(kernels.quantize_rows(rows, self.gene, block_size=self.block))

    @staticmethod
    def _params(rq: kernels.RowQuant) -> tuple[torch.Tensor, torch.Tensor]:
        zero = np.zeros_like(rq.scale, np.float32) if rq.zero_point is None else rq.zero_point.astype(np.float32)
        return torch.from_numpy(np.array(rq.scale, np.float32)), torch.from_numpy(np.array(zero, np.float32))

    last_scale: torch.Tensor

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.learned:
            scale = grad_scale(self.scale, self.g).clamp_min(1e-12)
            zero = self.zero
        elif self.fixed:
            scale, zero = self.scale, self.zero
        else:
            scale, zero = self.qae_params(w)
        self.last_scale = scale  # the bias of a Conv/Gemm is quantized at input scale x this (BiasQuant)
        rows = self.rows(w)
        span = self.block or rows.shape[1]
        s = scale.repeat_interleave(span, dim=1)[:, : rows.shape[1]]
        z = zero.repeat_interleave(span, dim=1)[:, : rows.shape[1]]
        q = torch.clamp(round_ste(rows / s) + z, self.qlo, self.qhi)
        return ((q - z) * s).reshape(w.shape)

    def onnx_scales(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The learned (or a rounding method's fixed) scale and zero point per channel (a scalar per
        tensor, ``[C, n_blocks]`` per block), or None when the quantizer computes them from the weights."""
        if not (self.learned or self.fixed):
            return None
        scale = self.scale.detach().clamp_min(1e-12).cpu().numpy().astype(np.float32)
        zero = self.zero.cpu().numpy().astype(np.int64)
        if self.block is not None:
            return scale, zero
        scale, zero = scale.reshape(-1), zero.reshape(-1)
        if self.per_tensor:
            return scale.reshape(()), zero.reshape(())
        return scale, zero


def int8_row_blocks(layer: LayerSpec, gene: Gene) -> int | None:
    """The block length along K over which ONNX Runtime 1.32's CPU provider quantizes a MatMul's float
    input to int8 itself, or None when it does not.

    ORT fuses ``DequantizeLinear(int4/int8 weight) -> MatMul`` with a float input (activation ``fp``,
    or 16-bit activations, dequantized to float) into com.microsoft MatMulNBits at ``accuracy_level``
    4 (its session default), with block_size 32 for per-channel / per-tensor weights and the gene's
    for per-block ones; level 4 quantizes each row of the input to int8 per block (symmetric,
    ``scale = max|a| / 127``). A gene with ``kernel: matmulnbits`` and ``accuracy_level: 4`` says so
    itself. Gemm and Conv are never fused so; 8-bit (and emulated) activations run as
    MatMulIntegerToFloat, 4-bit ones and 16-bit weights stay float (checked on builtin:digits-vit,
    tests/quant/test_fakequant.py)."""
    if layer.op_type != "MatMul" or not gene.quantized:
        return None
    if gene.kernel == "matmulnbits":
        return int(gene.block_size or 32) if gene.accuracy_level == 4 else None
    if gene.kernel != "qdq" or gene.weight_storage_bits not in (4, 8):
        return None
    if gene.activation_bits == "fp" or gene.activation_bits == 16:
        return int(gene.block_size) if gene.granularity == "per_block" and gene.block_size else 32
    return None


def int8_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x`` quantized to int8 per block of ``block`` along its last axis, symmetric, and back."""
    k = x.shape[-1]
    pad = (-k) % block
    xp = torch.nn.functional.pad(x, (0, pad)) if pad else x
    blocks = xp.reshape(*xp.shape[:-1], -1, block)
    scale = blocks.detach().abs().amax(dim=-1, keepdim=True) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(round_ste(blocks / safe), -127, 127) * torch.where(scale > 0, safe, torch.zeros_like(scale))
    return q.reshape(*xp.shape)[..., :k]


class ActQuant(nn.Module):
    """A layer's input on its gene's activation grid (see the module docstring), then, where ONNX
    Runtime does it (``int8_row_blocks``), on its int8 blocks."""

    zero: torch.Tensor
    scale: torch.Tensor

    def __init__(self, gene: Gene, rng: tuple[float, float] | None, lsq: bool, layer: str,
                 row_blocks: int | None = None) -> None:
        super().__init__()
        self.dynamic = gene.dynamic
        self.static = gene.static_activation
        self.learned = False
        self.row_blocks = row_blocks
        if not self.static:
            return
        if rng is None:
            raise ModelError(f"no calibration range for the input of layer {layer}: recalibrate with data "
                             "that reaches this layer")
        qp = activation_qparams(rng, gene)
        if int(gene.activation_bits) in NATIVE_BITS:
            self.lo, self.hi = STORAGE_BOUNDS[qp.storage]
        else:  # emulated: the Clip before QuantizeLinear holds it to the b-bit grid
            self.lo, self.hi = qp.qlo, qp.qhi
        self.qhi_grid = qp.qhi
        self.register_buffer("zero", torch.tensor(float(qp.zero_point)))
        scale = torch.tensor(float(qp.scale), dtype=torch.float32)
        self.learned = lsq and gene.scheme != "power_of_two"
        if self.learned:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.on_grid(x)
        return x if self.row_blocks is None else int8_blocks(x, self.row_blocks)

    def on_grid(self, x: torch.Tensor) -> torch.Tensor:
        if not self.static and not self.dynamic:
            return x
        if self.dynamic:
            lo = torch.clamp(x.detach().min(), max=0.0)
            hi = torch.clamp(x.detach().max(), min=0.0)
            scale = (hi - lo) / 255.0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            zero = torch.clamp(torch.round(-lo / scale), *DYNAMIC_BOUNDS)
            q = torch.clamp(round_ste(x / scale) + zero, *DYNAMIC_BOUNDS)
            return (q - zero) * scale
        scale = self.scale
        if self.learned:
            g = 1.0 / math.sqrt(max(1, x.numel() // max(1, x.shape[0])) * self.qhi_grid)
            scale = grad_scale(scale, g).clamp_min(1e-12)
        q = torch.clamp(round_ste(x / scale) + self.zero, self.lo, self.hi)
        return (q - self.zero) * scale

    def onnx_scale(self) -> tuple[float, int] | None:
        if not self.learned:
            return None
        return float(self.scale.detach().clamp_min(1e-12)), int(self.zero)


def ort_input_scale(rng: tuple[float, float]) -> float:
    """The uint8 scale ONNX Runtime's QDQ quantizer gives a tensor it has no override for (its default
    activation type, asymmetric: ``quant_utils.compute_scale_zp``), from the calibration range."""
    lo, hi = np.float32(min(rng[0], 0.0)), np.float32(max(rng[1], 0.0))
    scale = (np.float64(hi) - np.float64(lo)) / 255.0
    return float(np.float32(scale)) if scale >= np.finfo(np.float32).tiny else 1.0


class BiasQuant(nn.Module):
    """A Conv's or Gemm's bias as ONNX Runtime's QDQ quantizer stores it: int32 at scale
    ``input_scale * weight_scale`` (per output channel), zero point 0 (``quantize_bias_static_impl``).
    The input scale is the activation's (static genes) or, for a weight-only layer, the uint8 scale
    ORT gave the input before qae removed its Q/DQ (``ort_input_scale``)."""

    def __init__(self, weight: WeightQuant, act: ActQuant | None, fixed_input_scale: float | None) -> None:
        super().__init__()
        object.__setattr__(self, "_weight", weight)  # not a submodule: the weight's parametrization owns it
        object.__setattr__(self, "_act", act)
        self.fixed = fixed_input_scale

    _weight: WeightQuant
    _act: ActQuant | None

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        w_scale = self._weight.last_scale.reshape(-1).to(torch.float32)
        x_scale = self._act.scale if self._act is not None else torch.tensor(float(self.fixed or 1.0))
        scale = (x_scale.to(torch.float32) * w_scale).detach()
        q = torch.clamp(round_ste(b.to(torch.float64) / scale.to(torch.float64)), -(2.0**31), 2.0**31 - 1)
        return q.to(torch.float32) * scale


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    quantizer = module.get_submodule("act_quant")
    return (quantizer(args[0]), *args[1:])


@dataclass(frozen=True)
class Attached:
    """What ``attach`` did: the quantized layers' names, and their quantizers."""

    weights: dict[str, WeightQuant]
    activations: dict[str, ActQuant]

    def learned_scales(self, model: ModelInfo) -> dict[str, LearnedScales]:
        """The LSQ scales in the form ``harness.quant.quantize.quantize`` takes (empty without LSQ)."""
        out = {}
        for layer in model.layers:
            wq = self.weights.get(layer.name)
            aq = self.activations.get(layer.name)
            w = wq.onnx_scales() if wq is not None else None
            a = aq.onnx_scale() if aq is not None else None
            if w is None and a is None:
                continue
            out[layer.name] = LearnedScales(
                weight_scale=None if w is None else w[0], weight_zero_point=None if w is None else w[1],
                activation_scale=None if a is None else a[0], activation_zero_point=None if a is None else a[1],
            )
        return out


def check_genome(model: ModelInfo, genome: Genome) -> None:
    """Refuse, in one line, the genes this fake quantization does not reproduce."""
    for layer in model.layers:
        gene = genome[layer.name]
        if not gene.quantized:
            continue
        if layer.op_type in WEIGHT_ONLY_OPS:
            raise InputError(f"layer {layer.name}: fine-tuning does not quantize {layer.op_type} layers yet: "
                             "give it weight_bits fp, or fine-tune another genome")


def attach(module: nn.Module, model: ModelInfo, genome: Genome, ranges: Ranges, lsq: bool = False,
           samples: Mapping[str, np.ndarray] | None = None) -> Attached:
    """Make ``module`` (whose weights match ``model``'s, see ``onnx_to_torch``) compute ``genome``'s
    fake-quantized model: a weight parametrization and an input pre-hook per quantized layer.
    ``samples``: layer name -> calibration inputs ``[S, K]``, for ``rounding: gptq`` genes
    (``Workload.gptq_samples``); such a layer's weights become GPTQ's (see ``WeightQuant``)."""
    check_genome(model, genome)
    samples = samples or {}
    weights: dict[str, WeightQuant] = {}
    acts: dict[str, ActQuant] = {}
    for layer in model.layers:
        gene = genome[layer.name]
        if not gene.quantized:
            continue
        sub = _submodule(module, layer)
        weight = sub.weight
        assert isinstance(weight, torch.Tensor)
        x = samples.get(layer.name)
        if gene.rounding == "gptq" and x is None:
            raise ModelError(f"layer {layer.name}: rounding gptq needs the layer's calibration inputs: pass "
                             "attach(samples=work.gptq_samples())")
        wq = WeightQuant(gene, weight, lsq, x)
        parametrize.register_parametrization(sub, "weight", wq, unsafe=True)
        weights[layer.name] = wq
        row_blocks = int8_row_blocks(layer, gene)
        if layer.activation is not None and (gene.static_activation or gene.dynamic or row_blocks):
            aq = ActQuant(gene, ranges.get(layer.activation), lsq, layer.name, row_blocks)
            sub.add_module("act_quant", aq)
            sub.register_forward_pre_hook(_quantize_input)
            acts[layer.name] = aq
        through_ort_static = gene.kernel == "qdq" and gene.granularity != "per_block" and not gene.dynamic
        if layer.op_type in ("Conv", "Gemm") and through_ort_static and getattr(sub, "bias", None) is not None \
                and layer.activation is not None and layer.activation in ranges:
            static = acts.get(layer.name) if gene.static_activation else None
            fixed = None if static is not None else ort_input_scale(ranges[layer.activation])
            parametrize.register_parametrization(sub, "bias", BiasQuant(wq, static, fixed), unsafe=True)
    return Attached(weights, acts)


def _submodule(module: nn.Module, layer: LayerSpec) -> nn.Module:
    try:
        sub = module.get_submodule(layer.name)
    except AttributeError:
        raise ModelError(f"the torch model has no module {layer.name!r} (a layer of the ONNX model): give the "
                         "torch module the ONNX model was exported from") from None
    weight = getattr(sub, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ModelError(f"torch module {layer.name!r} has no weight: give the module the ONNX model was exported from")
    return sub


def _torch_names(module: nn.Module, model: ModelInfo) -> dict[str, tuple[str, bool]]:
    """torch parameter name -> (ONNX initializer, transposed) for every parameter and buffer of ``module``
    that the ONNX model holds by name (``unmapped`` lists the others)."""
    inits = {t.name for t in model.proto.graph.initializer}
    by_layer = {f"{layer.name}.weight": (layer.weight, transposed(layer)) for layer in model.layers}
    out: dict[str, tuple[str, bool]] = {}
    for name in _plain_state(module):
        if name in by_layer:
            out[name] = by_layer[name]
        elif name in inits:
            out[name] = (name, False)
    return out


def unmapped(module: nn.Module, model: ModelInfo) -> list[str]:
    """The module's parameters the ONNX model holds under no name of theirs (an exporter that merges
    equal initializers, such as LayerNorms still at ones, keeps one of them): a fine-tune leaves them as
    they are, since the trained model could not be written back; ``check_float`` has checked that the
    module computes the ONNX model with them."""
    mapped = _torch_names(module, model)
    return [name for name, value in _plain_state(module).items()
            if name not in mapped and isinstance(value, nn.Parameter)]


def freeze_unmapped(module: nn.Module, model: ModelInfo) -> list[str]:
    """Stop training ``unmapped`` parameters; returns their names."""
    names = unmapped(module, model)
    params = dict(module.named_parameters())
    originals = {_ORIGINAL.sub(r".\1", k): v for k, v in params.items()}
    for name in names:
        param = params[name] if name in params else originals[name]
        param.requires_grad_(False)
    return names


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters and buffers by their names without quantization: a parametrized weight's
    (or bias') original under ``<module>.weight``; the quantizers' own scales left out."""
    out: dict[str, torch.Tensor] = {}
    for name, value in [*module.named_parameters(), *module.named_buffers()]:
        plain = _ORIGINAL.sub(r".\1", name)
        if plain != name:
            out[plain] = value
        elif ".parametrizations." in name or ".act_quant." in name:
            continue
        else:
            out[name] = value
    return out


def onnx_to_torch(module: nn.Module, model: ModelInfo) -> None:
    """Load the ONNX model's weights into ``module`` (in place), by name (see the module docstring)."""
    inits = {t.name: t for t in model.proto.graph.initializer}
    state = _plain_state(module)
    with torch.no_grad():
        for name, (init, flip) in _torch_names(module, model).items():
            arr = numpy_helper.to_array(inits[init]).astype(np.float32)
            arr = arr.T if flip else arr
            target = state[name]
            if tuple(arr.shape) != tuple(target.shape):
                raise ModelError(f"torch parameter {name!r} has shape {list(target.shape)}, the ONNX model's "
                                 f"{init!r} {list(arr.shape)}: give the module the ONNX model was exported from")
            target.copy_(torch.from_numpy(np.ascontiguousarray(arr)))


def torch_to_onnx(module: nn.Module, model: ModelInfo) -> onnx.ModelProto:
    """A copy of the ONNX model with ``module``'s (trained) weights in place of its own."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    inits = {t.name: t for t in proto.graph.initializer}
    state = _plain_state(module)
    for name, (init, flip) in _torch_names(module, model).items():
        arr = state[name].detach().cpu().numpy().astype(np.float32)
        arr = arr.T if flip else arr
        dtype = numpy_helper.to_array(inits[init]).dtype
        inits[init].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr).astype(dtype), init))
    return proto


def trained_state(module: nn.Module) -> dict[str, np.ndarray]:
    """The plain (unquantized) weights of ``module`` as numpy arrays, by name."""
    return {k: v.detach().cpu().numpy().copy() for k, v in _plain_state(module).items()}


def weights_digest(arrays: Mapping[str, np.ndarray]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()
