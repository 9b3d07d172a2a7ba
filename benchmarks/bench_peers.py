"""qae's peers on the same models and data (issue 16): Neural Compressor, NNCF, Olive, AIMET.

    python -m benchmarks.bench_peers [--workloads builtin:digits-vit,builtin:digits-cnn,builtin:minilm-l6]
                                     [--peers nncf,nncf_wc,inc,onc,inc_rtn,inc_gptq,inc_awq,olive,aimet]
                                     [--python PEER=PYTHON ...] [--timeout S] [--max-trials N]
                                     [--qae-population P] [--no-latency] [--no-qae] [--out DIR]

Each peer runs in a child process (``benchmarks/peers_run.py``, which imports no qae) under the
Python that has it: ``--python PEER=PATH``, else ``$QAE_PEERS_PYTHON_<PEER>``, else
``$QAE_PEERS_PYTHON``, else the venv ``make peers-venvs`` builds for it (``.venv-peers``,
``.venv-peers-aimet``, ``.venv-peers-inc``: the pyproject extras ``peers``, ``peers-aimet`` and
``peers-inc``, whose pins clash), else this interpreter. A peer that is missing, fails to install,
crashes, times out or does not apply (weight-only peers on a model without MatMul) is reported with
its error in the results, never dropped and never a crash of this benchmark.

The metric, the same for every tool: labelled top-1 on the digits models; on MiniLM (sentence
embeddings, no labels) the mean cosine of the mean-pooled (attention-masked) embeddings with FP32's,
which is per-sentence, so NNCF can rank by it. Every peer gets the workload's calibration split and
its accuracy-aware flow gets that metric on the validation split as its callback (tolerable drop
1 %, absolute). The model a peer returns is then scored here by qae on the TEST split (with its 95 %
interval) and sized by qae's rule (``harness.quant.evaluate.sizes``).

qae runs on the same model with ``run_search`` (the ``host-cpu-local`` profile, one worker, a cold
cache) and ``time_limit`` = the slowest peer's wall time on that workload: no generation starts
after it. Every candidate's recording time is in the archive (``Archive.created``), so qae's front
at ANY moment is known: the Pareto set, on validation and predicted latency, of the candidates
recorded by then. For each peer, qae is judged by its front at that peer's own wall time; points are
chosen from it on validation (``pick``: at most the peer's weight bytes, the best validation score,
the fastest prediction at or above the peer's validation score), built, scored on test and measured.
Every peer's model, FP32 and the chosen qae points are measured by qae's local agent exactly like
``bench_headline`` does (``PASSES`` passes in alternating orders, a fresh agent child per model and
pass, every timed run kept; p50 with the 95 % interval of the median). ``compare_peer`` names the qae
point that is at least as good on all three axes (weight bytes <= the peer's; paired test difference
not "worse"; latency not significantly slower by ``harness.core.latency_stats.compare``), or says
where the peer stays ahead and by how much. qae's time to cover every peer is the earliest of the
checkpoints (each peer's wall time, qae's end) at which its front held a covering point for each.

Written: results/bench/peers.json (the versions and exact calls of every peer, so a run can be
repeated) and a section of results/bench/summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, write_result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNNER = HERE / "peers_run.py"

#: peer -> (the module that must import, the distribution whose version is reported, the venv of its extra)
PEERS: dict[str, tuple[str, str, str]] = {
    "nncf": ("nncf", "nncf", ".venv-peers"),
    "nncf_wc": ("nncf", "nncf", ".venv-peers"),
    "inc": ("neural_compressor", "neural-compressor", ".venv-peers-inc"),
    "onc": ("onnx_neural_compressor", "onnx-neural-compressor", ".venv-peers-inc"),
    "inc_rtn": ("onnx_neural_compressor", "onnx-neural-compressor", ".venv-peers-inc"),
    "inc_gptq": ("onnx_neural_compressor", "onnx-neural-compressor", ".venv-peers-inc"),
    "inc_awq": ("onnx_neural_compressor", "onnx-neural-compressor", ".venv-peers-inc"),
    "olive": ("olive", "olive-ai", ".venv-peers"),
    "aimet": ("aimet_onnx", "aimet-onnx", ".venv-peers-aimet"),
}
DEFAULT_PEERS = tuple(PEERS)
TRANSFORMERS = {"digits-vit", "minilm-l6"}
DEFAULT_WORKLOADS = ("builtin:digits-vit", "builtin:digits-cnn", "builtin:minilm-l6")
PROFILE = "host-cpu-local"
QAE_POPULATION = 16
#: a peer's tuning trials: 20 keeps the three workloads within ~45 min on 2 cores (Neural Compressor's
#: own default is 100: about 8.6 s a trial on MiniLM, 12 min more); on the digits models every peer
#: stops within 6 trials anyway
MAX_TRIALS = 20
#: generations are not the limit: the slowest peer's wall time is (``SearchConfig.time_limit``)
QAE_MAX_GENERATIONS = 1000
#: qae points chosen per peer from its front at that peer's wall time, and from its final front
PICK_PER_PEER = 4
PICK_FINAL = 8
#: the metric of each workload's plan -> (the name reported, ``peers_run.py --metric``, the archive value)
METRICS = {"top1": ("top1", "top1", "accuracy"), "embedding": ("mean_cosine", "cosine", "mean_cosine")}


def peer_python(peer: str, given: dict[str, str]) -> str:
    venv = ROOT / PEERS[peer][2] / "bin" / "python"
    return (given.get(peer) or os.environ.get(f"QAE_PEERS_PYTHON_{peer.upper()}")
            or os.environ.get("QAE_PEERS_PYTHON") or (str(venv) if venv.exists() else sys.executable))


def probe(python: str, peer: str) -> dict[str, Any]:
    """Whether the peer imports under ``python``, its version and what it runs (``peers_run.WHAT``);
    the error verbatim when it does not import."""
    module, dist, _ = PEERS[peer]
    code = (f"import importlib.metadata as m, sys, {module}; sys.path.insert(0, {str(HERE)!r}); "
            f"import peers_run; print(m.version({dist!r})); print(peers_run.WHAT[{peer!r}])")
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "CI": "true"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"available": False, "error": f"{type(e).__name__}: {e}"}
    if p.returncode != 0:
        return {"available": False, "error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1],
                "stderr_tail": p.stderr[-2000:]}
    version, what = p.stdout.strip().splitlines()[-2:]
    return {"available": True, "version": version, "what": what}


def run_peer(peer: str, python: str, model: Path, data: dict[str, Path], out: Path, timeout: float,
             transformer: bool, max_trials: int, metric: str) -> dict[str, Any]:
    """One peer on one model, in a child; its result.json, or what went wrong."""
    cmd = [python, str(RUNNER), "--peer", peer, "--model", str(model), "--calib", str(data["calib"]),
           "--val", str(data["eval"]), "--out", str(out), "--max-trials", str(max_trials), "--metric", metric]
    if transformer:
        cmd.append("--transformer")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "CI": "true", "OMP_NUM_THREADS": "1"})
        rc, tail = p.returncode, (p.stdout + p.stderr)[-4000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = None, f"timed out after {timeout:.0f} s: {str(e.stdout or '')[-2000:]}"
    wall = time.perf_counter() - t0
    result_file = out / "result.json"
    if result_file.is_file():
        rec = json.loads(result_file.read_text())
    else:
        rec = {"peer": peer, "status": "error", "error": f"the child left no result.json (exit {rc})"}
    rec.update(command=" ".join(cmd), exit=rc, child_wall_s=round(wall, 2), log_tail=tail)
    return rec


def stored_result(path: Path) -> dict[str, Any] | None:
    """A peer child's result.json, if it is one: a JSON object with a status, and for a finished run a
    wall time and a model file that still exists. Anything else is None (the peer runs again)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("status"), str):
        return None
    if rec["status"] == "ok" and not (isinstance(rec.get("wall_s"), (int, float))
                                      and Path(str(rec.get("model_out", ""))).is_file()):
        return None
    return rec


def score(work: Any, path: Path, metric: str) -> dict[str, Any]:
    """qae on the test split: the metric with its 95 % interval and per-sample statistics (for the
    paired comparisons), and qae's size rule."""
    import onnx

    from harness.core.stats import SampleStats, interval
    from harness.quant.evaluate import sizes

    proto = onnx.load(path)
    out: dict[str, Any] = {"test_metric": metric, "file_bytes": path.stat().st_size,
                           "weight_bytes": sizes(proto, path.stat().st_size).weight_bytes}
    if metric == "mean_cosine":
        from benchmarks.bench_headline import split_stats, with_interval

        stats = split_stats(work, proto, "test")["mean_cosine"]
        iv = with_interval(stats)
        out.update(test_value=iv["value"], test_ci95=iv["ci95"], test_ci_method=iv["method"], test_n=stats.n,
                   _stats=stats.to_dict())
        return out
    rep = work.evaluate(SimpleNamespace(proto=proto, nominal_bits=None, emulated_layers=None), split="test",
                        with_stats=True)
    out.update(test_value=rep.accuracy, test_n=rep.n)
    if rep.sample_stats:
        got = interval(SampleStats.from_dict(rep.sample_stats))
        out.update(test_ci95=[got.lo, got.hi], test_ci_method=got.method, _stats=rep.sample_stats)
    return out


# -- qae on the same workload -----------------------------------------------------------------------
def qae_search(spec: str, population: int, time_limit: float, out: Path, value_key: str) -> dict[str, Any]:
    """qae's search on ``spec`` for ``time_limit`` seconds from a cold cache; every candidate with its
    validation score, weight bytes, predicted latency and the second it was recorded (``at_s``)."""
    import shutil

    from harness.run.config import SearchConfig
    from harness.run.search import run_search

    shutil.rmtree(out, ignore_errors=True)
    cfg = SearchConfig(model=spec, profiles=[PROFILE], population=population, generations=QAE_MAX_GENERATIONS,
                       seed=0, time_limit=time_limit)
    # a cold start, like each peer's: an empty $QAE_CACHE_DIR (fitness cache, calibration ranges), else
    # evaluations cached by an earlier run would make qae look faster than it is
    cold = out.parent / f"{out.name}-cache"
    shutil.rmtree(cold, ignore_errors=True)
    before = os.environ.get("QAE_CACHE_DIR")
    os.environ["QAE_CACHE_DIR"] = str(cold)
    try:
        t0 = time.time()
        archive = run_search(cfg, out, say=lambda line: print(f"   qae: {line}", flush=True))
        wall = time.time() - t0
    finally:
        if before is None:
            os.environ.pop("QAE_CACHE_DIR", None)
        else:
            os.environ["QAE_CACHE_DIR"] = before
    created = archive.created(PROFILE)
    cands = [{"hash": c.hash, "genome": c.genome, "validation": c.values[value_key].value,
              "weight_bytes": c.values["size"].value, "predicted_ms": c.values["latency"].value,
              "at_s": round(created[c.hash] - t0, 3)}
             for c in archive.candidates(PROFILE)
             if c.values and all(k in c.values for k in (value_key, "size", "latency"))]
    return {"wall_s": round(wall, 2), "time_limit_s": time_limit, "evaluations": len(created),
            "population": population, "profile": PROFILE, "archive": str(out), "cache": f"cold ({cold})",
            "call": f"run_search(SearchConfig(model={spec!r}, profiles=[{PROFILE!r}], population={population}, "
                    f"generations={QAE_MAX_GENERATIONS}, seed=0, time_limit={time_limit:g}), out)",
            "_candidates": cands}


def front_at(cands: list[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    """qae's front ``seconds`` into its run: the Pareto set of the candidates recorded by then under
    (validation score up, weight bytes down, predicted latency down), smallest first."""
    from search.nsga2 import first_front

    seen = [c for c in cands if c["at_s"] <= seconds]
    if not seen:
        return []
    f = np.array([[-c["validation"], c["weight_bytes"], c["predicted_ms"]] for c in seen])
    return sorted((seen[i] for i in first_front(f).tolist()), key=lambda c: c["weight_bytes"])


def pick(front: list[dict[str, Any]], peer: dict[str, Any], k: int = PICK_PER_PEER) -> list[dict[str, Any]]:
    """The front points worth measuring against ``peer``, chosen on VALIDATION and prediction only:
    among those at most the peer's weight bytes, the best validation score, then the fastest
    predictions at or above the peer's validation score; without any that small, the smallest two."""
    fits = [c for c in front if c["weight_bytes"] <= peer["weight_bytes"]]
    if not fits:
        return front[:2]
    chosen = sorted(fits, key=lambda c: -c["validation"])[:1]
    level = peer.get("val_metric")
    good = [c for c in fits if level is None or c["validation"] >= level]
    for c in sorted(good, key=lambda c: c["predicted_ms"]):
        if len(chosen) >= k:
            break
        if c not in chosen:
            chosen.append(c)
    return chosen


def thin(front: list[dict[str, Any]], k: int = PICK_FINAL) -> list[dict[str, Any]]:
    """At most ``k`` points spread evenly along weight bytes (both ends kept)."""
    if len(front) <= k:
        return list(front)
    idx = sorted({round(i * (len(front) - 1) / (k - 1)) for i in range(k)})
    return [front[i] for i in idx]


def build_points(work: Any, points: list[dict[str, Any]], root: Path) -> dict[str, Path]:
    """Each chosen qae point built to an ONNX file (for the agent and the test score)."""
    import onnx

    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for p in points:
        path = root / f"qae-{p['hash'][:12]}.onnx"
        onnx.save(work.build(work.genome(p["genome"])).proto, str(path))
        paths[f"qae:{p['hash'][:12]}"] = path
    return paths


# -- latency, exactly like bench_headline --------------------------------------------------------------
def agent_ready(src: Path, dst: Path) -> Path:
    """The file the agent times: as is when only the batch is symbolic (the agent feeds 1 there, as
    for every digits model), else ``bench_headline.fixed_shapes`` (MiniLM's token axis)."""
    import shutil

    import onnx

    proto = onnx.load(str(src), load_external_data=False)
    symbolic = any(d.dim_param or not d.dim_value for inp in proto.graph.input
                   for d in list(inp.type.tensor_type.shape.dim)[1:])
    if symbolic:
        from benchmarks.bench_headline import fixed_shapes

        return fixed_shapes(src, dst)
    shutil.copyfile(src, dst)
    return dst


def measure_all(paths: dict[str, Path], root: Path) -> dict[str, dict[str, Any]]:
    """``bench_headline.measure_all`` with ``agent_ready`` for the shapes: PASSES passes in
    alternating orders on one local agent, a fresh child per model and pass, every run kept."""
    from benchmarks import bench_headline

    root.mkdir(parents=True, exist_ok=True)
    return bench_headline.measure_all(paths, root, shaped=agent_ready)


# -- the comparison ---------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:+.1f} pt"


def compare_peer(peer: dict[str, Any], points: list[dict[str, Any]], peer_name: str = "the peer",
                 metric: str = "top1") -> dict[str, Any]:
    """Which qae point is at least as good as ``peer`` on weight bytes (<=), the test metric (paired
    difference not "worse") and measured latency (not significantly slower: ``latency_stats.compare``
    on every run of every pass). ``peer`` and each point carry ``weight_bytes``, ``_stats`` (per-sample
    test statistics) and ``latency`` (a ``latency_of`` row). Returns the covering point (smallest
    first), or for the best qae point (fewest axes lost, then smallest) where the peer stays ahead."""
    from benchmarks.bench_headline import all_runs
    from harness.core.latency_stats import compare
    from harness.core.stats import SampleStats, paired_difference, verdict

    if peer.get("weight_bytes") is None or not points:
        return {"covered": False, "by": None, "ahead": ["no comparison: " + (
            "the peer returned no model" if peer.get("weight_bytes") is None else "qae has no front point")]}
    mine_stats = SampleStats.from_dict(peer["_stats"]) if peer.get("_stats") else None
    judged = []
    for p in points:
        axes: dict[str, Any] = {}
        lost: list[str] = []
        wb, pb = p.get("weight_bytes"), peer["weight_bytes"]
        axes["weight_bytes"] = {"qae": wb, "peer": pb, "ok": wb is not None and wb <= pb,
                                "ratio": (wb / pb) if wb is not None and pb else None}
        if not axes["weight_bytes"]["ok"]:
            lost.append(f"weight bytes: peer {pb:,.0f} B vs qae {wb:,.0f} B ({wb / pb:.2f}x)" if wb is not None
                        else "weight bytes: qae's point has none")
        if mine_stats is not None and p.get("_stats"):
            theirs = SampleStats.from_dict(p["_stats"])
            if theirs.n == mine_stats.n:
                d = paired_difference(theirs, mine_stats)
                v = verdict(d)
                axes["test_metric"] = {"qae_minus_peer": d.value, "ci95": [d.lo, d.hi], "method": d.method,
                                     "verdict": v, "ok": v != "worse"}
            else:
                axes["test_metric"] = {"verdict": "no interval", "ok": False,
                                     "why": f"different samples ({theirs.n} vs {mine_stats.n})"}
        else:
            axes["test_metric"] = {"verdict": "no interval", "ok": False, "why": "no per-sample statistics"}
        if not axes["test_metric"]["ok"]:
            t = axes["test_metric"]
            lost.append(f"test {metric}: qae - peer {_pct(t['qae_minus_peer'])} "
                        f"(95 % CI {_pct(t['ci95'][0])} .. {_pct(t['ci95'][1])}), significantly worse"
                        if "qae_minus_peer" in t else f"test {metric}: {t['why']}")
        a_runs, b_runs = all_runs(p.get("latency") or {}), all_runs(peer.get("latency") or {})
        if a_runs and b_runs:
            c = compare(a_runs, b_runs, b_name=peer_name).to_dict()
            slower = bool(c.get("significant")) and float(c["ratio"]) > 1
            axes["latency"] = {**c, "ok": not slower}
            if slower:
                lost.append(f"latency: qae {float(np.median(a_runs)):.4g} ms vs peer {float(np.median(b_runs)):.4g} ms "
                            f"({float(c['ratio']):.2f}x, p={float(c['p_value']):.2g}), significantly slower")
        else:
            axes["latency"] = {"ok": False, "words": "not measured on one side"}
            lost.append("latency: not measured on one side")
        judged.append({"hash": p["hash"], "axes": axes, "lost": lost})
    good = [j for j in judged if not j["lost"]]
    if good:
        best = good[0]
        return {"covered": True, "by": best["hash"], "axes": best["axes"], "ahead": [],
                "also_covering": [j["hash"] for j in good[1:]]}
    closest = min(judged, key=lambda j: len(j["lost"]))
    return {"covered": False, "by": None, "closest": closest["hash"], "axes": closest["axes"],
            "ahead": closest["lost"], "gaps": gaps(judged)}


def gaps(judged: list[dict[str, Any]]) -> list[str]:
    """Per axis, the best qae does there among its points that hold the other two axes: how far the
    peer stays ahead on that axis alone."""
    out = []
    for axis, key, best, unit in (("weight_bytes", "ratio", min, "x the peer's weight bytes"),
                                  ("latency", "ratio", min, "x the peer's latency"),
                                  ("test_metric", "qae_minus_peer", max, " test-metric difference (qae - peer)")):
        others = [j for j in judged if all(v.get("ok") for k, v in j["axes"].items() if k != axis)]
        vals = [(j["axes"][axis].get(key), j["hash"]) for j in others if j["axes"][axis].get(key) is not None]
        if not others:
            out.append(f"{axis}: no qae point holds the other two axes")
        elif vals and not any(j["axes"][axis].get("ok") for j in others):
            v, h = best(vals)
            shown = f"{100 * v:+.1f} pt" if axis == "test_metric" else f"{v:.2f}"
            out.append(f"{axis}: best qae point holding the other two axes is {h[:12]} at {shown}{unit}")
    return out


def strip_private(obj: Any) -> Any:
    """The JSON without the in-memory per-sample statistics (keys starting with ``_``) and without the
    timed runs themselves (a pass of a 15 us model holds ~60,000; each pass keeps ``n_runs``): every run
    went into the p50, its interval and the comparisons, but writing them would make a file of tens of MB."""
    if isinstance(obj, dict):
        if isinstance(obj.get("runs_ms"), list):
            obj = {**obj, "runs_ms": None, "n_runs": len(obj["runs_ms"])}
        return {k: strip_private(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [strip_private(v) for v in obj]
    return obj


def bench(workloads: list[str], peers: list[str], pythons: dict[str, str], timeout: float, max_trials: int,
          root: Path, population: int = QAE_POPULATION, latency: bool = True, with_qae: bool = True,
          reuse: bool = False) -> dict[str, Any]:
    from harness.core.model import builtin_data, load_model
    from harness.quant.workload import Workload

    body: dict[str, Any] = {"workloads": {}, "peers": {}, "tolerable_drop": 0.01,
                            "drop": "absolute, in the workload's metric (top-1; MiniLM: mean cosine with FP32)"}
    for peer in peers:
        python = peer_python(peer, pythons)
        body["peers"][peer] = {"python": python, **probe(python, peer)}
    for spec in workloads:
        name = spec.split(":", 1)[1] if spec.startswith("builtin:") else spec
        row: dict[str, Any] = {}
        body["workloads"][spec] = row
        try:
            model = load_model(spec, require_layers=False).path
            data = {k: builtin_data(name, k) for k in ("calib", "eval", "test")}
            work = Workload.open(spec)
            if work.plan.metric not in METRICS:
                raise RuntimeError(f"its metric is {work.plan.note}; the peers' callbacks score top-1 or mean cosine")
            metric, flag, value_key = METRICS[work.plan.metric]
            row["metric"] = metric
            row["fp32"] = score(work, Path(model), metric)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            continue
        models: dict[str, Path] = {"fp32": Path(model)}
        for peer in peers:
            info = body["peers"][peer]
            out = root / name / peer
            earlier = stored_result(out / "result.json") if reuse else None
            if earlier is not None:  # the peer's earlier run in this folder, as it was
                print(f"== {spec} / {peer}: reusing {out}", flush=True)
                rec = {**earlier, "reused_run": str(out)}
            elif not info.get("available"):
                row[peer] = {"status": "missing", "error": info.get("error")}
                continue
            else:
                print(f"== {spec} / {peer} ({info['version']})", flush=True)
                rec = run_peer(peer, info["python"], Path(model), data, out, timeout, name in TRANSFORMERS,
                               max_trials, flag)
            rec["version"] = rec.get("version") or info.get("version")
            if rec.get("status") == "ok" and rec.get("model_out"):
                try:
                    rec.update(score(work, Path(rec["model_out"]), metric))
                    models[peer] = Path(rec["model_out"])
                except Exception as e:
                    rec.update(status="error", error=f"qae could not score the peer's model: {type(e).__name__}: {e}")
            row[peer] = rec
            print(f"   {rec.get('status')}: wall {rec.get('wall_s')} s, {rec.get('callback_calls')} callback calls, "
                  f"test {rec.get('test_value')}, {rec.get('error', '')}", flush=True)
        done = {p: r for p, r in row.items() if p in PEERS and r.get("status") == "ok" and r.get("wall_s") is not None}
        slowest = max((float(r["wall_s"]) for r in done.values()), default=None)
        qae: dict[str, Any] = {"budget_s": slowest, "budget_rule": "the slowest peer's wall time on this workload"}
        row["qae"] = qae
        points: dict[str, dict[str, Any]] = {}
        if with_qae and slowest is not None:
            print(f"== {spec} / qae (population {population}, --time-limit {slowest} s: the slowest peer)", flush=True)
            try:
                qae.update(qae_search(spec, population, slowest, root / name / "qae-archive", value_key))
                cands = qae.pop("_candidates")
                checkpoints = {p: float(r["wall_s"]) for p, r in done.items()}
                fronts = {p: front_at(cands, t) for p, t in checkpoints.items()}
                final = front_at(cands, slowest)
                for p, r in done.items():
                    for c in pick(fronts[p], r):
                        points[c["hash"]] = c
                for c in thin(final):
                    points[c["hash"]] = c
                qae["front_sizes"] = {p: len(f) for p, f in fronts.items()} | {"final": len(final)}
                qae["first_at_s"] = min((c["at_s"] for c in cands), default=None)
                qae["evaluations_at"] = {p: sum(c["at_s"] <= t for c in cands) for p, t in checkpoints.items()}
                paths = build_points(work, list(points.values()), root / name / "qae-models")
                for c in points.values():
                    c.update(score(work, paths[f"qae:{c['hash'][:12]}"], metric))
                    c["on_front_at"] = sorted(p for p, f in fronts.items() if c in f)
                models.update(paths)
            except Exception as e:
                qae["error"] = f"{type(e).__name__}: {e}"
            print(f"   qae: wall {qae.get('wall_s')} s, {qae.get('evaluations')} evaluations, "
                  f"{len(points)} points chosen {qae.get('error', '')}", flush=True)
        if latency:
            print(f"== {spec}: latency of {len(models)} models on the local agent", flush=True)
            try:
                lat = measure_all(models, root / name / "latency")
            except Exception as e:
                lat = {}
                row["latency_error"] = f"{type(e).__name__}: {e}"
            for k, v in lat.items():
                if k == "fp32":
                    row["fp32"]["latency"] = v
                elif k.startswith("qae:"):
                    for c in points.values():
                        if c["hash"][:12] == k[4:]:
                            c["latency"] = v
                else:
                    row[k]["latency"] = v
        qae["points"] = sorted(points.values(), key=lambda c: c["weight_bytes"])
        for peer, rec in done.items():
            if rec.get("weight_bytes") is None:
                continue
            at_t = [c for c in qae["points"] if peer in c.get("on_front_at", [])]
            rec["qae_comparison"] = compare_peer(rec, at_t, peer_name=peer, metric=metric)
            rec["qae_comparison"]["judged_at_s"] = rec["wall_s"]
            rec["qae_comparison"]["qae_points_judged"] = len(at_t)
            if not at_t and qae.get("first_at_s") is not None:
                rec["qae_comparison"]["ahead"] = [f"qae had no candidate yet at {rec['wall_s']} s (its first "
                                                  f"generation was recorded at {qae['first_at_s']} s)"]
        qae["time_to_cover_all_s"] = time_to_cover(done, qae["points"], metric)
        for peer, t in qae["time_to_cover_all_s"]["per_peer"].items():
            if "qae_comparison" in done[peer]:
                done[peer]["qae_comparison"]["qae_covers_at_s"] = t
    return body


def time_to_cover(done: dict[str, dict[str, Any]], points: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The earliest checkpoint (a peer's wall time) at which qae's front, among its measured points,
    held a covering point for every peer (None when none did), and the same per peer."""
    if not done or not points:
        return {"seconds": None, "per_peer": {}, "words": "no peer result or no qae point"}
    per_peer: dict[str, float | None] = {p: None for p in done}
    first_all = None
    for t in sorted({float(r["wall_s"]) for r in done.values()}):
        on = [c for c in points if c["at_s"] <= t and any(float(done[p]["wall_s"]) == t
                                                             for p in c.get("on_front_at", []))]
        covered = {p for p, r in done.items() if on and compare_peer(r, on, peer_name=p, metric=metric)["covered"]}
        for p in covered:
            per_peer[p] = t if per_peer[p] is None else per_peer[p]
        if first_all is None and covered == set(done):
            first_all = t
    words = (f"qae's front at {first_all:g} s covers every peer" if first_all is not None else
             "no checkpoint up to the slowest peer's wall time covers every peer")
    return {"seconds": first_all, "per_peer": per_peer, "words": words}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_peers", description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS))
    ap.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"any of {', '.join(PEERS)}")
    ap.add_argument("--python", action="append", default=[], metavar="PEER=PATH",
                    help="the interpreter that has PEER (repeatable)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per peer and workload")
    ap.add_argument("--max-trials", type=int, default=MAX_TRIALS,
                    help="cap on a peer's tuning trials, where it has one (default %(default)s)")
    ap.add_argument("--qae-population", type=int, default=QAE_POPULATION)
    ap.add_argument("--no-latency", action="store_true", help="skip the local agent's latency passes")
    ap.add_argument("--no-qae", action="store_true", help="skip qae's own search (and the comparison)")
    ap.add_argument("--out", default=None, help="folder for the peers' models (default: a temporary one)")
    ap.add_argument("--reuse-peers", action="store_true",
                    help="take each peer's result and model from an earlier run in --out instead of running it "
                    "again (its own wall time and calls as recorded); qae, the test scores and every latency are "
                    "measured anew")
    args = ap.parse_args(argv)
    if args.reuse_peers and not args.out:
        ap.error("--reuse-peers reads an earlier run: give its folder with --out")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer {unknown[0]!r}: use any of {', '.join(PEERS)}")
    pythons = dict(s.split("=", 1) for s in args.python)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="qae-peers-"))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    body = bench(workloads, peers, pythons, args.timeout, args.max_trials, root, args.qae_population,
                 latency=not args.no_latency, with_qae=not args.no_qae, reuse=args.reuse_peers)
    body["models_in"] = str(root)
    body["command"] = "python -m benchmarks.bench_peers " + " ".join(argv if argv is not None else sys.argv[1:])
    body = strip_private(body)
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write_result('peers', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
