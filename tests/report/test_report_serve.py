"""`qae report RUN --serve` while `qae search` runs: the server says its address on 127.0.0.1, the
page in Chromium shows the number of candidates growing as the archive grows, with no console error
and no request beyond its own server; bad flags are one line and a non-zero exit."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from harness.report.serve import HOST, make_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _qae(*args: str, log: Path | None = None) -> subprocess.Popen[str]:
    """``qae ARGS`` in a child process; its output piped, or into ``log`` (a long search's output
    must not fill a pipe nobody reads)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if log is not None:
        with log.open("w") as out:
            return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env, text=True,
                                    stdout=out, stderr=subprocess.STDOUT)
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _started(run: Path, search: subprocess.Popen[str], deadline: float) -> None:
    """Wait until the search has written its configuration (the archive holds a run)."""
    while time.time() < deadline:
        assert search.poll() is None, (run.parent / "search.log").read_text()
        try:
            db = sqlite3.connect(f"file:{run / 'archive.sqlite'}?mode=ro", uri=True)
            try:
                if db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]:
                    return
            finally:
                db.close()
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    raise AssertionError("the search wrote no archive in time")


def _count(page: Any) -> int | None:
    """The page's candidate count, or None while it has none (or is reloading)."""
    from playwright.sync_api import Error

    try:
        el = page.query_selector("#count-hexagon-htp")
        return None if el is None else int(el.text_content())
    except Error:  # the page reloaded under us
        return None


def test_serve_shows_the_candidates_grow_while_a_search_runs(watched: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # long enough to outlive the test: it is stopped once the page has seen the archive grow
    search = _qae("search", "builtin:digits-vit", "--profile", "hexagon-htp", "--generations", "60",
                  "--population", "6", "--out", str(run), log=tmp_path / "search.log")
    server = None
    try:
        _started(run, search, time.time() + 90)
        server = _qae("report", str(run), "--serve")
        line = server.stdout.readline() if server.stdout else ""
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + (server.stderr.read() if server.poll() is not None and server.stderr else "")
        url = found.group(0)
        w = watched(url)
        w.page.goto(url)
        w.page.wait_for_selector("#live")
        w.page.evaluate("() => { window.sameDocument = true; }")  # gone if the page reloaded
        seen: list[int] = []
        deadline = time.time() + 120
        while time.time() < deadline and (len(seen) < 2 or seen[-1] <= seen[0]):
            n = _count(w.page)
            if n is not None and (not seen or n != seen[-1]):
                seen.append(n)
            w.page.wait_for_timeout(300)
        assert len(seen) >= 2 and seen[-1] > seen[0], f"the count never grew: {seen}"
        assert w.page.locator("#live").is_visible()  # the page says it is live
        assert w.page.evaluate("() => window.sameDocument === true")  # updated in place, not reloaded
        assert w.problems() == []
        assert w.requests and all(r.startswith(url) for r in w.requests)  # its own server only
        w.page.locator("#front-box-hexagon-htp").screenshot(path=str(tmp_path / "live-front-hexagon-htp.png"))
        assert not (run / "report.html").exists()  # serving writes nothing into the run folder
    finally:
        # SIGTERM, which qae takes as Ctrl-C (a runner may start tests with SIGINT ignored)
        stopped = [_stop(p) for p in (server, search) if p is not None]
    assert stopped[0] == (0, True)  # the server ends cleanly when interrupted


def _stop(proc: subprocess.Popen[str]) -> tuple[int, bool]:
    """Interrupt ``proc``; (its exit code, whether it said it stopped serving)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, "stopped serving" in (out or "")


def test_the_server_listens_on_loopback_only(finished_run: Path) -> None:
    server = make_server(finished_run)
    try:
        host, port = server.server_address[:2]
        assert host == HOST == "127.0.0.1" and port > 0
    finally:
        server.server_close()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "8123"], "--port goes with --serve"),
        (["--serve", "--format", "md"], "--serve serves the HTML report"),
        (["--serve", "--port", "70000"], "is not a TCP port"),
    ],
)
def test_bad_serve_flags_are_one_line(finished_run: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                      words: str) -> None:
    assert main(["report", str(finished_run), *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("qae: error:") and words in err and "\n" not in err


def test_serving_a_folder_without_a_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path), "--serve"]) != 0
    err = capsys.readouterr().err.strip()
    assert "no archive at" in err and "start the search first" in err and "\n" not in err
