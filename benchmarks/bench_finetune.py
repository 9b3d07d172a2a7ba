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
    python -m benchmarks.bench_finetune --minilm [--steps N] [--workdir DIR] [--no-latency]
                                                       # results/bench/finetune_minilm.json

``--minilm`` (needs the minilm extra): a one-generation search on builtin:minilm-l6 (host-cpu) gives the
dynamic int8 baseline; ``MINILM_GIVEN`` (chosen on the validation split from post-training numbers before the
fine-tune, under half of dynamic int8's weight bytes; see its comment) is fine-tuned by distillation from the
FP32 model (``MINILM_SETTINGS``: every encoder block's output, the last hidden state and the pooled cosine) on
the standard library's docstring sentences outside the shipped splits, its state chosen on the 400 validation
sentences (by mean cosine, the claim's metric); then the parent, the fine-tuned model and dynamic int8 are
scored once on the 400 test sentences (mean cosine of the pooled embeddings with FP32's, with its bootstrap
95 % interval, and top-1 retrieval agreement with its exact 95 % interval). Latency: FP32, dynamic int8 and the
fine-tuned model measured in one run of the real agent (local transport), labelled measured, with the
machine's load average (``_minilm_latency``). ``--workdir`` keeps the run: a re-run reuses its fine-tune.
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


#: Chosen on the VALIDATION split before the fine-tune (post-training numbers measured 2026-12-02/03, not re-run by
#: this bench; ``MINILM_CHOICE`` carries them into the result): the word table (half of the parameters) at 3 bits
#: asymmetric per row with MSE clipping, as before; every MatMul 4-bit weight-only, asymmetric, GPTQ-rounded, one
#: scale and zero point per block of 64 along K, the feed-forward pair of blocks 0-4 per block of 32 (as many as fit
#: under half of dynamic int8's weight bytes); the position and token-type tables 8-bit. The block-wise QDQ MatMuls
#: run as MatMulNBits (ONNX Runtime fuses them, int8 input blocks). The fine-tune starts from GPTQ's weights and grid.
_GPTQ_B64: dict[str, Any] = {"weight_bits": 4, "activation_bits": "fp", "granularity": "per_block", "block_size": 64,
                             "scheme": "asymmetric", "rounding": "gptq"}
_MATMULS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")
MINILM_GIVEN: dict[str, Any] = {
    "default": {"weight_bits": "fp"},
    "layers": {
        "embeddings.word_embeddings": {"weight_bits": 3, "scheme": "asymmetric", "rounding": "mse"},
        "embeddings.position_embeddings": {"weight_bits": 8},
        "embeddings.token_type_embeddings": {"weight_bits": 8},
        **{f"encoder.layer.{i}.{name}": {**_GPTQ_B64, "block_size": 32 if i < 5 and "dense" in name
                                          and "attention" not in name else 64}
           for i in range(6) for name in _MATMULS},
    },
}
MINILM_CHOICE = ("chosen on validation before the fine-tune (post-training mean cosine, measured 2026-12-02, not "
                 "re-run here). The word table: 3-bit asymmetric + MSE clipping 0.9909 alone (RTN 0.9790, "
                 "symmetric 0.9523, 4-bit 0.9977 but 1.47 MB more); HQQ in its place 0.9720 against MSE's 0.9729 "
                 "(with symmetric block-64 GPTQ MatMuls). The 36 MatMuls, 4-bit weight-only, word table float: RTN + "
                 "MSE per channel 0.9525, GPTQ per channel 0.9708, GPTQ per block of 64 (symmetric) 0.9824. With the "
                 "3-bit word table: GPTQ per channel 0.9622 (0.451x dynamic int8's bytes), per block of 128 "
                 "symmetric 0.9686, asymmetric 0.9751 (0.464x), per block of 64 symmetric 0.9729 (0.476x), "
                 "asymmetric 0.9778 (0.480x), per block of 32 symmetric 0.9764 (0.506x: over), query/key/output "
                 "per block of 64 and value/feed-forward per block of 32 symmetric 0.9758 (0.498x), the word table "
                 "4-bit with query/key/output at 3 bits 0.9582 (0.525x: over); this genome (asymmetric, block 64, "
                 "the feed-forward pair of blocks 0-4 block 32) 0.9794 at 0.498x. The earlier genome (RTN + MSE "
                 "per channel, value projections and block 0's feed-forward 8-bit dynamic) 0.9578 at 0.497x")
#: Distillation from the FP32 model on every block's output as well as the last hidden state, plus the pooled
#: cosine (the metric's own). A first try with the last hidden state alone at lr 2e-4 (2000 steps planned) moved
#: the validation cosine from 0.958 to 0.960 in 400 steps and was stopped. The stored run (``--lr 1e-5``, chosen
#: over 1e-4 and 3e-5) gains +0.0035 in its first 100 steps and then stays at 0.9823-0.9830 to step 1600. With
#: ``--lsq`` (learned row and block scales, lr 1e-5; 2026-12-05, 600 steps planned, stopped at 300) validation
#: read 0.9730, 0.9714 and 0.9765 at steps 100-300, below the parent's 0.9794: learning the scales undoes GPTQ's
#: grid faster than training wins it back. The other byte split (the word table 4-bit, every MatMul 4-bit GPTQ per
#: channel) is 0.516x dynamic int8's bytes, over the bar's half, at a post-training 0.9679.
MINILM_SETTINGS: dict[str, Any] = {"batch_size": 16, "lr": 1e-4, "eval_every": 100, "checkpoint_every": 100,
                                   "distill_modules": tuple(f"encoder.layer.{i}" for i in range(6)),
                                   "cosine_loss": True, "select": "mean_cosine"}


def _pooled_cosines(work: Any, proto: Any, split: str) -> Any:
    """Per-sentence cosine of the model's mean-pooled embedding with FP32's on ``split`` (the metric's
    ``mean_cosine``, one value per sample, so it gets an interval)."""
    import numpy as np

    from harness.quant import metrics
    from harness.quant.evaluate import output_names, run_all, session

    data = work.test_data if split == "test" else work.eval_data
    name = output_names(work.model.proto)[0]
    mask = data.inputs.get("attention_mask")
    got = metrics.mean_pool(run_all(session(proto, 1), data, [name])[name], mask)
    ref = metrics.mean_pool(run_all(session(work.model.proto, 1), data, [name])[name], mask)
    dot = (got * ref).sum(1)
    return dot / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-30)


def _cosine_interval(cos: Any) -> dict[str, Any]:
    from harness.core.stats import SampleStats, interval

    ci = interval(SampleStats("mean", {"cosine": cos.reshape(-1, 1).astype(float)}))
    return {"value": ci.value, "ci95": [ci.lo, ci.hi], "method": ci.method}


def _minilm_train(work_dir: Path, steps: int, lr: float | None = None,
                  lsq: bool = False) -> tuple[Path, dict[str, Any], float]:
    """Search (one generation: the dynamic int8 baseline), then the fine-tune of ``MINILM_GIVEN``; a work
    folder that holds this fine-tune already (same genome and settings) is reused, so a re-run redoes only
    the scoring and the latency (``--workdir``)."""
    from harness.quant.finetune import FinetuneConfig
    from harness.run.archive import Archive
    from harness.run.config import SearchConfig
    from harness.run.finetune import Request, finetune_run
    from harness.run.search import run_search

    run = work_dir / "run"
    settings = FinetuneConfig(steps=steps, **{**MINILM_SETTINGS, **({} if lr is None else {"lr": lr}),
                                             **({"lsq": True} if lsq else {})})
    if not (run / "archive.sqlite").is_file():
        cfg = SearchConfig(model="builtin:minilm-l6", profiles=["host-cpu"], generations=1, population=4, seed=0)
        run_search(cfg, run, say=lambda m: None).close()
    archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
    try:
        done = [p for p in archive.finetuned().values() if p["settings"] == settings.to_dict()]
    finally:
        archive.close()
    if done:
        return run, done[-1], float(json.loads((work_dir / "finetune_seconds.json").read_text())["seconds"])
    genome_file = work_dir / "given.json"
    genome_file.write_text(json.dumps(MINILM_GIVEN))
    t0 = time.perf_counter()
    (row,) = finetune_run(run, Request(genomes=(str(genome_file),)), settings,
                          say=lambda m: print(m, flush=True),
                          on_step=lambda h, s, n, loss: print(f"step {s}/{n} loss {loss:.5f}", flush=True)
                          if s % 50 == 0 else None)
    seconds = time.perf_counter() - t0
    (work_dir / "finetune_seconds.json").write_text(json.dumps({"seconds": seconds}))
    archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
    try:
        prov = archive.finetuned()[row["hash"]]
    finally:
        archive.close()
    return run, prov, seconds


def minilm(steps: int, work_dir: Path | None, latency: bool, lr: float | None = None, lsq: bool = False) -> int:
    """The ``--minilm`` part (see the module docstring)."""
    import torch

    torch.set_num_threads(1)
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="qae-bench-finetune-minilm-") as tmp:
            return _minilm(steps, Path(tmp), latency, lr, lsq)
    work_dir.mkdir(parents=True, exist_ok=True)
    return _minilm(steps, work_dir, latency, lr, lsq)


def _minilm(steps: int, work_dir: Path, latency: bool, lr: float | None = None, lsq: bool = False) -> int:
    from harness.core.stats import SampleStats, interval
    from harness.quant.tuned import build_tuned
    from harness.run.archive import Archive
    from harness.run.config import SearchConfig
    from harness.run.evaluation import open_workload
    from harness.run.testsplit import baseline_hashes

    run, prov, seconds = _minilm_train(work_dir, steps, lr, lsq)
    cfg = SearchConfig.from_dict(Archive.open_existing(run / "archive.sqlite", readonly=True).config())
    work = open_workload(cfg)
    archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
    try:
        cands = {c.hash: c for c in archive.candidates("host-cpu")}
        dynamic = baseline_hashes(archive, [layer.name for layer in work.model.layers])["w8-dynamic"]
    finally:
        archive.close()
    genome = work.genome(MINILM_GIVEN)
    models = {
        "dynamic_int8": work.build(work.genome(cands[dynamic].genome)),
        "given_ptq": work.build(genome),
        "finetuned": build_tuned(work, run / prov["model"], genome, prov["model_sha256"]),
    }
    out: dict[str, Any] = {}
    for name, built in models.items():  # the test split, once, after every choice was made
        rep = work.evaluate(built, threads=1, split="test", with_stats=True)
        val = work.evaluate(built, threads=1)
        ci = interval(SampleStats.from_dict(rep.sample_stats)) if rep.sample_stats else None
        out[name] = {"weight_bytes": rep.weight_bytes, "test_mean_cosine": rep.mean_cosine,
                     "test_mean_cosine_ci95": _cosine_interval(_pooled_cosines(work, built.proto, "test"))["ci95"],
                     "test_retrieval_agreement": rep.accuracy,
                     "test_retrieval_ci95": None if ci is None else [ci.lo, ci.hi],
                     "validation_mean_cosine": val.mean_cosine,
                     "validation_mean_cosine_ci95": _cosine_interval(_pooled_cosines(work, built.proto,
                                                                                      "validation"))["ci95"],
                     "validation_retrieval_agreement": val.accuracy}
    base = out["dynamic_int8"]["weight_bytes"]
    for entry in out.values():
        entry["bytes_vs_dynamic_int8"] = entry["weight_bytes"] / base
    tuned = out["finetuned"]
    body: dict[str, Any] = {
        "benchmark": "finetune_minilm", "genome": MINILM_GIVEN, "genome_choice": MINILM_CHOICE, "steps": steps,
        "seconds": seconds,
        "settings": prov["settings"], "training_data": prov["data"], "validation_curve": prov["validation_curve"],
        "best_step": prov["best_step"], "models": out,
        "rules": "genome chosen on validation from post-training numbers before the fine-tune; the fine-tuned "
                 f"state chosen on validation ({prov['settings'].get('select', 'accuracy')}, every 100 steps); test "
                 "(400 sentences) scored "
                 "once after; bytes = qae's weight bytes (nominal widths, scales and zero points as stored)",
        "claim_cosine_0.99_at_half_dynamic_bytes": bool(tuned["test_mean_cosine"] >= 0.99
                                                        and tuned["bytes_vs_dynamic_int8"] <= 0.5),
        "claim_strict_lower_ci95_at_0.99": bool(tuned["test_mean_cosine_ci95"][0] >= 0.99
                                                and tuned["bytes_vs_dynamic_int8"] <= 0.5),
    }
    body["latency"] = _minilm_latency(work, models) if latency else "not measured (--no-latency)"
    path = common.write_result("finetune_minilm", body)
    print(f"wrote {path}")
    print(json.dumps(out, indent=1))
    return 0


#: Models timed beside the fine-tuned one (the post-training parent has its graph and kernels: not timed again)
MINILM_TIMED = ("fp32", "dynamic_int8", "finetuned")
#: A 1-minute load average above this (2 cores, the agent's child uses one) means other work shared the machine
BUSY_LOAD = 1.2


def _minilm_latency(work: Any, models: dict[str, Any]) -> dict[str, Any]:
    """Measured latency (batch 1 x 64 tokens, one thread) of FP32, dynamic int8 and the fine-tuned model in
    one run of the real agent over the local transport: ``bench_headline.measure_all`` (passes in alternating
    orders, a fresh child per model and pass, p50 of all timed runs with the 95 % interval of the median),
    and the fine-tuned model against each other with ``bench_headline.latency_versus``. The load average
    before and after is recorded: above ``BUSY_LOAD`` the machine was busy with other work."""
    import os

    import onnx

    from benchmarks import bench_headline as hl
    from harness.quant.quantize import save_model

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qae-bench-finetune-latency-") as tmp:
        root = Path(tmp)
        paths = {}
        for name in MINILM_TIMED:
            path = root / f"{name}.onnx"
            if name == "fp32":
                onnx.save(work.model.proto, str(path))
            else:
                save_model(models[name], path)
            paths[name] = path
        t0 = time.perf_counter()
        lat = hl.measure_all(paths, root)
        seconds = time.perf_counter() - t0
    load_after = os.getloadavg()
    busy = max(load_before[0], load_after[0]) > BUSY_LOAD
    versus = {f"finetuned_vs_{b}": hl.latency_versus(lat["finetuned"], lat[b], b.replace("_", " "))
              for b in ("dynamic_int8", "fp32")}
    versus["dynamic_int8_vs_fp32"] = hl.latency_versus(lat["dynamic_int8"], lat["fp32"], "fp32")
    return {
        "source": "measured", "transport": "local (device_agents/agent.py, a fresh child per model and pass)",
        "settings": {**{k: v for k, v in vars(hl.SETTINGS).items() if k != "genome"}, "passes": hl.PASSES,
                     "input": f"batch 1 x {hl.TOKENS} tokens"},
        "models": lat, "versus": versus, "seconds": seconds,
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "machine": "busy machine (other work ran during the measurement)" if busy else "quiet machine",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minilm", action="store_true", help="the MiniLM part instead (needs the minilm extra)")
    ap.add_argument("--generations", type=int, default=12)
    ap.add_argument("--population", type=int, default=24)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--quick", action="store_true", help="small search and fine-tunes: checks the pipeline only")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="--minilm: keep the run here; a re-run reuses its fine-tune and redoes scoring and latency")
    ap.add_argument("--no-latency", action="store_true", help="--minilm: skip the latency measurement")
    ap.add_argument("--lr", type=float, default=None,
                    help=f"--minilm: the learning rate (default {MINILM_SETTINGS['lr']})")
    ap.add_argument("--lsq", action="store_true",
                    help="--minilm: learned step sizes too (per row of the word table, per block of the MatMuls)")
    args = ap.parse_args(argv)
    if args.quick:
        args.generations, args.population, args.steps = 2, 8, 30
    if args.minilm:
        return minilm(args.steps if args.steps != 300 else 1200, args.workdir, not args.no_latency, args.lr, args.lsq)

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
