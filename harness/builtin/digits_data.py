"""The data splits of ``builtin:digits-vit`` and ``builtin:digits-cnn``, and rewriting their data files
without retraining.

Torch-free (numpy, scikit-learn, onnxruntime), so tests and ``--data-only`` rebuilds need no
training stack; ``harness.builtin.train_digits_vit`` and ``train_digits_cnn`` use this module for
their splits, so both workloads ship the same calib/eval/test files, trained on the same images.

The 1797 images of ``sklearn.datasets.load_digits`` are split once, stratified, with fixed seeds:

1. 540 held out (``HELD_OUT_SIZE``, seed ``SEED``): never seen by training;
2. of the remaining 1257, 128 for calibration (``calib.npz``, seed ``SEED + 1``); the other 1129 train;
3. the 540 held out, halved (seed ``SEED + 2``): validation (``eval.npz``, 270: what the search
   optimises) and test (``test.npz``, 270: what is reported, never seen by the search).

Step 3 was added after the model was trained on the split of steps 1-2 (which it leaves unchanged),
so the shipped model did not have to be retrained: ``python -m harness.builtin.train_digits_vit
--data-only`` rewrites ``calib.npz``, ``eval.npz``, ``test.npz`` and the split sizes and FP32
accuracies in ``meta.json`` from the shipped ``model.onnx``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from harness.core.atomic import atomic_path, atomic_write_text

DEFAULT_OUT = Path(__file__).resolve().parent / "digits_vit"

SEED = 20240607
HELD_OUT_SIZE = 540  # ~30 % of 1797, held out from both training and calibration
CALIB_SIZE = 128
TEST_SIZE = 270  # half of the held-out images; the other half is validation (eval.npz)
#: The files this module writes; model.onnx is the training script's.
DATA_FILES = ("calib.npz", "eval.npz", "test.npz")


@dataclass(frozen=True)
class Splits:
    """Arrays of each split, and the indices into ``load_digits()`` they were taken from."""

    train_x: np.ndarray
    train_y: np.ndarray
    calib_x: np.ndarray
    calib_y: np.ndarray
    eval_x: np.ndarray  # validation: what the search optimises
    eval_y: np.ndarray
    test_x: np.ndarray  # test: what is reported
    test_y: np.ndarray
    indices: dict[str, np.ndarray]  # "train" | "calib" | "eval" | "test" -> int64 indices, disjoint

    def sizes(self) -> dict[str, int]:
        return {kind: len(idx) for kind, idx in self.indices.items()}


def make_splits(seed: int = SEED) -> Splits:
    """Split the 1797 digits, stratified: train (1129), calibration (128), validation (270), test (270).

    Splitting indices gives the same samples as splitting the arrays themselves (scikit-learn draws
    one permutation for all arrays it is given), so the train, calibration and held-out parts are
    those the shipped model was built from.
    """
    digits = load_digits()
    # Pixels are 0..16 integers; /16 maps them to [0,1], the range the model's input expects.
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = digits.target.astype(np.int64)
    every = np.arange(len(y), dtype=np.int64)
    rest, held = train_test_split(every, test_size=HELD_OUT_SIZE, stratify=y, random_state=seed)
    train, calib = train_test_split(rest, test_size=CALIB_SIZE, stratify=y[rest], random_state=seed + 1)
    val, test = train_test_split(held, test_size=TEST_SIZE, stratify=y[held], random_state=seed + 2)
    parts = {"train": train, "calib": calib, "eval": val, "test": test}
    indices = {k: np.asarray(v, dtype=np.int64) for k, v in parts.items()}
    x_of = {k: np.ascontiguousarray(x[v]) for k, v in indices.items()}
    y_of = {k: np.ascontiguousarray(y[v]) for k, v in indices.items()}
    return Splits(
        train_x=x_of["train"],
        train_y=y_of["train"],
        calib_x=x_of["calib"],
        calib_y=y_of["calib"],
        eval_x=x_of["eval"],
        eval_y=y_of["eval"],
        test_x=x_of["test"],
        test_y=y_of["test"],
        indices=indices,
    )


def split_meta(splits: Splits) -> dict[str, Any]:
    """The ``splits`` entry of meta.json."""
    sizes = splits.sizes()
    return {
        "total": sum(sizes.values()),
        "train": sizes["train"],
        "calib": sizes["calib"],
        "eval": sizes["eval"],
        "test": sizes["test"],
        "stratified": True,
        "eval_is": "validation: what the search optimises",
        "test_is": "test: what is reported; never seen by training, calibration or the search",
        "rule": f"load_digits, stratified: {HELD_OUT_SIZE} held out (seed), calib {CALIB_SIZE} of the rest "
        f"(seed + 1), held out halved into eval and test {TEST_SIZE} (seed + 2)",
    }


def ort_session(model: bytes | str | Path) -> ort.InferenceSession:
    """A single-threaded CPU session, so every argmax and hence every accuracy is reproduced exactly."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def accuracy(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    logits = sess.run(["logits"], {"pixels": x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == y))


def accuracies(sess: ort.InferenceSession, splits: Splits) -> dict[str, float]:
    """FP32 top-1 of each scored split, under the meta.json keys."""
    return {
        "fp32_eval_accuracy": accuracy(sess, splits.eval_x, splits.eval_y),
        "fp32_test_accuracy": accuracy(sess, splits.test_x, splits.test_y),
        "fp32_calib_accuracy": accuracy(sess, splits.calib_x, splits.calib_y),
    }


def write_data(out: Path, splits: Splits) -> None:
    """Write calib.npz, eval.npz and test.npz (``pixels`` float32, ``labels`` int64), mode 0644."""
    parts = {
        "calib.npz": (splits.calib_x, splits.calib_y),
        "eval.npz": (splits.eval_x, splits.eval_y),
        "test.npz": (splits.test_x, splits.test_y),
    }
    for name, (x, y) in parts.items():
        with atomic_path(out / name) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, pixels=x, labels=y)
        (out / name).chmod(0o644)  # package data must be world-readable whatever the umask


def rewrite_data(out: Path = DEFAULT_OUT, seed: int = SEED) -> dict[str, Any]:
    """Rewrite the data files and meta.json's splits and FP32 accuracies; the model is left as it is.

    Refuses (``SystemExit``, nothing written) when the training split recorded in meta.json differs
    from ``make_splits(seed)``'s: the model would then have been trained on other images.
    """
    meta_path = out / "meta.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    splits = make_splits(seed)
    if meta.get("seed") != seed or meta["splits"]["train"] != len(splits.train_y):
        raise SystemExit(f"{meta_path} records another seed or training split: retrain instead of --data-only")
    scores = accuracies(ort_session(out / "model.onnx"), splits)
    write_data(out, splits)
    meta["splits"] = split_meta(splits)
    # The accuracies replace the old ones where those stood, in the order build() writes them.
    keys = list(meta)
    at = keys.index("fp32_eval_accuracy") if "fp32_eval_accuracy" in keys else len(keys)
    kept = [k for k in keys if k not in scores]
    before = [k for k in kept if keys.index(k) < at]
    meta = {**{k: meta[k] for k in before}, **scores, **{k: meta[k] for k in kept if k not in before}}
    meta["accuracy_measured_with"] = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    meta["data_date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # meta.json last: its accuracies match the data files once it is written.
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    meta_path.chmod(0o644)
    return meta
