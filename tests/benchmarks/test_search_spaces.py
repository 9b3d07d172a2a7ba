"""The search benchmark's per-layer spaces (issue 17): qae's own menu, real builds, a cache that holds.

Real models (the digits-cnn built-in), real quantization and scoring; nothing timed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_search
from benchmarks.search_spaces import LayerSpace


def test_layer_space_is_run_search_s_menu_and_scores_each_genome_once(tmp_path: Path) -> None:
    from harness.run.seeds import gene_value, layer_choices

    space = LayerSpace("digits-cnn-layers", tmp_path)
    genes = layer_choices(space.work, space.cfg, __import__("profiles").load_profile("host-cpu-local"))
    assert space.choices == [[gene_value(g) for g in layer] for layer in genes]
    probes = space.probe_genomes()
    assert len(probes) == len(space.names)
    for i, probe in enumerate(probes):  # one layer at w4a8, the rest float, as run_search probes
        decoded = space.space.decode(probe)
        assert [tuple(decoded[n][:2]) for n in space.names] == [
            (4, 8) if j == i else ("fp", "fp") for j in range(len(space.names))]
    rng = np.random.default_rng(0)
    genomes = [space.random_genome(rng) for _ in range(3)]
    rows = [space.rows[g] for g in genomes]
    assert space.evaluation_seconds > 0
    fp32 = space.rows[tuple([0] * len(space.names))]
    assert fp32[0] == 0.0  # no loss against itself
    assert all(r[1] <= fp32[1] for r in rows)  # exact weight bytes: never above FP32
    again = LayerSpace("digits-cnn-layers", tmp_path)
    assert all(np.array_equal(again.rows[g], r) for g, r in zip(genomes, rows))
    assert again.evaluation_seconds == 0.0  # read back, nothing built again


def test_qae_on_a_layer_space_probes_then_seeds_like_run_search(tmp_path: Path, monkeypatch) -> None:
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_search, "_OPEN", {})
    space = bench_search.open_space("digits-cnn-layers")
    budget = 70  # 10 probes are within 15 % of it
    run = bench_search.run_method(space, "qae_sensitivity_probes", 0, budget)
    order = [tuple(g) for g in run["order"]]
    assert len(order) == budget == len(set(order))
    assert order[:10] == space.probe_genomes()
    assert space.space.uniform((8, 8, "symmetric", "per_channel")) in order
    # below the share, the same engine starts from its seeds without probing
    small = bench_search.run_method(space, "qae_sensitivity_probes", 0, 40)
    assert [tuple(g) for g in small["order"][:10]] != space.probe_genomes()
    # qae as qae search runs it by default: no probes, its seeds first
    plain = [tuple(g) for g in bench_search.run_method(space, "qae", 0, 40)["order"]]
    assert not set(plain) & set(space.probe_genomes()) and plain[0] == space.space.uniform(space.seed_values(None)[0])
    # a finished run (stopped by its budget) is one the store gives back
    store = bench_search.RunStore(tmp_path / "runs.sqlite")
    key = bench_search.RunStore.key("s:k", ("s", "qae_sensitivity_probes", 0, 40), "code")
    store.put(key, json.loads(json.dumps(small)))
    assert store.get(key) == json.loads(json.dumps(small))


def test_damaged_cache_rows_and_stored_runs_are_not_trusted(tmp_path: Path) -> None:
    import sqlite3

    space = LayerSpace("digits-cnn-layers", tmp_path)
    genome = tuple([1] * len(space.names))
    row = space.rows[genome].copy()
    db = sqlite3.connect(tmp_path / "digits-cnn-layers.sqlite")
    db.execute("UPDATE rows SET accuracy = 7.0 WHERE genome = ?", ("[" + ", ".join(["1"] * len(space.names)) + "]",))
    db.commit()
    again = LayerSpace("digits-cnn-layers", tmp_path)
    assert np.array_equal(again.rows[genome], row) and again.evaluation_seconds > 0  # evaluated anew
    store = bench_search.RunStore(tmp_path / "runs.sqlite")
    key = bench_search.RunStore.key("s:k", ("s", "qae", 3, 10), "code")
    good = {"method": "qae", "seed": 3, "budget": 10, "order": [[0, 1]], "calls": 1, "distinct_after_call": [1],
            "seconds": 1.0, "evaluation_seconds": 0.5}
    store.put(key, good)
    assert store.get(key) == good
    store.put(key, {**good, "order": [[0, 1]] * 11})  # more genomes than its budget
    assert store.get(key) is None
    store.db.execute("UPDATE runs SET result = 'not json' WHERE key = ?", (key,))
    assert store.get(key) is None


def test_two_open_spaces_each_score_on_their_own_model(tmp_path: Path, monkeypatch) -> None:
    """The benchmark holds several spaces open in one process: each scores its genomes on its own
    workload (before, all on the one whose space was first evaluated in the process), and its cache
    key follows the build version of its own layer kinds (a Conv build change renews digits-cnn's)."""
    from harness.run.evaluation import evaluate_on

    cnn = LayerSpace("digits-cnn-layers", tmp_path)
    vit = LayerSpace("digits-vit-layers", tmp_path)
    rng = np.random.default_rng(3)
    g_cnn, g_vit = cnn.random_genome(rng), vit.random_genome(rng)
    got_cnn, _ = cnn.evaluate(g_cnn)
    got_vit, _ = vit.evaluate(g_vit)
    again, _ = cnn.evaluate(cnn.random_genome(np.random.default_rng(4)))  # after the other one ran
    assert np.isfinite(again).all()
    for space, genome, got in ((cnn, g_cnn, got_cnn), (vit, g_vit, got_vit)):
        direct = evaluate_on(space.work, space.payload(genome))
        assert got[0] == space.fp32 - direct["accuracy"] and got[1] == direct["weight_bytes"]
    assert cnn.key == LayerSpace("digits-cnn-layers", tmp_path / "other").key  # the same key in another folder
    from harness.quant import quantize

    monkeypatch.setattr(quantize, "SCOPED_BUILD_CHANGES", (*quantize.SCOPED_BUILD_CHANGES, (99, frozenset({"Conv"}))))
    assert LayerSpace("digits-cnn-layers", tmp_path / "c").key != cnn.key  # a Conv build change renews it


def test_a_cost_model_change_renews_the_space_key_and_reuses_the_scores(tmp_path: Path, monkeypatch) -> None:
    """The predicted latency is never read from the cache: a changed profile moves it (and the key the
    stored runs are filed under) while the genome's scores come from the cache unchanged."""
    import profiles

    space = LayerSpace("digits-vit-layers", tmp_path)
    genome = tuple([1] * len(space.names))
    row = space.rows[genome].copy()
    real = profiles.load_profile

    def slower(name, *a, **k):
        prof = real(name, *a, **k)
        prof.data["overhead"]["per_inference_us"]["value"] += 1000.0  # 1 ms more on every genome
        return prof

    monkeypatch.setattr(profiles, "load_profile", slower)
    other = LayerSpace("digits-vit-layers", tmp_path)
    got = other.rows[genome]
    assert other.key != space.key and other.score_key == space.score_key
    assert other.evaluation_seconds == 0.0  # scored from the cache
    assert np.array_equal(got[:2], row[:2]) and got[2] == pytest.approx(row[2] + 1.0)


def test_a_space_snapshot_restores_runs_and_scores_on_a_fresh_machine(tmp_path: Path, capsys) -> None:
    """The runs and scores a call leaves in results/bench/search_store come back on a machine with empty
    caches: the stored run is the same run, no genome is scored again; what is malformed is left out."""
    import gzip

    from benchmarks import search_store

    name = "digits-cnn-layers"
    first = tmp_path / "first"
    space = LayerSpace(name, first / "cache")
    run = json.loads(json.dumps(bench_search.run_method(space, "random", 0, 12)))
    store = bench_search.RunStore(first / "cache" / "runs.sqlite")
    key = bench_search.RunStore.key(bench_search.space_key(name, space), (name, "random", 0, 12), "code")
    store.put(key, run)
    missing = bench_search.RunStore.key(bench_search.space_key(name, space), (name, "random", 1, 12), "code")
    other = bench_search.RunStore.key(bench_search.space_key(name, space), (name, "random", 2, 12), "old code")
    store.put(other, {**run, "seed": 2})
    path = search_store.export(first, name, space, store, lambda k: k != other)  # a run of other code stays out
    data = path.read_bytes()
    assert search_store.export(first, name, space, store, lambda k: k != other).read_bytes() == data  # same bytes

    fresh = tmp_path / "fresh"
    search_store.snapshot_path(fresh, name).parent.mkdir(parents=True)
    search_store.snapshot_path(fresh, name).write_bytes(data)
    space2 = LayerSpace(name, fresh / "cache")
    store2 = bench_search.RunStore(fresh / "cache" / "runs.sqlite")
    assert store2.get(key) is None
    assert search_store.load(fresh, name, space2, store2) == (1, len(run["order"]))
    assert store2.get(key) == run and store2.get(missing) is None
    assert all(np.array_equal(space2.rows[tuple(g)], space.rows[tuple(g)]) for g in run["order"])
    assert space2.evaluation_seconds == 0.0  # every score read back
    assert search_store.load(fresh, name, space2, store2) == (0, 0)  # what is there already wins

    # a damaged or foreign snapshot: the malformed parts are left out, with a warning
    body = json.loads(gzip.decompress(data))
    genome = body["rows"][-1][0]
    body["rows"] = [[genome, 7.0, 0.9, 100.0, 0.1],  # accuracy out of range
                    [json.dumps([99] * len(space.names)), 0.9, 0.9, 100.0, 0.1],  # no such choice
                    ["fp32", 0.9, 0.5, None, None]]
    body["runs"] = [[key.replace('"random"', '"qae"'), run],  # the key names another method than the run
                    [json.dumps(["other-space:k", "random", 0, 12, "code"]), run],
                    [key, {**run, "order": [[99] * len(space.names)]}]]  # a genome the space has not got
    third = tmp_path / "third"
    snap = search_store.snapshot_path(third, name)
    snap.parent.mkdir(parents=True)
    snap.write_bytes(gzip.compress(json.dumps(body).encode()))
    space3 = LayerSpace(name, third / "cache")
    store3 = bench_search.RunStore(third / "cache" / "runs.sqlite")
    capsys.readouterr()
    assert search_store.load(third, name, space3, store3) == (0, 0)
    assert "left out 3 malformed run(s) and 3 malformed score row(s)" in capsys.readouterr().err
    snap.write_bytes(data[: len(data) // 2])
    assert search_store.load(third, name, space3, store3) == (0, 0)
    assert "not a readable snapshot" in capsys.readouterr().err
    # another score key (another model, data or build): its scores are not this space's
    snap.write_bytes(gzip.compress(json.dumps({**json.loads(gzip.decompress(data)), "score_key": "0" * 16}).encode()))
    assert search_store.load(third, name, space3, store3, runs=False) == (0, 0)


def test_a_slow_peers_stored_runs_are_shown_without_the_flag(tmp_path: Path, monkeypatch) -> None:
    """BoTorch runs on a per-layer space only with --slow-peers (hours); once a call has stored every run
    of it for this code, a plain call shows it too instead of calling it not run."""
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_search, "_OPEN", {})
    name = "digits-cnn-layers"
    store = bench_search.RunStore(tmp_path / "cache" / "runs.sqlite")
    methods = ("random", "botorch_qparego")
    args = {"budgets": [6], "dev": [], "reported": [200], "methods": methods, "workers": 1, "store": store}
    plain = bench_search.bench_space(name, **args)
    assert set(plain["not_run"]) == {"botorch_qparego"} and plain["methods_run"] == ["random"]
    # what a --slow-peers call would have stored (a stand-in run: random's, under the peer's name)
    job = (name, "botorch_qparego", 200, 6)
    stand_in = {**bench_search.run_method(bench_search.open_space(name), "random", 200, 6), "method": job[1]}
    store.put(bench_search.job_keys([job])[job], json.loads(json.dumps(stand_in)))
    shown = bench_search.bench_space(name, **args)
    assert shown["not_run"] == {} and shown["methods_run"] == list(methods)
    assert "botorch_qparego" in shown["reported"]["runs"]
