"""Fault scenarios of a search run (issue 13): each kills, interrupts or starves a real ``qae search``
and reports what the run folder holds afterwards. Run by ``python -m benchmarks.bench_faults``.

Every scenario is ``fn(workdir) -> {"outcome", "detail", "archive", "lost", "duplicated", "orphans"}``
with outcome ``survived`` (the run went on, or resumed to the same result), ``clean error`` (one
line naming the fix, nothing written wrong) or ``FAILED``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "harness" / "builtin" / "digits_vit"
SMALL = ["--generations", "3", "--population", "8", "--seed", "2"]
LONG = ["--generations", "60", "--population", "16", "--seed", "2"]
PROFILE = ["--profile", "hexagon-htp"]


def _env(work: Path, cache: str = "cache") -> dict[str, str]:
    # A cache of the scenario's own: a shared warm cache would finish runs before a fault lands.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "QAE_CACHE_DIR": str(work / cache), "PYTHONPATH": str(ROOT)}


def _qae(work: Path, *args: str, cwd: Path | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli.main", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd or ROOT, env=_env(work), **kw)


def _popen(work: Path, *args: str, cache: str = "cache") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "harness.cli.main", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(work, cache))


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return int(con.execute("SELECT COUNT(*) FROM candidates").fetchone()[0])
    except sqlite3.Error:
        return 0


def _wait(proc: subprocess.Popen[str], db: Path, n: int) -> bool:
    deadline = time.monotonic() + 120
    while _count(db) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc.poll() is None


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _survivors(pids: set[int], seconds: float = 20.0) -> int:
    def alive() -> set[int]:
        live = set()
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    live.add(pid)
            except OSError:
                pass
        return live

    deadline = time.monotonic() + seconds
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(alive())


def _lock_free(run: Path) -> bool:
    import fcntl

    with open(run / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
    return True


def _front(run: Path) -> list[str]:
    return sorted(p["id"] for p in json.loads((run / "front.json").read_text())["targets"]["hexagon-htp"]["points"])


def _row(outcome: str, detail: str, run: Path | None, lost: bool = False, orphans: int = 0) -> dict[str, Any]:
    archive, dup = common.archive_holds(run / "archive.sqlite") if run is not None else ("-", False)
    return {"outcome": outcome, "detail": detail, "archive": archive, "lost": lost, "duplicated": dup,
            "orphans": orphans}


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _one_line_error(proc: subprocess.CompletedProcess[str] | subprocess.Popen[str], err: str) -> bool:
    return proc.returncode == 2 and "Traceback" not in err and _last_line(err).startswith("qae: error: ")


# -- scenarios ----------------------------------------------------------------------------------------
def kill9_resume(work: Path) -> dict[str, Any]:
    """kill -9 at three points of the search; each resume must reach the uninterrupted run's front."""
    ref = work / "ref"
    done = _qae(work, "search", "builtin:digits-vit", *PROFILE, *SMALL, "--out", str(ref))
    if done.returncode != 0:
        return _row("FAILED", f"reference run failed: {_last_line(done.stderr)}", ref)
    want, total = _front(ref), _count(ref / "archive.sqlite")
    details, bad = [], []
    for i, frac in enumerate((0.2, 0.5, 0.8)):
        run = work / f"kill{i}"
        proc = _popen(work, "search", "builtin:digits-vit", *PROFILE, *SMALL, "--out", str(run), cache=f"c{i}")
        at = max(1, int(total * frac))
        if not _wait(proc, run / "archive.sqlite", at):
            proc.wait()
            details.append(f"{at}: finished first")
            continue
        proc.kill()
        proc.wait()
        killed_at = _count(run / "archive.sqlite")
        resumed = _qae(work, "search", "--resume", str(run))
        same = resumed.returncode == 0 and _front(run) == want
        details.append(f"killed at {killed_at}/{total}: {'same front' if same else 'DIFFERENT'}")
        if not same:
            bad.append(run)
    last = work / "kill2"
    row = _row("FAILED" if bad else "survived", "; ".join(details), last if last.exists() else None,
               lost=bool(bad))
    return row


def two_runs_one_folder(work: Path) -> dict[str, Any]:
    run = work / "run"
    proc = _popen(work, "search", "builtin:digits-vit", *PROFILE, *LONG, "--out", str(run))
    try:
        if not _wait(proc, run / "archive.sqlite", 3):
            return _row("FAILED", "first search ended early", run)
        second = _qae(work, "search", "builtin:digits-vit", *PROFILE, *SMALL, "--out", str(run))
        resumed = _qae(work, "search", "--resume", str(run))
        report = _qae(work, "report", str(run))
    finally:
        proc.kill()
        proc.wait()
    ok = all(_one_line_error(p, p.stderr) and f"in use by PID {proc.pid}" in p.stderr for p in (second, resumed))
    detail = f"{_last_line(second.stderr)[12:90]}...; report while running: rc {report.returncode}"
    return _row("clean error" if ok and report.returncode == 0 else "FAILED", detail, run)


def model_changed(work: Path) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    inputs = work / "in"
    inputs.mkdir()
    for name in ("model.onnx", "calib.npz", "eval.npz"):
        shutil.copy(BUILTIN / name, inputs / name)
    run = work / "run"
    first = _qae(work, "search", str(inputs / "model.onnx"), "--calib", str(inputs / "calib.npz"), "--data",
                 str(inputs / "eval.npz"), *PROFILE, *SMALL, "--out", str(run))
    if first.returncode != 0:
        return _row("FAILED", f"first run: {_last_line(first.stderr)}", run)
    proto = onnx.load(str(inputs / "model.onnx"))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(0.0), init.name))
    onnx.save(proto, str(inputs / "model.onnx"))  # re-exported to the same path
    before = _count(run / "archive.sqlite")
    refused = _qae(work, "search", "--resume", str(run))
    mixed = _count(run / "archive.sqlite") != before
    forced = _qae(work, "search", "--resume", str(run), "--force")
    ok = _one_line_error(refused, refused.stderr) and not mixed and forced.returncode == 0 \
        and (run / "archive-1.sqlite").is_file()
    return _row("clean error" if ok else "FAILED",
                f"resume refused ({'changed content' in refused.stderr}); --force kept archive-1.sqlite "
                f"and started anew (rc {forced.returncode})", run, lost=mixed)


def sigterm(work: Path) -> dict[str, Any]:
    run = work / "run"
    proc = _popen(work, "search", "builtin:digits-vit", *PROFILE, *LONG, "--workers", "2", "--out", str(run))
    if not _wait(proc, run / "archive.sqlite", 3):
        return _row("FAILED", "search ended early", run)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    orphans = _survivors(workers)
    ok = proc.returncode == 143 and "--resume" in _last_line(err) and "Traceback" not in err and not orphans
    return _row("clean error" if ok else "FAILED", f"exit {proc.returncode}: {_last_line(err)[:70]}", run,
                orphans=orphans)


def orphan_workers(work: Path) -> dict[str, Any]:
    run = work / "run"
    proc = _popen(work, "search", "builtin:digits-vit", *PROFILE, *LONG, "--workers", "2", "--out", str(run))
    if not _wait(proc, run / "archive.sqlite", 3):
        return _row("FAILED", "search ended early", run)
    workers = _children(proc.pid)
    proc.kill()
    proc.wait()
    orphans = _survivors(workers)
    free = _lock_free(run)  # the kernel dropped the dead search's lock: a resume may start
    detail = (f"kill -9 of the parent: {len(workers) - orphans}/{len(workers)} workers exited by themselves; "
              f"run lock free: {free}")
    ok = not orphans and free
    return _row("survived" if ok else "FAILED", detail, run, orphans=orphans)


def disk_full(work: Path) -> dict[str, Any]:
    run = work / "run"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG on the write, as a full disk gives ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    full = _qae(work, "search", "builtin:digits-vit", *PROFILE, *SMALL, "--out", str(run), preexec_fn=limit)
    resumed = _qae(work, "search", "--resume", str(run))
    ok = _one_line_error(full, full.stderr) and "--resume" in full.stderr and resumed.returncode == 0
    return _row("clean error" if ok else "FAILED",
                f"{_last_line(full.stderr)[12:80]}...; resume after freeing: rc {resumed.returncode}", run)


def relative_devices_path(work: Path) -> dict[str, Any]:
    folder = work / "w"
    folder.mkdir()
    for name in ("model.onnx", "calib.npz", "eval.npz"):
        shutil.copy(BUILTIN / name, folder / name)
    (folder / "devices.yaml").write_text("devices: {}\n")
    first = _qae(work, "search", "model.onnx", "--calib", "calib.npz", "--data", "eval.npz", *PROFILE,
                 "--devices", "devices.yaml", *SMALL, "--out", "run", cwd=folder)
    if first.returncode != 0:
        return _row("FAILED", f"first run: {_last_line(first.stderr)}", folder / "run")
    resumed = _qae(work, "search", "--resume", str(folder / "run"), cwd=Path("/"))
    with sqlite3.connect(f"file:{folder / 'run' / 'archive.sqlite'}?mode=ro", uri=True) as con:
        cfg = json.loads(con.execute("SELECT config FROM runs").fetchone()[0])
    absolute = all(Path(cfg[k]).is_absolute() for k in ("model", "calib", "data", "devices_file"))
    ok = resumed.returncode == 0 and absolute
    return _row("survived" if ok else "FAILED",
                f"resume from /: rc {resumed.returncode}; stored paths absolute: {absolute}", folder / "run")


SCENARIOS: list[tuple[str, Callable[[Path], dict[str, Any]]]] = [
    ("kill -9 at 3 points, resume", kill9_resume),
    ("two searches on one --out", two_runs_one_folder),
    ("resume after the model changed", model_changed),
    ("SIGTERM of a search", sigterm),
    ("kill -9 of a search with workers", orphan_workers),
    ("disk full (file size limit)", disk_full),
    ("relative paths, resume elsewhere", relative_devices_path),
]
