"""Shared fixtures. Every test session gets its own calibration cache, so tests never read a cache
left by an earlier run or by the user."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["QAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("qae-cache"))


@pytest.fixture(scope="session")
def digits_workload():  # type: ignore[no-untyped-def]
    from harness.quant.workload import Workload

    return Workload.open("builtin:digits-vit")


@pytest.fixture(scope="session")
def lite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small torch module converted to .tflite once per session (``tests.litert_models``), with data."""

    from tests.extras import require_litert

    require_litert()  # litert-torch is never imported here: it brings JAX (no forks after it)
    from tests.litert_models import make

    return make(tmp_path_factory.mktemp("litert"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ViT exported by the legacy and by the dynamo torch exporter."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from tests.torch_models import export_tiny_vit

    root = tmp_path_factory.mktemp("tiny")
    return {
        "legacy": export_tiny_vit(root / "legacy.onnx", dynamo=False),
        "dynamo": export_tiny_vit(root / "dynamo.onnx", dynamo=True),
    }


@pytest.fixture(scope="session")
def symbolic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fully convolutional net with symbolic N, H and W, and 16 samples of data at 32x32."""
    import numpy as np

    from tests.quant.tiny_models import fcn

    root = tmp_path_factory.mktemp("fcn")
    data = root / "data.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32))
    return fcn(root / "fcn.onnx"), data
