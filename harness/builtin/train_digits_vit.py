"""Train and export ``builtin:digits-vit``, qae's embedded default workload.

What it is: a small vision transformer classifying scikit-learn's 8x8 handwritten digits
(``sklearn.datasets.load_digits``: 1797 images, ten classes, shipped inside scikit-learn, so no
download). It is small enough to quantize, evaluate and search over in seconds, yet it has every
layer kind a transformer has: a patch-embedding Conv, per-block ``q_proj``/``k_proj``/``v_proj``/
``out_proj`` and ``fc1``/``fc2`` MatMuls, LayerNorms, Softmax, GELU and a ``head`` Gemm.

What it writes (into ``harness/builtin/digits_vit/`` unless ``--out`` says otherwise):

- ``model.onnx``: FP32 model, input ``pixels`` [batch,1,8,8] float32 in [0,1], output ``logits``
  [batch,10]; exported with the legacy TorchScript exporter so node names carry the module paths
  (``/blocks.0/attn/q_proj/MatMul``), which is how ``harness.core.model`` recovers stable layer names.
- ``calib.npz``: ``pixels`` (128,1,8,8) float32 and ``labels`` int64, the calibration split.
- ``eval.npz``: ``pixels`` and ``labels`` of the validation split (270), what the search optimises.
- ``test.npz``: the same of the test split (270), what is reported; the search never sees it.
- ``meta.json``: seed, split sizes, architecture, FP32 accuracy measured with ONNX Runtime on the
  exported file (``fp32_eval_accuracy`` on validation, ``fp32_test_accuracy`` on test), library
  versions and the build date.

The four splits (train 1129, calibration 128, validation 270, test 270) are disjoint and drawn
once, stratified, with fixed seeds (``harness.builtin.digits_data.make_splits``): validation and
test are the two halves of the 540 images held out from training. Training uses fixed seeds, one
thread and deterministic algorithms, yet a rebuild on 2026-12-01 with the library versions recorded
in meta.json gave other weights (532 of the 540 held-out images right, against the shipped model's
530): the shipped ``model.onnx``, not this script, is the workload, and ``--data-only`` leaves it alone.
The splits themselves are reproduced exactly.

Rebuild (about a minute on two CPU cores; needs torch, onnx, onnxruntime, scikit-learn)::

    python -m harness.builtin.train_digits_vit              # overwrite the shipped workload
    python -m harness.builtin.train_digits_vit --out DIR    # write elsewhere
    python -m harness.builtin.train_digits_vit --data-only  # rewrite only the .npz files and
                                                            # meta.json's splits and accuracies

Then run ``pytest tests/builtin/test_builtin_digits_vit.py``, which checks the shipped files without torch.

One module because it is one recipe (model, training loop, export, checks) that a user reruns as a
script; only the data split lives apart, in ``harness.builtin.digits_data``, so that the tests and
``--data-only`` need no torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import torch
from torch import nn
from torch.nn import functional

from harness.builtin.digits_data import (
    DEFAULT_OUT,
    SEED,
    Splits,
    accuracies,
    make_splits,
    ort_session,
    rewrite_data,
    split_meta,
    write_data,
)

OPSET = 21
# Parity between torch and ONNX Runtime on the exported graph; both run FP32 on CPU.
PARITY_ATOL = 1e-4
MIN_ACCURACY = 0.95


@dataclass(frozen=True)
class VitConfig:
    """Architecture hyper-parameters, recorded verbatim in meta.json."""

    image_size: int = 8
    patch_size: int = 2
    in_channels: int = 1
    dim: int = 32
    depth: int = 2
    num_heads: int = 2
    ffn_dim: int = 128
    num_classes: int = 10
    layer_norm_eps: float = 1e-5

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings, recorded verbatim in meta.json."""

    epochs: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 10
    label_smoothing: float = 0.1
    max_shift: int = 1  # random translation in pixels, the only augmentation


# --------------------------------------------------------------------------------------- model


class Attention(nn.Module):
    """Multi-head self-attention written out by hand.

    Separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linears (rather than one fused
    in-projection, nn.MultiheadAttention or scaled_dot_product_attention) so that each projection
    exports as its own MatMul with its own name: those are the layers qae quantizes one by one.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B,H,T,hd]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + ffn(ln2(x))."""

    def __init__(self, cfg: VitConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.dim, cfg.num_heads)
        self.ln2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class DigitsViT(nn.Module):
    """Patch embedding -> positional embedding -> blocks -> LayerNorm -> mean pool -> head.

    Mean pooling instead of a class token keeps the graph free of a Concat with a broadcast
    parameter, which makes the exported graph simpler for the quantizer to walk.
    """

    def __init__(self, cfg: VitConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Small truncated-normal init, as in ViT; the PyTorch default for Linear is too wide for
        # a transformer trained from scratch on ~1100 images and slows convergence.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)  # [B,D,4,4]
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # [B,16,D]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


# ---------------------------------------------------------------------------------------- data


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with zeros.

    Digits are centred but not perfectly; small shifts are the cheapest augmentation that helps a
    patch-based model, whose patch grid otherwise sees each stroke at one fixed offset.
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = functional.pad(x, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    rows = offsets[:, 0, None] + torch.arange(h)  # [N,h]
    cols = offsets[:, 1, None] + torch.arange(w)  # [N,w]
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]][:, None]


# ------------------------------------------------------------------------------------ training


def set_determinism(seed: int) -> None:
    # One thread: reductions in a multi-threaded CPU kernel may split work differently from run
    # to run, and the model is too small to gain from threads anyway.
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    splits: Splits,
    cfg: VitConfig,
    tcfg: TrainConfig,
    seed: int,
    log: Callable[[str], None] = print,
) -> DigitsViT:
    set_determinism(seed)
    model = DigitsViT(cfg)
    # No weight decay on biases, norms and the positional embedding: decaying them only hurts.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "pos_embed"]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n == "pos_embed"]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": tcfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=tcfg.lr,
    )
    x = torch.from_numpy(splits.train_x)
    y = torch.from_numpy(splits.train_y)
    calib_x = torch.from_numpy(splits.calib_x)
    calib_y = torch.from_numpy(splits.calib_y)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x) / tcfg.batch_size)
    total = tcfg.epochs * steps_per_epoch
    warmup = tcfg.warmup_epochs * steps_per_epoch
    step = 0
    for epoch in range(tcfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        running = 0.0
        for start in range(0, len(x), tcfg.batch_size):
            idx = order[start : start + tcfg.batch_size]
            xb = random_shift(x[idx], tcfg.max_shift, gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, tcfg.lr)
            loss = functional.cross_entropy(model(xb), y[idx], label_smoothing=tcfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item() * len(idx)
            step += 1
        if (epoch + 1) % 25 == 0 or epoch == 0:
            # Progress is reported on the calibration split, never on eval or test: they stay unseen
            # until the final, single measurement on the exported file.
            model.eval()
            with torch.no_grad():
                calib_acc = float((model(calib_x).argmax(1) == calib_y).float().mean())
            log(f"epoch {epoch + 1:4d}  loss {running / len(x):.4f}  calib acc {calib_acc:.4f}")
    model.eval()
    return model


# -------------------------------------------------------------------------------------- export


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via a temp file in the same folder, then os.replace: no reader sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; shipped data must be readable like any file checked out by git.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(model: DigitsViT, cfg: VitConfig) -> bytes:
    """Export with the legacy TorchScript exporter and return the serialized, checked model."""
    dummy = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter's symbolic functions stop at opset 20 and it warns about 21, but
        # every op this model uses has the same semantics in 21 (that version only added int4/
        # uint4 types and blocked Q/DQ, which the quantizer uses later), so stamping 21 is sound.
        # The legacy exporter is chosen on purpose: it names nodes by module path.
        warnings.filterwarnings("ignore", message=".*opset version 21 is not supported.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            buf,  # type: ignore[arg-type]  # torch accepts a file object too
            dynamo=False,
            opset_version=OPSET,
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load_model_from_string(buf.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def check_parity(model: DigitsViT, sess: ort.InferenceSession, x: np.ndarray) -> float:
    """Max |torch - onnxruntime| over the given inputs; raises if over PARITY_ATOL."""
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = sess.run(["logits"], {"pixels": x})[0]
    diff = float(np.max(np.abs(ref - got)))
    if diff > PARITY_ATOL:
        raise RuntimeError(f"onnxruntime differs from torch by {diff:.3g} > {PARITY_ATOL}")
    return diff


def check_node_names(proto: onnx.ModelProto, cfg: VitConfig) -> dict[str, list[str]]:
    """Every quantizable module must own a node whose name carries its module path."""
    by_type: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            by_type.setdefault(node.op_type, []).append(node.name)
    names = [n for group in by_type.values() for n in group]
    expected = ["/patch_embed/", "/head/"]
    for i in range(cfg.depth):
        expected += [f"/blocks.{i}/attn/{p}/" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        expected += [f"/blocks.{i}/ffn/{p}/" for p in ("fc1", "fc2")]
    missing = [e for e in expected if not any(e in n for n in names)]
    if missing:
        raise RuntimeError(f"exported graph has no MatMul/Gemm/Conv node named for {missing}")
    return by_type


# ---------------------------------------------------------------------------------------- main


def build(out: Path, seed: int = SEED, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, export, verify and write the workload into ``out``; returns the meta dict."""
    out.mkdir(parents=True, exist_ok=True)
    cfg, tcfg = VitConfig(), TrainConfig()
    splits = make_splits(seed)
    log(f"splits: {splits.sizes()}")
    t0 = time.perf_counter()
    model = train(splits, cfg, tcfg, seed, log)
    train_seconds = time.perf_counter() - t0
    log(f"trained in {train_seconds:.1f} s")

    model_bytes = export_onnx(model, cfg)
    proto = onnx.load_model_from_string(model_bytes)
    node_names = check_node_names(proto, cfg)
    sess = ort_session(model_bytes)
    parity = max(
        check_parity(model, sess, splits.eval_x),
        check_parity(model, sess, splits.test_x),
        check_parity(model, sess, splits.calib_x[:1]),  # batch 1: the dynamic axis really works
    )
    scores = accuracies(sess, splits)
    eval_acc = scores["fp32_eval_accuracy"]
    log(f"onnxruntime FP32 accuracy {scores} (max |torch - ort| {parity:.2e})")
    if eval_acc < MIN_ACCURACY:
        raise RuntimeError(f"eval accuracy {eval_acc:.4f} is under {MIN_ACCURACY}; not writing")

    meta: dict[str, Any] = {
        "name": "builtin:digits-vit",
        "task": "image classification, sklearn.datasets.load_digits (8x8, 10 classes)",
        "input": {
            "name": "pixels",
            "shape": ["batch", 1, 8, 8],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "preprocessing": "pixel / 16",
        },
        "output": {"name": "logits", "shape": ["batch", cfg.num_classes], "dtype": "float32"},
        # one inference, for predictions without --input-shape (the symbolic batch is never a silent 1)
        "input_shapes": {"pixels": [1, 1, 8, 8]},
        "metric": "top1",
        "seed": seed,
        "splits": split_meta(splits),
        "architecture": {
            "type": "vit",
            **asdict(cfg),
            "num_tokens": cfg.num_tokens,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "training": {
            **asdict(tcfg),
            "optimizer": "AdamW",
            "schedule": "warmup+cosine",
            "seconds": round(train_seconds, 2),
            "threads": 1,
        },
        **scores,  # fp32_eval_accuracy (validation), fp32_test_accuracy, fp32_calib_accuracy
        "accuracy_measured_with": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "torch_ort_max_abs_diff": parity,
        "onnx_opset": OPSET,
        # All MatMul/Gemm/Conv nodes; the two per block without a weight (/attn/MatMul, MatMul_1)
        # are the attention score and context products between activations.
        "matmul_gemm_conv_nodes": node_names,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rebuild": "python -m harness.builtin.train_digits_vit",
    }

    _atomic_write(out / "model.onnx", lambda fh: fh.write(model_bytes))
    write_data(out, splits)
    meta_text = json.dumps(meta, indent=2) + "\n"
    # meta.json last: its presence with a matching accuracy marks a complete build.
    _atomic_write(out / "meta.json", lambda fh: fh.write(meta_text.encode("utf-8")))
    log(f"wrote {out}")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=SEED, help="split, init and shuffle seed")
    parser.add_argument(
        "--data-only",
        action="store_true",
        help="keep model.onnx; rewrite calib/eval/test.npz and meta.json's splits and FP32 accuracies",
    )
    args = parser.parse_args(argv)
    if args.data_only:
        meta = rewrite_data(args.out, args.seed)
        print(f"wrote {args.out}: {meta['splits']}")
    else:
        build(args.out, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
