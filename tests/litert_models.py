"""The small torch module the LiteRT tests convert with litert-torch (``tests/conftest.py``'s ``lite``
fixture converts it once per session), and ``--torch tests.litert_models:tiny`` for the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(48, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TinyNet(nn.Module):
    """A conv, a depthwise conv and two linear layers in a nested block: every weighted kind but a table."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(8, 48)
        self.block = Block()
        self.head = nn.Linear(16, 4)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.dw(torch.relu(self.conv(pixels))))
        y = self.pool(y).flatten(1)
        return self.head(torch.relu(self.block(torch.relu(self.proj(y)))))


def tiny() -> nn.Module:
    """``--torch tests.litert_models:tiny``: the module with fixed weights."""
    torch.manual_seed(0)
    return TinyNet().eval()


def make(root: Path) -> dict[str, Any]:
    """The module converted to ``root/tiny.tflite`` (in a child process, as qae converts: litert-torch brings JAX,
    which must not be loaded in a process that forks), with calibration / validation / test splits (32 each)
    labelled by the float module."""
    from harness.core.paths import cache_dir
    from harness.quant.litert_convert import convert_torch

    module = tiny()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 2, 6, 6)).astype(np.float32)
    with torch.no_grad():
        labels = module(torch.from_numpy(x)).argmax(1).numpy()
    files = {}
    for name, part in (("calib", slice(0, 32)), ("eval", slice(32, 64)), ("test", slice(64, 96))):
        files[name] = root / f"{name}.npz"
        np.savez(files[name], pixels=x[part], labels=labels[part])
    # what `--runtime litert --torch tests.litert_models:tiny --calib calib.npz` converts (cached: the CLI reuses it)
    converted = convert_torch("tests.litert_models:tiny", files["calib"], cache_dir() / "torch-litert")
    model = root / "tiny.tflite"
    model.write_bytes(converted.content)
    return {"root": root, "model": model, "naming": {"names": converted.names}, **files}

