"""``qae search --cluster``: evaluation on a real Dask cluster (local worker processes on 127.0.0.1).

A cluster run's archive equals a local run's of the same seed; a worker killed by its PID mid-run costs
nothing (its tasks run again elsewhere, every candidate recorded once); a cluster that loses every
worker stops the search with one line, and ``--resume`` continues once workers are back; a head killed
with -9 leaves no worker behind and resumes as without a cluster.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.run.archive import Archive
from tests.cli.test_cli_model import assert_one_line_error, qae
from tests.procs import candidate_count, children, wait_gone

try:
    import distributed
except ImportError:  # outside CI a machine without the extra skips, saying why; CI installs it (the dev extra)
    if os.environ.get("CI"):
        raise
    pytest.skip("the cluster extra: pip install 'qae[cluster]'", allow_module_level=True)

# a test cluster's scheduler takes another loopback port for its HTTP server when 8787 is in use (other runs here)
pytestmark = pytest.mark.filterwarnings("ignore:Port .* is already in use")
SMALL = ["--generations", "3", "--population", "8", "--seed", "5"]
TARGET = "hexagon-htp"


def _search(out: Path, cache: Path, *extra: str, wait: bool = True, grace: float = 60) -> Any:
    """``qae search`` in a process of its own, with a fitness cache of its own (a shared cache would
    answer every candidate and leave the cluster nothing to do)."""
    env = {**os.environ, "QAE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "QAE_CLUSTER_GRACE_S": str(grace)}
    args = [sys.executable, "-m", "harness.cli.main", "search"]
    args += [*extra] if "--resume" in extra else ["builtin:digits-vit", "--profile", TARGET, *SMALL, "--out", str(out),
                                                  *extra]
    if wait:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)




def _candidates(run: Path) -> list[tuple[Any, ...]]:
    """Every candidate of the run in archive order, with everything the search computed for it."""
    archive = Archive.open_existing(run / "archive.sqlite", readonly=True)
    try:
        return [(c.hash, c.generation, c.feasible,
                 {k: (v.value, v.source, v.detail) for k, v in sorted(c.values.items())})
                for c in archive.candidates(TARGET)]
    finally:
        archive.close()


def _assert_same_archive(run: Path, reference: Path) -> None:
    got, want = _candidates(run), _candidates(reference)
    assert [c[0] for c in got] == [c[0] for c in want]  # the same candidates, in the same order, once each
    assert got == want  # and the same values, with the same provenance
    with sqlite3.connect(str(run / "archive.sqlite")) as con:
        twice = con.execute("SELECT COUNT(*) FROM (SELECT hash FROM value_log WHERE source = 'computed' "
                            "GROUP BY target, hash, objective HAVING COUNT(*) > 1)").fetchone()[0]
    assert twice == 0


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("local")
    proc = _search(root / "run", root / "cache")
    assert proc.returncode == 0, proc.stderr
    return root / "run"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A real Dask cluster in this process: a scheduler and two worker processes (each under a nanny that
    restarts it when it dies), every socket on 127.0.0.1, no dashboard. Shared by the fault tests."""
    import logging

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=logging.ERROR) as local, \
            distributed.Client(local, set_as_default=False) as client:
        yield local, client


def test_cluster_run_is_the_local_run(reference_run: Path, tmp_path: Path) -> None:
    proc = _search(tmp_path / "run", tmp_path / "cache", "--cluster", "local:2")
    assert proc.returncode == 0, proc.stderr
    assert "cluster local:2: scheduler tcp://127.0.0.1:" in proc.stderr
    _assert_same_archive(tmp_path / "run", reference_run)


def test_a_worker_killed_mid_task_costs_nothing(reference_run: Path, cluster: Any, tmp_path: Path) -> None:
    local, client = cluster
    proc = _search(tmp_path / "run", tmp_path / "cache", "--cluster", local.scheduler_address, wait=False)
    try:
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and proc.poll() is None and time.monotonic() < deadline:
            busy = {w: keys for w, keys in client.processing().items()
                    if any(str(k).startswith("qae-evaluate-") for k in keys)}
            if busy and candidate_count(tmp_path / "run" / "archive.sqlite") >= 3:  # mid-run: generation 1 is recorded
                victim = next(iter(busy))
            else:
                time.sleep(0.01)
        assert victim is not None, "the search finished before a worker could be killed"
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)  # the worker process itself; its nanny starts a new one
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    _assert_same_archive(tmp_path / "run", reference_run)
    client.wait_for_workers(2, timeout=60)
    assert pid not in client.run(os.getpid).values()


def test_all_workers_gone_stops_with_one_line_and_resume_continues(
    reference_run: Path, cluster: Any, tmp_path: Path
) -> None:
    local, client = cluster
    run = tmp_path / "run"
    proc = _search(run, tmp_path / "cache", "--cluster", local.scheduler_address, wait=False, grace=5)
    try:
        deadline = time.monotonic() + 120
        while candidate_count(run / "archive.sqlite") < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"the search ended before its workers could be taken away: {proc.communicate()[1]}"
        local.scale(0)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        local.scale(2)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err
    assert lines[-1].startswith("qae: error: the Dask cluster at ") and "no worker for 5 s" in lines[-1], err
    assert f"`qae search --resume {run}` continues" in lines[-1]
    assert "Traceback" not in err
    kept = candidate_count(run / "archive.sqlite")
    assert 3 <= kept < len(_candidates(reference_run))

    client.wait_for_workers(2, timeout=60)  # the cluster is back: the stored --cluster is used again
    resumed = _search(run, tmp_path / "cache", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_archive(run, reference_run)


def test_progress_shows_the_workers_and_the_tasks_in_flight(cluster: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.run.cluster import ClusterStatus
    from harness.run.config import SearchConfig
    from harness.run.search import run_search

    local, _client = cluster
    monkeypatch.setenv("QAE_CACHE_DIR", str(tmp_path / "cache"))  # every candidate a task
    statuses: list[ClusterStatus] = []
    cfg = SearchConfig(model="builtin:digits-vit", profiles=[TARGET], generations=1, population=6, seed=5,
                       cluster=local.scheduler_address)
    archive = run_search(cfg, tmp_path / "run", say=lambda _m: None, on_cluster=statuses.append)
    n = archive.count(TARGET)
    archive.close()
    assert statuses and {s.workers for s in statuses} == {2}
    assert max(s.in_flight for s in statuses) > 1  # a generation's tasks are out at once
    assert statuses[-1].line() == f"2 workers | 0 tasks in flight | {n} done"  # a fresh cache: each one a task






def test_head_killed_leaves_no_worker_and_resumes_to_the_same_archive(reference_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _search(run, tmp_path / "cache", "--cluster", "local:2", wait=False)
    try:
        deadline = time.monotonic() + 120
        while candidate_count(run / "archive.sqlite") < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"the search ended before it could be killed: {proc.communicate()[1]}"
        workers = children(proc.pid)
        assert len(workers) >= 2  # the local cluster's worker processes (and multiprocessing's tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    # they watch their parent: gone once it is
    assert not wait_gone(workers, 60), "local cluster workers outlived the killed search"
    resumed = _search(run, tmp_path / "cache", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_archive(run, reference_run)


def test_a_worker_without_qae_is_a_one_line_error_naming_the_extra(tmp_path: Path) -> None:
    """A real ``dask worker`` process that cannot import qae (Python's None entry in sys.modules)."""
    import logging

    code = ("import sys; sys.modules['harness'] = None; sys.argv = ['dask-worker', *sys.argv[1:]]; "
            "from distributed.cli.dask_worker import main; main()")
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None,
                                  silence_logs=logging.ERROR) as local:
        worker = subprocess.Popen([sys.executable, "-c", code, local.scheduler_address, "--nthreads", "1",
                                   "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        try:
            proc = _search(tmp_path / "run", tmp_path / "cache", "--cluster", local.scheduler_address)
        finally:
            worker.kill()
            worker.wait()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("qae: error: the workers of the Dask cluster at ") and "pip install 'qae[cluster]'" in last
    assert not (tmp_path / "run" / "archive.sqlite").exists()


def test_unreachable_scheduler_is_a_one_line_error_and_leaves_no_run(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("QAE_CLUSTER_CONNECT_S", "3")  # nothing listens: no need to wait the default 20 s
    proc = _search(tmp_path / "run", tmp_path / "cache", "--cluster", f"tcp://127.0.0.1:{port}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("qae: error: ")]
    assert errors == [proc.stderr.strip().splitlines()[-1]]  # after the workload's notes, one error line
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in errors[0]
    assert errors[0].endswith("then run the same command again")
    assert not (tmp_path / "run" / "archive.sqlite").exists()  # nothing half-made: the same command runs again


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cluster", "local:0"], "is neither local:N"),
        (["--cluster", "my cluster"], "is neither local:N"),
        (["--cluster", "local:2", "--workers", "2"], "either --workers N"),
    ],
)
def test_bad_cluster_is_a_one_line_error(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = qae("search", "builtin:digits-vit", "--profile", TARGET, "--out", str(tmp_path / "run"), *args)
    assert_one_line_error(proc, needle)


def test_without_the_extra_cluster_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    # Python's own way to make a package absent: a None entry in sys.modules fails its import.
    code = ("import sys; sys.modules['distributed'] = None; from harness.cli.main import main; "
            f"sys.exit(main(['search', 'builtin:digits-vit', '--profile', '{TARGET}', "
            f"'--out', {str(tmp_path / 'run')!r}, '--cluster', 'local:2']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "pip install 'qae[cluster]'")
    assert not (tmp_path / "run").exists()
