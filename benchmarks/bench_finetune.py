"""Quantization-aware fine-tuning at the aggressive end of digits-vit's front (issue 19).

1. ``qae search`` (``run_search``) on builtin:digits-vit with emulated widths (2-6 bits), profile
   arm-neon-a76, choosing on the VALIDATION split: the post-training-quantization front. Its smallest
   points stay above 6.2x's bytes (the engine seeds 8- and 4-bit baselines; 2-bit layers are rare).
2. Parents: the ``PER_LEVEL`` search candidates at >= 6.2x with the best validation accuracy (if the
   search made any), and two genomes fixed before any data was looked at (``GIVEN``): 3 bits with 2-bit
   feed-forward layers (6.4x), and 2 bits everywhere (6.9x), all with 8-bit activations. They enter
   the run as ``qae finetune --genome`` puts them there (scored and predicted like search candidates).
   Compression = FP32's weight bytes over the candidate's (the search's size objective).
3. Each parent is fine-tuned (``harness.run.finetune.finetune_run``: digits-vit's 1129 training
   images, 300 steps, the best validation state kept), plain (STE, qae's scales) and with LSQ.
4. Only then the TEST split (270 images the search, the choice and the training never saw) scores
   the re-derived front, the parents and FP32 (``harness.run.testsplit``): top-1 with its exact 95 %
   binomial interval, and the paired difference to FP32 with its 95 % bootstrap interval.

"Done when" (issue 19): after fine-tuning, a front point at <= 1 point top-1 loss against FP32 on
test with >= 6.2x weight compression (PTQ reached 4.9x); stretch 8x. ``claims`` says for each level
whether such a point exists, judged on the test value itself and, more strictly, on the lower end
of the paired interval. 8x is out of reach of any genome: qae's size counts the parameters no layer
quantizes (biases, LayerNorms, the positional embedding) at 32 bits, and 2 bits everywhere is
``all_w2_compression``.

    python -m benchmarks.bench_finetune [--quick] [--generations N] [--population N] [--steps N]
    python -m benchmarks.bench_finetune --minilm [--steps N]    # results/bench/finetune_minilm.json

``--minilm`` (needs the minilm extra): a one-generation search on builtin:minilm-l6 (host-cpu) gives the
dynamic int8 baseline; ``MINILM_GIVEN`` (fixed before any data was looked at: 4-bit weight-only
MatMuls, 3-bit word embeddings, under half of dynamic int8's weight bytes) is fine-tuned by
distillation from the FP32 model on standard-library docstring sentences outside the shipped splits,
chosen on the 400 validation sentences; then the parent, the fine-tuned model and dynamic int8 are
scored once on the 400 test sentences (mean cosine of the pooled embeddings with FP32's, and top-1
retrieval agreement with its 95 % interval). Latency is not measured here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

LEVELS = (6.2, 8.0)
PER_LEVEL = 3
BUDGET_LEVEL = 6.2
FFN = [f"blocks.{i}.ffn.fc{j}" for i in (0, 1) for j in (1, 2)]
GIVEN = {
    "w3a8-ffn-w2": {"default": {"weight_bits": 3, "activation_bits": 8},
                    "layers": {n: {"weight_bits": 2} for n in FFN}},
    "w2a8": {"default": {"weight_bits": 2, "activation_bits": 8}},
}
MODEL = "builtin:digits-vit"
PROFILE = "arm-neon-a76"


def _points(archive: Any, objectives: list[str], fp32_bytes: float) -> list[dict[str, Any]]:
    from harness.run.testsplit import front_of

    front, _, _ = front_of(archive, PROFILE, objectives)
    scores = archive.test_scores()
    out = []
    for c in sorted(front, key=lambda c: c.values["size"].value):
        row = scores.get(c.hash) or {}
        vs = (row.get("vs") or {}).get("fp32") or {}
        out.append({
            "hash": c.hash, "parent": c.parent, "weight_bytes": c.values["size"].value,
            "compression": fp32_bytes / c.values["size"].value, "validation": c.values["accuracy"].value,
            "test": row.get("value"), "test_ci95": row.get("ci95"), "vs_fp32_test": vs.get("difference"),
            "vs_fp32_ci95": vs.get("ci95"), "verdict_vs_fp32": vs.get("verdict"),
        })
    return out


MINILM_GIVEN = {"default": {"weight_bits": 4, "activation_bits": "fp"},
                "layers": {"embeddings.word_embeddings": {"weight_bits": 3}}}


def minilm(steps: int) -> int:
    """The ``--minilm`` part (see the module docstring)."""
    import torch

    from harness.core.stats import SampleStats, interval
    from harness.quant.finetune import FinetuneConfig
    from harness.quant.tuned import build_tuned
    from harness.run.archive import Archive
    from harness.run.config import SearchConfig
    from harness.run.evaluation import open_workload
    from harness.run.finetune import Request, finetune_run
    from harness.run.search import run_search
    from harness.run.testsplit import baseline_hashes

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="qae-bench-finetune-minilm-") as tmp:
        run = Path(tmp) / "run"
        cfg = SearchConfig(model="builtin:minilm-l6", profiles=["host-cpu"], generations=1, population=4, seed=0)
        run_search(cfg, run, say=lambda m: None).close()
        genome_file = Path(tmp) / "given.json"
        genome_file.write_text(json.dumps(MINILM_GIVEN))
        settings = FinetuneConfig(steps=steps, batch_size=16, lr=1e-4, eval_every=50, checkpoint_every=50)
        t0 = time.perf_counter()
        (row,) = finetune_run(run, Request(genomes=(str(genome_file),)), settings, say=lambda m: None)
        seconds = time.perf_counter() - t0
        work = open_workload(cfg)
        archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
        try:
            cands = {c.hash: c for c in archive.candidates("host-cpu")}
            dynamic = baseline_hashes(archive, [layer.name for layer in work.model.layers])["w8-dynamic"]
            prov = archive.finetuned()[row["hash"]]
        finally:
            archive.close()
        models = {
            "dynamic_int8": work.build(work.genome(cands[dynamic].genome)),
            "given_ptq": work.build(work.genome(MINILM_GIVEN)),
            "finetuned": build_tuned(work, run / prov["model"], work.genome(MINILM_GIVEN), prov["model_sha256"]),
        }
        out: dict[str, Any] = {}
        for name, built in models.items():  # the test split, once, after every choice was made
            rep = work.evaluate(built, threads=1, split="test", with_stats=True)
            val = work.evaluate(built, threads=1)
            ci = interval(SampleStats.from_dict(rep.sample_stats)) if rep.sample_stats else None
            out[name] = {"weight_bytes": rep.weight_bytes, "test_mean_cosine": rep.mean_cosine,
                         "test_retrieval_agreement": rep.accuracy,
                         "test_retrieval_ci95": None if ci is None else [ci.lo, ci.hi],
                         "validation_mean_cosine": val.mean_cosine, "validation_retrieval_agreement": val.accuracy}
    base = out["dynamic_int8"]["weight_bytes"]
    for entry in out.values():
        entry["bytes_vs_dynamic_int8"] = entry["weight_bytes"] / base
    body = {"benchmark": "finetune_minilm", "genome": MINILM_GIVEN, "steps": steps, "seconds": seconds,
            "settings": settings.to_dict(), "training_data": prov["data"], "validation_curve": prov["validation_curve"],
            "best_step": prov["best_step"], "models": out,
            "claim_cosine_0.99_at_half_dynamic_bytes": bool(out["finetuned"]["test_mean_cosine"] >= 0.99
                                                            and out["finetuned"]["bytes_vs_dynamic_int8"] <= 0.5),
            "latency": "not measured here (no device run in this benchmark)"}
    path = common.write_result("finetune_minilm", body)
    print(f"wrote {path}")
    print(json.dumps(out, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minilm", action="store_true", help="the MiniLM part instead (needs the minilm extra)")
    ap.add_argument("--generations", type=int, default=12)
    ap.add_argument("--population", type=int, default=24)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--quick", action="store_true", help="small search and fine-tunes: checks the pipeline only")
    args = ap.parse_args(argv)
    if args.quick:
        args.generations, args.population, args.steps = 2, 8, 30
    if args.minilm:
        return minilm(args.steps if args.steps != 300 else 150)

    import torch

    from harness.quant.finetune import FinetuneConfig
    from harness.run.archive import Archive
    from harness.run.config import SearchConfig
    from harness.run.finetune import Request, finetune_run
    from harness.run.search import run_search

    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qae-bench-finetune-") as tmp:
        run = Path(tmp) / "run"
        from harness.quant.workload import Workload

        plain = Workload.open(MODEL)
        all_w2 = plain.evaluate(plain.build(plain.uniform(weight_bits=2, activation_bits="fp")), threads=1)
        cfg = SearchConfig(model=MODEL, profiles=[PROFILE], generations=args.generations, population=args.population,
                           seed=args.seed, emulated=True)
        run_search(cfg, run, say=lambda m: None).close()
        searched = time.perf_counter() - started
        archive = Archive.open_existing(run / "archive.sqlite")
        fp32_row = archive.test_scores()["fp32"]
        objectives = list(cfg.objectives)
        from harness.run.evaluation import open_workload

        work = open_workload(cfg)
        reference = work.evaluate(None, threads=1)
        fp32_bytes, fp32_val = float(reference.weight_bytes), reference.accuracy
        before = _points(archive, objectives, fp32_bytes)
        cands = [c for c in archive.candidates(PROFILE) if c.values and c.feasible is not False]
        parents: dict[str, float] = {}
        genome_files = []
        for name, body in GIVEN.items():
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(body))
            genome_files.append(str(path))
        pool = [c for c in cands if fp32_bytes / c.values["size"].value >= BUDGET_LEVEL]
        pool.sort(key=lambda c: (-c.values["accuracy"].value, c.values["size"].value))  # validation only
        for c in pool[:PER_LEVEL]:
            parents[c.hash] = BUDGET_LEVEL
        archive.close()
        runs = []
        for lsq in (False, True):
            settings = FinetuneConfig(steps=args.steps, lsq=lsq, seed=0)
            t0 = time.perf_counter()
            rows = finetune_run(run, Request(picks=tuple(parents), genomes=tuple(genome_files)), settings,
                                say=lambda m: None)
            runs.append({"lsq": lsq, "seconds": time.perf_counter() - t0, "children": rows})
        archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
        after = _points(archive, objectives, fp32_bytes)
        scores = archive.test_scores()
        tuned = archive.finetuned(PROFILE)
        children = []
        for h, prov in tuned.items():
            parent_row, row = scores.get(prov["parent"]) or {}, scores.get(h) or {}
            cand = next(c for c in archive.candidates(PROFILE) if c.hash == h)
            parent = next(c for c in archive.candidates(PROFILE) if c.hash == prov["parent"])
            children.append({
                "hash": h, "parent": prov["parent"], "lsq": prov["settings"]["lsq"], "best_step": prov["best_step"],
                "compression": fp32_bytes / cand.values["size"].value, "origin": parent.origin,
                "given_as": next((n for n, b in GIVEN.items() if parent.origin == "given"
                                  and Path(archive.added().get(parent.hash, {}).get("genome_file", "")).stem == n),
                                 None),
                "validation_parent": parent.values["accuracy"].value, "validation": cand.values["accuracy"].value,
                "test_parent": parent_row.get("value"), "test_parent_ci95": parent_row.get("ci95"),
                "test": row.get("value"), "test_ci95": row.get("ci95"),
                "on_front": any(p["hash"] == h for p in after),
            })
        archive.close()
    fp32_test = float(fp32_row["value"])
    claims = {}
    for level in LEVELS:
        def ok(p: dict[str, Any], level: float = level) -> bool:
            return p["compression"] >= level and p["test"] is not None and fp32_test - p["test"] <= 0.01

        hits = [p for p in after if ok(p)]
        strict = [p for p in hits if p["vs_fp32_ci95"] and -p["vs_fp32_ci95"][0] <= 0.01]
        ptq = [p for p in before if ok(p)]
        # the point a user would take, chosen on validation alone: the best validation accuracy at >= level
        at_level = [p for p in after if p["compression"] >= level]
        chosen = max(at_level, key=lambda p: (p["validation"], p["compression"]), default=None)
        claims[f"{level:g}x"] = {
            "chosen_on_validation": None if chosen is None else {
                "hash": chosen["hash"], "finetuned": chosen["parent"] is not None,
                "compression": chosen["compression"], "validation": chosen["validation"], "test": chosen["test"],
                "test_ci95": chosen["test_ci95"], "test_loss_vs_fp32": None if chosen["test"] is None
                else fp32_test - chosen["test"], "paired_difference_ci95": chosen["vs_fp32_ci95"],
                "verdict_vs_fp32": chosen["verdict_vs_fp32"], "within_1pt_on_test": ok(chosen)},
            "after_finetune": bool(hits), "points": [p["hash"] for p in hits],
            "strict (lower end of the paired 95 % interval within 1 point)": bool(strict),
            "ptq_front_before": bool(ptq),
        }
    body = {
        "benchmark": "finetune", "quick": args.quick, "model": MODEL, "profile": PROFILE,
        "search": {"generations": args.generations, "population": args.population, "seed": args.seed,
                   "emulated": True, "seconds": searched},
        "given_genomes": GIVEN,
        "all_w2_compression": fp32_bytes / all_w2.weight_bytes,
        "steps": args.steps, "fp32": {"weight_bytes": fp32_bytes, "validation": fp32_val, "test": fp32_test,
                                      "test_ci95": fp32_row.get("ci95")},
        "rules": "parents and fine-tuned states chosen on validation (270); test (270) scored once after; "
                 "compression = FP32 weight bytes / candidate weight bytes (nominal widths); 'after_finetune' "
                 "lists every front point at the level within 1 point on test (several looks at test: read "
                 "'chosen_on_validation', the one point a user would take without seeing test)",
        "ptq_front": before, "front_after": after, "children": children, "claims": claims, "runs": runs,
        "best_ptq_compression_within_1pt_test": max((p["compression"] for p in before
                                                     if p["test"] is not None and fp32_test - p["test"] <= 0.01),
                                                    default=None),
    }
    path = common.write_result("finetune", body)
    print(f"wrote {path}")
    for level, claim in claims.items():
        print(level, claim)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
