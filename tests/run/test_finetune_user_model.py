"""``qae finetune --torch module:function --train DATA.npz`` on a user's model: a tiny ViT exported by
torch, its weights loaded by the user's function, fine-tuned by distillation from its FP32 outputs on
unlabelled training data (no labels anywhere: the search scores agreement with FP32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.run.archive import Archive
from tests.cli.test_cli_model import assert_one_line_error, qae

pytest.importorskip("torch")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.torch_models import export_tiny_vit

    root = tmp_path_factory.mktemp("user")
    model = export_tiny_vit(root / "tiny.onnx", dynamo=False)
    rng = np.random.default_rng(0)
    for name, n in (("calib", 32), ("val", 64), ("test", 64), ("train", 256)):
        np.savez(root / f"{name}.npz", pixels=rng.random((n, 1, 8, 8), dtype=np.float32))
    out = root / "run"
    proc = qae("search", str(model), "--calib", str(root / "calib.npz"), "--data", str(root / "val.npz"), "--test",
               str(root / "test.npz"), "--profile", "arm-neon-a76", "--generations", "1", "--population", "6",
               "--emulated", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_distillation_on_a_users_model(user_run: Path) -> None:
    root = user_run.parent
    proc = qae("finetune", str(user_run), "--front", "1", "--max-loss", "1", "--torch", "tests.torch_models:tiny_vit",
               "--train", str(root / "train.npz"), "--steps", "12", "--eval-every", "6", "--batch-size", "32")
    assert proc.returncode == 0, proc.stderr
    archive = Archive.open_existing(user_run / "archive.sqlite", readonly=True)
    try:
        (prov,) = archive.finetuned().values()
    finally:
        archive.close()
    assert prov["torch"] == "tests.torch_models:tiny_vit"
    assert prov["data"]["labels"] is False and prov["data"]["n"] == 256 and prov["data"]["source"].endswith("train.npz")
    assert len(prov["loss_curve"]) == 12


def test_users_model_without_torch_module_or_with_validation_data(user_run: Path) -> None:
    root = user_run.parent
    assert_one_line_error(qae("finetune", str(user_run), "--front", "1", "--max-loss", "1"), "give --train DATA.npz")
    assert_one_line_error(qae("finetune", str(user_run), "--front", "1", "--max-loss", "1", "--train",
                              str(root / "train.npz")), "--torch module:function")
    assert_one_line_error(qae("finetune", str(user_run), "--front", "1", "--max-loss", "1", "--torch",
                              "tests.torch_models:tiny_vit", "--train", str(root / "val.npz")),
                          "is the validation data")
    assert_one_line_error(qae("finetune", str(user_run), "--front", "1", "--max-loss", "1", "--torch",
                              "tests.torch_models:nothing", "--train", str(root / "train.npz")), "cannot import it")
