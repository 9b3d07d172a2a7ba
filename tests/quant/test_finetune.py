"""The fine-tune loop on builtin:digits-vit: it recovers accuracy at 3 bits, it is deterministic per seed,
and a killed fine-tune resumed from its checkpoint ends with the weights of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harness.core.errors import InputError  # noqa: E402
from harness.quant import fakequant  # noqa: E402
from harness.quant.finetune import (  # noqa: E402
    FinetuneConfig,
    builtin_train_set,
    finetune,
    torch_model,
)


@pytest.fixture(scope="module")
def setup(digits_workload):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    genome = digits_workload.genome({"default": {"weight_bits": 3, "activation_bits": 8}})
    return torch_model(digits_workload), genome, builtin_train_set(digits_workload)


def test_short_finetune_at_w3_improves_validation(digits_workload, setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, genome, data = setup
    out = finetune(digits_workload, base, genome, data, FinetuneConfig(steps=60, eval_every=30, seed=1),
                   tmp_path / "ck.pt", "key")
    assert out.best_score > out.parent_score
    # the parent's score is the QDQ model's own: the fake quantization is the genome
    parent = digits_workload.evaluate(digits_workload.build(genome)).accuracy
    assert out.parent_score == pytest.approx(parent, abs=1 / 270 + 1e-9)
    assert out.curve[-1][1] < out.curve[0][1]
    # never trained on validation or test: the training images are none of theirs
    train = {x.tobytes() for x in data.inputs["pixels"]}
    assert not train & {x.tobytes() for x in digits_workload.eval_data.inputs["pixels"]}
    assert not train & {x.tobytes() for x in digits_workload.test_data.inputs["pixels"]}


def _weights(out) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return fakequant.trained_state(out.module)


def test_kill_and_resume_gives_the_uninterrupted_weights(digits_workload, setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, genome, data = setup
    cfg = FinetuneConfig(steps=20, checkpoint_every=5, eval_every=10, seed=3, lsq=True)
    whole = finetune(digits_workload, base, genome, data, cfg, tmp_path / "whole.pt", "k")

    class Killed(KeyboardInterrupt):
        pass

    def kill_at_13(step: int, steps: int, loss: float) -> None:
        if step == 13:
            raise Killed

    with pytest.raises(Killed):
        finetune(digits_workload, base, genome, data, cfg, tmp_path / "cut.pt", "k", on_step=kill_at_13)
    resumed = finetune(digits_workload, base, genome, data, cfg, tmp_path / "cut.pt", "k")
    assert resumed.resumed_from == 10  # the last checkpoint before the kill
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.curve == whole.curve and resumed.validation == whole.validation
    assert whole.attached.learned_scales(digits_workload.model)  # LSQ scales travel in the checkpoint too
    # and a different seed is a different fine-tune
    other = finetune(digits_workload, base, genome, data, FinetuneConfig(steps=5, seed=4, lsq=True),
                     tmp_path / "other.pt", "k2")
    assert not all(np.array_equal(a[k], v) for k, v in _weights(other).items())


def test_a_checkpoint_of_another_finetune_is_refused(digits_workload, setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, genome, data = setup
    finetune(digits_workload, base, genome, data, FinetuneConfig(steps=2), tmp_path / "ck.pt", "one")
    with pytest.raises(InputError, match="another fine-tune"):
        finetune(digits_workload, base, genome, data, FinetuneConfig(steps=2), tmp_path / "ck.pt", "two")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        finetune(digits_workload, base, genome, data, FinetuneConfig(steps=2), tmp_path / "bad.pt", "one")


def test_distillation_of_hidden_states_and_pooled_cosine(digits_workload, setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Without labels the student learns the FP32 model; ``distill_modules`` adds those modules' outputs
    and ``cosine_loss`` the pooled cosine: both add to the loss, the base module keeps no hook, a module
    the model lacks is a one-line error, and the options stay out of the settings (and key) when unused."""
    from harness.quant.finetune import TrainSet

    base, genome, data = setup
    unlabelled = TrainSet.of({"pixels": data.inputs["pixels"][:64]}, None, "digits without labels")
    plain = FinetuneConfig(steps=2, batch_size=16, seed=5)
    rich = FinetuneConfig(steps=2, batch_size=16, seed=5, distill_modules=("blocks.0", "blocks.1"), cosine_loss=True)
    assert "distill_modules" not in plain.to_dict() and rich.to_dict()["distill_modules"] == ["blocks.0", "blocks.1"]
    a = finetune(digits_workload, base, genome, unlabelled, plain, tmp_path / "a.pt", "a")
    b = finetune(digits_workload, base, genome, unlabelled, rich, tmp_path / "b.pt", "b")
    assert b.curve[0][1] > a.curve[0][1] > 0  # same first batch and weights: the extra terms add
    assert not any(m._forward_hooks for m in base.modules())
    with pytest.raises(InputError, match="no module") as err:
        finetune(digits_workload, base, genome, unlabelled, FinetuneConfig(steps=1, distill_modules=("nope",)),
                 tmp_path / "c.pt", "c")
    assert "\n" not in str(err.value)
    assert not any(m._forward_hooks for m in base.modules())


def test_the_state_can_be_chosen_on_mean_cosine(digits_workload, setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, genome, data = setup
    with pytest.raises(InputError, match="select-on"):
        FinetuneConfig(select="loss").check()
    cfg = FinetuneConfig(steps=2, eval_every=1, seed=2, select="mean_cosine")
    assert cfg.to_dict()["select"] == "mean_cosine" and "select" not in FinetuneConfig().to_dict()
    out = finetune(digits_workload, base, genome, data, cfg, tmp_path / "ck.pt", "cos")
    parent = digits_workload.evaluate(digits_workload.build(genome)).mean_cosine
    assert out.parent_score == pytest.approx(parent, abs=1e-3)
    assert out.best_score == max(score for _, score in out.validation)
