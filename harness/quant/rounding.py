"""Weight rounding: how a weight's integers, scales and zero points are chosen, per channel or per block.

``quantize_weight`` is the one entry point; ``method`` picks the rounding:

- ``rtn``: round to nearest on the min/max grid (absmax when symmetric), exactly qae's per-channel
  rule (``harness.quant.quantize.weight_qparams`` / ``fake_quantize``): the range always holds 0,
  symmetric grids are restricted (``[-(2^(b-1)-1), 2^(b-1)-1]``, zero point 0), asymmetric ones
  are ``[0, 2^b-1]`` with an integer zero point.
- ``mse``: per block (or channel), a grid search over a clipping ratio ``r`` (``RATIOS``: 100 values
  from 1.0 down to 0.5) applied to the min/max range, keeping the ``r`` whose dequantized weights
  have the least squared error. This is the MSE range setting of AIMET (``QuantScheme.post_training_tf``
  with MSE-based encodings, used by its sequential MSE) and of Intel Neural Compressor's weight-only
  ``mse`` option (its GPTQ ``find_params`` shrinks the range by 1 - i/100 the same way). r = 1 is
  among the candidates, so the error is never above RTN's.
- ``hqq``: Half-Quadratic Quantization (H. Badri and A. Shaji, "Half-Quadratic Quantization of Large
  Machine Learning Models", 2023, https://mobiusml.github.io/hqq_blog/). The error is measured in an
  lp norm with p < 1 (p = 0.7), which tolerates the few outliers, and minimised by half-quadratic
  splitting: an auxiliary error ``We`` takes the generalised soft-threshold of ``W - deq`` (its
  proximal step), then the quantization parameters are refitted to ``W - We`` by least squares, and
  ``beta`` grows by ``kappa`` each iteration (``beta`` 10, ``kappa`` 1.01, 20 iterations, stop when the
  mean absolute error stops falling: the reference implementation's settings, as in ONNX Runtime's
  ``HQQWeightOnlyQuantizer.optimize_weights``). Deviation, on purpose: the reference refits a float
  zero point only; a QDQ ``DequantizeLinear`` needs an integer zero point of the weight's type, so
  here the least-squares step refits scale and zero point together and rounds the zero point (the
  symmetric case refits the scale alone, its zero point being 0). HQQ minimises its lp error, not
  the squared one, so a block may end with a larger squared error than RTN's; on real layers it is
  lower in total (tests/quant/test_rounding.py).
- ``gptq``: GPTQ (E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training
  Quantization for Generative Pre-trained Transformers", ICLR 2023, arXiv:2210.17323). For a MatMul
  ``y = x @ W`` with ``W [K, N]`` and calibration inputs ``x [S, K]``, rows of W (input features)
  are quantized one at a time in order and the error of each is spread over the rows not yet
  quantized through the inverse Hessian ``H^-1`` of ``||x W - x Wq||^2`` (``H = 2/S x^T x``, plus 1 %
  of its mean diagonal as damping), using the upper Cholesky factor of ``H^-1`` and lazy batches of
  128 rows (Algorithm 1 of the paper). With ``block_size`` the scales and zero points of each block
  are fixed from the (already updated) weights when its first row is reached, as in the paper's
  grouping; without, from the whole original channel. No act-order.

ONNX Runtime 1.32 (checked on the installed package): ``matmul_nbits_quantizer.HQQWeightOnlyQuantizer``
needs torch (only in qae's train extra). Its vendored Intel Neural Compressor
``quantization.neural_compressor.weight_only.gptq`` is numpy but returns only fake-quantized weights
on its own grids (symmetric = ``[0, 2^b-1]`` around ``2^(b-1)``), and it propagates no error: it
indexes the upper Cholesky factor of ``H^-1`` by column below the diagonal (``Hinv1[i:, i]``,
``Hinv[i2:, i1:i2]``), which is zero, so its result is RTN's (measured on digits-vit
``blocks.1.ffn.fc2``, 4-bit asymmetric, groups of 32: output error 0.00202 for it and for RTN,
0.00059 here). Both are therefore implemented here in numpy.

``activation_samples`` collects the inputs GPTQ needs (see its docstring).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from harness.core.atomic import atomic_path
from harness.core.errors import InputError, ModelError
from harness.core.inputs import warn
from harness.core.model import LayerSpec, ModelInfo
from harness.core.paths import cache_dir
from harness.quant.data import Dataset

METHODS = ("rtn", "mse", "hqq", "gptq")
#: Clipping ratios the MSE search tries, from the full range down to half of it.
RATIOS = np.linspace(1.0, 0.5, 100)
#: HQQ's settings, those of the reference implementation (and of ONNX Runtime's copy of it).
HQQ_PARAMS = {"lp_norm": 0.7, "beta": 10.0, "kappa": 1.01, "iters": 20}
#: GPTQ's damping (fraction of the mean Hessian diagonal) and lazy-batch rows, as in the paper.
GPTQ_DAMP = 0.01
GPTQ_BATCH = 128
#: Rows of calibration activations kept per layer (evenly spaced over the data) by default.
MAX_ROWS = 4096
#: Bump when the activation cache layout changes, so old files are recomputed.
SAMPLES_VERSION = 1
#: Results of the slower methods are kept in memory (least recently used first out, up to this many
#: bytes), keyed by a digest of the weight, the settings and GPTQ's inputs: a search builds the same
#: layer at the same precision for many candidates, and the result depends on nothing else.
MEMO_BYTES = 256 * 2**20
_MEMO: OrderedDict[bytes, Quantized] = OrderedDict()
_MEMO_LOCK = threading.Lock()
#: A model input of this name marks padding positions (0) whose rows are left out of the samples.
MASK_INPUT = "attention_mask"


@dataclass(frozen=True)
class Quantized:
    """A weight on an integer grid: ``w ~ (q - zero_point) * scale``, scales per block.

    ``q`` has ``w``'s shape (int32, within ``grid(bits, symmetric)``). ``scale`` (float32) and
    ``zero_point`` (int32; None when symmetric, i.e. 0) have ``w``'s shape with ``block_axis``
    replaced by the number of blocks, ``ceil(w.shape[block_axis] / block_size)`` (the last block may
    be partial); ``block_size`` None means one block spanning the axis, i.e. per channel over the
    other axes.
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    block_axis: int
    block_size: int | None

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def expand(self, params: np.ndarray) -> np.ndarray:
        """Per-block ``params`` repeated along ``block_axis`` to ``q``'s shape."""
        size = self.q.shape[self.block_axis]
        step = size if self.block_size is None else self.block_size
        return np.repeat(params, step, axis=self.block_axis).take(np.arange(size), axis=self.block_axis)

    def dequantize(self) -> np.ndarray:
        q = self.q.astype(np.float64)
        if self.zero_point is not None:
            q = q - self.expand(self.zero_point)
        return (q * self.expand(self.scale)).astype(np.float32)


#: (bits, signed) -> the ONNX integer type a quantized weight is stored in
INT_TYPES = {
    (4, True): onnx.TensorProto.INT4,
    (4, False): onnx.TensorProto.UINT4,
    (8, True): onnx.TensorProto.INT8,
    (8, False): onnx.TensorProto.UINT8,
    (16, True): onnx.TensorProto.INT16,
    (16, False): onnx.TensorProto.UINT16,
}


def integer_tensor(name: str, elem: int, values: np.ndarray) -> onnx.TensorProto:
    """An integer initializer of ONNX type ``elem`` (one of ``INT_TYPES``) holding ``values``, stored as raw
    little-endian bytes (4-bit types packed two to a byte). ``helper.make_tensor`` with a list puts 8- and
    16-bit values in ``int32_data``, a varint each: a file then grows past the float model's it replaces."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    return onnx.numpy_helper.from_array(np.ascontiguousarray(values).astype(dtype), name)


def grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer range of a ``bits``-wide weight: restricted symmetric or full unsigned (every
    quantizer of qae uses this one grid)."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def quantize_weight(w: np.ndarray, bits: int, *, block_axis: int, block_size: int | None, symmetric: bool,
                    method: str = "rtn", x: np.ndarray | None = None) -> Quantized:
    """Quantize ``w`` to ``bits`` (2..8) with scales per block of ``block_size`` along ``block_axis``.

    Thread-safe. Results of ``mse``, ``hqq`` and ``gptq`` are memoised in memory (see ``MEMO_BYTES``)
    and returned read-only; copy an array before changing it.

    ``x`` is needed by ``gptq`` only: the layer's inputs ``[S, K]`` for ``y = x @ W`` with
    ``w.shape[block_axis] == K`` (a MatMul ``W [K, N]`` has ``block_axis`` 0; a Gemm with ``transB``
    ``W [N, K]`` has 1). Weights of more than 2 dimensions are blocked along ``block_axis`` with every
    other index its own channel (reshape a Conv weight to ``[O, -1]`` first for per-output-channel).
    """
    if method not in METHODS:
        raise InputError(f"rounding {method!r} is not supported: use one of {', '.join(METHODS)}")
    if not 2 <= int(bits) <= 8:
        raise InputError(f"weight rounding takes 2 to 8 bits, not {bits}: use another bits value")
    if block_size is not None and int(block_size) < 1:
        raise InputError(f"block size {block_size} is not positive: use 16, 32, 64 or 128")
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 0 or not -w.ndim <= block_axis < w.ndim:
        raise InputError(f"block axis {block_axis} is not an axis of a weight of shape {list(w.shape)}")
    if not np.isfinite(w).all():
        raise ModelError("the weight holds NaN or Inf: fix the model before quantizing it")
    axis = block_axis % w.ndim
    if method == "rtn":  # cheaper than a memo look-up
        return _compute(w, int(bits), axis, block_size, symmetric, method, x)
    key = _memo_key(w, int(bits), axis, block_size, symmetric, method, x if method == "gptq" else None)
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
        if hit is not None:
            _MEMO.move_to_end(key)
            return hit
    got = _compute(w, int(bits), axis, block_size, symmetric, method, x)
    for arr in (got.q, got.scale, got.zero_point):
        if arr is not None:
            arr.flags.writeable = False  # shared through the memo
    with _MEMO_LOCK:
        _MEMO[key] = got
        while len(_MEMO) > 1 and sum(_nbytes(v) for v in _MEMO.values()) > MEMO_BYTES:
            _MEMO.popitem(last=False)
    return got


def _memo_key(w: np.ndarray, bits: int, axis: int, block_size: int | None, symmetric: bool, method: str,
              x: np.ndarray | None) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps([list(w.shape), bits, axis, block_size, bool(symmetric), method]).encode())
    h.update(np.ascontiguousarray(w).tobytes())
    if x is not None:
        xa = np.ascontiguousarray(x)
        h.update(json.dumps([list(xa.shape), str(xa.dtype)]).encode())
        h.update(xa.tobytes())
    return h.digest()


def _nbytes(got: Quantized) -> int:
    return got.q.nbytes + got.scale.nbytes + (0 if got.zero_point is None else got.zero_point.nbytes)


def _compute(w: np.ndarray, bits: int, axis: int, block_size: int | None, symmetric: bool, method: str,
             x: np.ndarray | None) -> Quantized:
    size = w.shape[axis]
    bs = size if block_size is None else min(int(block_size), size)
    nb = math.ceil(size / bs)
    moved = np.moveaxis(w, axis, -1)
    rows = moved.reshape(-1, size)
    blocks = np.zeros((rows.shape[0], nb * bs), np.float32)
    blocks[:, :size] = rows
    blocks = blocks.reshape(rows.shape[0], nb, bs)
    mask = np.zeros(nb * bs, bool)
    mask[:size] = True
    mask = mask.reshape(nb, bs)
    if method == "gptq":
        q, scale, zero = _gptq(rows.T, bits, symmetric, block_size, x)
        q, scale, zero = q.T, scale.T, None if zero is None else zero.T
    elif method == "mse":
        q, scale, zero = _mse(blocks, bits, symmetric)
    elif method == "hqq":
        q, scale, zero = _hqq(blocks, mask, bits, symmetric)
    else:
        scale, zero = _minmax_params(blocks, bits, symmetric)
        q = _round(blocks, scale, zero, bits, symmetric)
    q = q.reshape(rows.shape[0], nb * bs)[:, :size] if q.ndim == 3 else q
    lead = moved.shape[:-1]
    q_out = np.moveaxis(q.reshape(*lead, size), -1, axis).astype(np.int32)
    s_out = np.moveaxis(scale.reshape(*lead, nb), -1, axis).astype(np.float32)
    z_out = None if zero is None else np.moveaxis(zero.reshape(*lead, nb), -1, axis).astype(np.int32)
    return Quantized(q_out, s_out, z_out, int(bits), axis, block_size)


def _params(wmin: np.ndarray, wmax: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (float32) and zero point (int64, None when symmetric) of the range ``[wmin, wmax]``,
    which must hold 0; ``weight_qparams``' formulas, element for element."""
    qlo, qhi = grid(bits, symmetric)
    wmin, wmax = wmin.astype(np.float64), wmax.astype(np.float64)
    if symmetric:
        span = np.maximum(np.abs(wmin), np.abs(wmax)) / qhi
        return np.where(span > 0, span, 1.0).astype(np.float32), None
    span = (wmax - wmin) / (qhi - qlo)
    scale = np.where(span > 0, span, 1.0).astype(np.float32)
    return scale, np.clip(np.round(qlo - wmin / scale), qlo, qhi).astype(np.int64)


def _minmax_params(blocks: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    # Padding zeros change nothing: the range always holds 0.
    return _params(np.minimum(blocks.min(axis=-1), 0), np.maximum(blocks.max(axis=-1), 0), bits, symmetric)


def _round(blocks: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, bits: int, symmetric: bool) -> np.ndarray:
    """``clip(round(w / scale) + zero)``, in ``fake_quantize``'s float32 arithmetic."""
    qlo, qhi = grid(bits, symmetric)
    q = np.round(blocks / scale[..., None])
    if zero is not None:
        q += zero[..., None].astype(q.dtype)  # small integers: exact in float32
    return np.clip(q, qlo, qhi, out=q)


def _mse(blocks: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The clipping ratio per block with the least squared error (see the module docstring).

    Errors are summed in float32 over whole blocks: a padding zero always dequantizes to exactly 0
    (the range holds 0, so the zero point is never clipped), adding nothing."""
    wmin, wmax = np.minimum(blocks.min(axis=-1), 0), np.maximum(blocks.max(axis=-1), 0)
    best = np.full(blocks.shape[:2], np.inf, np.float32)
    pick = np.zeros(blocks.shape[:2], np.int64)
    for i, ratio in enumerate(RATIOS):
        scale, zero = _params(wmin * ratio, wmax * ratio, bits, symmetric)
        q = _round(blocks, scale, zero, bits, symmetric)
        if zero is not None:
            q -= zero[..., None].astype(np.float32)
        q *= scale[..., None]
        q -= blocks
        err = np.einsum("ijk,ijk->ij", q, q)
        better = err < best
        best[better] = err[better]
        pick[better] = i
    ratio = RATIOS[pick]
    scale, zero = _params(wmin * ratio, wmax * ratio, bits, symmetric)
    return _round(blocks, scale, zero, bits, symmetric), scale, zero


def _shrink(x: np.ndarray, beta: float, p: float) -> np.ndarray:
    """The generalised soft-threshold, HQQ's proximal step for the lp (p < 1) error."""
    mag = np.abs(x)
    cut = np.power(mag + np.float32(1e-8), np.float32(p - 1)) * np.float32(1.0 / beta)
    return np.sign(x) * np.maximum(mag - cut, 0, dtype=x.dtype)


def _hqq(blocks: np.ndarray, mask: np.ndarray, bits: int, symmetric: bool
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """HQQ by half-quadratic splitting (see the module docstring), from RTN's parameters.

    Each iteration: ``We = shrink(W - deq)``; refit ``W - We ~ scale * (q - zero)`` per block by
    least squares (in scale and scale*zero; scale alone when symmetric), round the zero point onto
    the grid; requantize; ``beta *= kappa``. As in the reference, the loop stops once the mean
    absolute error stops falling, and the last parameters are kept.
    """
    p, beta, kappa = HQQ_PARAMS["lp_norm"], HQQ_PARAMS["beta"], HQQ_PARAMS["kappa"]
    qlo, qhi = grid(bits, symmetric)
    w = blocks  # float32, padding zeros (which stay exact: see _mse)
    m = mask.astype(np.float32)
    count = np.maximum(m.sum(axis=-1), 1.0)
    scale, zero = _minmax_params(blocks, bits, symmetric)
    q = _round(blocks, scale, zero, bits, symmetric)
    last = np.inf
    for _ in range(int(HQQ_PARAMS["iters"])):
        diff = q - zero[..., None].astype(np.float32) if zero is not None else q.copy()
        diff *= scale[..., None]
        np.subtract(w, diff, out=diff)  # W - deq; 0 on padding
        l1 = float(np.abs(diff).sum(dtype=np.float64))
        if l1 >= last:
            break
        last = l1
        target = w - _shrink(diff, beta, p)  # 0 on padding too
        qm = q * m
        if symmetric:
            new_scale = np.einsum("ijk,ijk->ij", qm, target) / np.maximum(np.einsum("ijk,ijk->ij", qm, qm), 1e-30)
        else:  # target ~ scale * q + c per block, c = -scale * zero
            mq, mt = qm.sum(axis=-1) / count, target.sum(axis=-1) / count
            dq = (q - mq[..., None]) * m
            new_scale = (np.einsum("ijk,ijk->ij", dq, target - mt[..., None] * m)
                         / np.maximum(np.einsum("ijk,ijk->ij", dq, dq), 1e-30))
        ok = new_scale > 0  # a degenerate block (all one level) keeps its scale
        scale = np.where(ok, new_scale, scale).astype(np.float32)
        if zero is not None:
            zero = np.where(ok, np.clip(np.round(mq - mt / scale), qlo, qhi), zero).astype(np.int64)
        q = _round(blocks, scale, zero, bits, symmetric)
        beta *= kappa
    return q, scale, zero


def _gptq(w: np.ndarray, bits: int, symmetric: bool, block_size: int | None, x: np.ndarray | None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """GPTQ on ``w [K, N]`` with inputs ``x [S, K]`` (see the module docstring); returns q ``[K, N]``,
    scale and zero point ``[blocks, N]``."""
    k, n = w.shape
    if x is None:
        raise InputError("gptq rounding needs the layer's calibration inputs: pass x (see activation_samples)")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != k or x.shape[0] < 1:
        raise InputError(f"gptq needs inputs of shape [S, {k}] for this weight, got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise InputError("the calibration inputs hold NaN or Inf: remove those samples from the calibration data")
    hessian = (2.0 / x.shape[0]) * (x.T @ x)
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0  # an input never active: its error goes nowhere
    hessian[np.diag_indices(k)] += GPTQ_DAMP * float(np.mean(np.diag(hessian)))
    upper = _inverse_cholesky_upper(hessian)
    work = w.astype(np.float64).copy()
    bs = k if block_size is None else min(int(block_size), k)
    nb = math.ceil(k / bs)
    scale = np.ones((nb, n), np.float32)
    zero = None if symmetric else np.zeros((nb, n), np.int64)
    q = np.zeros((k, n))
    qlo, qhi = grid(bits, symmetric)
    batch = bs * max(1, GPTQ_BATCH // bs) if block_size is not None else GPTQ_BATCH
    if block_size is None:  # one block: parameters from the whole original channel
        s, z = _params(np.minimum(w.min(axis=0), 0), np.maximum(w.max(axis=0), 0), bits, symmetric)
        scale[0] = s
        if zero is not None and z is not None:
            zero[0] = z
    for i1 in range(0, k, batch):
        i2 = min(i1 + batch, k)
        w1 = work[i1:i2].copy()
        err1 = np.zeros_like(w1)
        h1 = upper[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = i1 + i
            b = row // bs
            if block_size is not None and row % bs == 0:  # a block starts: fix its parameters now
                part = w1[i:i + bs].astype(np.float32)
                s, z = _params(np.minimum(part.min(axis=0), 0), np.maximum(part.max(axis=0), 0), bits, symmetric)
                scale[b] = s
                if zero is not None and z is not None:
                    zero[b] = z
            z_b = None if zero is None else zero[b]
            qi = np.round(w1[i].astype(np.float32) / scale[b])
            qi = np.clip(qi if z_b is None else qi + z_b, qlo, qhi)
            deq = (qi - (0 if z_b is None else z_b)) * scale[b].astype(np.float64)
            q[row] = qi
            e = (w1[i] - deq) / h1[i, i]
            w1[i + 1:] -= np.outer(h1[i, i + 1:], e)
            err1[i] = e
        work[i2:] -= upper[i1:i2, i2:].T @ err1
    return q, scale, zero


def _inverse_cholesky_upper(hessian: np.ndarray) -> np.ndarray:
    """The upper Cholesky factor of ``hessian^-1`` (GPTQ's ``Hinv``), adding damping until it exists."""
    eye = np.eye(hessian.shape[0])
    damp = GPTQ_DAMP * float(np.mean(np.diag(hessian)))
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(hessian)
            inv = np.linalg.solve(lower.T, np.linalg.solve(lower, eye))
            return np.asarray(np.linalg.cholesky((inv + inv.T) / 2).T)
        except np.linalg.LinAlgError:
            hessian = hessian + damp * eye
            damp *= 10
    raise ModelError("the calibration inputs give a singular Hessian even with damping: use more calibration data")


def input_features(layer: LayerSpec) -> int:
    """K of a MatMul/Gemm layer: the length of the dot products its weight takes part in."""
    if layer.op_type not in ("MatMul", "Gemm") or len(layer.weight_shape) != 2:
        raise InputError(f"layer {layer.name} ({layer.op_type}) has no MatMul inputs for gptq: use rtn, mse or hqq")
    return int(layer.weight_shape[1 - layer.channel_axis])


def samples_cache_path(model: ModelInfo, calib: Dataset, layer_names: Sequence[str], max_rows: int) -> Path:
    key = hashlib.sha256(json.dumps([sorted(set(layer_names)), int(max_rows)]).encode()).hexdigest()
    return cache_dir() / "acts" / f"{model.sha256[:16]}-{calib.key[:16]}-{key[:16]}.npz"


def activation_samples(model: ModelInfo, calib: Dataset, layer_names: Sequence[str],
                       max_rows: int = MAX_ROWS) -> dict[str, np.ndarray]:
    """The inputs of MatMul/Gemm layers on the calibration data: layer name -> float32 ``[S, K]``.

    One ONNX Runtime run over the calibration batches (the layers' input tensors made graph outputs);
    every input row (a token, an image patch) is a sample, and at most ``max_rows`` of them are kept,
    evenly spaced over the data. Where the model takes an ``attention_mask`` of the rows' leading
    shape (a transformer's ``[batch, seq]``), padding positions are left out: they carry no meaning
    and would otherwise weigh in GPTQ's Hessian.

    The result is cached under ``cache_dir()/acts`` as ``.npz`` keyed by the model's sha256, the
    data's key (file sha256 and layout) and the set of layer names with ``max_rows``: ask once for
    every layer a run may need (one ORT pass, one file), not layer by layer. A cache file is read as
    untrusted (no pickle; its stamp, every array's dtype, shape and finiteness are checked); a bad
    one is recomputed with a one-line warning and overwritten, atomically. Memory: ``max_rows`` x
    the layers' summed K x 4 bytes (MiniLM's 36 MatMuls at 4096 rows: 340 MB).
    """
    by_name = {layer.name: layer for layer in model.layers}
    missing = [n for n in layer_names if n not in by_name]
    if missing:
        raise InputError(f"the model has no layer {missing[0]!r}: name a layer `qae layers` lists")
    names = sorted(set(layer_names))
    widths = {n: input_features(by_name[n]) for n in names}
    if int(max_rows) < 1:
        raise InputError(f"max_rows must be at least 1, not {max_rows}")
    stamp = {"version": SAMPLES_VERSION, "model_sha256": model.sha256, "data_key": calib.key,
             "layers": names, "max_rows": int(max_rows)}
    path = samples_cache_path(model, calib, names, max_rows)
    if path.is_file():
        cached, problem = _read_samples(path, stamp, widths)
        if cached is not None:
            return cached
        warn(f"activation cache {path.name} is invalid ({problem}): the samples are recomputed")
    samples = _collect(model, calib, {n: by_name[n] for n in names}, int(max_rows))
    for name, arr in samples.items():
        if not np.isfinite(arr).all():
            raise InputError(f"the inputs of layer {name} hold NaN or Inf on {calib.path.name}: "
                             "remove those samples from the calibration data")
    arrays = {f"x{i}": samples[n] for i, n in enumerate(names)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, stamp=np.array(json.dumps(stamp, sort_keys=True)), **arrays)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    return samples


def _read_samples(path: Path, stamp: dict[str, object], widths: dict[str, int]
                  ) -> tuple[dict[str, np.ndarray] | None, str]:
    """(samples, "") from a valid cache file, else (None, why it is not)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = set(npz.files)
            if "stamp" not in files:
                return None, "no stamp"
            got = json.loads(str(npz["stamp"]))
            if got != json.loads(json.dumps(stamp, sort_keys=True)):
                return None, "it belongs to another model, data set or layer list"
            out: dict[str, np.ndarray] = {}
            for i, (name, width) in enumerate(widths.items()):
                key = f"x{i}"
                if key not in files:
                    return None, f"no samples for layer {name}"
                arr = npz[key]
                if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[1] != width:
                    return None, f"layer {name}'s samples are {arr.dtype} {list(arr.shape)}, not float32 [S, {width}]"
                if not 1 <= arr.shape[0] <= int(got["max_rows"]):
                    return None, f"layer {name} has {arr.shape[0]} rows"
                if not np.isfinite(arr).all():
                    return None, f"layer {name}'s samples are not finite"
                out[name] = arr
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        return None, f"not a readable .npz: {type(exc).__name__}"
    return out, ""


def _collect(model: ModelInfo, calib: Dataset, layers: dict[str, LayerSpec], max_rows: int
             ) -> dict[str, np.ndarray]:
    from harness.quant.calibration import CALIB_BATCH
    from harness.quant.evaluate import session

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    inputs = {i.name for i in proto.graph.input}
    outputs = {o.name for o in proto.graph.output}
    tensors = {name: str(layer.activation) for name, layer in layers.items()}
    wanted = sorted({t for t in tensors.values() if t not in inputs})
    proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in outputs)  # ORT types them
    transposed = {name: _trans_a(proto, layer) for name, layer in layers.items()}
    sess = session(proto)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    seen, stride = 0, 0
    for feed in calib.batches(CALIB_BATCH):
        try:
            values = dict(zip(wanted, sess.run(wanted, feed))) if wanted else {}
        except Exception as exc:  # ORT's own words, on one line
            msg = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"ONNX Runtime cannot run the model on {calib.path.name} ({msg}): "
                             "check the data's shapes, --sample-axis and --constant-input") from None
        values.update({t: feed[t] for t in tensors.values() if t in feed})
        keep = feed.get(MASK_INPUT)
        rows = {n: _rows(values[tensors[n]], transposed[n], input_features(lay), keep) for n, lay in layers.items()}
        rows_here = max(r.shape[0] for r in rows.values())
        if stride == 0:  # spread max_rows over the whole data, estimated from the first batch
            per_sample = rows_here / max(1, min(calib.batch_size(CALIB_BATCH), calib.n))
            stride = max(1, math.ceil(per_sample * calib.n / max_rows))
        pick = np.arange(rows_here)[(np.arange(rows_here) + seen) % stride == 0]
        for name, arr in rows.items():
            parts[name].append(arr[pick[pick < arr.shape[0]]].astype(np.float32))
        seen += rows_here
    out = {}
    for name, part in parts.items():
        arr = np.concatenate(part, axis=0)
        if arr.shape[0] > max_rows:  # the first batch underestimated the rows: thin evenly
            arr = arr[np.linspace(0, arr.shape[0] - 1, max_rows).round().astype(np.int64)]
        if arr.shape[0] == 0:
            raise InputError(f"the calibration data gives layer {name} no input rows: give data with samples")
        out[name] = np.ascontiguousarray(arr)
    return out


def _rows(value: np.ndarray, transposed: bool, width: int, keep: np.ndarray | None) -> np.ndarray:
    """A layer input as rows of K features (``[..., K]`` flattened; a Gemm's ``transA`` input undone),
    without the padding positions when an ``attention_mask`` of its leading shape says which they are."""
    arr = np.asarray(value)
    if transposed:
        arr = arr.T
    if arr.ndim == 0 or arr.shape[-1] != width:
        raise ModelError(f"a layer input of shape {list(arr.shape)} does not end in its weight's K={width}")
    if keep is not None and arr.shape[:-1] == np.shape(keep):
        return arr[np.asarray(keep) != 0]
    return arr.reshape(-1, width)


def _trans_a(proto: onnx.ModelProto, layer: LayerSpec) -> bool:
    if layer.op_type != "Gemm":
        return False
    from onnx import helper

    node = next((n for n in proto.graph.node if n.name == layer.node_name), None)
    if node is None:
        return False
    return bool(next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transA"), 0))
