"""Quantization-aware fine-tuning of one genome: the torch model under ``harness.quant.fakequant``,
trained on a training split, chosen on the validation split, never shown the test split.

- The model: a builtin brings its own (``builtin:digits-vit``: its architecture from
  ``harness.builtin.train_digits_vit``, the shipped ONNX model's weights loaded by name), a user's
  model comes from ``--torch module:function`` (a function returning the ``nn.Module`` with its
  weights loaded). Either way the module must compute what the ONNX model computes: checked on the
  validation inputs before anything is trained (``check_float``).
- The data: ``TrainSet``, the training split's inputs (by ONNX input name, fed to the module in the
  ONNX model's input order) and labels, if any. With labels the loss is cross-entropy; without, the
  module learns the FP32 model's outputs (mean squared error to the unquantized module over the real
  tokens where an ``attention_mask`` input marks them: distillation), and with ``distill_modules`` the
  outputs of those submodules too (each by its relative squared error, e.g. every encoder block), with
  ``cosine_loss`` 1 - the cosine of the mean-pooled outputs (the embedding metric's own). A token batch
  is cut after its longest real sequence (``_trimmed``).
- The loop (``finetune``): AdamW, cosine learning rate from ``lr`` to 0 over ``steps``, batches drawn
  by a permutation per epoch seeded by (seed, epoch), so step k's batch depends on nothing but the
  seed and k. One thread (``torch.set_num_threads(1)``) and deterministic algorithms: the same seed
  gives the same weights on CPU.
- Checkpoints: every ``checkpoint_every`` steps the module's and optimizer's state, the loss curve,
  the validation scores and the best state so far go to one file, written atomically and read back
  with ``torch.load(weights_only=True)`` (tensors and plain data only, never pickled objects). A
  killed fine-tune started again with the same checkpoint file continues from its last checkpoint
  and ends with the weights an uninterrupted run ends with. A checkpoint of another fine-tune (other
  parent, data or settings: its ``key``) is refused in one line.
- Choice: every ``eval_every`` steps and at the end the fake-quantized module is scored on the
  validation split by the workload's metric; the best state is the result (the parent's own score,
  step 0, is recorded beside it).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.atomic import atomic_path
from harness.core.errors import InputError, ModelError
from harness.core.genome import Genome
from harness.quant.workload import Workload

if TYPE_CHECKING:
    from torch import nn

TRAIN_EXTRA = "qae[train]"
#: A checkpoint file's format; a file of another format is refused.
CHECKPOINT_FORMAT = 1
#: The float torch module may differ from the ONNX model by this much (relative to its largest output).
FLOAT_TOLERANCE = 1e-3
EVAL_BATCH = 256
#: Validation scores a fine-tune can choose its state by (``FinetuneConfig.select``)
SELECT = ("accuracy", "mean_cosine")


def require_torch() -> None:
    """A one-line error naming the extra when torch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError(f"fine-tuning needs torch, which is not installed: pip install '{TRAIN_EXTRA}'") from None


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-4
    seed: int = 0
    lsq: bool = False
    checkpoint_every: int = 50
    eval_every: int = 50
    #: distillation only: torch modules (by name, e.g. ``encoder.layer.3``) whose outputs the student also
    #: learns from the FP32 model's, each by its relative squared error over the real tokens
    distill_modules: tuple[str, ...] = ()
    #: distillation only: add 1 - cosine of the mean-pooled (real tokens) outputs, the embedding metric's own
    cosine_loss: bool = False
    #: the validation score that chooses the state: the workload's metric (``accuracy``), or ``mean_cosine``
    #: (a claim about cosine is chosen on cosine; retrieval agreement on 400 sentences moves by +-2 points)
    select: str = "accuracy"

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.eval_every < 1:
            raise InputError("--steps, --batch-size, --checkpoint-every and --eval-every must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr {self.lr} is not a positive number: e.g. --lr 3e-4")
        if self.select not in SELECT:
            raise InputError(f"--select-on {self.select!r} is not one of {', '.join(SELECT)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; the distillation options are left out at their defaults, so a fine-tune that does not
        use them keeps the key (and checkpoint) it had before they existed."""
        out = asdict(self)
        out["distill_modules"] = list(self.distill_modules)
        for name in ("distill_modules", "cosine_loss"):
            if not out[name]:
                del out[name]
        if out["select"] == "accuracy":
            del out["select"]
        return out


@dataclass(frozen=True)
class TrainSet:
    """Training inputs by ONNX input name (samples on axis 0), labels or None, and where they came from."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    sha256: str

    @property
    def n(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @classmethod
    def of(cls, inputs: dict[str, np.ndarray], labels: np.ndarray | None, source: str) -> TrainSet:
        h = hashlib.sha256()
        for name in sorted(inputs):
            h.update(name.encode())
            h.update(np.ascontiguousarray(inputs[name]).tobytes())
        if labels is not None:
            h.update(np.ascontiguousarray(labels).tobytes())
        return cls(inputs, labels, source, h.hexdigest())


@dataclass
class Outcome:
    """What a fine-tune did: the trained module (at its best validation state) and its record."""

    module: Any
    attached: Any
    steps: int
    best_step: int
    best_score: float
    parent_score: float
    curve: list[list[float]] = field(default_factory=list)  # [step, loss]
    validation: list[list[float]] = field(default_factory=list)  # [step, score]
    resumed_from: int = 0


# -- the torch model -------------------------------------------------------------------------------
def torch_model(work: Workload, spec: str | None = None) -> nn.Module:
    """The float torch module of the workload's model, its weights the ONNX model's (see the docstring)."""
    require_torch()
    from harness.quant import fakequant

    if spec is not None:
        module = user_module(spec)
    elif work.model.builtin == "digits-vit":
        from harness.builtin.train_digits_vit import DigitsViT, VitConfig
        from harness.core.model import builtin_meta

        arch = builtin_meta("digits-vit")["architecture"]
        fields = {k: arch[k] for k in VitConfig.__dataclass_fields__ if k in arch}
        module = DigitsViT(VitConfig(**fields))
    elif work.model.builtin == "minilm-l6":
        from harness.builtin import minilm

        module = minilm.bind_forward(minilm.load_torch_model())
    else:
        raise InputError(f"no torch model for {_model_name(work)}: give --torch module:function returning the "
                         "nn.Module the ONNX model was exported from, with its weights")
    fakequant.onnx_to_torch(module, work.model)
    module.eval()
    return module


def _model_name(work: Workload) -> str:
    return f"builtin:{work.model.builtin}" if work.model.builtin else work.model.path.name


def user_module(spec: str) -> nn.Module:
    """The nn.Module a user's ``--torch module:function`` returns; one-line errors for a bad spec."""
    from torch import nn

    name, sep, func = spec.partition(":")
    if not sep or not name or not func:
        raise InputError(f"--torch {spec!r} is not module:function: e.g. --torch mypkg.models:load_model")
    try:
        fn = getattr(importlib.import_module(name), func)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"--torch {spec}: cannot import it ({type(exc).__name__}: {exc}); check the module is on "
                         "PYTHONPATH and defines the function") from None
    module = fn()
    if not isinstance(module, nn.Module):
        raise InputError(f"--torch {spec} returned a {type(module).__name__}, not a torch nn.Module")
    return module


def _forward(module: nn.Module, work: Workload, feed: dict[str, np.ndarray]) -> Any:
    import torch

    args = [torch.from_numpy(np.ascontiguousarray(feed[i.name])) for i in work.model.inputs if i.name in feed]
    out = module(*args)
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def outputs_on(module: nn.Module, work: Workload, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The module's first output on ``inputs`` (samples on axis 0), batched, without gradients."""
    import torch

    n = int(next(iter(inputs.values())).shape[0])
    parts = []
    with torch.no_grad():
        for start in range(0, n, EVAL_BATCH):
            feed = {k: v[start:start + EVAL_BATCH] for k, v in inputs.items()}
            parts.append(_forward(module, work, feed).detach().cpu().numpy())
    return np.concatenate(parts)


def check_float(module: nn.Module, work: Workload) -> float:
    """Refuse a module that does not compute the ONNX model (one line); returns the largest difference."""
    assert work.eval_data is not None
    got = outputs_on(module, work, work.eval_data.inputs)
    ref = work.reference_outputs
    if got.shape != ref.shape:
        raise ModelError(f"the torch model's output has shape {list(got.shape)}, the ONNX model's {list(ref.shape)}: "
                         "give the module the ONNX model was exported from")
    diff = float(np.abs(got - ref).max())
    if diff > FLOAT_TOLERANCE * max(1.0, float(np.abs(ref).max())):
        raise ModelError(f"the torch model's outputs differ from the ONNX model's by up to {diff:.3g} on the "
                         "validation data: give the module (and weights) the ONNX model was exported from")
    return diff


def validation_score(module: nn.Module, work: Workload, select: str = "accuracy") -> float:
    """The workload's metric (what the search optimises), or ``select`` (``SELECT``), of the module's outputs on
    the validation split."""
    from harness.quant.evaluate import output_names

    assert work.eval_data is not None
    out = outputs_on(module, work, work.eval_data.inputs)
    value = work.score_outputs({output_names(work.model.proto)[0]: out})[select]
    if value is None:
        raise InputError(f"the workload's metric gives no {select} for this model: choose on accuracy")
    return float(value)


# -- training data ---------------------------------------------------------------------------------
#: Training sentences for builtin:minilm-l6 at most (the docstring pool beyond its shipped splits)
MINILM_TRAIN_MAX = 8192


def builtin_train_set(work: Workload) -> TrainSet:
    """A builtin's training split: digits-vit's (and digits-cnn's) 1129 training images (disjoint from calibration,
    validation and test, ``harness.builtin.digits_data.make_splits``); for minilm-l6, prose sentences of this
    Python's standard-library docstrings (``make_minilm_data.training_sentences``: every sentence, read with
    ``ast``) that none of its shipped splits holds (compared case-insensitively), without labels
    (distillation from the FP32 model)."""
    if work.model.builtin == "minilm-l6":
        return _minilm_train_set()
    if work.model.builtin not in ("digits-vit", "digits-cnn"):  # the two share their splits
        raise InputError(f"no training split ships with {_model_name(work)}: give --train DATA.npz")
    from harness.builtin.digits_data import make_splits

    splits = make_splits()
    return TrainSet.of({"pixels": splits.train_x}, splits.train_y,
                       f"builtin:{work.model.builtin} train split ({len(splits.train_y)} images)")


def _minilm_train_set() -> TrainSet:
    import random

    from harness.builtin import make_minilm_data, minilm

    shipped = json.loads((make_minilm_data.OUT_DIR / "sentences.json").read_text(encoding="utf-8"))
    taken = {(str(s["text"]) if isinstance(s, dict) else str(s)).lower() for part in shipped.values()
             if isinstance(part, list) for s in part}
    tokenizer = minilm.load_tokenizer()
    pool = [text for text in make_minilm_data.training_sentences() if text.lower() not in taken
            and len(tokenizer(text)["input_ids"]) <= minilm.MAX_LENGTH]
    random.Random(make_minilm_data.SEED + 1).shuffle(pool)
    pool = pool[:MINILM_TRAIN_MAX]
    if not pool:
        raise InputError("no standard-library sentence is left beside minilm-l6's shipped splits: give --train")
    arrays = make_minilm_data.tokenize(tokenizer, pool, minilm.MAX_LENGTH)
    return TrainSet.of(dict(arrays), None,
                       f"builtin:minilm-l6 standard-library docstring sentences outside its splits ({len(pool)})")


def load_train_set(path: str | Path, work: Workload) -> TrainSet:
    """``--train DATA.npz``: arrays named as the model's inputs, and ``labels`` (optional). Refuses the
    validation or test file itself (one line)."""
    from harness.quant.data import load_dataset

    data = load_dataset(path, work.model, work.options)
    for split, other in (("validation", work.eval_data), ("test", work.test_data)):
        if other is not None and other.sha256 == data.sha256:
            raise InputError(f"--train {path} is the {split} data: train on samples the {split} split does not hold")
    return TrainSet.of({k: v for k, v in data.inputs.items() if k not in data.constant}, data.labels, str(path))


# -- the loop --------------------------------------------------------------------------------------
def run_key(parent: str, genome: Genome, data: TrainSet, cfg: FinetuneConfig, model_sha: str) -> str:
    """What identifies a fine-tune (its checkpoint belongs to it alone)."""
    body = {"parent": parent, "genome": genome.hash, "data": data.sha256, "config": cfg.to_dict(), "model": model_sha}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _batch(step: int, n: int, size: int, seed: int) -> np.ndarray:
    """Indices of step ``step``'s batch: epoch e is a permutation seeded by (seed, e), cut in whole batches."""
    size = min(size, n)
    per_epoch = n // size
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[index * size:(index + 1) * size]


def finetune(
    work: Workload,
    base: nn.Module,
    genome: Genome,
    data: TrainSet,
    cfg: FinetuneConfig,
    checkpoint: Path,
    key: str,
    on_step: Callable[[int, int, float], None] | None = None,
) -> Outcome:
    """Fine-tune ``genome``'s fake-quantized copy of ``base`` (which is left untouched); see the module docstring."""
    import torch

    cfg.check()
    torch.set_num_threads(1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _loop(work, base, genome, data, cfg, checkpoint, key, on_step)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _loop(work: Workload, base: nn.Module, genome: Genome, data: TrainSet, cfg: FinetuneConfig, checkpoint: Path,
          key: str, on_step: Callable[[int, int, float], None] | None) -> Outcome:
    import copy

    import torch


    torch.manual_seed(cfg.seed)
    teacher = None if data.labels is not None else base
    module = copy.deepcopy(base)
    hidden = _Hidden(module, teacher, cfg.distill_modules)
    try:
        return _train(work, module, teacher, hidden, genome, data, cfg, checkpoint, key, on_step)
    finally:
        hidden.remove()


class _Hidden:
    """Forward hooks that keep the outputs of ``names`` in the student and the teacher (distillation of
    hidden states); removed when the fine-tune ends, so the caller's base module is left as it was."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, names: tuple[str, ...]) -> None:
        self.student: dict[str, Any] = {}
        self.teacher: dict[str, Any] = {}
        self.handles: list[Any] = []
        if teacher is None or not names:
            return
        for name in names:
            for model, store in ((student, self.student), (teacher, self.teacher)):
                try:
                    sub = model.get_submodule(name)
                except AttributeError:
                    self.remove()
                    raise InputError(f"distill module {name!r} is no module of the torch model: name one of its "
                                     "submodules, e.g. encoder.layer.0") from None
                self.handles.append(sub.register_forward_hook(
                    lambda _m, _i, out, n=name, st=store: st.__setitem__(n, out[0] if isinstance(out, tuple) else out)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def loss(self, mask: np.ndarray | None) -> Any:
        """Sum over the hooked modules of the relative squared error over the real tokens."""
        import torch

        total = torch.zeros(())
        for name, got in self.student.items():
            want = self.teacher[name].detach()
            err, ref = (got - want) ** 2, want**2
            if mask is not None and got.dim() == 3 and tuple(mask.shape) == tuple(got.shape[:2]):
                m = torch.from_numpy(np.ascontiguousarray(mask)).to(got.dtype).unsqueeze(-1)
                err, ref = err * m, ref * m
            total = total + err.sum() / ref.sum().clamp_min(1e-12)
        return total


def _train(work: Workload, module: nn.Module, teacher: nn.Module | None, hidden: _Hidden, genome: Genome,
           data: TrainSet, cfg: FinetuneConfig, checkpoint: Path, key: str,
           on_step: Callable[[int, int, float], None] | None) -> Outcome:
    import torch

    from harness.quant import fakequant

    samples = work.gptq_samples() if any(gene.rounding == "gptq" for gene in genome.genes.values()) else None
    attached = fakequant.attach(module, work.model, genome, work.ranges, lsq=cfg.lsq, samples=samples)
    fakequant.freeze_unmapped(module, work.model)
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    outcome = Outcome(module, attached, cfg.steps, 0, -math.inf, math.nan)
    best_state: dict[str, Any] | None = None
    start = 0
    if checkpoint.is_file():
        state = _read_checkpoint(checkpoint, key)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        outcome.curve = [list(map(float, r)) for r in state["curve"]]
        outcome.validation = [list(map(float, r)) for r in state["validation"]]
        outcome.parent_score = float(state["parent_score"])
        outcome.best_step, outcome.best_score = int(state["best_step"]), float(state["best_score"])
        best_state = state["best"] or None
        outcome.resumed_from = start
    else:
        module.eval()
        outcome.parent_score = validation_score(module, work, cfg.select)
        module.train()
    labels = None if data.labels is None else torch.from_numpy(data.labels.astype(np.int64))
    for step in range(start, cfg.steps):
        idx = _batch(step, data.n, cfg.batch_size, cfg.seed)
        feed = _trimmed({k: v[idx] for k, v in data.inputs.items()})
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps))
        out = _forward(module, work, feed)
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(out, labels[torch.from_numpy(idx)])
        else:
            assert teacher is not None
            with torch.no_grad():
                target = _forward(teacher, work, feed)
            loss = _distillation_loss(out, target, feed.get("attention_mask"))
            if hidden.handles:
                loss = loss + hidden.loss(feed.get("attention_mask"))
            if cfg.cosine_loss:
                loss = loss + _pooled_cosine_loss(out, target, feed.get("attention_mask"))
        if not torch.isfinite(loss):
            raise ModelError(f"the fine-tune's loss became {float(loss)} at step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        outcome.curve.append([float(done), float(loss.detach())])
        if done % cfg.eval_every == 0 or done == cfg.steps:
            module.eval()
            score = validation_score(module, work, cfg.select)
            module.train()
            outcome.validation.append([float(done), score])
            if score > outcome.best_score:
                outcome.best_step, outcome.best_score = done, score
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _write_checkpoint(checkpoint, key, done, module, optimizer, outcome, best_state)
        if on_step is not None:
            on_step(done, cfg.steps, float(loss.detach()))
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return outcome


def _trimmed(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A token batch cut after its longest real sequence: with an ``attention_mask`` input (padding at
    the end), the columns past the last real token of every sample are dropped from every input of the
    mask's shape. Padding is masked out of attention and of every metric, so the real tokens' outputs
    are the same (up to float rounding), and a batch of short sentences costs what its length does."""
    mask = feed.get("attention_mask")
    if mask is None or mask.ndim != 2 or not mask.any():
        return feed
    real = np.flatnonzero(mask.any(axis=0))
    keep = int(real[-1]) + 1
    if keep == mask.shape[1]:
        return feed
    return {k: np.ascontiguousarray(v[:, :keep]) if v.shape[:2] == mask.shape else v for k, v in feed.items()}


def _distillation_loss(out: Any, target: Any, mask: np.ndarray | None) -> Any:
    """Mean squared error to the FP32 outputs; token outputs ``[B, T, H]`` of a model with an
    ``attention_mask`` input count the real tokens only (padding is no part of any metric)."""
    import torch

    if mask is None or out.dim() != 3 or tuple(mask.shape) != tuple(out.shape[:2]):
        return torch.nn.functional.mse_loss(out, target)
    m = torch.from_numpy(np.ascontiguousarray(mask)).to(out.dtype).unsqueeze(-1)
    return ((out - target) ** 2 * m).sum() / (m.sum() * out.shape[-1]).clamp_min(1.0)


def _pooled_cosine_loss(out: Any, target: Any, mask: np.ndarray | None) -> Any:
    """1 - the mean cosine of the outputs mean-pooled over the real tokens (``metrics.mean_pool``'s pooling)."""
    import torch

    if out.dim() == 3:
        m = torch.ones(out.shape[:2], dtype=out.dtype) if mask is None else \
            torch.from_numpy(np.ascontiguousarray(mask)).to(out.dtype)
        w = m.unsqueeze(-1)
        count = w.sum(1).clamp_min(1.0)
        out, target = (out * w).sum(1) / count, (target * w).sum(1) / count
    cos = torch.nn.functional.cosine_similarity(out.reshape(len(out), -1), target.reshape(len(target), -1), dim=1)
    return (1.0 - cos).mean()


def _write_checkpoint(path: Path, key: str, step: int, module: nn.Module, optimizer: Any, outcome: Outcome,
                      best: dict[str, Any] | None) -> None:
    import torch

    body = {
        "format": CHECKPOINT_FORMAT, "key": key, "step": step, "model": module.state_dict(),
        "optimizer": optimizer.state_dict(), "curve": outcome.curve, "validation": outcome.validation,
        "parent_score": outcome.parent_score, "best_step": outcome.best_step, "best_score": outcome.best_score,
        "best": best or {},
    }
    with atomic_path(path) as tmp:
        torch.save(body, str(tmp))


def _read_checkpoint(path: Path, key: str) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(str(path), weights_only=True)
    except Exception as exc:  # a damaged file: say which, and how to start over
        raise InputError(f"checkpoint {path} cannot be read ({type(exc).__name__}): delete it to fine-tune from the "
                         "start") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint {path} is not a qae fine-tune checkpoint: delete it to fine-tune from the start")
    if state.get("key") != key:
        raise InputError(f"checkpoint {path} belongs to another fine-tune (parent, data or settings differ): delete it "
                         "or give the settings it was made with")
    return state
