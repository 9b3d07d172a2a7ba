"""``qae finetune`` and ``qae search --finetune-front K``: fine-tune chosen front points of a run and
enter the results in its archive as new candidates.

Per parent (a candidate of the run, by hash): the float torch model (``harness.quant.finetune``),
the genome's fake quantization, a fine-tune on the training split chosen on the validation split,
then the artifact (``harness.quant.tuned``: the trained float model and learned scales under
``RUN/finetuned/<parent>-<key>/``), built by qae's quantizer and scored on the validation split like
any candidate (its checkpoint, ``RUN/finetune/<parent>-<key>.pt``, goes once the candidate is
recorded). It enters every target of the archive that holds its parent, as a candidate with its
own hash (parent hash and the trained weights' digest), the parent's genome, no engine record, and
provenance ``finetuned`` (parent, steps, data, seed, settings, loss curve, validation scores). Its
accuracy and size are computed; latency, energy and memory are the parent's predictions (the cost
model predicts from the genome, which is the same), labelled as taken from the parent. The front is
derived from the archive, so the next report has it; the test split is scored only by
``harness.run.testsplit`` after the choice, as for every point.

Parents: ``--pick HASH`` (a unique prefix of a candidate's hash), ``--genome FILE`` (a user's genome:
it enters the run first as a candidate of kind ``given``, built, scored on validation and predicted
by each profile target like a search candidate, so the gain over it is told like any other), or
``--front K``: the K smallest front points (weight bytes) of the first target whose validation
accuracy is within ``max_loss`` of FP32's, fine-tuned ones and those with a fine-tuned child left
out: where rounding costs accuracy and a fine-tune can give it back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import InputError
from harness.quant.workload import Workload
from harness.run.archive import Archive, Candidate, Value
from harness.run.config import SearchConfig
from harness.run.evaluation import Target, evaluation_of, host_values, open_workload
from harness.run.testsplit import front_of, score_test

COST_OBJECTIVES = ("latency", "energy", "memory")


@dataclass(frozen=True)
class Request:
    """What to fine-tune and how: ``picks`` (hash prefixes) or ``front`` (K), and the settings."""

    picks: tuple[str, ...] = ()
    front: int | None = None
    #: genome files to fine-tune: each enters the run first as a candidate of kind ``given``
    genomes: tuple[str, ...] = ()
    max_loss: float = 0.05
    torch: str | None = None
    train: str | None = None


def choose_parents(archive: Archive, cfg: SearchConfig, fp32: float, request: Request,
                   given: tuple[str, ...] = ()) -> list[Candidate]:
    """The candidates to fine-tune (see the module docstring; ``given``: the hashes of the ``--genome``
    candidates); a one-line error when none fits."""
    targets = archive.targets()
    if not targets:
        raise InputError(f"{archive.path.parent} has no evaluated candidate: run the search first")
    every = {c.hash: c for t in targets for c in archive.candidates(t) if c.values}
    if request.picks or request.genomes:
        out = [every[h] for h in given]
        for pick in request.picks:
            found = [c for h, c in every.items() if h.startswith(pick)]
            if len(found) != 1:
                raise InputError(f"--pick {pick!r} matches {len(found)} candidates: give a longer hash from "
                                 "front.json or the report")
            out.append(found[0])
        return out
    assert request.front is not None
    if request.front < 1:
        raise InputError(f"--front {request.front} is not a positive number of points: e.g. --front 3")
    tuned_parents = {row["parent"] for row in archive.finetuned().values()}
    front, _, _ = front_of(archive, targets[0], list(cfg.objectives))
    pool = [c for c in front if c.parent is None and c.hash not in tuned_parents
            and fp32 - c.values["accuracy"].value <= request.max_loss]
    if not pool:
        raise InputError(f"no front point of {targets[0]} is within {request.max_loss:g} of FP32's validation "
                         "accuracy and not fine-tuned yet: raise --max-loss, or --pick a candidate")
    return sorted(pool, key=lambda c: c.values["size"].value)[: request.front]


def finetune_run(
    run: Path,
    request: Request,
    settings: Any,
    say: Callable[[str], None] = print,
    on_step: Callable[[str, int, int, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune the requested parents of the run in ``run`` (``settings``: a ``FinetuneConfig``);
    returns one summary per parent. The caller holds the run folder's lock."""
    from harness.quant import finetune as ft

    ft.require_torch()
    settings.check()
    archive = Archive.open_existing(run / "archive.sqlite")
    try:
        cfg = SearchConfig.from_dict(archive.config())
        from harness.quant.litert_workload import wants_litert

        if wants_litert(cfg.model, cfg.runtime):
            raise InputError(f"{run} is a LiteRT run: fine-tuning builds ONNX models (fake quantization exported "
                             "through qae's ONNX path); search the ONNX model to fine-tune its front")
        work = open_workload(cfg)
        fp32 = work.evaluate(None, threads=1).accuracy
        given = tuple(add_given(archive, work, cfg, fp32, work.load_genome(path), path) for path in request.genomes)
        parents = choose_parents(archive, cfg, fp32, request, given)
        data = ft.load_train_set(request.train, work) if request.train else ft.builtin_train_set(work)
        base = ft.torch_model(work, request.torch)
        ft.check_float(base, work)
        from harness.quant.fakequant import unmapped

        frozen = unmapped(base, work.model)
        if frozen:
            say(f"note: {len(frozen)} torch parameters have no initializer of their name in the ONNX model (e.g. "
                f"{frozen[0]}): they are not trained")
        out = []
        for parent in parents:
            say(f"fine-tuning {parent.hash[:12]} ({settings.steps} steps on {data.source}, seed {settings.seed}"
                f"{', LSQ' if settings.lsq else ''})")
            out.append(_one(run, archive, work, cfg, fp32, parent, base, data, settings, request.torch, on_step))
            row = out[-1]
            say(f"{parent.hash[:12]} -> {row['hash'][:12]}: validation {row['parent_validation']:.4f} -> "
                f"{row['validation']:.4f} (fine-tune's best at step {row['best_step']})")
        # the choice is made (on validation): now, and only now, the new front is scored on test
        if work.test_data is not None:
            score_test(work, archive, cfg, work.evaluate(None, threads=1), say)
        return out
    finally:
        archive.close()


def _one(run: Path, archive: Archive, work: Workload, cfg: SearchConfig, fp32: float, parent: Candidate, base: Any,
         data: Any, settings: Any, torch_spec: str | None,
         on_step: Callable[[str, int, int, float], None] | None) -> dict[str, Any]:
    from harness.quant import fakequant
    from harness.quant import finetune as ft
    from harness.quant.tuned import build_tuned, write_artifact

    genome = work.genome(parent.genome)
    key = ft.run_key(parent.hash, genome, data, settings, work.model.sha256)
    folder = run / "finetuned" / f"{parent.hash[:16]}-{key}"
    step_cb = None if on_step is None else (lambda s, n, loss: on_step(parent.hash, s, n, loss))
    checkpoint = run / "finetune" / f"{parent.hash[:16]}-{key}.pt"
    outcome = ft.finetune(work, base, genome, data, settings, checkpoint, key, step_cb)
    digest = fakequant.weights_digest(fakequant.trained_state(outcome.module))
    sha = write_artifact(folder, fakequant.torch_to_onnx(outcome.module, work.model),
                         outcome.attached.learned_scales(work.model))
    built = build_tuned(work, folder, genome, sha)
    report = work.evaluate(built, threads=1)
    new_hash = hashlib.sha256(f"{parent.hash}:finetuned:{digest}".encode()).hexdigest()[:16]
    provenance = {
        "kind": "finetuned", "parent": parent.hash, "steps": settings.steps, "best_step": outcome.best_step,
        "seed": settings.seed, "settings": settings.to_dict(), "data": {"source": data.source, "sha256": data.sha256,
                                                                        "n": data.n, "labels": data.labels is not None},
        "loss_curve": outcome.curve, "validation_curve": outcome.validation,
        "parent_validation_fake_quant": outcome.parent_score, "torch": torch_spec or "builtin",
        "model": str(folder.relative_to(run)), "model_sha256": sha, "weights_sha256": digest,
        "resumed_from": outcome.resumed_from, "key": key,
    }
    values = {k: Value(v.value, v.source, {**v.detail, "finetuned_from": parent.hash})
              for k, v in host_values(report.to_dict()).items()}
    for target in archive.targets():
        mine = {c.hash: c for c in archive.candidates(target)}
        if parent.hash not in mine:
            continue
        costs = {}
        for name in COST_OBJECTIVES:
            v = archive.latest_value(target, parent.hash, name, "predicted")
            if v is not None:
                costs[name] = Value(v.value, "predicted", {**v.detail, "from_parent": parent.hash,
                                                           "why": "the cost model predicts from the genome alone"})
        feasible, violation = _feasibility(work, cfg, target, {**values, **costs}, fp32, mine[parent.hash])
        archive.add_candidate(target, new_hash, parent.genome, "finetuned", parent.hash, bool(report.emulated),
                              feasible, violation, {**values, **costs}, provenance)
    # recorded: the checkpoint (weights, optimizer state, best state: hundreds of MB for MiniLM) has done its job
    checkpoint.unlink(missing_ok=True)
    return {"hash": new_hash, "parent": parent.hash, "validation": report.accuracy,
            "parent_validation": parent.values["accuracy"].value, "best_step": outcome.best_step,
            "size": report.weight_bytes, "model": provenance["model"]}


def add_given(archive: Archive, work: Workload, cfg: SearchConfig, fp32: float, genome: Any, source: str) -> str:
    """Enter a user's genome in every target of the run, built and scored like a search candidate (kind
    ``given``: accuracy and size computed on validation, costs predicted by each profile target's cost
    model); returns its hash. A genome the run holds already is left as it is."""
    from harness.run.evaluation import prediction_values

    held = {c.hash for t in archive.targets() for c in archive.candidates(t)}
    if genome.hash in held:
        return str(genome.hash)
    report = work.evaluate(work.build(genome), threads=1)
    values = host_values(report.to_dict())
    for target in archive.targets():
        try:
            opened = Target.open(target, work, cfg.budgets)
        except Exception:  # a device group's name is no profile: no prediction to make here
            costs, feasible, violation = {}, None, None
        else:
            costs = prediction_values(genome, opened.table)
            _, total = evaluation_of({**values, **costs}, fp32, cfg.objectives, opened.budgets)
            feasible, violation = total <= 0, total
        archive.add_candidate(target, genome.hash, genome.to_dict(), "given", None, genome.emulated, feasible,
                              violation, {**values, **costs}, {"genome_file": str(source)})
    return str(genome.hash)


def _feasibility(work: Workload, cfg: SearchConfig, target: str, values: dict[str, Value], fp32: float,
                 parent: Candidate) -> tuple[bool | None, float | None]:
    """Budget feasibility under the target's budgets (a profile target), else the parent's."""
    if not all(name in values for name in cfg.objectives):
        return parent.feasible, parent.violation
    try:
        budgets = Target.open(target, work, cfg.budgets).budgets
    except Exception:  # a device group's name is no profile: its parent's feasibility stands
        return parent.feasible, parent.violation
    _, violation = evaluation_of(values, fp32, cfg.objectives, budgets)
    return violation <= 0, violation
