"""Calibrate ``host-cpu`` on this machine (local transport, per-op profiles on) and report held-out error.

Run: ``python -m benchmarks.bench_costmodel [--quick] [--fresh] [--no-minilm] [--offline]``. The suite is
``qae calibrate``'s (micro-benchmarks, block kernels, whole candidates of digits-vit, a MiniLM-sized
transformer and digits-cnn, some held out) plus, held out, the measured front points of the MiniLM
headline run (results/bench/headline.json: real MiniLM-L6 candidates at 64 tokens). Prints, per
workload, the share of held-out predictions within +-10 % (nn-Meter's metric), the MAPE and the
Kendall tau of predicted against measured latency; the per-layer error by op type; the fidelity
reached when only 10, 20 or 40 of the calibration models are fitted (random draws, held-out set
unchanged); and the same calibration fitted on whole-model latencies only (the ablation of the
per-layer times). Writes results/bench/costmodel.json; measurements are kept in
results/bench/calibration/ and reused by a re-run (``--fresh`` discards them; ``--offline`` fits them
again and measures nothing, so a change to the fit or to how profiles are split into layers is judged
on the same measurements; the result says when they were taken). Also times the population path of
the cost model (100 genomes) as a rate, not as a pass/fail.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.atomic import atomic_write_text
from harness.core.genome import Gene, Genome
from harness.core.model import load_model
from harness.run.calibrate import Item, default_suite, run
from profiles.costmodel import CostTable, GraphStats
from profiles.fit import errors, fit, layer_errors, summarize
from profiles.schema import load_profile

OUT = Path("results/bench")
MINILM = "builtin:minilm-l6"
#: calibration-set sizes of the few-shot curve, and random draws per size
CURVE_SIZES = (10, 20, 40)
CURVE_DRAWS = 5


def minilm_front_items(path: Path = OUT / "headline.json") -> list[Item]:
    """The measured front points of the MiniLM headline run, as held-out items (never fitted)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [Item(f"minilm-front-{pt['hash'][:12]}", "builtin:minilm-l6", pt["genome"], "heldout")
            for pt in data.get("front", []) if isinstance(pt.get("genome"), dict)]


#: the reported held-out set: fresh random candidates, measured and looked at only for the final
#: figures (the ``heldout`` candidates were looked at while the cost model was being changed). Each
#: earlier reported set became development data once it had been looked at to change the cost model:
#: seed 2026 (ids ``report-*``, reported at ee17b49, then the beyond-cache term), seed 2027 (ids
#: ``final-*``, reported at stop 32, then the grouped-Conv term), seed 2028 (ids ``rep28-*``, reported
#: at 54395b6, then the Conv output Q/DQ of build 8) and seed 2029 (ids ``rep29-*``, reported at
#: ee90691, then the asymmetric-weight factor), 2030-2032 likewise, and seed 2033 (ids ``rep33-*``, reported
#: at 6b8f543, then the Conv rules of 3f85f40 and the NHWC Transposes), seed 2034 (ids ``rep34-*``, reported
#: at aa8155b, then more of MiniLM's own candidates in the fit), seed 2035 (ids ``rep35-*``, reported at
#: 5ad1642 and seen for three variants of the per-layer split and the bias-Add rule of f4d0e87), seed 2036
#: (ids ``rep36-*``, reported at 49410a8, then MiniLM's MatMulNBits fit candidates), seed 2037 (ids
#: ``rep37-*``, reported at c26cb96, then the shared dynamic quantization and the median over passes),
#: seed 2038 (ids ``rep38-*``, reported at 929a5e7, then the asymmetric dynamic depthwise path and the
#: per-channel zero points of dequantized weights). Seed 2039 (ids ``rep39-*``) is reported.
REPORTED_SEED = 2039
REPORTED_PREFIX = "rep39"
#: what happened to the reported set before these figures (said beside them in the summary)
REPORTED_HISTORY = ("measured after the cost model's last change (the asymmetric dynamic depthwise path, "
                    "the per-channel zero points of dequantized weights). First beside the stored measurements "
                    "of 21:13-21:50 the same day, whose MiniLM anchor then read 0.945x its stored latency (within "
                    "the drift bound of 8 % of the time): 90.6 % of 32 within +-10 %, MiniLM 5 of 8, all 8 "
                    "over-predicted (bias +9.4 %), the other workloads 100 %. The bound is 5 % since, and every "
                    "model (this set included) was measured again in one quiet session (--fresh) for these "
                    "figures; the cost model was not changed in between")
REPORTED_PER_WORKLOAD = 8
#: (seed, id prefix, candidates per workload) of the sets reported once and then looked at
DEVELOPMENT_SETS = ((2026, "report", 5), (2027, "final", 5), (2028, "rep28", 8), (2029, "rep29", 8),
                    (2030, "rep30", 8), (2031, "rep31", 8), (2032, "rep32", 8),
                    (2033, "rep33", 8), (2034, "rep34", 8), (2035, "rep35", 8),
                    (2036, "rep36", 8), (2037, "rep37", 8), (2038, "rep38", 8))
WORKLOADS = ("builtin:digits-vit", "transformer", "builtin:digits-cnn", MINILM)


def reported_items(workloads: tuple[str, ...] = WORKLOADS, seed: int = REPORTED_SEED, per: int = REPORTED_PER_WORKLOAD,
                   prefix: str = REPORTED_PREFIX, role: str = "reported") -> list[Item]:
    """Random mixed candidates (``mixed_genome``) of each workload, role ``reported`` by default."""
    rng = np.random.default_rng(seed)
    out = []
    for name in workloads:
        short = name.split(":")[-1]
        out += [Item(f"{prefix}-{short}-mix{i:02d}", name, {"mix_seed": int(rng.integers(1 << 30))}, role)
                for i in range(per)]
    return out


def development_items() -> list[Item]:
    """The earlier reported sets, reported once and then looked at: held out, as development data."""
    return [it for seed, prefix, per in DEVELOPMENT_SETS
            for it in reported_items(seed=seed, per=per, prefix=prefix, role="heldout")]


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("n", "within_10pct", "mape", "bias", "kendall_tau")}


def refit(collected: dict[str, Any], fit_ids: set[str] | None, per_layer: bool) -> dict[str, Any]:
    """Fit only the calibration models ``fit_ids`` (all fit models when None), with or without their
    per-layer times; judge on every held-out model."""
    samples = [s for s in collected["samples"] if s.role != "fit" or fit_ids is None or s.id in fit_ids]
    layers = [ls for ls in collected["layer_samples"] if ls.role == "fit" and (fit_ids is None or ls.id in fit_ids)]
    fitted, rep = fit(samples, collected["base"], layers if per_layer else [])
    errs = errors(samples, fitted)
    held = errs["heldout"]
    lay = layer_errors([ls for ls in collected["layer_samples"] if ls.role == "heldout"], fitted, collected["base"])
    rep_ = errs["reported"]
    return {"fit_models": rep["models"], "layer_times": rep["layer_times"], "heldout": _brief(held),
            "by_workload": {w: _brief(v) for w, v in held["by_workload"].items()},
            "heldout_layers_mape": lay["heldout"]["mape"], "reported": _brief(rep_),
            "reported_by_workload": {w: _brief(v) for w, v in rep_["by_workload"].items()}}


def fidelity_curve(collected: dict[str, Any], sizes: tuple[int, ...] = CURVE_SIZES, draws: int = CURVE_DRAWS,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Held-out fidelity when only ``n`` calibration models (a random draw of the fit models) are fitted."""
    ids = sorted({s.id for s in collected["samples"] if s.role == "fit"})
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        if n > len(ids):
            continue
        for d in range(draws):
            pick = set(rng.choice(ids, size=n, replace=False).tolist())
            row: dict[str, Any] = {"n": n, "draw": d}
            try:
                row.update(refit(collected, pick, per_layer=True))
            except Exception as exc:  # a draw too small to fit is a result, said as such
                row["error"] = f"{type(exc).__name__}: {exc}"
            out.append(row)
    return out


def population_rate(profile_path: Path) -> dict[str, float]:
    """Time to predict 100 random digits-vit genomes (table built once); the fastest of five tries,
    so that a collection pause of the process around it is not what gets reported."""
    model = load_model("builtin:digits-vit")
    ops = {lay.name: lay.op_type for lay in model.layers}
    rng = np.random.default_rng(0)
    choices = [Gene(8, 8), Gene(4, 8), Gene("fp", "fp"), Gene(8, "dynamic"), Gene(16, 16), Gene(6, 6)]
    genomes = [Genome.from_dict({"layers": {n: choices[int(rng.integers(len(choices)))].to_dict() for n in ops}}, ops)
               for _ in range(100)]
    profile = load_profile(profile_path)
    build, predict = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        table = CostTable(model.layers, profile, GraphStats.of(model))
        t1 = time.perf_counter()
        table.predict_many(genomes)
        t2 = time.perf_counter()
        build.append((t1 - t0) * 1e3)
        predict.append((t2 - t1) * 1e3)
    return {"table_build_ms": min(build), "predict_100_genomes_ms": min(predict)}


def _refuse(path: Path) -> dict[str, Any]:
    """``--offline``'s measuring function: nothing is measured."""
    raise SystemExit(f"error: --offline: {path.name} is not in the measurement store (a new model or a changed "
                     "build); run without --offline to measure it")


def measured_at(store: Path) -> dict[str, Any]:
    """When the stored measurements a fit reads were taken (``calibrate.Store``: the records since the
    last reset, the last one per key), and the machine's load then."""
    from harness.run.calibrate import Store

    recs = [r for r in Store(store).records.values() if isinstance(r.get("at"), str) and r.get("latency_ms")]
    stamps = [r["at"] for r in recs]
    loads = [float(load) for r in recs
             if isinstance(load := (r.get("environment") or {}).get("loadavg_1m_before"), (int, float))]
    return {"first": min(stamps, default=None), "last": max(stamps, default=None), "records": len(stamps),
            "loadavg_1m_median": float(np.median(loads)) if loads else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="7 tiny models: checks the pipeline only")
    ap.add_argument("--fresh", action="store_true", help="discard stored measurements first")
    ap.add_argument("--no-minilm", action="store_true", help="leave out the MiniLM headline front points")
    ap.add_argument("--offline", action="store_true",
                    help="fit the stored measurements again and measure nothing (a change to the fit or to how "
                         "profiles are split into layers, judged on the same measurements); a model not in the "
                         "store is an error")
    args = ap.parse_args(argv)
    if args.offline and args.fresh:
        ap.error("--offline fits the stored measurements: it cannot discard them (--fresh)")
    out = OUT / "calibration" / ("host-cpu-quick.yaml" if args.quick else "host-cpu-local.yaml")
    store = out.with_name(out.stem + ".measurements.jsonl")
    if args.fresh and store.exists():
        store.unlink()
    t0 = time.perf_counter()
    front = minilm_front_items() if not args.quick and not args.no_minilm else []
    # MiniLM's front is held out; MiniLM's own candidates are fitted, as `qae calibrate --model` does
    suite = default_suite(quick=args.quick, models=[MINILM] if front else [])
    suite.items += front
    if not args.quick:
        suite.items += development_items() + reported_items()
    collected: dict[str, Any] = {}
    report = run("local", "host-cpu", out, suite=suite, progress=sys.stderr.isatty(), collect=collected,
                 measure=_refuse if args.offline else None)
    elapsed = time.perf_counter() - t0
    print(f"calibrated host-cpu on local: {report['models']} models, {report['passes']} to {report['max_passes']} "
          f"passes ({report['measured']} measurements now, {report['reused']} reused, {len(report['failed'])} failed, "
          f"{elapsed:.0f} s), statistic {report['statistic']} per pass, {report['across']} over passes")
    from harness.cli.profiles import fidelity_text

    print(fidelity_text(report))
    rep = report["reported"]
    if rep["n"]:
        print("reported held-out (fresh random candidates, looked at only for these figures):")
        for w, v in sorted(rep["by_workload"].items()):
            print(f"  {w:20s} n={v['n']:2d} within +-10 %: {v['within_10pct'] * 100:5.1f} %  MAPE "
                  f"{v['mape'] * 100:5.1f} %  bias {v['bias'] * 100:+5.1f} %  Kendall tau {v['kendall_tau']}")
        print(f"  {'all':20s} n={rep['n']:2d} within +-10 %: {rep['within_10pct'] * 100:5.1f} %  MAPE "
              f"{rep['mape'] * 100:5.1f} %")
    t1 = time.perf_counter()
    whole_only = refit(collected, None, per_layer=False)
    fit_ids = {s.id for s in collected["samples"] if s.role == "fit"}
    own = {it.id for it in suite.items if it.workload == MINILM and it.role == "fit"}
    without_own = refit(collected, fit_ids - own, per_layer=True) if own else None
    curve = fidelity_curve(collected) if not args.quick else []
    refit_s = time.perf_counter() - t1
    wo = whole_only["heldout"]
    wr = whole_only["reported"]
    print(f"  ablation, whole-model latencies only: held-out n={wo['n']} within +-10 %: "
          f"{(wo['within_10pct'] or 0) * 100:.1f} %, MAPE {(wo['mape'] or 0) * 100:.1f} %, per-layer MAPE "
          f"{(whole_only['heldout_layers_mape'] or 0) * 100:.1f} %; reported n={wr['n']} within +-10 %: "
          f"{(wr['within_10pct'] or 0) * 100:.1f} %, MAPE {(wr['mape'] or 0) * 100:.1f} %")
    if without_own:
        mf = without_own["by_workload"].get(MINILM, {})
        share, mape = (mf.get("within_10pct") or 0) * 100, (mf.get("mape") or 0) * 100
        every = (without_own["heldout"]["within_10pct"] or 0) * 100
        print(f"  ablation, without the {len(own)} fitted MiniLM candidates: MiniLM front within +-10 %: "
              f"{share:.1f} % (n={mf.get('n')}), MAPE {mape:.1f} %, Kendall tau {mf.get('kendall_tau')}; "
              f"all held-out {every:.1f} %")
    for n in sorted({r["n"] for r in curve}):
        rows = [r for r in curve if r["n"] == n and "heldout" in r]
        if not rows:
            continue
        within = [r["heldout"]["within_10pct"] for r in rows]
        mapes = [r["heldout"]["mape"] for r in rows]
        print(f"  {n:3d} calibration models ({len(rows)} draws): held-out within +-10 % median "
              f"{np.median(within) * 100:.1f} % [{min(within) * 100:.1f}, {max(within) * 100:.1f}], MAPE median "
              f"{np.median(mapes) * 100:.1f} %")
    rate = population_rate(out)
    print(f"  cost model: table {rate['table_build_ms']:.1f} ms, then 100 genomes in "
          f"{rate['predict_100_genomes_ms']:.2f} ms")
    from benchmarks.common import environment

    result = {"benchmark": "costmodel", "profile": str(out), "elapsed_s": elapsed, **report, "population": rate,
              "reported_seed": REPORTED_SEED, "reported_history": REPORTED_HISTORY,
              "development_seeds": [seed for seed, _, _ in DEVELOPMENT_SETS],
              "minilm_front": summarize([r for r in report["rows"] if r["id"].startswith("minilm-front-")]),
              "ablation_whole_model_only": whole_only,
              "ablation_without_minilm_candidates": without_own, "minilm_candidates_fitted": len(own),
              "fidelity_curve": curve,
              "fidelity_curve_note": f"{CURVE_DRAWS} random draws of the fit models per size, held-out set unchanged",
              "refit_s": refit_s, "environment": environment(),
              "offline": args.offline, "measured_at": measured_at(store)}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "costmodel.json", json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
