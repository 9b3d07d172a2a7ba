"""What the digits builtins' training scripts share: training loop, export, checks, meta.json, files.

``harness.builtin.train_digits_vit`` (``builtin:digits-vit``) and ``harness.builtin.train_digits_cnn``
(``builtin:digits-cnn``) each define a model and a :class:`Recipe`; everything else is here, so the two
workloads are trained, exported, checked and written the same way, on the same splits
(``harness.builtin.digits_data.make_splits``):

- training (:func:`train_model`): fixed seeds, one thread, deterministic algorithms; AdamW with
  linear warm-up then cosine decay, label smoothing, random shifts of up to ``max_shift`` pixels as
  the only augmentation; progress is reported on the calibration split only;
- export (:func:`export_onnx`): the legacy TorchScript exporter at opset 21, input ``pixels``
  [batch,1,8,8], output ``logits`` [batch,10], dynamic batch; node names carry the module paths
  (``/blocks.0/dw/Conv``), which is how ``harness.core.model`` names the layers;
- checks: parity between torch and ONNX Runtime (:func:`check_parity`), one weighted node per
  expected module (:func:`weighted_nodes`), a minimum validation accuracy measured with ONNX Runtime
  on the exported file;
- files (:func:`build`): ``model.onnx``, ``calib.npz``, ``eval.npz``, ``test.npz`` and, last,
  ``meta.json``, all mode 0644.

Needs torch (the ``train`` extra); the tests and ``--data-only`` rebuilds need only
``harness.builtin.digits_data``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import torch
from torch import nn
from torch.nn import functional

from harness.builtin.digits_data import (
    SEED,
    Splits,
    accuracies,
    make_splits,
    ort_session,
    rewrite_data,
    split_meta,
    write_data,
)
from harness.core.atomic import atomic_write_bytes

OPSET = 21
# Parity between torch and ONNX Runtime on the exported graph; both run FP32 on CPU.
PARITY_ATOL = 1e-4
IMAGE_SIZE = 8
IN_CHANNELS = 1
NUM_CLASSES = 10


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings, recorded verbatim in meta.json (the defaults are digits-vit's)."""

    epochs: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 10
    label_smoothing: float = 0.1
    max_shift: int = 1  # random translation in pixels, the only augmentation


# ---------------------------------------------------------------------------------------- data


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with zeros.

    Digits are centred but not perfectly; small shifts are the cheapest augmentation that helps a
    patch-based model, whose patch grid otherwise sees each stroke at one fixed offset, and a small
    CNN alike.
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
    # to run, and the models are too small to gain from threads anyway.
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


def train_model(
    make_model: Callable[[], nn.Module],
    splits: Splits,
    tcfg: TrainConfig,
    seed: int,
    log: Callable[[str], None] = print,
    no_decay: Sequence[str] = (),
) -> nn.Module:
    """Seed everything, build the model with ``make_model`` and train it; returns it in eval mode.

    Weight decay applies to the parameters of two or more dimensions (weight matrices and kernels)
    except those named in ``no_decay``: decaying biases, norms or embeddings only hurts.
    """
    set_determinism(seed)
    model = make_model()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n not in no_decay]
    skip = [p for n, p in model.named_parameters() if p.ndim < 2 or n in no_decay]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": tcfg.weight_decay},
            {"params": skip, "weight_decay": 0.0},
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


def export_onnx(model: nn.Module) -> bytes:
    """Export with the legacy TorchScript exporter and return the serialized, checked model."""
    dummy = torch.zeros(1, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter's symbolic functions stop at opset 20 and it warns about 21, but
        # every op these models use has the same semantics in 21 (that version only added int4/
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


def check_parity(model: nn.Module, sess: ort.InferenceSession, x: np.ndarray) -> float:
    """Max |torch - onnxruntime| over the given inputs; raises if over PARITY_ATOL."""
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = sess.run(["logits"], {"pixels": x})[0]
    diff = float(np.max(np.abs(ref - got)))
    if diff > PARITY_ATOL:
        raise RuntimeError(f"onnxruntime differs from torch by {diff:.3g} > {PARITY_ATOL}")
    return diff


def weighted_nodes(proto: onnx.ModelProto, expected: Sequence[str]) -> dict[str, list[str]]:
    """The MatMul/Gemm/Conv node names by op type; raises unless each ``expected`` path owns one."""
    by_type: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            by_type.setdefault(node.op_type, []).append(node.name)
    names = [n for group in by_type.values() for n in group]
    missing = [e for e in expected if not any(e in n for n in names)]
    if missing:
        raise RuntimeError(f"exported graph has no MatMul/Gemm/Conv node named for {missing}")
    return by_type


# ---------------------------------------------------------------------------------------- build


def _same(model: nn.Module) -> nn.Module:
    return model


def _nothing(proto: onnx.ModelProto) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Recipe:
    """One digits workload: its model, training settings and what its exported graph must hold."""

    name: str  # "builtin:digits-vit"
    make_model: Callable[[], nn.Module]  # called once the seeds are set
    train: TrainConfig
    architecture: Callable[[nn.Module], dict[str, Any]]  # meta.json's "architecture" of the trained model
    expected_nodes: Sequence[str]  # fragments of node names: one MatMul/Gemm/Conv node must carry each
    rebuild: str  # the command that rebuilds it
    min_accuracy: float = 0.95  # on validation (eval.npz), measured on the exported file
    no_decay: Sequence[str] = ()  # parameter names kept out of weight decay besides biases and norms
    for_export: Callable[[nn.Module], nn.Module] = _same  # e.g. a copy with BatchNorm folded away
    # Checks the exported graph (raises when wrong) and returns meta.json entries about it.
    inspect_graph: Callable[[onnx.ModelProto], dict[str, Any]] = _nothing
    input_meta: dict[str, Any] = field(
        default_factory=lambda: {
            "name": "pixels",
            "shape": ["batch", IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "preprocessing": "pixel / 16",
        }
    )


def write_shipped(path: Path, data: bytes) -> None:
    """Write atomically (no reader sees half a file), readable like any file checked out by git."""
    atomic_write_bytes(path, data)
    path.chmod(0o644)


def build(out: Path, recipe: Recipe, seed: int = SEED, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, export, verify and write the workload into ``out``; returns the meta dict."""
    out.mkdir(parents=True, exist_ok=True)
    tcfg = recipe.train
    splits = make_splits(seed)
    log(f"splits: {splits.sizes()}")
    t0 = time.perf_counter()
    model = train_model(recipe.make_model, splits, tcfg, seed, log, recipe.no_decay)
    train_seconds = time.perf_counter() - t0
    log(f"trained in {train_seconds:.1f} s")

    model_bytes = export_onnx(recipe.for_export(model))
    proto = onnx.load_model_from_string(model_bytes)
    node_names = weighted_nodes(proto, recipe.expected_nodes)
    graph_meta = recipe.inspect_graph(proto)
    sess = ort_session(model_bytes)
    # Against the trained model itself, so a transformation for export (BatchNorm folding) is checked too.
    parity = max(
        check_parity(model, sess, splits.eval_x),
        check_parity(model, sess, splits.test_x),
        check_parity(model, sess, splits.calib_x[:1]),  # batch 1: the dynamic axis really works
    )
    scores = accuracies(sess, splits)
    eval_acc = scores["fp32_eval_accuracy"]
    log(f"onnxruntime FP32 accuracy {scores} (max |torch - ort| {parity:.2e})")
    if eval_acc < recipe.min_accuracy:
        raise RuntimeError(f"eval accuracy {eval_acc:.4f} is under {recipe.min_accuracy}; not writing")

    meta: dict[str, Any] = {
        "name": recipe.name,
        "task": "image classification, sklearn.datasets.load_digits (8x8, 10 classes)",
        "input": recipe.input_meta,
        "output": {"name": "logits", "shape": ["batch", NUM_CLASSES], "dtype": "float32"},
        # one inference, for predictions without --input-shape (the symbolic batch is never a silent 1)
        "input_shapes": {"pixels": [1, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE]},
        "metric": "top1",
        "seed": seed,
        "splits": split_meta(splits),
        "architecture": recipe.architecture(model),
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
        "matmul_gemm_conv_nodes": node_names,
        **graph_meta,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rebuild": recipe.rebuild,
    }

    write_shipped(out / "model.onnx", model_bytes)
    write_data(out, splits)
    # meta.json last: its presence with a matching accuracy marks a complete build.
    write_shipped(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    log(f"wrote {out}")
    return meta


def main(
    argv: list[str] | None, build_to: Callable[[Path, int], Any], default_out: Path, description: str | None
) -> int:
    """The command line of a training script: ``--out``, ``--seed``, ``--data-only``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out, help="output folder")
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
        build_to(args.out, args.seed)
    return 0
