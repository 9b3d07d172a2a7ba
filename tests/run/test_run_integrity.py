"""Issue 13, run integrity: what crosses the run folder's boundary is checked, with real processes and files.

A resume refuses changed inputs; one process per run folder; SIGTERM and kill -9 leave no worker
behind; a full disk is one line; paths survive a change of directory; non-finite numbers never reach
the archive."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from harness.run.archive import Archive, Value
from tests.cli.test_cli_model import assert_one_line_error, qae
from tests.procs import candidate_count, children, wait_gone

BUILTIN = Path(__file__).resolve().parents[2] / "harness" / "builtin" / "digits_vit"
SMALL = ["--generations", "2", "--population", "6", "--seed", "1"]
LONG = ["--generations", "60", "--population", "16", "--seed", "1"]




def _start(out: Path, tmp: Path, *extra: str) -> subprocess.Popen[str]:
    """A long search in its own process (own fitness cache, so it cannot finish on cache hits)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "QAE_CACHE_DIR": str(tmp / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli.main", "search", "builtin:digits-vit", "--profile", "hexagon-htp",
         *LONG, "--out", str(out), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_candidates(proc: subprocess.Popen[str], db: Path, n: int = 3) -> None:
    deadline = time.monotonic() + 120
    while candidate_count(db) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""








def _copy_builtin(dest: Path) -> tuple[Path, Path, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    files = [shutil.copy(BUILTIN / name, dest / name) for name in ("model.onnx", "calib.npz", "eval.npz")]
    return Path(files[0]), Path(files[1]), Path(files[2])


def test_resume_refuses_a_changed_model_and_force_starts_a_new_search(tmp_path: Path) -> None:
    model, calib, data = _copy_builtin(tmp_path / "in")
    out = tmp_path / "run"
    first = qae("search", str(model), "--calib", str(calib), "--data", str(data), "--profile", "hexagon-htp",
                *SMALL, "--out", str(out))
    assert first.returncode == 0, first.stderr
    before = candidate_count(out / "archive.sqlite")
    # The model is re-exported to the same path between a crash and the resume.
    proto = onnx.load(str(model))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(0.5), init.name))
    onnx.save(proto, str(model))

    refused = qae("search", "--resume", str(out))
    assert_one_line_error(refused, "model")
    assert "changed content" in refused.stderr and "--force" in refused.stderr
    assert candidate_count(out / "archive.sqlite") == before  # nothing was mixed in

    forced = qae("search", "--resume", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "archive-1.sqlite").is_file()
    new = Archive.open_existing(out / "archive.sqlite", readonly=True)
    old = Archive.open_existing(out / "archive-1.sqlite", readonly=True)
    try:
        assert new.config()["identity"]["model"]["sha256"] != old.config()["identity"]["model"]["sha256"]
        assert {"model", "calib", "data", "profile hexagon-htp"} <= set(new.config()["identity"])
        assert new.count("hexagon-htp") > 0 and new.config()["model_sha256"] != old.config()["model_sha256"]
    finally:
        new.close()
        old.close()


def test_one_search_per_run_folder_and_readers_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(out, tmp_path)
    try:
        _wait_for_candidates(proc, out / "archive.sqlite")
        second = qae("search", "builtin:digits-vit", "--profile", "hexagon-htp", *SMALL, "--out", str(out))
        assert_one_line_error(second, f"is in use by PID {proc.pid}")
        resumed = qae("search", "--resume", str(out))
        assert_one_line_error(resumed, f"is in use by PID {proc.pid}")
        report = qae("report", str(out))  # a reader may read a run in use
        assert report.returncode == 0, report.stderr
    finally:
        proc.kill()
        proc.wait()
    # A read-only command on a missing or 0-byte archive says so and creates nothing.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "archive.sqlite").write_bytes(b"")
    assert_one_line_error(qae("report", str(empty)), "is empty")
    assert (empty / "archive.sqlite").stat().st_size == 0 and not (empty / "archive.sqlite-wal").exists()
    missing = tmp_path / "missing"
    missing.mkdir()
    assert_one_line_error(qae("export", str(missing)), "no archive")
    assert list(missing.iterdir()) == []


def test_sigterm_stops_like_ctrl_c_and_kill9_leaves_no_worker(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(out, tmp_path, "--workers", "2")
    _wait_for_candidates(proc, out / "archive.sqlite")
    workers = children(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == f"qae: interrupted: continue with `qae search --resume {out}`"
    assert "Traceback" not in err
    assert wait_gone(workers) == set()

    # kill -9 of a resumed run's parent: its workers find their parent gone and exit.
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli.main", "search", "--resume", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "QAE_CACHE_DIR": str(tmp_path / "cache2")},
    )
    deadline = time.monotonic() + 120
    while len(children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) >= 2 and proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_gone(workers) == set(), "workers outlived their parent's kill -9"


def test_full_disk_is_one_line_and_the_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"

    def small_files() -> None:  # a real EFBIG on writes past 300 KB (not a kill by SIGXFSZ)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli.main", "search", "builtin:digits-vit", "--profile", "hexagon-htp",
         *SMALL, "--out", str(out)],
        capture_output=True, text=True, timeout=300, preexec_fn=small_files,
        env={**os.environ, "QAE_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("qae: error: cannot write") and f"qae search --resume {out}" in last, last
    resumed = qae("search", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr


def test_resume_works_from_another_directory_and_takes_devices(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _copy_builtin(work)
    (work / "devices.yaml").write_text("devices: {}\n")
    (tmp_path / "other.yaml").write_text("devices: {}\n")
    first = qae("search", "model.onnx", "--calib", "calib.npz", "--data", "eval.npz", "--profile", "hexagon-htp",
                "--devices", "devices.yaml", *SMALL, "--out", "run", cwd=work)
    assert first.returncode == 0, first.stderr
    cfg = json.loads(sqlite3.connect(str(work / "run" / "archive.sqlite")).execute(
        "SELECT config FROM runs").fetchone()[0])
    for key in ("model", "calib", "data", "devices_file"):
        assert Path(cfg[key]).is_absolute() and Path(cfg[key]).is_file(), (key, cfg[key])
    resumed = qae("search", "--resume", str(work / "run"), "--devices", str(tmp_path / "other.yaml"), cwd=Path("/"))
    assert resumed.returncode == 0, resumed.stderr
    cfg = json.loads(sqlite3.connect(str(work / "run" / "archive.sqlite")).execute(
        "SELECT config FROM runs").fetchone()[0])
    assert cfg["devices_file"] == str(tmp_path / "other.yaml")


@pytest.mark.parametrize("budget", ["latency=nan", "latency=inf", "size=-inf"])
def test_non_finite_budget_is_refused(tmp_path: Path, budget: str) -> None:
    proc = qae("search", "builtin:digits-vit", "--profile", "hexagon-htp", "--budget", budget, "--out",
               str(tmp_path / "run"))
    assert_one_line_error(proc, "positive finite number")


def test_archive_turns_bad_values_into_error_records(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive.sqlite")
    archive.start({"model": "m", "profiles": []})
    bad = {"accuracy": Value(float("nan"), "computed", {}), "size": Value(10.0, "computed", {})}
    archive.record("t", "h1", {}, 1, False, True, 0.0, bad, [], {"s": 1}, 1)
    [cand] = archive.candidates("t")
    assert cand.feasible is False and set(cand.values) == {"size"}
    assert [e["error_kind"] for e in archive.errors("t")] == ["INVALID_VALUE"]
    # A device reply with a NaN p50 is a failed job, closed once (never queued again).
    assert archive.queue_job("t", "h1")
    ok = archive.finish_job("t", "h1", "dev", {"latency": Value(math.nan, "measured", {})}, None, None)
    assert ok is False
    assert archive.jobs("t", "queued") == [] and archive.jobs("t", "failed")[0]["attempts"] == 1
    with pytest.raises(Exception, match="standard JSON"):
        archive.update_config({"budgets": {"latency_ms": math.inf}})
    archive.close()
