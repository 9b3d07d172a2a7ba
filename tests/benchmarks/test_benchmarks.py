"""Smoke test of the benchmark suite: the search-quality comparison on a tiny synthetic table.

No timing is asserted: only that every method runs under the shared budget counting and that the
JSON and summary have the shape ``make bench`` promises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import bench_search, common, summary


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return tmp_path


#: the Bayesian peers take seconds per proposal: the smoke test leaves them to
#: test_every_method_stays_within_budget
SLOW = {"optuna_gp", "botorch_qparego", "botorch_qnehvi"}
FAST = [m for m in (*bench_search.METHODS, *bench_search.ABLATIONS) if m not in SLOW]


def test_search_quality_json_shape(results: Path) -> None:
    assert bench_search.main(["--synthetic", "--budgets", "20,40", "--seeds", "2", "--dev-seeds", "1",
                              "--odds-seeds", "0", "--methods", ",".join(FAST)]) == 0
    data = json.loads((results / "search_quality.json").read_text())
    assert set(data["median_hv_ratio"]) == {"20", "40"}
    for row in data["median_hv_ratio"].values():
        assert set(row) == set(bench_search.METHODS) - SLOW
        for ratio in row.values():
            assert 0.0 <= ratio <= 1.0 + 1e-9
    for name, run in data["runs"].items():
        assert all(used <= 40 for used in run["evaluations_used"]), name
    # development and reported seeds are kept apart, each with its own table
    assert data["seeds"] == data["reported_seeds"] == [200, 201] and data["dev_seeds"] == [0]
    assert not set(data["seen_seeds"]) & set(data["reported_seeds"])  # seeds once looked at are never reported
    space = data["spaces"]["synthetic"]
    assert data["odds_seeds"] == [] and "corner_odds" not in space
    assert space["dev"]["runs"]["qae"]["seeds"] == [0] and space["reported"]["runs"]["qae"]["seeds"] == [200, 201]
    assert all(run["method_seconds_per_run"] >= 0 for run in space["reported"]["runs"].values())
    key = data["most_accurate_corner"]
    assert 0.0 < key["share"] <= 1.0 and len(key["genomes"]) >= key["points"] >= 1
    assert all(len(run["most_accurate_corner_found"]) == 2 for run in data["runs"].values())
    for run in data["runs"].values():  # when each run first had one: consistent with whether it did
        firsts = run["most_accurate_corner_first"]
        assert [f is not None for f in firsts] == run["most_accurate_corner_found"]
        assert all(f is None or 1 <= f <= used for f, used in zip(firsts, run["evaluations_used"]))
    assert {"machine", "date", "onnxruntime"} <= set(data["environment"])
    path = summary.write_summary(results)
    text = path.read_text()
    assert "## Search quality" in text and "| qae |" in text
    # the corner's line is written where missing it costs at least 1 % of the hypervolume
    assert ("alone hold " in text) == (key["share"] >= 0.01)
    if key["share"] >= 0.01:
        qae = data["runs"]["qae"]["most_accurate_corner_first"]
        counts = "/".join(str(sum(1 for f in qae if f is not None and f <= b)) for b in (20, 40))
        assert "by 20/40 evaluations: " in text and f"qae {counts} of 2" in text


def test_the_odds_of_the_corner_count_runs_per_seed_with_exact_intervals(
        results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import math

    monkeypatch.setattr(bench_search, "TRUE_FRONT_BARS", {"40": 0.9})  # the synthetic budgets' own bar
    assert bench_search.main(["--synthetic", "--budgets", "20,40", "--seeds", "3", "--dev-seeds", "1",
                              "--odds-seeds", "8", "--methods", "qae,random"]) == 0
    data = json.loads((results / "search_quality.json").read_text())
    assert data["odds_seeds"] == list(range(500, 508))
    assert not set(data["odds_seeds"]) & set(data["reported_seeds"])
    odds = data["spaces"]["synthetic"]["corner_odds"]
    table = bench_search.synthetic_table()
    n_all, k_corner = len(table.rows), odds["corner_genomes"]
    assert odds["space_size"] == n_all and k_corner >= 1 and odds["runs_needed"] == 2  # more than half of 3
    for b, p in odds["uniform_sample_holds_corner"].items():  # 1 - P(no corner genome in B draws without replacement)
        none = math.prod((n_all - k_corner - i) / (n_all - i) for i in range(int(b)))
        assert p == pytest.approx(1.0 - none)
    runs = [bench_search.run_method(table, m, seed, 40) for m in ("qae", "random") for seed in range(500, 508)]
    reference = bench_search.Reference.of(table, runs)
    for m, row in odds["methods"].items():
        assert row["seeds"] == [500, 507]
        mine = [r for r in runs if r["method"] == m]
        corner = {tuple(g) for g in reference.genomes if tuple(reference.genomes[g].tolist()) in
                  {tuple(p) for p in reference.front[reference.front[:, 0] <= reference.front[:, 0].min()].tolist()}}
        for b in ("20", "40"):
            e = row["corner_by"][b]
            assert e["n"] == 8 and e["k"] == sum(any(tuple(g) in corner for g in r["order"][:int(b)]) for r in mine)
            assert e["ci95"][0] <= e["k"] / 8 <= e["ci95"][1]
        assert row["corner_by"]["20"]["k"] <= row["corner_by"]["40"]["k"]
        bar = row["bars"]["40"]
        ratios = [reference.hv(np.array([table.rows[tuple(g)] for g in r["order"]])) / reference.hv(reference.front)
                  for r in mine]
        assert bar["k"] == sum(v >= 0.9 for v in ratios) and set(row["bars"]) == {"40"}
        q = bar["share"]  # at least 2 of 3 reported runs at the bar: what puts their median there
        assert bar["median_of_reported_reaches"] == pytest.approx(sum(
            math.comb(3, j) * q ** j * (1 - q) ** (3 - j) for j in (2, 3)))
        lo, hi = bar["median_of_reported_reaches_ci95"]
        assert lo <= bar["median_of_reported_reaches"] <= hi
    text = summary.write_summary(results).read_text()
    assert "How often one run gets there (development seeds 500-507, 8 runs per method" in text
    assert "| >= 0.90 at 40 | median of 3 reaches it |" in text


def test_a_missed_bar_says_how_often_a_median_would_reach_it() -> None:
    def bar(k: int, chance: float) -> dict[str, Any]:
        return {"bars": {"200": {"k": k, "n": 60, "median_of_reported_reaches": chance}}}

    odds = {"reported_seeds": 10, "methods": {"qae": bar(20, 0.08), "random": bar(0, 0.0), "other": bar(23, 0.14)}}
    said = summary._odds_of_bar(odds, "200")
    assert said == (" (on 60 development seeds 20 runs reach it, so a median of 10 seeds does with 8 % chance; the "
                    "best of any method: other, 14 %)")
    assert summary._odds_of_bar(None, "200") == summary._odds_of_bar(odds, "400") == ""


def test_oracle_counts_distinct_genomes_once() -> None:
    table = bench_search.synthetic_table()
    oracle = bench_search.Oracle(table, budget=2)
    genomes = list(table.rows)
    oracle(genomes[0])
    oracle(genomes[0])
    oracle(genomes[1])
    assert oracle.count == 2 and oracle.calls == 3
    oracle(genomes[1])  # a repeat is free even when the budget is spent
    with pytest.raises(bench_search.BudgetSpent):
        oracle(genomes[2])


def test_every_method_stays_within_budget() -> None:
    table = bench_search.synthetic_table()
    for name, runner in bench_search.RUNNERS.items():
        # the Bayesian peers' first 10 genomes are random: 12 make them pick 2 by their model
        oracle = bench_search.Oracle(table, budget=12 if name in SLOW else 15)
        try:
            runner(oracle, 0)
        except bench_search.BudgetSpent:
            pass
        assert 0 < oracle.count <= oracle.budget, name
        assert len(set(oracle.order)) == oracle.count


def test_the_summary_shows_the_finetune_results(results: Path) -> None:
    """The fine-tune part's section is written from its JSON (the committed results, copied)."""
    import shutil

    shipped = Path(__file__).resolve().parents[2] / "results" / "bench"
    for name in ("finetune.json", "finetune_minilm.json"):
        shutil.copy(shipped / name, results / name)
    text = summary.write_summary(results).read_text()
    section = text.split("## Fine-tuning", 1)[1]
    chosen = json.loads((results / "finetune.json").read_text())["claims"]["6.2x"]["chosen_on_validation"]
    assert chosen["hash"][:12] in section and f"{chosen['compression']:.2f}x" in section
    minilm = json.loads((results / "finetune_minilm.json").read_text())
    verdict = "met" if minilm["claim_cosine_0.99_at_half_dynamic_bytes"] else "not met"
    assert "dynamic_int8" in section and f"0.99 on test at half of dynamic int8's bytes: {verdict}" in section
    if isinstance(minilm.get("latency"), dict):  # measured: each model's p50 with its interval, and the machine's state
        assert "Latency, measured" in section and minilm["latency"]["machine"] in section
        for row in minilm["latency"]["models"].values():
            assert f"{row['latency_ms']:.2f} [{row['p50_ci95'][0]:.2f}, {row['p50_ci95'][1]:.2f}]" in section


def test_the_summary_shows_the_cost_model_results(results: Path) -> None:
    """The cost-model section is written from its JSON (the committed results, copied): the reported
    seed and the fitted MiniLM candidates' ablation with their count."""
    import shutil

    shipped = Path(__file__).resolve().parents[2] / "results" / "bench"
    shutil.copy(shipped / "costmodel.json", results / "costmodel.json")
    data = json.loads((results / "costmodel.json").read_text())
    text = summary.write_summary(results).read_text()
    assert f"seed {data['reported_seed']}" in text
    if data.get("ablation_without_minilm_candidates"):
        assert f"without the {data['minilm_candidates_fitted']} fitted MiniLM candidates" in text


def test_a_subset_of_spaces_keeps_the_others_marked(tmp_path: Path) -> None:
    """Re-running one space keeps the other spaces' earlier results, marked with their date and calibration."""
    path = tmp_path / "search_quality.json"
    prev = {"environment": {"date": "2026-12-01 10:00:00 UTC"}, "calibration_id": "abc",
            "spaces": {"digits-vit-layers": {"kind": "per-layer"}, "digits-vit-groups": {"kind": "enumerated"},
                       "not-a-space": {}}}
    path.write_text(json.dumps(prev))
    kept = bench_search.carried_spaces(path, ["digits-vit-groups"])
    assert kept == {"digits-vit-layers": {"kind": "per-layer", "date": "2026-12-01 10:00:00 UTC",
                                          "calibration_id": "abc", "carried": True}}
    path.write_text("{not json")
    assert bench_search.carried_spaces(path, ["digits-vit-groups"]) == {}


def test_search_runs_of_other_code_are_flagged_stale() -> None:
    """The summary marks search-quality runs made by other engine or benchmark code than the checkout's
    (their qae rows are another engine's), and only those."""
    now = bench_search.code_version()
    assert summary._stale(now) == []
    for recorded in (None, "0" * 16):
        (line, _) = summary._stale(recorded)
        assert line.startswith("**Stale:**") and now in line and (recorded or "not recorded") in line
    # per method (today's format): only the methods whose code changed are named
    versions = {m: bench_search.code_version(m) for m in ("qae", "optuna_nsga2", "botorch_qparego")}
    assert summary._stale(versions) == []
    (line, _) = summary._stale({**versions, "qae": "0" * 16, "gone_method": "1" * 16})
    assert line.startswith("**Stale:**") and "qae" in line and "gone_method" in line and "optuna" not in line


def test_search_runs_predicted_by_another_cost_model_are_flagged() -> None:
    """The summary marks a space whose runs predicted latency with another profile or cost model than the
    checkout's (recorded latency version; before it was recorded, the calibration id), and only such."""
    from profiles import load_profile

    space = "digits-vit-layers"
    now = bench_search.latency_version(space)
    assert summary._stale_latency(space, {"latency_version": now}) == []
    assert summary._stale_latency(space, {"calibration_id": load_profile(bench_search.PROFILE).calibration_id}) == []
    for sp in ({"latency_version": "0" * 16}, {"calibration_id": "abc"}, {}):
        (line, _) = summary._stale_latency(space, sp)
        assert line.startswith("**Latencies of another cost model:**") and ("0" * 16 in line or "abc" in line
                                                                            or "not recorded" in line)
    assert bench_search.latency_version(space, "arm-neon-a76") != now
    assert bench_search.latency_version("digits-vit-groups") != bench_search.latency_version(
        "digits-vit-groups", "arm-neon-a76")


def test_an_engine_change_keeps_the_peers_stored_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """qae's runs depend on the engine (search/), a peer's only on its runner and the shared parts: the
    slow Bayesian peers are not re-run because the engine changed."""
    import shutil

    import search

    versions = {m: bench_search.code_version(m) for m in bench_search.RUNNERS}
    assert len({versions[m] for m in ("qae", "qae_unseeded", "optuna_nsga2", "optuna_motpe", "botorch_qparego",
                                      "random")}) == 6
    copy = tmp_path / "search"
    shutil.copytree(Path(search.__file__).parent, copy)
    (copy / "engine.py").write_text((copy / "engine.py").read_text() + "\n# an engine change\n")
    monkeypatch.setattr(search, "__file__", str(copy / "__init__.py"))
    after = {m: bench_search.code_version(m) for m in bench_search.RUNNERS}
    changed = {m for m in versions if versions[m] != after[m]}
    assert changed == {"qae", *bench_search.ABLATIONS}


def test_slow_peers_run_on_the_per_layer_spaces_only_when_asked() -> None:
    """``--slow-peers`` lets qParEGO onto the per-layer spaces; Optuna's GP sampler stays out, and an
    enumerated space runs every method asked for."""
    methods = list(bench_search.METHODS)
    plain = bench_search.not_run(False, methods, slow_peers=False)
    assert set(plain) == {"optuna_gp", "botorch_qparego"} and all(plain.values())
    assert set(bench_search.not_run(False, methods, slow_peers=True)) == {"optuna_gp"}
    assert bench_search.not_run(True, methods, slow_peers=False) == {}
    assert bench_search.not_run(False, ["qae", "random"], slow_peers=False) == {}


def test_cost_model_benchmark_offline_fits_the_stored_measurements_and_measures_nothing(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """--offline judges a change to the fit or the layer split on the same measurements: with nothing
    stored it stops at the first model (one line naming the fix), after a measuring run it reuses every
    measurement, fits the same profile, and says when they were taken."""
    import json

    from benchmarks import bench_costmodel

    monkeypatch.setattr(bench_costmodel, "OUT", tmp_path)
    monkeypatch.setenv("QAE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as stop:
        bench_costmodel.main(["--quick", "--offline"])
    assert "not in the measurement store" in str(stop.value) and "without --offline" in str(stop.value)
    assert not (tmp_path / "costmodel.json").exists()
    assert bench_costmodel.main(["--quick"]) == 0
    measured = json.loads((tmp_path / "costmodel.json").read_text())
    assert measured["measured"] > 0 and measured["offline"] is False
    assert bench_costmodel.main(["--quick", "--offline"]) == 0
    again = json.loads((tmp_path / "costmodel.json").read_text())
    assert again["offline"] is True and again["measured"] == 0 and again["reused"] == measured["measured"]
    assert again["heldout"] == measured["heldout"] and again["fit"] == measured["fit"]
    assert again["measured_at"]["records"] == measured["measured"] and again["measured_at"]["first"]
