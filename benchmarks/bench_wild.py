"""Models from the wild: how qae handles each form of the test corpus, through its command line.

    python -m benchmarks.bench_wild [--out DIR] [CASE...]

Builds the corpus (``tests/wild/corpus.py``) into DIR (default: a temporary folder), then per case
runs (each a subprocess of ``python -m harness.cli``,
capped at 120 s): ``layers --json``, ``layers --json --input-shape ...`` (models with symbolic dims),
``layers`` as a table piped (names cut?), ``evaluate`` of the FP32 model against itself,
``quantize`` + ``evaluate`` with a w8a8 and a w4a8 genome, ``predict`` on arm-neon-a76, a tiny
``search`` and ``export --best``. Next to what qae reports it computes with ONNX Runtime, from the
files, the max abs change and cosine of every output between the FP32 and the quantized model,
and flags numbers that contradict them. Writes results/bench/wild.json and results/bench/wild.md
(the corpus table: model form x step -> result) and prints the table.

Cells: ``ok``; ``err`` (clean one-line ``qae: error``); ``err(exp)`` (a clean error that is the one
the case expects); ``TRACEBACK``; ``TIMEOUT``; ``WRONG(flags)`` (exit 0 but numbers or files that
contradict the model); ``skip`` (an earlier step it needs failed); ``-`` (not applicable).
Every step's stderr keeps qae's own explanation (the metric it chose, the shapes it used).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from tests.wild.corpus import CASES, Case, load_arrays, run_model

REPO = Path(__file__).resolve().parents[1]
#: Cases qae refuses on purpose, with the words its one-line error holds.
EXPECTED_ERRORS = {"quantized_qdq": "already quantized", "quantized_dynamic": "already quantized"}
#: Layers a case keeps when qae resolves part of the graph (an If whose condition is a constant).
KEPT = {"if_subgraph": ["then_fc1", "then_fc2"]}
TIMEOUT = 120
PROFILE = "arm-neon-a76"
STEPS = ["layers", "layers_shape", "layers_table", "eval_fp32", "quant8", "eval8", "quant4", "eval4", "predict",
         "search", "export"]
GENOMES = {
    "w8a8": "default: {weight_bits: 8, activation_bits: 8, scheme: symmetric, granularity: per_channel}\n",
    "w4a8": "default: {weight_bits: 4, activation_bits: 8, scheme: symmetric, granularity: per_channel}\n",
}


# -- running the CLI ----------------------------------------------------------------------------------
def cli(args: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.time()
    rec: dict[str, Any] = {"argv": "qae " + " ".join(_short(a, cwd) for a in args)}
    try:
        p = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    rec.update(
        rc=rc,
        seconds=round(time.time() - t0, 2),
        last_stderr=(lines[-1].strip()[:200] if lines else ""),
        traceback="Traceback (most recent call last)" in err,
        flags=[],
        numbers={},
    )
    if rec["traceback"]:  # the deepest frame inside qae, and the exception's own message
        all_lines = err.splitlines()
        frames = [ln.strip() for ln in all_lines if ln.strip().startswith("File ") and str(REPO) in ln]
        rec["where"] = frames[-1].replace(str(REPO) + "/", "")[:200] if frames else ""
        last_frame = max((i for i, ln in enumerate(all_lines) if ln.startswith("  File ")), default=-1)
        tail = [ln.strip() for ln in all_lines[last_frame + 1 :] if ln.strip() and not ln.startswith("    ")]
        tail = [ln for ln in tail if not set(ln) <= set("^~ ")]
        rec["exception"] = " ".join(tail)[:240]
    rec["_stdout"] = out
    return rec


def _short(arg: str, cwd: Path) -> str:
    return arg.replace(str(cwd) + "/", "")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


# -- independent numbers ---------------------------------------------------------------------------------
def compare_outputs(case: Case, fp32: Path, quant: Path) -> dict[str, Any]:
    """Every output of the two models on the eval data: max abs change, cosines, argmax agreement."""
    ref = run_model(fp32, case, case.data)
    got = run_model(quant, case, case.data)
    n = len(next(a for k, a in load_arrays(case.data).items() if k != "labels" and k not in case.const_inputs))
    out: dict[str, Any] = {}
    for name, r in ref.items():
        g = got[name].astype(np.float64)
        r = r.astype(np.float64)
        row: dict[str, Any] = {"shape": list(r.shape), "max_abs": float(np.max(np.abs(g - r)))}
        row["cosine"] = _cos(g.ravel(), r.ravel())
        if r.size % n == 0:
            a, b = g.reshape(n, -1), r.reshape(n, -1)
            row["per_sample_elems"] = a.shape[1]
            row["mean_sample_cosine"] = float(np.mean([_cos(x, y) for x, y in zip(a, b)]))
        axis = 1 if r.ndim >= 3 else r.ndim - 1
        if r.ndim >= 2 and r.shape[axis] > 1:
            row["argmax_agreement"] = float(np.mean(g.argmax(axis) == r.argmax(axis)))
        out[name] = row
    labels = load_arrays(case.data).get("labels")
    if labels is not None:
        first = next(iter(got.values())).reshape(n, -1)
        pred = first.argmax(-1) if first.shape[1] > 1 else (first[:, 0] > 0.5).astype(np.int64)
        out["_labelled_accuracy"] = float(np.mean(pred == labels))
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def loads(model: Path, case: Case) -> str | None:
    """None when ONNX Runtime loads and runs ``model`` on the eval data, else the first error line."""
    try:
        run_model(model, case, case.data)
        return None
    except Exception as exc:  # any failure is the finding
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"


def disk_bytes(case: Case) -> int:
    """The .onnx file plus every external data file its tensors name (torch's dynamo exporter writes one too)."""
    import onnx

    proto = onnx.load(str(case.model), load_external_data=False)
    names = {e.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return sum(f.stat().st_size for f in [case.model, *(case.model.parent / n for n in sorted(names))])


def weight_tensor_bytes(path: Path) -> int:
    """Bytes of every initializer and Constant tensor, subgraphs included (weights wherever they are)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    total = 0

    def graph_bytes(g: Any) -> None:
        nonlocal total
        total += sum(numpy_helper.to_array(t).nbytes for t in g.initializer)
        for node in g.node:
            for a in node.attribute:
                if node.op_type == "Constant" and a.name == "value":
                    total += numpy_helper.to_array(a.t).nbytes
                if a.type == onnx.AttributeProto.GRAPH:
                    graph_bytes(a.g)

    graph_bytes(model.graph)
    return total


# -- checks of each step -------------------------------------------------------------------------------------
def check_layers(rec: dict[str, Any], case: Case) -> None:
    layers = _json(rec["_stdout"])
    if rec["rc"] != 0 or not isinstance(layers, list):
        return
    names = [lay["name"] for lay in layers]
    macs = {lay["name"]: (None if lay["macs"] is None else int(lay["macs"])) for lay in layers}
    if any(v is None for v in macs.values()):  # unknown without shapes: said, not guessed
        rec["numbers"] = {"names": [lay["name"] for lay in layers], "macs_unknown": True}
        return
    exp = {k: v for k, v in case.expected_macs.items() if k != "total"}
    expected = KEPT.get(case.name, case.expected_layers)
    rec["numbers"] = {
        "n_layers": len(layers), "expected_n": len(expected), "names": names,
        "macs_total": sum(macs.values()), "expected_total": case.expected_macs.get("total"),
        "macs": macs, "expected_macs": exp,
    }
    if case.expect != "works":
        rec["flags"].append("no_error")
    if set(names) != set(expected):
        missing = [n for n in expected if n not in names]
        rec["numbers"]["missing"] = missing
        rec["numbers"]["unexpected"] = [n for n in names if n not in expected]
        rec["flags"].append("missing" if len(names) < len(expected) else "names")
    if sorted(macs.values()) != sorted(exp[n] for n in expected if n in exp) or \
            any(n in exp and macs[n] != exp[n] for n in names):
        rec["flags"].append("macs")
    if any(v < 0 for v in macs.values()):
        rec["flags"].append("neg_macs")
    if any(v == 0 and lay["op_type"] != "Gather" for v, lay in zip(macs.values(), layers)):
        rec["flags"].append("zero_macs")


def check_table(rec: dict[str, Any], names: list[str]) -> None:
    if rec["rc"] != 0:
        return
    cut = [n for n in names if n not in rec["_stdout"]]
    rec["numbers"] = {"names_not_shown_whole": cut}
    if cut:
        rec["flags"].append("truncated")


def check_eval(rec: dict[str, Any], case: Case, indep: dict[str, Any] | None, fp32_self: bool = False) -> None:
    rep = _json(rec["_stdout"])
    if rec["rc"] != 0 or not isinstance(rep, dict):
        return
    rec["numbers"]["qae"] = {k: rep.get(k) for k in ("metric", "accuracy", "top1_agreement", "mean_cosine",
                                                       "labelled_accuracy", "n", "file_bytes", "weight_bytes")}
    if fp32_self:
        rec["numbers"]["disk_bytes"] = disk_bytes(case)
        rec["numbers"]["weight_tensor_bytes"] = weight_tensor_bytes(case.model)
        if rep.get("file_bytes") != rec["numbers"]["disk_bytes"]:
            rec["flags"].append("file_bytes")
        wb = rec["numbers"]["weight_tensor_bytes"]
        # a case whose graph qae resolves (KEPT) drops the weights of the branch that never runs
        if case.name not in KEPT and abs(int(rep.get("weight_bytes") or 0) - wb) > max(64, 0.01 * wb):
            rec["flags"].append("weight_bytes")
        perfect = {"sqnr": 100.0, "top1_agreement": 1.0, "cosine": 1.0}.get(str(rep.get("metric")))
        if (perfect is not None and rep.get("accuracy") != perfect) or \
                (rep.get("mean_cosine") is not None and rep["mean_cosine"] < 0.9999):
            rec["flags"].append("self_mismatch")
    if indep is None:
        return
    rec["numbers"]["ours"] = indep
    outs = [v for k, v in indep.items() if not k.startswith("_")]
    first = outs[0]
    cos = rep.get("mean_cosine")
    if cos is not None and rep.get("metric") in ("top1", "top1_agreement") and len(outs) == 1 \
            and "mean_sample_cosine" in first \
            and abs(cos - first["mean_sample_cosine"]) > 2e-3:
        rec["flags"].append("cos_differs")
    if first.get("per_sample_elems") == 1 and (cos is not None or rep.get("top1_agreement") is not None) \
            and rep.get("metric") in ("top1_agreement", "mean_cosine"):
        rec["flags"].append("trivial_metric")  # cosine / argmax of one number per sample is always 1
    agree = rep.get("top1_agreement")
    if agree is not None and "argmax_agreement" in first and abs(agree - first["argmax_agreement"]) > 1e-3:
        rec["flags"].append("agree_differs")
    if cos is not None and not rep.get("scores") and \
            any(o.get("mean_sample_cosine", o["cosine"]) < cos - 0.01 for o in outs[1:]):
        rec["flags"].append("hides_outputs")
    perfect = {"sqnr": 100.0, "top1_agreement": 1.0, "cosine": 1.0}.get(str(rep.get("metric")))
    moved = max(float(o.get("max_abs", 0.0)) for o in outs)
    if perfect is not None and moved > 0.05 and rep.get("accuracy") == perfect:
        rec["flags"].append("trivial_metric")
    if "_labelled_accuracy" in indep and rep.get("labelled_accuracy") is not None and \
            abs(rep["labelled_accuracy"] - indep["_labelled_accuracy"]) > 1e-3:
        rec["flags"].append("accuracy_differs")


def check_predict(rec: dict[str, Any], case: Case) -> None:
    rep = _json(rec["_stdout"])
    if rec["rc"] != 0 or not isinstance(rep, dict):
        return
    macs = sum(int(r.get("macs") or 0) for r in rep.get("layers", []))
    rec["numbers"] = {"latency_ms": rep.get("latency_ms"), "macs_total": macs,
                      "expected_total": case.expected_macs.get("total"), "n_layers": len(rep.get("layers", []))}
    if macs != case.expected_macs.get("total"):
        rec["flags"].append("macs")
    if case.expect != "works":
        rec["flags"].append("no_error")


def check_search(rec: dict[str, Any], case: Case, run: Path, layers_macs_wrong: bool) -> None:
    if rec["rc"] != 0:
        return
    nums: dict[str, Any] = {}
    try:
        front = json.loads((run / "front.json").read_text())["targets"][PROFILE]
        rec_id = front["recommended"]
        point = next((p for p in front["points"] if p["id"] == rec_id), None)
        nums["front_points"] = len(front["points"])
        if point is not None:
            bits = _weight_bits(point["genome"])
            nums["recommended_weight_bits"] = sorted(set(map(str, bits)))
            nums["recommended_objectives"] = {
                k: {kk: vv for kk, vv in v.items() if kk in ("value", "source", "metric")}
                for k, v in point["objectives"].items()
            }
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        nums["front_error"] = f"{type(exc).__name__}: {exc}"[:160]
    try:
        db = sqlite3.connect(str(run / "archive.sqlite"))
        nums["candidates"] = db.execute("SELECT COUNT(*) FROM candidates WHERE target=?", (PROFILE,)).fetchone()[0]
        nums["errors"] = db.execute("SELECT COUNT(DISTINCT hash) FROM errors WHERE target=?", (PROFILE,)).fetchone()[0]
        first = db.execute("SELECT message FROM errors WHERE target=? LIMIT 1", (PROFILE,)).fetchone()
        nums["first_error"] = first[0][:200] if first else None
        db.close()
    except sqlite3.Error as exc:
        nums["archive_error"] = str(exc)[:160]
    rec["numbers"] = nums
    if case.expect != "works":
        rec["flags"].append("no_error")
    if nums.get("errors") and nums.get("candidates") and nums["errors"] * 2 >= nums["candidates"]:
        rec["flags"].append("most_failed")
    if nums.get("errors") and nums.get("recommended_weight_bits") == ["fp"]:
        rec["flags"].append("recommends_fp32")
    if "front_error" in nums:
        rec["flags"].append("no_front")
    # a cost objective (size, latency...) or mean_cosine labelled with the accuracy metric's name
    objectives = nums.get("recommended_objectives", {})
    acc_metric = objectives.get("accuracy", {}).get("metric")
    if any(v.get("metric") == acc_metric for k, v in objectives.items() if k != "accuracy"):
        rec["flags"].append("front_labels")
    if layers_macs_wrong:  # the predicted latency/energy objectives rest on the same MAC counts
        rec["flags"].append("macs")


def _weight_bits(genome: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(genome, dict):
        for k, v in genome.items():
            if k == "weight_bits":
                found.append(v)
            else:
                found += _weight_bits(v)
    elif isinstance(genome, list):
        for v in genome:
            found += _weight_bits(v)
    return found


# -- one case ----------------------------------------------------------------------------------------------
def probe_case(case: Case, out: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    work = case.model.parent / "probe"
    work.mkdir(exist_ok=True)
    m, calib, data = str(case.model), str(case.calib), str(case.data)
    const = [a for name in case.const_inputs for a in ("--constant-input", name)]
    g8, g4 = str(out / "genomes" / "w8a8.yaml"), str(out / "genomes" / "w4a8.yaml")
    res: dict[str, dict[str, Any]] = {}

    res["layers"] = cli(["layers", m, "--json"], work, env)
    check_layers(res["layers"], case)
    if case.symbolic_inputs:
        shapes = []
        for name in case.symbolic_inputs:
            shapes += ["--input-shape", f"{name}=" + "x".join(map(str, case.input_shapes[name]))]
        res["layers_shape"] = cli(["layers", m, "--json", *shapes], work, env)
        check_layers(res["layers_shape"], case)
    res["layers_table"] = cli(["layers", m], work, env)
    check_table(res["layers_table"], res["layers"]["numbers"].get("names", []))
    res["eval_fp32"] = cli(["evaluate", m, "--data", data, "--reference", m, "--json", *const], work, env)
    try:
        self_cmp = compare_outputs(case, case.model, case.model)
    except Exception:  # the corpus checked it loads; keep going
        self_cmp = None
    check_eval(res["eval_fp32"], case, self_cmp, fp32_self=True)

    for bits, genome in (("8", g8), ("4", g4)):
        q = work / f"q{bits}.onnx"
        q.unlink(missing_ok=True)
        qrec = cli(["quantize", m, "--genome", genome, "--calib", calib, "-o", str(q), "--json", *const], work, env)
        res[f"quant{bits}"] = qrec
        if case.expect != "works" and qrec["rc"] == 0:
            qrec["flags"].append("no_error")
        indep = None
        if qrec["rc"] == 0:
            problem = loads(q, case) if q.is_file() else "no file written"
            qrec["numbers"]["ort_load"] = problem or "ok"
            qrec["numbers"]["summary"] = _json(qrec["_stdout"])
            if problem:
                qrec["flags"].append("unloadable")
            else:
                indep = compare_outputs(case, case.model, q)
        if qrec["rc"] == 0 and indep is not None:
            erec = cli(["evaluate", str(q), "--data", data, "--reference", m, "--json", *const], work, env)
            check_eval(erec, case, indep)
        else:
            erec = {"skipped": True, "flags": [], "numbers": {}, "why": f"quant{bits} failed"}
        res[f"eval{bits}"] = erec

    res["predict"] = cli(["predict", m, "--profile", PROFILE, "--genome", g8, "--data", data, "--json", *const],
                         work, env)
    check_predict(res["predict"], case)

    run = work / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    res["search"] = cli(["search", m, "--calib", calib, "--data", data, "--profile", PROFILE, "--generations", "2",
                         "--population", "4", "--out", str(run), *const], work, env)
    check_search(res["search"], case, run, "macs" in res["layers"]["flags"])
    if res["search"]["rc"] == 0:
        erec = cli(["export", str(run), "--best"], work, env)
        if erec["rc"] == 0:
            dest = Path(erec["_stdout"].strip().splitlines()[-1]) if erec["_stdout"].strip() else run
            model = dest / "model.onnx"
            problem = loads(model, case) if model.is_file() else "no model.onnx"
            erec["numbers"]["ort_load"] = problem or "ok"
            if problem:
                erec["flags"].append("unloadable")
            else:
                outs = compare_outputs(case, case.model, model)
                erec["numbers"]["ours"] = outs
                g = _json((dest / "objectives.json").read_text()) if (dest / "objectives.json").is_file() else None
                erec["numbers"]["objectives"] = g
        res["export"] = erec
    else:
        res["export"] = {"skipped": True, "flags": [], "numbers": {}, "why": "search failed"}
    return res


def status(rec: dict[str, Any] | None, case: Case) -> str:
    if rec is None:
        return "-"
    if rec.get("skipped"):
        return "skip"
    if rec["rc"] is None:
        return "TIMEOUT"
    if rec["traceback"]:
        return "TRACEBACK"
    if rec["rc"] != 0:
        line = rec["last_stderr"].lower()
        words = EXPECTED_ERRORS.get(case.name, case.expect if case.expect != "works" else "")
        if words and words.lower() in line:
            return "err(exp)"
        return "err"
    if rec["flags"]:
        return "WRONG(" + ",".join(rec["flags"]) + ")"
    return "ok"


def table(results: dict[str, Any], cases: dict[str, Case]) -> str:
    head = "| case | " + " | ".join(STEPS) + " |"
    rows = [head, "|" + "---|" * (len(STEPS) + 1)]
    for name, steps in results.items():
        rows.append(f"| {name} | " + " | ".join(status(steps.get(s), cases[name]) for s in STEPS) + " |")
    return "\n".join(rows)


def details(results: dict[str, Any], cases: dict[str, Case]) -> str:
    """One line per cell that is not ok: the error line, or the flags with the numbers behind them."""
    lines = []
    for name, steps in results.items():
        for step in STEPS:
            rec, st = steps.get(step), status(steps.get(step), cases[name])
            if rec is None or st in ("ok", "skip", "-"):
                continue
            if st == "TRACEBACK":
                what = f"{rec.get('exception', '')} [{rec.get('where', '')}]"
            elif st.startswith("err") or st == "TIMEOUT":
                what = rec["last_stderr"]
            else:
                n = rec.get("numbers", {})
                wanted = ("macs_total", "expected_total", "missing", "unexpected", "names_not_shown_whole",
                          "ort_load", "errors", "candidates", "disk_bytes", "weight_tensor_bytes")
                keep = {k: n[k] for k in wanted if k in n}
                if "qae" in n:
                    keep["qae"] = {k: v for k, v in n["qae"].items() if v is not None and k not in ("n",)}
                if "ours" in n:
                    keep["ours"] = {o: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                                        if k in ("max_abs", "cosine", "mean_sample_cosine", "argmax_agreement")}
                                    if isinstance(r, dict) else r for o, r in n["ours"].items()}
                what = json.dumps(keep, default=str)
            lines.append(f"- {name}/{step}: {st}: {what[:600]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_wild", description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="work folder for the corpus and the runs (default: a temporary folder)")
    ap.add_argument("cases", nargs="*", metavar="CASE", help=f"cases to run (default: all {len(CASES)})")
    ap.add_argument("--quick", action="store_true", help="three cases only (checks the pipeline)")
    args = ap.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case {unknown[0]!r}: use any of {', '.join(CASES)}")
    names = args.cases or (["symbolic_hw", "sigmoid_n1", "quantized_qdq"] if args.quick else list(CASES))
    with tempfile.TemporaryDirectory(prefix="qae-wild-") as tmp:
        return _run(Path(args.out).resolve() if args.out else Path(tmp), names)


def _run(out: Path, names: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "genomes").mkdir(exist_ok=True)
    for key, text in GENOMES.items():
        (out / "genomes" / f"{key}.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(REPO)
    env["QAE_CACHE_DIR"] = str(out / "qae-cache")
    env["PYTHONWARNINGS"] = "ignore"
    cases: dict[str, Case] = {}
    results: dict[str, Any] = {}
    started = time.time()
    for name in names:
        t0 = time.time()
        try:
            case = CASES[name](out / "corpus")
        except Exception as exc:  # a corpus bug must not hide the other cases
            print(f"{name}: corpus build failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        build_s = time.time() - t0
        cases[name] = case
        results[name] = probe_case(case, out, env)
        print(f"{name}: built in {build_s:.1f} s, probed in {time.time() - t0 - build_s:.0f} s: "
              + " ".join(f"{s}={status(results[name].get(s), case)}" for s in STEPS), file=sys.stderr, flush=True)
    body = {
        "environment": common.environment(),
        "steps": STEPS,
        "seconds": round(time.time() - started, 1),
        "cases": {
            n: {"case": {k: v for k, v in cases[n].to_dict().items() if k not in ("model", "calib", "data")},
                "steps": {s: {k: v for k, v in r.items() if k != "_stdout"} for s, r in results[n].items()},
                "status": {s: status(results[n].get(s), cases[n]) for s in STEPS}}
            for n in results
        },
    }
    common.write_result("wild", json.loads(json.dumps(body, default=str).replace(str(out), "WORK")))
    text = table(results, cases) + "\n\n" + details(results, cases)
    from harness.core.atomic import atomic_write_text

    atomic_write_text(common.RESULTS / "wild.md", "# Models from the wild (`python -m benchmarks.bench_wild`)\n\n"
                      + text.replace(str(out), "WORK") + "\n")
    print(text)
    print(f"\n{common.RESULTS / 'wild.json'}; {body['seconds']} s")
    bad = [n for n in results if any(st.startswith(("TRACEBACK", "WRONG", "TIMEOUT")) or st == "err"
                                      for st in body["cases"][n]["status"].values())]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
