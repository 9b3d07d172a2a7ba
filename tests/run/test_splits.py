"""Three splits: the search optimises on validation, never reads the test split, and reports on it.

The "never reads" test watches the real evaluator: every ``Workload.evaluate`` call is recorded
(and still runs), and none asks for the test split before the search has finished."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.core.model import builtin_data
from harness.quant.workload import Workload
from harness.run import search as search_module
from harness.run.archive import Archive
from harness.run.config import SearchConfig
from harness.run.search import run_search
from tests.cli.test_cli_model import assert_one_line_error, qae


def test_holdout_is_disjoint_stratified_recorded_and_reproducible() -> None:
    work = Workload.open("builtin:digits-vit", holdout=0.3)
    split = work.splits["holdout"]
    val, test = split["validation_indices"], split["test_indices"]
    assert not set(val) & set(test) and sorted(val + test) == list(range(270))
    assert work.test_data is not None and work.eval_data is not None
    assert (work.eval_data.n, work.test_data.n) == (189, 81)
    with np.load(builtin_data("digits-vit", "eval")) as npz:
        labels = npz["labels"]
    assert np.array_equal(work.test_data.labels, labels[test])  # the recorded indices are the samples used
    counts = np.bincount(work.test_data.labels, minlength=10)
    assert counts.min() >= 7 and counts.max() <= 9  # stratified: ~8 of each of the 10 digits
    again = Workload.open("builtin:digits-vit", holdout=0.3)
    assert again.splits["holdout"]["test_indices"] == test
    assert work.eval_data.sha256 != again.test_data.sha256  # caches never mix the parts


def test_builtin_search_reports_on_its_shipped_test_split() -> None:
    work = Workload.open("builtin:digits-vit")
    assert work.test_data is not None and work.eval_data is not None
    assert work.splits["test"]["from"] == "builtin" and work.test_data.path.name == "test.npz"
    assert work.test_data.sha256 != work.eval_data.sha256


def test_the_search_never_reads_a_test_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test split whose labels are scrambled scores far below validation: had the engine seen it,
    the told objectives would show it. Every evaluation during the search is on validation."""
    with np.load(builtin_data("digits-vit", "eval")) as npz:
        pixels, labels = npz["pixels"], npz["labels"]
    test_file = tmp_path / "scrambled.npz"
    np.savez(test_file, pixels=pixels[:120], labels=(labels[:120] + 3) % 10)
    calls: list[tuple[str, bool]] = []
    phase = {"test": False}
    real_evaluate, real_score = Workload.evaluate, search_module.score_test

    def recording_evaluate(self: Workload, *args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs.get("split", "validation"), phase["test"]))
        return real_evaluate(self, *args, **kwargs)

    def recording_score(*args: Any, **kwargs: Any) -> Any:
        phase["test"] = True
        return real_score(*args, **kwargs)

    monkeypatch.setattr(Workload, "evaluate", recording_evaluate)
    monkeypatch.setattr(search_module, "score_test", recording_score)
    cfg = SearchConfig(model="builtin:digits-vit", profiles=["hexagon-htp"], generations=2, population=6, seed=1,
                       test=str(test_file))
    archive = run_search(cfg, tmp_path / "run", say=lambda _m: None)
    try:
        during = [split for split, after in calls if not after]
        assert during and set(during) == {"validation"}
        assert {split for split, after in calls if after} == {"test"}
        cands = archive.candidates("hexagon-htp")
        assert all(c.values["accuracy"].detail["split"] == "validation" for c in cands)
        told = {tuple(r["genome"]): r["objectives"][0] for r in archive.engine_records("hexagon-htp")}
        assert max(told.values()) < 0.2  # accuracy losses against validation FP32, not ~0.9 from the test
        rows = archive.test_scores()
        fp32 = rows["fp32"]
        assert fp32["split"] == "test" and fp32["n"] == 120 and fp32["value"] < 0.2
        assert fp32["validation"]["value"] > 0.9
        front = [h for h, r in rows.items() if any(x.startswith("front:") for x in r["roles"])]
        assert front
        for h in front:
            row = rows[h]
            assert row["ci95"][0] <= row["value"] <= row["ci95"][1]
            assert row["vs"]["fp32"]["verdict"] in ("better", "worse", "within noise")
    finally:
        archive.close()


def test_a_finished_run_rescores_a_changed_test_file_on_resume(tmp_path: Path) -> None:
    with np.load(builtin_data("digits-vit", "test")) as npz:
        pixels, labels = npz["pixels"], npz["labels"]
    test_file = tmp_path / "test.npz"
    np.savez(test_file, pixels=pixels[:100], labels=labels[:100])
    cfg = SearchConfig(model="builtin:digits-vit", profiles=["hexagon-htp"], generations=1, population=4,
                       test=str(test_file))
    run_search(cfg, tmp_path / "run", say=lambda _m: None).close()
    np.savez(test_file, pixels=pixels[100:160], labels=labels[100:160])
    said: list[str] = []
    archive = run_search(cfg, tmp_path / "run", resume=True, say=said.append)
    try:
        assert any("test split changed" in m for m in said)
        assert {r["n"] for r in archive.test_scores().values()} == {60}
    finally:
        archive.close()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--holdout", "1.5"], "not a fraction"),
        (["--holdout", "0.999"], "leaves"),
        (["--test", "DATA"], "same file as --data"),
        (["--test", "missing.npz"], "not found"),
    ],
)
def test_bad_split_input_is_a_one_line_error(tmp_path: Path, extra: list[str], needle: str) -> None:
    data = str(builtin_data("digits-vit", "eval"))
    extra = [data if x == "DATA" else str(tmp_path / x) if x.endswith(".npz") else x for x in extra]
    out = tmp_path / "run"
    proc = qae("search", "builtin:digits-vit", "--profile", "hexagon-htp", "--data", data, *extra,
               "--generations", "1", "--population", "4", "--out", str(out))
    assert_one_line_error(proc, needle)
    assert not (out / "archive.sqlite").exists()


def test_test_data_without_the_labels_validation_has_is_refused(tmp_path: Path) -> None:
    with np.load(builtin_data("digits-vit", "test")) as npz:
        np.savez(tmp_path / "unlabelled.npz", pixels=npz["pixels"])
    with pytest.raises(Exception, match="labels"):
        Workload.open("builtin:digits-vit", test_data=tmp_path / "unlabelled.npz")


def test_archive_rows_survive_a_read_only_reopen(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a.sqlite")
    archive.start({"model": "m", "profiles": [], "objectives": ["accuracy"], "seed": 0})
    archive.set_test_scores([{"hash": "fp32", "value": 0.9, "roles": ["fp32"]}])
    archive.close()
    ro = Archive.open_existing(tmp_path / "a.sqlite", readonly=True)
    try:
        assert ro.test_scores()["fp32"]["value"] == 0.9
    finally:
        ro.close()
