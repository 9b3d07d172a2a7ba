"""benchmarks/bench_peers.py (issue 16): qae's comparison with a peer on synthetic data (no peer
installed), the summary's peers section, and a missing peer reported with its error."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import bench_peers, summary
from harness.core.stats import SampleStats

N = 300


def top1(correct: np.ndarray) -> dict[str, Any]:
    return SampleStats("mean", {"logits": correct.astype(np.float64).reshape(-1, 1)}).to_dict()


def latency(ms: float, seed: int, runs: int = 60) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    passes = [{"pass": n, "p50_ms": ms, "runs_ms": (ms + rng.normal(0, ms * 0.01, runs)).round(5).tolist()}
              for n in range(3)]
    from benchmarks.bench_headline import latency_of

    return latency_of(passes, [])


def model(name: str, wb: float, correct: np.ndarray, ms: float, seed: int) -> dict[str, Any]:
    return {"hash": name, "weight_bytes": wb, "_stats": top1(correct), "latency": latency(ms, seed),
            "test_value": float(correct.mean())}


@pytest.fixture()
def correct() -> np.ndarray:
    c = np.ones(N, dtype=bool)
    c[:6] = False  # 98 % top-1
    return c


def test_covered_by_the_smallest_point_that_holds_every_axis(correct: np.ndarray) -> None:
    peer = model("peer", 30_000, correct, 0.10, 1)
    points = [model("a" * 16, 20_000, correct, 0.20, 2),  # smaller, as accurate, 2x slower
              model("b" * 16, 25_000, correct, 0.10, 3),  # smaller, as accurate, as fast: covers
              model("c" * 16, 28_000, correct, 0.09, 4)]  # also covers
    c = bench_peers.compare_peer(peer, points)
    assert c["covered"] and c["by"] == "b" * 16 and c["also_covering"] == ["c" * 16]
    assert c["axes"]["test_metric"]["verdict"] == "within noise"
    assert c["axes"]["weight_bytes"]["ratio"] == pytest.approx(25_000 / 30_000)


def test_peer_ahead_says_on_what_and_by_how_much(correct: np.ndarray) -> None:
    worse = correct.copy()
    worse[6:60] = False  # 80 %: significantly worse than the peer's 98 %
    peer = model("peer", 10_000, correct, 0.10, 1)
    points = [model("a" * 16, 12_000, correct, 0.10, 2),  # larger
              model("b" * 16, 9_000, worse, 0.10, 3),  # smaller but worse on top-1
              model("c" * 16, 9_500, correct, 0.50, 4)]  # smaller, as accurate, 5x slower
    c = bench_peers.compare_peer(peer, points)
    assert not c["covered"] and c["by"] is None
    assert len(c["ahead"]) == 1
    assert any("weight_bytes: best qae point holding the other two axes is aaaaaaaaaaaa at 1.20" in g
               for g in c["gaps"])
    assert any(g.startswith("latency:") and "cccccccccccc at 5.0" in g for g in c["gaps"])
    assert any(g.startswith("test_metric:") and "bbbbbbbbbbbb" in g for g in c["gaps"])


def test_missing_latency_or_model_is_not_covered(correct: np.ndarray) -> None:
    peer = model("peer", 10_000, correct, 0.10, 1)
    unmeasured = {**model("a" * 16, 5_000, correct, 0.10, 2), "latency": None}
    c = bench_peers.compare_peer(peer, [unmeasured])
    assert not c["covered"] and any("latency" in a for a in c["ahead"])
    assert not bench_peers.compare_peer({"weight_bytes": None}, [unmeasured])["covered"]
    assert not bench_peers.compare_peer(peer, [])["covered"]


def test_strip_private_drops_stats_and_runs() -> None:
    body = {"x": {"_stats": {"a": 1}, "latency": {"passes": [{"runs_ms": [1.0, 2.0], "p50_ms": 1.5}]}}}
    out = bench_peers.strip_private(body)
    assert "_stats" not in out["x"]
    assert out["x"]["latency"]["passes"][0] == {"runs_ms": None, "n_runs": 2, "p50_ms": 1.5}
    json.dumps(out)


def test_agent_ready_keeps_static_shapes_and_fixes_symbolic(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def write(dims: list[Any], name: str) -> Path:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        path = tmp_path / name
        onnx.save(helper.make_model(g), str(path))
        return path

    static = bench_peers.agent_ready(write(["batch", 1, 8, 8], "a.onnx"), tmp_path / "a2.onnx")
    dims = onnx.load(str(static)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]
    tokens = bench_peers.agent_ready(write(["batch", "seq"], "b.onnx"), tmp_path / "b2.onnx")
    dims = onnx.load(str(tokens)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 64


def _body(correct: np.ndarray) -> dict[str, Any]:
    peer = model("peer", 30_000, correct, 0.10, 1)
    points = [{**model("b" * 16, 25_000, correct, 0.10, 3), "at_s": 1.5, "on_front_at": ["nncf", "olive"]}]
    peer.update(status="ok", version="9.9", wall_s=3.0, equivalent_full_evaluations=4, test_ci95=[0.96, 0.99],
                qae_comparison={**bench_peers.compare_peer(peer, points), "judged_at_s": 3.0})
    ahead = model("peer2", 1_000, correct, 0.10, 1)
    ahead.update(status="ok", version="1.0", wall_s=9.0,
                 qae_comparison={**bench_peers.compare_peer(ahead, points), "judged_at_s": 9.0})
    for p in points:
        p["test_ci95"] = [0.96, 0.99]
    return bench_peers.strip_private({
        "command": "python -m benchmarks.bench_peers", "tolerable_drop": 0.01, "drop": "absolute top-1",
        "peers": {"nncf": {"available": True, "version": "9.9"}, "aimet": {"available": False}},
        "workloads": {"builtin:digits-cnn": {
            "metric": "top1",
            "fp32": {"weight_bytes": 73_384, "test_value": 0.99, "test_ci95": [0.98, 1.0],
                     "latency": latency(0.02, 9)},
            "nncf": peer, "olive": ahead,
            "inc_rtn": {"status": "not_applicable", "error": "the model has no MatMul"},
            "aimet": {"status": "missing", "error": "ModuleNotFoundError: No module named 'aimet_onnx'"},
            "qae": {"wall_s": 9.5, "time_limit_s": 9.0, "evaluations": 96, "population": 16, "budget_s": 9.0,
                    "evaluations_at": {"nncf": 40, "olive": 90}, "points": points,
                    "time_to_cover_all_s": {"seconds": None, "words": "no checkpoint covers every peer"}}},
            "builtin:minilm-l6": {"error": "RuntimeError: its metric is not top-1"}}})


def test_peers_section_renders(correct: np.ndarray) -> None:
    text = "\n".join(summary.peers_section(_body(correct)))
    assert "### builtin:digits-cnn" in text and "test top1 (95 % CI)" in text
    assert "| nncf | 9.9 | 30,000 | 0.9800 (0.9600–0.9900) |" in text
    assert "covered at 3 s by qae `bbbbbbbbbbbb`" in text
    assert "**peer ahead** at 9 s on weight bytes" in text and "- olive: weight bytes" in text
    assert "missing: ModuleNotFoundError: No module named 'aimet_onnx'" in text
    assert "not_applicable: the model has no MatMul" in text
    assert "--time-limit 9.0 s (the slowest peer): 9.5 s in all" in text
    assert "Time to cover every peer: no checkpoint covers every peer" in text
    assert "found at 1.5" in text and "on the front at the wall time of: nncf, olive" in text
    assert "builtin:minilm-l6" in text and "not run: RuntimeError: its metric is not top-1" in text


def _cand(h: str, val: float, wb: float, ms: float, at: float) -> dict[str, Any]:
    return {"hash": h * 16, "validation": val, "weight_bytes": wb, "predicted_ms": ms, "at_s": at}


def test_front_at_a_moment_holds_only_what_was_found_by_then() -> None:
    cands = [_cand("a", 0.90, 100, 1.0, 1.0), _cand("b", 0.95, 100, 1.0, 2.0),  # b dominates a
             _cand("c", 0.80, 50, 1.0, 2.5), _cand("d", 0.99, 200, 2.0, 9.0)]
    assert [c["hash"][0] for c in bench_peers.front_at(cands, 0.5)] == []
    assert [c["hash"][0] for c in bench_peers.front_at(cands, 1.0)] == ["a"]
    assert [c["hash"][0] for c in bench_peers.front_at(cands, 3.0)] == ["c", "b"]
    assert [c["hash"][0] for c in bench_peers.front_at(cands, 10.0)] == ["c", "b", "d"]


def test_pick_chooses_on_validation_within_the_peers_bytes() -> None:
    front = [_cand("a", 0.80, 50, 0.5, 1), _cand("b", 0.97, 90, 0.9, 1), _cand("c", 0.98, 95, 1.5, 1),
             _cand("d", 0.99, 200, 2.0, 1)]
    got = [c["hash"][0] for c in bench_peers.pick(front, {"weight_bytes": 100, "val_metric": 0.97}, k=4)]
    assert got == ["c", "b"]  # best validation first, then the fastest at or above the peer's score; d too big
    assert [c["hash"][0] for c in bench_peers.pick(front, {"weight_bytes": 10, "val_metric": 0.9})] == ["a", "b"]
    assert [c["hash"][0] for c in bench_peers.thin(front, 3)] == ["a", "c", "d"]


def test_time_to_cover_is_the_first_checkpoint_covering_every_peer(correct: np.ndarray) -> None:
    early = {**model("e" * 16, 40_000, correct, 0.10, 2), "at_s": 1.0, "on_front_at": ["p1"]}
    late = {**model("f" * 16, 20_000, correct, 0.10, 3), "at_s": 4.0, "on_front_at": ["p2"]}
    done = {"p1": {**model("p1", 30_000, correct, 0.10, 1), "wall_s": 2.0},
            "p2": {**model("p2", 30_000, correct, 0.10, 4), "wall_s": 5.0}}
    got = bench_peers.time_to_cover(done, [early, late], "top1")
    assert got["seconds"] == 5.0  # at 2 s only the 40 kB point existed: too big for either peer
    assert got["per_peer"] == {"p1": 5.0, "p2": 5.0}
    assert bench_peers.time_to_cover(done, [early], "top1")["seconds"] is None


def test_summary_without_or_with_broken_peers_json(tmp_path: Path, correct: np.ndarray) -> None:
    assert "No results/bench/peers.json" in "\n".join(summary.peers_section(None))
    text = summary.write_summary(tmp_path).read_text()
    assert "## peers (issue 16)" in text and "No results/bench/peers.json" in text
    (tmp_path / "peers.json").write_text(json.dumps({"workloads": {"w": {"qae": {"points": [None]}}}}))
    text = summary.write_summary(tmp_path).read_text()
    assert "## peers (issue 16)" in text
    (tmp_path / "peers.json").write_text(json.dumps(_body(correct)))
    assert "covered at 3 s by qae" in summary.write_summary(tmp_path).read_text()


def test_missing_peer_becomes_a_result_with_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = bench_peers.probe(sys.executable, "aimet")  # .venv holds no peer
    if info["available"]:
        pytest.skip("aimet-onnx is installed in this interpreter")
    assert "ModuleNotFoundError" in info["error"]
    monkeypatch.setattr(bench_peers, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_peers, "write_result", lambda name, body: (tmp_path / f"{name}.json").write_text(
        json.dumps(body)) and tmp_path / f"{name}.json")
    assert bench_peers.main(["--workloads", "builtin:digits-cnn", "--peers", "aimet", "--no-latency", "--no-qae",
                             "--python", f"aimet={sys.executable}", "--out", str(tmp_path / "m")]) == 0
    body = json.loads((tmp_path / "peers.json").read_text())
    row = body["workloads"]["builtin:digits-cnn"]
    assert row["aimet"]["status"] == "missing" and "aimet_onnx" in row["aimet"]["error"]
    assert row["fp32"]["test_value"] >= 0.97 and "_stats" not in row["fp32"] and row["metric"] == "top1"


def test_a_crashing_peer_child_is_reported(tmp_path: Path) -> None:
    rec = bench_peers.run_peer("nncf", sys.executable, tmp_path / "absent.onnx", {"calib": tmp_path / "c.npz",
                               "eval": tmp_path / "e.npz"}, tmp_path / "out", 120, False, 1, "top1")
    assert rec.get("status") == "error" and rec.get("error")


def test_peer_venvs_come_from_the_extras_held_to_qaes_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from benchmarks import peers_venvs

    assert peers_venvs.requirements("peers-inc")[0].startswith("neural-compressor==")
    assert f"onnxruntime=={version('onnxruntime')}" in peers_venvs.constraints()
    assert peers_venvs.main(["--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(("would install" in line or "up to date" in line) for line in out)
    for peer, (_, _, venv) in bench_peers.PEERS.items():  # every peer's venv is one the extras build
        assert venv in peers_venvs.VENVS.values(), peer
    with pytest.raises(SystemExit):
        peers_venvs.main(["--only", "peers-gpu"])


def test_reuse_peers_takes_the_earlier_result_without_the_peer(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    earlier = tmp_path / "m" / "digits-cnn" / "aimet"
    earlier.mkdir(parents=True)
    (earlier / "result.json").write_text(json.dumps({"peer": "aimet", "status": "error", "wall_s": 7.5,
                                                     "error": "RuntimeError: no config met the goal"}))
    monkeypatch.setattr(bench_peers, "write_result", lambda name, body: (tmp_path / f"{name}.json").write_text(
        json.dumps(body)) and tmp_path / f"{name}.json")
    assert bench_peers.main(["--workloads", "builtin:digits-cnn", "--peers", "aimet", "--no-latency", "--no-qae",
                             "--python", f"aimet={sys.executable}", "--out", str(tmp_path / "m"),
                             "--reuse-peers"]) == 0
    row = json.loads((tmp_path / "peers.json").read_text())["workloads"]["builtin:digits-cnn"]
    assert row["aimet"]["wall_s"] == 7.5 and row["aimet"]["reused_run"] == str(earlier)  # not "missing"
    text = "\n".join(summary.peers_section(json.loads((tmp_path / "peers.json").read_text())))
    assert "Reused from an earlier run (`--reuse-peers`): aimet" in text
    with pytest.raises(SystemExit):
        bench_peers.main(["--reuse-peers"])  # needs --out


def test_a_stored_result_is_reused_only_when_it_is_one(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    for text in ("{not json", "[1, 2]", json.dumps({"wall_s": 3.0}),
                 json.dumps({"status": "ok", "wall_s": 3.0, "model_out": str(tmp_path / "gone.onnx")})):
        path.write_text(text)
        assert bench_peers.stored_result(path) is None, text
    (tmp_path / "m.onnx").write_bytes(b"x")
    path.write_text(json.dumps({"status": "ok", "wall_s": 3.0, "model_out": str(tmp_path / "m.onnx")}))
    assert bench_peers.stored_result(path) == {"status": "ok", "wall_s": 3.0, "model_out": str(tmp_path / "m.onnx")}
