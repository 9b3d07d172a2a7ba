"""The caches on disk (fitness cache, calibration ranges) are validated when read and heal themselves.

A damaged cache is never fatal and never trusted: a fitness cache that fails to open is moved aside
(``.corrupt``) and rebuilt with a one-line warning, a bad entry is recomputed, and calibration ranges
of the wrong shape, non-finite, swapped or absurd are recomputed with a warning (issue 13).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from harness.quant.evalcache import EvalCache

GOOD = {
    "accuracy": 0.97, "metric": "top1", "n": 64, "file_bytes": 1000, "weight_bytes": 500,
    "stored_weight_bytes": 500, "emulated": False, "emulated_layers": [], "top1_agreement": 0.99,
    "mean_cosine": 0.999, "labelled_accuracy": 0.97, "scores": {"logits": {"top1": 0.97, "cosine": 0.999}},
    "sqnr_db": 31.5, "metric_note": "top-1 against labels",
}


def _one_warning(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("qae: warning:")
    return lines[0]


def test_corrupt_fitness_cache_is_moved_aside_and_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evals.sqlite"
    path.write_bytes(b"this is not an SQLite database, it was cut by a full disk\n" * 100)
    cache = EvalCache(path)  # was: sqlite3.DatabaseError "file is not a database" in every search
    line = _one_warning(capsys.readouterr().err)
    assert "evals.sqlite.corrupt" in line and "rebuilt" in line
    assert (tmp_path / "evals.sqlite.corrupt").read_bytes().startswith(b"this is not")
    assert cache.get("m", "g", "s") is None
    cache.put("m", "g", "s", GOOD)
    assert cache.get("m", "g", "s") == GOOD
    cache.close()
    again = EvalCache(path)  # the rebuilt cache is a good one: no warning, the entry is there
    assert again.get("m", "g", "s") == GOOD and capsys.readouterr().err == ""
    again.close()


def test_fitness_cache_with_a_foreign_table_is_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evals.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE evals (x INTEGER)")
    db.commit()
    db.close()
    cache = EvalCache(path)
    assert "corrupt" in _one_warning(capsys.readouterr().err)
    cache.put("m", "g", "s", GOOD)
    assert cache.get("m", "g", "s") == GOOD
    cache.close()


@pytest.mark.parametrize(
    "stored",
    [
        "not json at all",
        json.dumps({**GOOD, "accuracy": float("nan")}),
        json.dumps({**GOOD, "sqnr_db": float("inf")}),
        json.dumps({**GOOD, "scores": {"logits": {"top1": float("nan")}}}),
        json.dumps({**GOOD, "accuracy": "0.97"}),
        json.dumps({k: v for k, v in GOOD.items() if k != "file_bytes"}),
        json.dumps([1, 2, 3]),
    ],
)
def test_bad_fitness_entry_is_recomputed(tmp_path: Path, capsys: pytest.CaptureFixture[str], stored: str) -> None:
    path = tmp_path / "evals.sqlite"
    cache = EvalCache(path)
    cache.put("m", "g", "s", GOOD)
    cache.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE evals SET result = ?", (stored,))
    db.commit()
    db.close()
    cache = EvalCache(path)
    assert cache.get("m", "g", "s") is None  # a miss: the caller evaluates the genome again
    assert "recomputed" in _one_warning(capsys.readouterr().err)
    assert cache.misses == 1 and cache.hits == 0
    cache.put("m", "g", "s", GOOD)
    assert cache.get("m", "g", "s") == GOOD
    cache.close()


# -- calibration ranges --------------------------------------------------------------------------
def _calib_file(cache: Path) -> Path:
    files = list((cache / "calib").glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def _damage(body: dict, how: str) -> str:
    ranges = body["ranges"]
    name = sorted(k for k in ranges if k != "pixels")[0]
    if how == "shape":
        ranges[name] = [0.0, 1.0, 2.0]
    elif how == "nan":
        ranges[name] = [float("nan"), 1.0]
    elif how == "swapped":
        for key, (lo, hi) in ranges.items():
            ranges[key] = [hi, lo]
    elif how == "huge":
        ranges[name] = [-1e300, 1e300]
    elif how == "input_wide":
        ranges["pixels"] = [-1e4, 1e4]
    elif how == "not_json":
        return "{\"ranges\": {"
    elif how == "empty":
        body["ranges"] = {}
    return json.dumps(body)  # NaN is written as NaN, which Python's json reads back


@pytest.mark.parametrize("how", ["shape", "nan", "swapped", "huge", "input_wide", "not_json", "empty"])
def test_damaged_calibration_cache_is_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    from harness.quant.workload import Workload

    monkeypatch.setenv("QAE_CACHE_DIR", str(tmp_path))
    first = Workload.open("builtin:digits-vit")
    assert not first.ranges_from_cache and "pixels" in first.ranges
    path = _calib_file(tmp_path)
    path.write_text(_damage(json.loads(path.read_text()), how))
    capsys.readouterr()
    again = Workload.open("builtin:digits-vit")  # was: a traceback, or the damaged ranges used silently
    assert "recomputed" in _one_warning(capsys.readouterr().err)
    assert not again.ranges_from_cache and again.ranges == first.ranges
    third = Workload.open("builtin:digits-vit")  # the rewritten cache is good again
    assert third.ranges_from_cache and capsys.readouterr().err == ""
