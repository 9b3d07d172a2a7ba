"""qae's peers on the same models and data (issue 16): Neural Compressor, NNCF, Olive, AIMET.

    python -m benchmarks.bench_peers [--workloads builtin:digits-vit,builtin:digits-cnn]
                                     [--peers nncf,nncf_wc,inc,onc,olive,aimet] [--python PEER=PYTHON ...]
                                     [--timeout S] [--max-trials N] [--qae-population P] [--qae-generations G]
                                     [--no-latency] [--no-qae] [--out DIR]

Each peer runs in a child process (``benchmarks/peers_run.py``, which imports no qae) under the
Python that has it: ``--python PEER=PATH``, else ``$QAE_PEERS_PYTHON_<PEER>``, else
``$QAE_PEERS_PYTHON``, else this interpreter. The extras say which venv holds which peer: ``peers``
(NNCF, Olive), ``peers-aimet`` (AIMET; its CUDA torchvision breaks Olive's import) and ``peers-inc``
(Neural Compressor 2.6 and onnx-neural-compressor 1.0, which pin numpy < 2). A peer that is missing,
fails to install, crashes or times out is reported with its error in the results, never dropped
and never a crash of this benchmark.

Every peer gets the workload's calibration split, and its accuracy-aware flow gets top-1 on the
validation split as its callback (tolerable drop 1 %, absolute). The model a peer returns is then
scored here by qae's evaluator on the test split (with its 95 % interval) and sized by qae's rule
(``harness.quant.evaluate.sizes``). Written: results/bench/peers.json.

Then, per workload, qae itself runs on the same model (``run_search`` with the ``host-cpu-local``
profile and the workload's builtin data; population and generations small enough to finish within
the slowest peer's wall time, which is recorded beside qae's own wall time and evaluations), and its
test-scored front (``archive.test_scores()``) is built point by point. Every peer's model, FP32 and
qae's front points are measured by qae's local agent exactly like ``bench_headline`` does
(``PASSES`` passes in alternating orders, a fresh agent child per model and pass, every timed run
kept; p50 with the 95 % interval of the median). For each peer result ``compare_peer`` names the qae
point that is at least as good on all three axes (weight bytes <= the peer's; paired test top-1
difference not "worse"; latency not significantly slower by ``harness.core.latency_stats.compare``),
or says where the peer stays ahead and by how much.

MiniLM is not run: its metric is not labelled top-1 and the child's callback only does top-1 (said so
in the JSON under ``skipped``).
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
RUNNER = HERE / "peers_run.py"

#: peer -> (the module that must import, the distribution whose version is reported, what it runs)
PEERS: dict[str, tuple[str, str, str]] = {
    "nncf": ("nncf", "nncf", "nncf.quantize_with_accuracy_control, max_drop 0.01 absolute"),
    "nncf_wc": ("nncf", "nncf", "nncf.compress_weights int4_sym ratio 0.8, int8_asym backup (one shot)"),
    "inc": ("neural_compressor", "neural-compressor",
            "Neural Compressor 2.x ORT adaptor: quantization.fit, basic strategy (op-wise fallback), loss 0.01"),
    "onc": ("onnx_neural_compressor", "onnx-neural-compressor",
            "onnx-neural-compressor autotune over StaticQuantConfig's tuning set, loss 0.01"),
    "olive": ("olive", "olive-ai", "Olive OnnxQuantization (static+dynamic) searched by its TPE sampler"),
    "aimet": ("aimet_onnx", "aimet-onnx", "aimet-onnx choose_mixed_precision (AMP), allowed drop 0.01"),
}
DEFAULT_PEERS = ("nncf", "nncf_wc", "inc", "onc", "olive", "aimet")
TRANSFORMERS = {"digits-vit", "minilm-l6"}
DEFAULT_WORKLOADS = ("builtin:digits-vit", "builtin:digits-cnn")
SKIPPED = {"builtin:minilm-l6": "not run: its metric is embedding agreement (mean cosine), not labelled top-1; "
                                "peers_run.py's callback scores labelled top-1 only (issue 16 lists it last)"}
PROFILE = "host-cpu-local"
#: qae's search on the peers' workloads: seconds per generation of 16 on digits (measured here, ~0.5 s)
QAE_POPULATION = 16
QAE_GENERATIONS = 6


def peer_python(peer: str, given: dict[str, str]) -> str:
    return (given.get(peer) or os.environ.get(f"QAE_PEERS_PYTHON_{peer.upper()}")
            or os.environ.get("QAE_PEERS_PYTHON") or sys.executable)


def probe(python: str, peer: str) -> dict[str, Any]:
    """Whether the peer imports under ``python``, and its version; the error verbatim when not."""
    module, dist, _ = PEERS[peer]
    code = (f"import importlib.metadata as m, {module}; print(m.version({dist!r}))")
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "CI": "true"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"available": False, "error": f"{type(e).__name__}: {e}"}
    if p.returncode != 0:
        return {"available": False, "error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1],
                "stderr_tail": p.stderr[-2000:]}
    return {"available": True, "version": p.stdout.strip().splitlines()[-1]}


def run_peer(peer: str, python: str, model: Path, data: dict[str, Path], out: Path, timeout: float,
             transformer: bool, max_trials: int) -> dict[str, Any]:
    """One peer on one model, in a child; its result.json, or what went wrong."""
    cmd = [python, str(RUNNER), "--peer", peer, "--model", str(model), "--calib", str(data["calib"]),
           "--val", str(data["eval"]), "--out", str(out), "--max-trials", str(max_trials)]
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


def score(work: Any, path: Path) -> dict[str, Any]:
    """qae's evaluator on the test split (accuracy and its 95 % interval) and qae's size rule."""
    import onnx

    from harness.core.stats import SampleStats, interval

    proto = onnx.load(path)
    rep = work.evaluate(SimpleNamespace(proto=proto, nominal_bits=None, emulated_layers=None), split="test",
                        with_stats=True)
    out: dict[str, Any] = {"test_metric": rep.metric, "test_value": rep.accuracy, "test_n": rep.n,
                           "weight_bytes": rep.weight_bytes, "file_bytes": path.stat().st_size}
    if rep.sample_stats:
        iv = interval(SampleStats.from_dict(rep.sample_stats))
        out["test_ci95"] = [iv.lo, iv.hi]
        out["test_ci_method"] = iv.method
        out["_stats"] = rep.sample_stats  # per-sample, for the paired comparison; not written
    return out


# -- qae on the same workload -----------------------------------------------------------------------
def qae_search(spec: str, population: int, generations: int, out: Path) -> dict[str, Any]:
    """qae's search on ``spec``; its wall time, evaluations and test-scored front points (with weight
    bytes from the archive and per-sample test statistics under ``_stats``)."""
    import shutil

    from harness.run.config import SearchConfig
    from harness.run.search import run_search

    shutil.rmtree(out, ignore_errors=True)
    cfg = SearchConfig(model=spec, profiles=[PROFILE], population=population, generations=generations, seed=0)
    # a cold start, like each peer's: an empty $QAE_CACHE_DIR (fitness cache, calibration ranges), else
    # evaluations cached by an earlier run would make qae's wall time look shorter than it is
    cold = out.parent / f"{out.name}-cache"
    shutil.rmtree(cold, ignore_errors=True)
    before = os.environ.get("QAE_CACHE_DIR")
    os.environ["QAE_CACHE_DIR"] = str(cold)
    try:
        t0 = time.perf_counter()
        archive = run_search(cfg, out)
        wall = time.perf_counter() - t0
    finally:
        if before is None:
            os.environ.pop("QAE_CACHE_DIR", None)
        else:
            os.environ["QAE_CACHE_DIR"] = before
    sizes: dict[str, float] = {}
    evaluations = 0
    for target in archive.targets():
        for c in archive.candidates(target):
            evaluations += 1
            if c.values and "size" in c.values:
                sizes[c.hash] = c.values["size"].value
    points, baselines = [], []
    for h, row in archive.test_scores().items():
        roles = row.get("roles") or []
        if h == "fp32":
            continue
        rec = {"hash": h, "roles": roles, "genome": row.get("genome"), "weight_bytes": sizes.get(h),
               "test_value": row.get("value"), "test_ci95": row.get("ci95"),
               "validation": (row.get("validation") or {}).get("value"), "_stats": row.get("stats")}
        if any(r.startswith("front:") for r in roles):
            points.append(rec)
        elif any(r.startswith("baseline:") for r in roles):  # measured for reference, not compared
            baselines.append(rec)
    points.sort(key=lambda p: (p["weight_bytes"] is None, p["weight_bytes"] or 0))
    return {"wall_s": round(wall, 2), "evaluations": evaluations, "population": population,
            "generations": generations, "profile": PROFILE, "archive": str(out), "cache": f"cold ({cold})",
            "call": f"run_search(SearchConfig(model={spec!r}, profiles=[{PROFILE!r}], population={population}, "
                    f"generations={generations}, seed=0), out)",
            "points": points, "baselines": baselines}


def build_points(work: Any, points: list[dict[str, Any]], root: Path) -> dict[str, Path]:
    """Each qae front point built to an ONNX file (for the agent)."""
    import onnx

    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for p in points:
        built = work.build(work.genome(p["genome"]))
        path = root / f"qae-{p['hash'][:12]}.onnx"
        onnx.save(built.proto, str(path))
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


def compare_peer(peer: dict[str, Any], points: list[dict[str, Any]], peer_name: str = "the peer") -> dict[str, Any]:
    """Which qae point is at least as good as ``peer`` on weight bytes (<=), test top-1 (paired
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
                axes["test_top1"] = {"qae_minus_peer": d.value, "ci95": [d.lo, d.hi], "method": d.method,
                                     "verdict": v, "ok": v != "worse"}
            else:
                axes["test_top1"] = {"verdict": "no interval", "ok": False,
                                     "why": f"different samples ({theirs.n} vs {mine_stats.n})"}
        else:
            axes["test_top1"] = {"verdict": "no interval", "ok": False, "why": "no per-sample statistics"}
        if not axes["test_top1"]["ok"]:
            t = axes["test_top1"]
            lost.append(f"test top-1: qae - peer {_pct(t['qae_minus_peer'])} "
                        f"(95 % CI {_pct(t['ci95'][0])} .. {_pct(t['ci95'][1])}), significantly worse"
                        if "qae_minus_peer" in t else f"test top-1: {t['why']}")
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
                                  ("test_top1", "qae_minus_peer", max, " top-1 difference (qae - peer)")):
        others = [j for j in judged if all(v.get("ok") for k, v in j["axes"].items() if k != axis)]
        vals = [(j["axes"][axis].get(key), j["hash"]) for j in others if j["axes"][axis].get(key) is not None]
        if not others:
            out.append(f"{axis}: no qae point holds the other two axes")
        elif vals and not any(j["axes"][axis].get("ok") for j in others):
            v, h = best(vals)
            shown = f"{100 * v:+.1f} pt" if axis == "test_top1" else f"{v:.2f}"
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
          root: Path, population: int = QAE_POPULATION, generations: int = QAE_GENERATIONS,
          latency: bool = True, with_qae: bool = True) -> dict[str, Any]:
    from harness.core.model import builtin_data, load_model
    from harness.quant.workload import Workload

    body: dict[str, Any] = {"workloads": {}, "peers": {}, "tolerable_drop": 0.01, "drop": "absolute top-1",
                            "skipped": {k: v for k, v in SKIPPED.items() if k not in workloads}}
    for peer in peers:
        python = peer_python(peer, pythons)
        body["peers"][peer] = {"python": python, "what": PEERS[peer][2], **probe(python, peer)}
    for spec in workloads:
        name = spec.split(":", 1)[1] if spec.startswith("builtin:") else spec
        row: dict[str, Any] = {}
        body["workloads"][spec] = row
        try:
            model = load_model(spec, require_layers=False).path
            data = {k: builtin_data(name, k) for k in ("calib", "eval", "test")}
            work = Workload.open(spec)
            if work.plan.metric != "top1":
                raise RuntimeError(f"its metric is {work.plan.note}; peers_run's callback scores labelled top-1 only")
            row["fp32"] = score(work, Path(model))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            continue
        models: dict[str, Path] = {"fp32": Path(model)}
        for peer in peers:
            info = body["peers"][peer]
            if not info.get("available"):
                row[peer] = {"status": "missing", "error": info.get("error")}
                continue
            print(f"== {spec} / {peer} ({info['version']})", flush=True)
            out = root / name / peer
            rec = run_peer(peer, info["python"], Path(model), data, out, timeout, name in TRANSFORMERS, max_trials)
            rec["version"] = rec.get("version") or info.get("version")
            if rec.get("status") == "ok" and rec.get("model_out"):
                try:
                    rec.update(score(work, Path(rec["model_out"])))
                    models[peer] = Path(rec["model_out"])
                except Exception as e:
                    rec.update(status="error", error=f"qae could not score the peer's model: {type(e).__name__}: {e}")
            row[peer] = rec
            print(f"   {rec.get('status')}: wall {rec.get('wall_s')} s, {rec.get('callback_calls')} callback calls, "
                  f"test {rec.get('test_value')}, {rec.get('error', '')}", flush=True)
        walls = [float(r["wall_s"]) for p, r in row.items() if p in PEERS and r.get("wall_s") is not None]
        slowest = max(walls) if walls else None
        qae: dict[str, Any] = {"budget_s": slowest, "budget_rule": "the slowest peer's wall time on this workload"}
        row["qae"] = qae
        if with_qae:
            print(f"== {spec} / qae (population {population}, generations {generations}; "
                  f"slowest peer {slowest} s)", flush=True)
            try:
                qae.update(qae_search(spec, population, generations, root / name / "qae-archive"))
                qae["within_budget"] = slowest is not None and qae["wall_s"] <= slowest
                models.update(build_points(work, qae["points"] + qae["baselines"], root / name / "qae-models"))
            except Exception as e:
                qae["error"] = f"{type(e).__name__}: {e}"
            print(f"   qae: wall {qae.get('wall_s')} s, {qae.get('evaluations')} evaluations, "
                  f"{len(qae.get('points', []))} front points {qae.get('error', '')}", flush=True)
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
                    for p in qae.get("points", []) + qae.get("baselines", []):
                        if p["hash"][:12] == k[4:]:
                            p["latency"] = v
                else:
                    row[k]["latency"] = v
        for peer in peers:
            rec = row.get(peer) or {}
            if rec.get("status") == "ok" and rec.get("weight_bytes") is not None:
                rec["qae_comparison"] = compare_peer(rec, qae.get("points", []), peer_name=peer)
                if qae.get("wall_s") is not None and rec.get("wall_s") is not None:
                    rec["qae_comparison"]["qae_wall_s"] = qae["wall_s"]
                    rec["qae_comparison"]["within_peer_wall"] = qae["wall_s"] <= float(rec["wall_s"])
    return body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_peers", description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS))
    ap.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"any of {', '.join(PEERS)}")
    ap.add_argument("--python", action="append", default=[], metavar="PEER=PATH",
                    help="the interpreter that has PEER (repeatable)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per peer and workload")
    ap.add_argument("--max-trials", type=int, default=100, help="cap on a peer's tuning trials, where it has one")
    ap.add_argument("--qae-population", type=int, default=QAE_POPULATION)
    ap.add_argument("--qae-generations", type=int, default=QAE_GENERATIONS)
    ap.add_argument("--no-latency", action="store_true", help="skip the local agent's latency passes")
    ap.add_argument("--no-qae", action="store_true", help="skip qae's own search (and the comparison)")
    ap.add_argument("--out", default=None, help="folder for the peers' models (default: a temporary one)")
    args = ap.parse_args(argv)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer {unknown[0]!r}: use any of {', '.join(PEERS)}")
    pythons = dict(s.split("=", 1) for s in args.python)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="qae-peers-"))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    body = bench(workloads, peers, pythons, args.timeout, args.max_trials, root, args.qae_population,
                 args.qae_generations, latency=not args.no_latency, with_qae=not args.no_qae)
    body["models_in"] = str(root)
    body["command"] = "python -m benchmarks.bench_peers " + " ".join(argv if argv is not None else sys.argv[1:])
    body = strip_private(body)
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write_result('peers', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
