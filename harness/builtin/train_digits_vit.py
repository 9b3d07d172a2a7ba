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

This module holds what is digits-vit's own (the model and its ``Recipe``); the training loop,
export, checks and file writing are shared with ``builtin:digits-cnn`` in
``harness.builtin.digits_train``, and the data split lives in ``harness.builtin.digits_data``, so
that the tests and ``--data-only`` need no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.builtin import digits_train
from harness.builtin.digits_data import DEFAULT_OUT, SEED, Splits
from harness.builtin.digits_train import TrainConfig

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


# ---------------------------------------------------------------------------------------- main


def train(
    splits: Splits,
    cfg: VitConfig,
    tcfg: TrainConfig,
    seed: int,
    log: Callable[[str], None] = print,
) -> DigitsViT:
    """Train with the shared recipe (``digits_train.train_model``); the positional embedding is not decayed."""
    model = digits_train.train_model(lambda: DigitsViT(cfg), splits, tcfg, seed, log, no_decay=("pos_embed",))
    assert isinstance(model, DigitsViT)
    return model


def expected_nodes(cfg: VitConfig) -> list[str]:
    """Every quantizable module must own a node whose name carries its module path."""
    expected = ["/patch_embed/", "/head/"]
    for i in range(cfg.depth):
        expected += [f"/blocks.{i}/attn/{p}/" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        expected += [f"/blocks.{i}/ffn/{p}/" for p in ("fc1", "fc2")]
    return expected


def recipe(cfg: VitConfig | None = None, tcfg: TrainConfig | None = None) -> digits_train.Recipe:
    cfg = cfg or VitConfig()

    def architecture(model: nn.Module) -> dict[str, Any]:
        return {
            "type": "vit",
            **asdict(cfg),
            "num_tokens": cfg.num_tokens,
            "parameters": sum(p.numel() for p in model.parameters()),
        }

    return digits_train.Recipe(
        name="builtin:digits-vit",
        make_model=lambda: DigitsViT(cfg),
        train=tcfg or TrainConfig(),
        architecture=architecture,
        # All MatMul/Gemm/Conv nodes land in meta.json; the two per block without a weight
        # (/attn/MatMul, MatMul_1) are the attention score and context products between activations.
        expected_nodes=expected_nodes(cfg),
        rebuild="python -m harness.builtin.train_digits_vit",
        min_accuracy=MIN_ACCURACY,
        no_decay=("pos_embed",),
    )


def build(out: Path, seed: int = SEED, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, export, verify and write the workload into ``out``; returns the meta dict."""
    return digits_train.build(out, recipe(), seed, log)


def main(argv: list[str] | None = None) -> int:
    description = __doc__.splitlines()[0] if __doc__ else None
    return digits_train.main(argv, lambda out, seed: build(out, seed), DEFAULT_OUT, description)


if __name__ == "__main__":
    raise SystemExit(main())
