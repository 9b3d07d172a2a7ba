"""Train and export ``builtin:digits-cnn``, the convolutional counterpart of ``builtin:digits-vit``.

What it is: a small MobileNet-style network classifying scikit-learn's 8x8 handwritten digits
(``sklearn.datasets.load_digits``), on exactly digits-vit's splits. It has the layer kinds of a
mobile CNN: a 3x3 Conv stem, depthwise-separable blocks (a 3x3 depthwise Conv, ``group`` = channels,
then a 1x1 pointwise Conv, each followed by BatchNorm and ReLU6; two of them with stride 2), global
average pooling and a ``head`` Gemm. BatchNorm is folded into the Convs before export, so the
graph holds Conv (with bias), Clip (ReLU6), GlobalAveragePool, Flatten and Gemm only.

Layer names (what ``qae layers builtin:digits-cnn`` lists): ``stem``, ``blocks.N.dw`` (depthwise),
``blocks.N.pw`` (pointwise) and ``head``.

What it writes (into ``harness/builtin/digits_cnn/`` unless ``--out`` says otherwise), like
digits-vit: ``model.onnx`` (input ``pixels`` [batch,1,8,8] float32 in [0,1], output ``logits``
[batch,10], opset 21, legacy TorchScript exporter so node names carry module paths), ``calib.npz``
(128), ``eval.npz`` (validation, 270: what the search optimises), ``test.npz`` (270: what is
reported) and ``meta.json`` (seed, splits, architecture, training settings and time, FP32 accuracy
of the exported file measured with ONNX Runtime on validation and test, library versions).

The splits are ``harness.builtin.digits_data.make_splits``: the same train, calibration, validation
and test images as digits-vit, so the two workloads' data files are byte for byte the same. Training
is the recipe of ``harness.builtin.digits_train`` (fixed seeds, one thread, deterministic
algorithms) with this model's settings (``TRAIN``).

Rebuild (well under a minute on one CPU thread; needs the ``train`` extra)::

    python -m harness.builtin.train_digits_cnn              # overwrite the shipped workload
    python -m harness.builtin.train_digits_cnn --out DIR    # write elsewhere
    python -m harness.builtin.train_digits_cnn --data-only  # rewrite only the .npz files and
                                                            # meta.json's splits and accuracies

Then run ``pytest tests/builtin/test_builtin_digits_cnn.py``, which checks the shipped files without torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional
from torch.nn.utils.fusion import fuse_conv_bn_eval

from harness.builtin import digits_train
from harness.builtin.digits_data import SEED
from harness.builtin.digits_train import TrainConfig

DEFAULT_OUT = Path(__file__).resolve().parent / "digits_cnn"
MIN_ACCURACY = 0.97


@dataclass(frozen=True)
class CnnConfig:
    """Architecture hyper-parameters, recorded verbatim in meta.json."""

    image_size: int = 8
    in_channels: int = 1
    stem_channels: int = 16
    # (output channels, stride) of each depthwise-separable block: 8x8 -> 8x8 -> 4x4 -> 4x4 -> 2x2
    blocks: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (64, 1), (128, 2))
    kernel_size: int = 3
    num_classes: int = 10
    activation: str = "relu6"
    batch_norm_eps: float = 1e-5
    batch_norm_momentum: float = 0.1


#: Training settings (the shared recipe's fields; the CNN converges in fewer epochs than the ViT).
TRAIN = TrainConfig(
    epochs=120,
    batch_size=64,
    lr=3e-3,
    weight_decay=0.05,
    warmup_epochs=5,
    label_smoothing=0.1,
    max_shift=1,
)


# --------------------------------------------------------------------------------------- model


def fold(conv: nn.Conv2d, bn: nn.Module) -> tuple[nn.Conv2d, nn.Module]:
    """``conv`` with ``bn`` (eval mode) folded into its weight and bias, and an Identity for ``bn``."""
    if not isinstance(bn, nn.BatchNorm2d):
        return conv, bn  # already folded
    return fuse_conv_bn_eval(conv, bn), nn.Identity()


class SeparableBlock(nn.Module):
    """Depthwise 3x3 Conv (one filter per channel) -> BN -> ReLU6 -> pointwise 1x1 Conv -> BN -> ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: CnnConfig) -> None:
        super().__init__()
        k = cfg.kernel_size
        self.dw = nn.Conv2d(cin, cin, k, stride=stride, padding=k // 2, groups=cin, bias=False)
        self.dw_bn: nn.Module = nn.BatchNorm2d(cin, eps=cfg.batch_norm_eps, momentum=cfg.batch_norm_momentum)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.pw_bn: nn.Module = nn.BatchNorm2d(cout, eps=cfg.batch_norm_eps, momentum=cfg.batch_norm_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu6(self.dw_bn(self.dw(x)))
        return functional.relu6(self.pw_bn(self.pw(x)))

    def fold_batch_norm(self) -> None:
        self.dw, self.dw_bn = fold(self.dw, self.dw_bn)
        self.pw, self.pw_bn = fold(self.pw, self.pw_bn)


class DigitsCNN(nn.Module):
    """Conv stem -> depthwise-separable blocks -> global average pool -> head."""

    def __init__(self, cfg: CnnConfig) -> None:
        super().__init__()
        if cfg.activation != "relu6":
            raise ValueError(f"activation {cfg.activation!r}: only relu6 is built")
        k = cfg.kernel_size
        self.stem = nn.Conv2d(cfg.in_channels, cfg.stem_channels, k, padding=k // 2, bias=False)
        self.stem_bn: nn.Module = nn.BatchNorm2d(
            cfg.stem_channels, eps=cfg.batch_norm_eps, momentum=cfg.batch_norm_momentum
        )
        blocks = []
        cin = cfg.stem_channels
        for cout, stride in cfg.blocks:
            blocks.append(SeparableBlock(cin, cout, stride, cfg))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool
        self.head = nn.Linear(cin, cfg.num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = functional.relu6(self.stem_bn(self.stem(pixels)))
        for block in self.blocks:
            x = block(x)
        return self.head(torch.flatten(self.pool(x), 1))

    def fold_batch_norm(self) -> None:
        """Fold every BatchNorm into the Conv before it (eval mode only): the export has no BatchNorm."""
        if self.training:
            raise RuntimeError("fold BatchNorm in eval mode only: training mode normalises by batch statistics")
        self.stem, self.stem_bn = fold(self.stem, self.stem_bn)
        for block in self.blocks:
            assert isinstance(block, SeparableBlock)
            block.fold_batch_norm()


def folded(model: nn.Module) -> nn.Module:
    """A copy of the trained ``model`` with its BatchNorms folded away; the model itself is kept."""
    assert isinstance(model, DigitsCNN)
    copied = copy.deepcopy(model).eval()
    copied.fold_batch_norm()
    return copied


# ---------------------------------------------------------------------------------------- graph


def expected_nodes(cfg: CnnConfig) -> list[str]:
    """Every Conv and the head must own a node whose name carries its module path."""
    expected = ["/stem/", "/head/"]
    for i in range(len(cfg.blocks)):
        expected += [f"/blocks.{i}/dw/", f"/blocks.{i}/pw/"]
    return expected


def inspect_graph(cfg: CnnConfig) -> Callable[[onnx.ModelProto], dict[str, Any]]:
    """Check the exported graph (BatchNorm folded, depthwise Convs grouped) and describe its Convs."""

    def inspect(proto: onnx.ModelProto) -> dict[str, Any]:
        ops = sorted({node.op_type for node in proto.graph.node})
        if "BatchNormalization" in ops:
            raise RuntimeError("the exported graph still has BatchNormalization: folding failed")
        weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        depthwise, pointwise = [], []
        for node in proto.graph.node:
            if node.op_type != "Conv":
                continue
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            w = weights[node.input[1]]
            if len(node.input) < 3 or node.input[2] not in weights:
                raise RuntimeError(f"{node.name} has no bias: BatchNorm was not folded into it")
            if "/dw/" in node.name:
                if group != w.shape[0] or w.shape[1] != 1:
                    raise RuntimeError(f"{node.name} is not depthwise: group {group}, weight {list(w.shape)}")
                depthwise.append(node.name)
            elif "/pw/" in node.name:
                if group != 1 or w.shape[2:] != (1, 1):
                    raise RuntimeError(f"{node.name} is not pointwise: group {group}, weight {list(w.shape)}")
                pointwise.append(node.name)
        if len(depthwise) != len(cfg.blocks) or len(pointwise) != len(cfg.blocks):
            raise RuntimeError(f"expected {len(cfg.blocks)} depthwise and pointwise Convs: {depthwise}, {pointwise}")
        return {
            "op_types": ops,
            "depthwise_conv_nodes": depthwise,
            "pointwise_conv_nodes": pointwise,
            # weights and biases of the Convs and the head, BatchNorm folded in
            "exported_parameters": int(
                sum(
                    weights[name].size
                    for node in proto.graph.node
                    if node.op_type in ("Conv", "Gemm")
                    for name in node.input[1:]
                    if name in weights
                )
            ),
        }

    return inspect


# ---------------------------------------------------------------------------------------- main


def recipe(cfg: CnnConfig | None = None, tcfg: TrainConfig | None = None) -> digits_train.Recipe:
    cfg = cfg or CnnConfig()

    def architecture(model: nn.Module) -> dict[str, Any]:
        return {
            "type": "cnn (depthwise-separable, MobileNet-style)",
            **asdict(cfg),
            "batch_norm": "folded into the preceding Conv at export",
            "parameters": sum(p.numel() for p in model.parameters()),  # trained, BatchNorm included
        }

    return digits_train.Recipe(
        name="builtin:digits-cnn",
        make_model=lambda: DigitsCNN(cfg),
        train=tcfg or TRAIN,
        architecture=architecture,
        expected_nodes=expected_nodes(cfg),
        rebuild="python -m harness.builtin.train_digits_cnn",
        min_accuracy=MIN_ACCURACY,
        for_export=folded,
        inspect_graph=inspect_graph(cfg),
    )


def build(out: Path, seed: int = SEED, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, export, verify and write the workload into ``out``; returns the meta dict."""
    return digits_train.build(out, recipe(), seed, log)


def main(argv: list[str] | None = None) -> int:
    description = __doc__.splitlines()[0] if __doc__ else None
    return digits_train.main(argv, lambda out, seed: build(out, seed), DEFAULT_OUT, description)


if __name__ == "__main__":
    raise SystemExit(main())
