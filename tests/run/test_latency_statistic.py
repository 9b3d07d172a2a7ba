"""Predicted and measured latency compared like with like: a profile calibrated on min latency says so,
its predictions carry it, and a prediction gap compares it with the measured min, not the p50."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from harness.run.archive import Archive, Value
from harness.run.evaluation import latency_statistic_of
from harness.run.hil import ScaledTable, gap_statistics, measured_as
from profiles import load_profile


def test_a_calibrated_profile_names_the_statistic_it_predicts() -> None:
    shipped = load_profile("host-cpu-local")
    assert str(shipped.calibration["statistic"]).startswith("min ")  # what calibrate wrote
    assert shipped.latency_statistic == "min"
    assert load_profile("arm-neon-a76").latency_statistic is None  # public figures name no statistic


def test_a_table_predicts_its_profiles_statistic_until_an_online_fit() -> None:
    class Table:  # the one attribute latency_statistic_of reads of a CostTable
        profile = load_profile("host-cpu-local")

    assert latency_statistic_of(Table()) == "min"
    assert ScaledTable(Table(), 1.0, None, None).statistic == "min"
    assert ScaledTable(Table(), 1.2, "online:x:n3", 0.05, statistic="p50").statistic == "p50"


def test_the_measured_side_of_a_gap_is_the_predictions_statistic() -> None:
    value = Value(1.30, "measured", {"statistic": "p50", "min_ms": 1.05})
    assert measured_as(value, "min") == ("min", 1.05)
    assert measured_as(value, "p50") == ("p50", 1.30)
    assert measured_as(value, None) == ("p50", 1.30)
    older = Value(1.30, "measured", {"statistic": "p50"})  # a value stored before min_ms was kept
    assert measured_as(older, "min") == ("p50", 1.30)
    broken = Value(1.30, "measured", {"statistic": "p50", "min_ms": 0.0})  # a zero fastest run: not compared
    assert measured_as(broken, "min") == ("p50", 1.30)
    assert gap_statistics([{"statistic": "min"}, {"statistic": "min"}]) == "min"
    assert gap_statistics([{"statistic": "min"}, {"statistic": "p50"}]).startswith("min or p50")


def test_an_archive_from_before_the_statistic_column_is_read_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite"
    Archive(path).close()
    db = sqlite3.connect(path)  # the gaps table as archives written before it had the column
    db.executescript("DROP TABLE gaps; CREATE TABLE gaps (target TEXT NOT NULL, generation INTEGER NOT NULL, "
                     "hash TEXT NOT NULL, device TEXT NOT NULL, predicted REAL NOT NULL, measured REAL NOT NULL, "
                     "fit_n INTEGER NOT NULL, calibration_id TEXT, created REAL NOT NULL);"
                     "INSERT INTO gaps VALUES ('local', 0, 'abc', 'local', 1.0, 1.2, 0, 'c1', 0.0);")
    db.close()
    reader = Archive(path, readonly=True)  # a read-only open does not change the file
    assert [g["statistic"] for g in reader.gaps("local")] == ["p50"]  # what was compared then
    reader.close()
    archive = Archive(path)
    assert archive.queue_job("local", "def")
    values = {"latency": Value(1.3, "measured", {"unit": "ms", "statistic": "p50", "min_ms": 1.1})}
    gap = {"generation": 1, "predicted": 1.0, "measured": 1.1, "statistic": "min", "fit_n": 0, "calibration_id": "c1"}
    assert archive.finish_job("local", "def", "local", values, gap, None)
    assert [(g["hash"], g["statistic"]) for g in archive.gaps("local")] == [("abc", "p50"), ("def", "min")]
    archive.close()
