"""Helpers the process-level tests share: a run's candidate count read while its search writes, and
the child processes of a PID from /proc (Linux), alive or gone."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def candidate_count(db: Path) -> int:
    """Candidates in a run's archive, read-only (0 while it does not exist yet or is locked)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return int(con.execute("SELECT COUNT(*) FROM candidates").fetchone()[0])
    except sqlite3.Error:
        return 0


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has exited; only its parent's wait is missing)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def wait_gone(pids: set[int], seconds: float = 20.0) -> set[int]:
    """Wait up to ``seconds`` for ``pids`` to exit; those still alive."""
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)
