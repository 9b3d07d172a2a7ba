"""``qae search`` end to end on builtin:digits-vit: resume after kill -9, fronts, reports, exports, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.run.archive import Archive, Value
from tests.cli.test_cli_model import assert_one_line_error, qae
from tests.procs import candidate_count

SMALL = ["--generations", "4", "--population", "10", "--seed", "3"]


def _search(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return qae("search", "builtin:digits-vit", "--profile", "hexagon-htp", *SMALL, "--out", str(out), *extra)




@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _search(out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_killed_search_resumes_to_the_same_front(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # A cache of its own: with the reference run's fitness cache every evaluation would be a hit and
    # the run could finish between two polls, before the kill lands.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "QAE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli.main",
            "search",
            "builtin:digits-vit",
            "--profile",
            "hexagon-htp",
            *SMALL,
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 240
    while candidate_count(out / "archive.sqlite") < 15 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the search finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # mid-generation: the second generation is being evaluated
    proc.wait()
    before = candidate_count(out / "archive.sqlite")
    assert 15 <= before < 40
    resumed = qae("search", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr

    archive, ref = Archive(out / "archive.sqlite"), Archive(reference_run / "archive.sqlite")
    cands, ref_cands = archive.candidates("hexagon-htp"), ref.candidates("hexagon-htp")
    assert [c.hash for c in cands] == [c.hash for c in ref_cands]  # same evaluations, same order, once each
    with sqlite3.connect(str(out / "archive.sqlite")) as con:
        dupes = con.execute(
            "SELECT COUNT(*) FROM (SELECT hash, objective, source, COUNT(*) n FROM value_log "
            "GROUP BY target, hash, objective, source HAVING n > 1)"
        ).fetchone()[0]
    assert dupes == 0
    front = json.loads((out / "front.json").read_text())["targets"]["hexagon-htp"]
    ref_front = json.loads((reference_run / "front.json").read_text())["targets"]["hexagon-htp"]
    assert sorted(p["id"] for p in front["points"]) == sorted(p["id"] for p in ref_front["points"])


def test_time_limit_stops_after_a_generation_and_resume_finishes_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # passed as soon as the first generation is in
    first = _search(out, "--time-limit", "0.001", "--sensitivity-probes")
    assert first.returncode == 0, first.stderr
    assert "sensitivity probes skipped" in first.stderr  # asked for, but they would cost too much of the run
    assert "--time-limit 0.001 s reached after generation 1" in first.stderr, first.stderr
    assert f"qae search --resume {out}" in first.stderr
    before = [c.hash for c in Archive(out / "archive.sqlite").candidates("hexagon-htp")]
    assert len(before) == 10  # one generation of --population 10
    assert (out / "front.json").exists()  # the front so far is a result, with its report
    resumed = qae("search", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "--time-limit" not in resumed.stderr  # a limit is for the part it was given to
    after = [c.hash for c in Archive(out / "archive.sqlite").candidates("hexagon-htp")]
    assert after[:10] == before and len(after) == len(set(after)) == 40  # 4 generations, each genome once


def test_sensitivity_probes_run_only_when_asked(tmp_path: Path) -> None:
    from harness.run.config import SearchConfig

    assert SearchConfig(model="m", profiles=[]).sensitivity_probes is False
    stored = SearchConfig(model="m", profiles=[]).to_dict()
    assert SearchConfig.from_dict(stored).sensitivity_probes is False
    del stored["sensitivity_probes"]  # a run stored before the option existed ran them, and resumes so
    assert SearchConfig.from_dict(stored).sensitivity_probes is True
    small = ["--generations", "2", "--population", "50"]  # 14 probes are 14 % of 100 evaluations
    plain = _search(tmp_path / "plain", *small)
    assert plain.returncode == 0, plain.stderr
    assert "sensitivity probes" not in plain.stderr
    asked = _search(tmp_path / "asked", *small, "--sensitivity-probes")
    assert asked.returncode == 0, asked.stderr
    assert "sensitivity probes: 14 evaluations, one layer at a time at w4a8" in asked.stderr


def test_probes_are_skipped_only_when_they_would_eat_a_third_of_the_time_limit() -> None:
    from harness.run.config import SearchConfig
    from harness.run.search import probes_too_dear

    said: list[str] = []
    cfg = SearchConfig(model="m", profiles=[])
    assert not probes_too_dear(cfg, 40, 10.0, said.append)  # no limit: always probe
    cfg.time_limit = 60.0
    assert not probes_too_dear(cfg, 10, 1.0, said.append)  # 15 s of 60
    assert probes_too_dear(cfg, 40, 1.0, said.append)  # 60 s of 60
    assert said == ["sensitivity probes skipped: 40 of them would take about 60 s, more than a third of "
                    "--time-limit 60 s; the first generation holds the uniform and kernel seeds instead"]


def test_front_dominates_or_equals_the_uniform_baselines(reference_run: Path) -> None:
    from harness.run.testsplit import candidate_gene

    archive = Archive(reference_run / "archive.sqlite")
    cfg = archive.config()
    objectives = cfg["objectives"]
    cands = archive.candidates("hexagon-htp")
    front = json.loads((reference_run / "front.json").read_text())["targets"]["hexagon-htp"]["points"]

    def vec(values: dict) -> list[float]:  # type: ignore[type-arg]
        return [-values["accuracy"]["value"] if o == "accuracy" else values[o]["value"] for o in objectives]

    for w, a in ((8, 8), (4, 8)):
        base = next(
            c
            for c in cands
            if all((candidate_gene(c, n)["weight_bits"], candidate_gene(c, n)["activation_bits"]) == (w, a)
                   for n in cfg["layers"])
        )
        b = vec({k: v.to_dict() for k, v in base.values.items()})
        assert any(all(x <= y for x, y in zip(vec(p["objectives"]), b)) for p in front), (w, a)


def test_report_files_and_provenance(reference_run: Path) -> None:
    for name in ("report.html", "front.json", "hypervolume.png", "front_hexagon-htp.png", "heatmap_hexagon-htp.png"):
        assert (reference_run / name).stat().st_size > 1000, name
    page = (reference_run / "report.html").read_text()
    # self-contained, opens offline: images and scripts (plotly.js too) inline, nothing from elsewhere
    assert "data:image/png;base64," in page and "<script>" in page and "id='qae-data'" in page
    assert not re.findall(r"<(?:img|script|iframe|link)[^>]*\s(?:src|href)=[\"'](?!data:)", page)
    front = json.loads((reference_run / "front.json").read_text())["targets"]["hexagon-htp"]
    point = front["points"][0]
    assert point["objectives"]["accuracy"]["source"] == "computed"
    assert point["objectives"]["latency"]["source"] == "predicted"
    assert point["objectives"]["latency"]["device_or_profile"] == "hexagon-htp"
    assert front["recommended"] in {p["id"] for p in front["points"]}


def test_export_writes_genome_overrides_and_model(reference_run: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    proc = qae("export", str(reference_run), "--best", "-o", str(tmp_path / "exp"))
    assert proc.returncode == 0, proc.stderr
    exp = tmp_path / "exp"
    assert "default" in (exp / "genome.yaml").read_text()
    assert "TensorQuantOverrides" in json.loads((exp / "overrides.json").read_text())
    ort.InferenceSession(str(exp / "model.onnx"), providers=["CPUExecutionProvider"])


def test_unmeetable_budget_finishes_and_keeps_the_closest(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = qae(
        "search",
        "builtin:digits-vit",
        "--profile",
        "hexagon-htp",
        "--generations",
        "2",
        "--population",
        "6",
        "--budget",
        "latency=0.000001",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "no candidate met the budgets" in proc.stderr
    # the recommended line says it too, and an export of it warns: it is among the closest, not within
    assert "hexagon-htp (no candidate met the budgets: the closest): recommended " in proc.stdout + proc.stderr
    front = json.loads((out / "front.json").read_text())["targets"]["hexagon-htp"]
    assert front["feasible"] is False and len(front["points"]) > 0
    exported = qae("export", str(out), "--best", "-o", str(tmp_path / "exp"))
    assert exported.returncode == 0, exported.stderr
    assert "warning: no candidate of hexagon-htp met the run's budgets" in exported.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["builtin:digits-vit", "--profile", "no-such-npu"], "no-such-npu"),
        (["builtin:digits-vit", "--profile", "hexagon-htp", "--objectives", "accuracy,speed"], "unknown objective"),
        (["builtin:nope", "--profile", "hexagon-htp"], "unknown builtin model"),
        (["builtin:digits-vit", "--profile", "hexagon-htp", "--budget", "latency=fast"], "is not NAME=NUMBER"),
        (["builtin:digits-vit", "--profile", "hexagon-htp", "--time-limit", "-5"], "not a positive number"),
    ],
)
def test_bad_search_input_is_a_one_line_error(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "run"
    assert_one_line_error(qae("search", *args, "--out", str(out)), needle)
    assert not (out / "archive.sqlite").exists()


def test_archive_merge_rule_and_append_only(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a.sqlite")
    archive.start({"objectives": ["accuracy", "latency"]})
    archive.record(
        "t",
        "h1",
        {"default": {}},
        1,
        False,
        True,
        0.0,
        {"latency": Value(2.0, "predicted", {"profile": "p"})},
        [],
        {"s": 1},
        1,
    )
    archive.add_values("t", "h1", {"latency": Value(3.0, "measured", {"device": "phone"})})
    archive.add_values("t", "h1", {"latency": Value(1.5, "predicted", {"profile": "p", "calibration_id": "c2"})})
    (cand,) = archive.candidates("t")
    assert cand.values["latency"] == Value(3.0, "measured", {"device": "phone"})  # measured beats predicted
    history = archive.value_history("t", "h1")
    assert [(h["value"], h["source"]) for h in history] == [(2.0, "predicted"), (3.0, "measured"), (1.5, "predicted")]
    with pytest.raises(sqlite3.IntegrityError):  # a candidate is recorded once per target
        archive.record("t", "h1", {}, 1, False, True, 0.0, {}, [], {}, 1)
    assert archive.count("t") == 1


def test_probes_are_skipped_when_they_would_be_more_than_their_share_of_the_evaluations() -> None:
    from harness.run.config import SearchConfig
    from harness.run.search import probes_too_dear

    said: list[str] = []
    cfg = SearchConfig(model="m", profiles=[], population=8, generations=5)  # 40 evaluations
    assert not probes_too_dear(cfg, 6, 0.01, said.append)  # 6 of 40 is 15 %
    assert probes_too_dear(cfg, 7, 0.01, said.append)
    assert said == ["sensitivity probes skipped: 7 of them would be more than 15% of the 40 evaluations "
                    "(--population x --generations); the first generation holds the uniform and kernel seeds instead"]
