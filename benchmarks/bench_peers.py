"""qae's peers on the same models and data (issue 16): Neural Compressor, NNCF, Olive, AIMET.

    python -m benchmarks.bench_peers [--workloads builtin:digits-vit] [--peers nncf,inc,olive,aimet]
                                     [--python PEER=PYTHON ...] [--timeout S] [--max-trials N]

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

Not yet here (issue 16): latency on qae's local agent, the digits-cnn workload, MiniLM (its metric
is not top-1; the child's callback only does labelled top-1), qae given each peer's wall time.
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
    return out


def bench(workloads: list[str], peers: list[str], pythons: dict[str, str], timeout: float, max_trials: int,
          root: Path) -> dict[str, Any]:
    from harness.core.model import builtin_data, load_model
    from harness.quant.workload import Workload

    body: dict[str, Any] = {"workloads": {}, "peers": {}, "tolerable_drop": 0.01, "drop": "absolute top-1"}
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
        for peer in peers:
            info = body["peers"][peer]
            if not info.get("available"):
                row[peer] = {"status": "missing", "error": info.get("error")}
                continue
            print(f"== {spec} / {peer} ({info['version']})", flush=True)
            out = root / name / peer
            rec = run_peer(peer, info["python"], Path(model), data, out, timeout, name in TRANSFORMERS, max_trials)
            if rec.get("status") == "ok" and rec.get("model_out"):
                try:
                    rec.update(score(work, Path(rec["model_out"])))
                except Exception as e:
                    rec.update(status="error", error=f"qae could not score the peer's model: {type(e).__name__}: {e}")
            row[peer] = rec
            print(f"   {rec.get('status')}: wall {rec.get('wall_s')} s, {rec.get('callback_calls')} callback calls, "
                  f"test {rec.get('test_value')}, {rec.get('error', '')}", flush=True)
    return body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_peers", description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="builtin:digits-vit")
    ap.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"any of {', '.join(PEERS)}")
    ap.add_argument("--python", action="append", default=[], metavar="PEER=PATH",
                    help="the interpreter that has PEER (repeatable)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per peer and workload")
    ap.add_argument("--max-trials", type=int, default=100, help="cap on a peer's tuning trials, where it has one")
    ap.add_argument("--out", default=None, help="folder for the peers' models (default: a temporary one)")
    args = ap.parse_args(argv)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer {unknown[0]!r}: use any of {', '.join(PEERS)}")
    pythons = dict(s.split("=", 1) for s in args.python)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="qae-peers-"))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    body = bench(workloads, peers, pythons, args.timeout, args.max_trials, root)
    body["models_in"] = str(root)
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write_result('peers', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
