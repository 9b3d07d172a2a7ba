"""Host evaluations as tasks of a Dask distributed cluster: ``qae search --cluster local:N | ADDRESS``.

Dask distributed, not Ray: a local cluster starts in about two seconds from a pip wheel (no
object-store daemon, no raylet), a worker that dies mid-task has its task rescheduled on another
worker by the scheduler (``distributed.scheduler.allowed-failures`` deaths, then ``KilledWorker``),
and it is what the PyData/HPC clusters (dask-jobqueue on SLURM/PBS, dask-kubernetes) already run.

What travels (Dask's own pickle-based serialization, between this process and the workers of the
cluster it connects to or starts; no pickle is ever read from user data):
- once per worker: the ``Workload`` (model, calibration ranges, validation data and the FP32
  reference outputs), scattered with ``broadcast=True`` (a worker that joins later fetches it from a
  peer once);
- per task: a genome's ``to_dict()``, and back its evaluation report, this worker's versions and name.

The head (the ``qae search`` process) stays the one writer: results come back in the order the
genomes were asked, and ``HostEvaluator`` caches them and the driver records them in its archive
transactions, exactly as for in-process evaluation. So a cluster run's archive equals a local one of
the same seed, a task re-run after its worker died is still recorded once, and a lost cluster stops
the search with ``ClusterLostError`` between two recorded candidates: ``--resume`` continues.

Devices are not cluster nodes: measurement stays with the host's device pool over SSH.
"""

from __future__ import annotations

import itertools
import logging
import os
import platform
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from harness.core.errors import ClusterLostError, InputError
from harness.quant.workload import Workload
from harness.run.evaluation import evaluate_on

EXTRA = "qae[cluster]"
#: how long a search waits with no worker at all before it stops (a real cluster's workers may be restarting);
#: the environment variable QAE_CLUSTER_GRACE_S sets another number of seconds
NO_WORKERS_GRACE_S = 60.0
GRACE_ENV = "QAE_CLUSTER_GRACE_S"
#: how long connecting to a scheduler may take before the search stops with one line (a loaded machine's
#: local cluster needs seconds); QAE_CLUSTER_CONNECT_S sets another number of seconds
CONNECT_S = 20.0
CONNECT_ENV = "QAE_CLUSTER_CONNECT_S"
#: how often a wait for a task polls the cluster's workers (and reports progress)
POLL_S = 0.5
_LOCAL = re.compile(r"local:(\d+)")
_ADDRESS = re.compile(r"(?:(?:tcp|tls|ucx|ws|wss)://)?[\w.\-\[\]:]+:\d+")


@dataclass(frozen=True)
class ClusterStatus:
    """What the progress line shows: the cluster, its workers, the tasks sent and not yet back."""

    address: str
    workers: int
    in_flight: int
    done: int

    def line(self) -> str:
        return f"{self.workers} workers | {self.in_flight} tasks in flight | {self.done} done"


def check_spec(spec: str) -> str:
    """``local:N`` (N >= 1) or a scheduler address (``tcp://HOST:PORT``, ``HOST:PORT``); and the extra
    installed. Raises ``InputError`` naming the fix; returns the spec."""
    local = _LOCAL.fullmatch(spec)
    if (local and int(local.group(1)) < 1) or (not local and not _ADDRESS.fullmatch(spec)):
        raise InputError(f"--cluster {spec!r} is neither local:N (N >= 1 worker processes) nor a Dask scheduler "
                         "address such as tcp://10.0.0.5:8786")
    _distributed()
    return spec


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(f"--cluster needs Dask distributed, which is not installed: pip install '{EXTRA}' "
                         "(on this host and on every worker node)") from None
    return distributed


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    try:
        value = default if not raw else float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(f"{env}={raw!r} is not a positive number of seconds: e.g. {env}={default:g}")
    return value


def _grace() -> float:
    return _seconds(GRACE_ENV, NO_WORKERS_GRACE_S)


def _import_failed(exc: BaseException) -> bool:
    """Whether a worker could not import what a task needs: Dask re-raises the worker's exception, or
    (when it cannot even unpickle the task) a plain ``Exception`` that carries its repr."""
    return isinstance(exc, ImportError) or any(name in str(exc) for name in ("ModuleNotFoundError", "ImportError"))


def versions() -> dict[str, str]:
    """What must match between the head and a worker for a task to score as the head would: a
    different ONNX Runtime or quantizer build would change the numbers the fitness cache keys."""
    import numpy
    import onnx
    import onnxruntime

    from harness.quant.quantize import build_version

    return {"python": platform.python_version(), "numpy": numpy.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "qae-build": str(build_version())}


def evaluate_task(work: Workload, genome_data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], str]:
    """The task a worker runs: ``evaluate_on`` with its copy of the workload; with its versions and name."""
    from distributed import get_worker

    return evaluate_on(work, genome_data), versions(), get_worker().address


class ClusterRunner:
    """Evaluations on a Dask cluster: a ``harness.run.evaluation.Runner``.

    Lifecycle: the constructor connects (or starts ``local:N``: N single-threaded worker processes, every
    socket on 127.0.0.1, no dashboard), checks the workers' versions and scatters the workload;
    ``map`` per batch; ``close`` at the end (a local cluster stops with it). One thread uses it."""

    def __init__(self, spec: str, work: Workload, on_status: Callable[[ClusterStatus], None] | None = None,
                 grace_s: float | None = None) -> None:
        distributed = _distributed()
        check_spec(spec)
        self.spec, self.work, self.on_status = spec, work, on_status
        self.grace_s = grace_s if grace_s is not None else _grace()
        connect = _seconds(CONNECT_ENV, CONNECT_S)
        self.local: Any = None
        self.done = 0
        self._token = uuid.uuid4().hex[:8]
        self._keys = itertools.count()
        self._head = versions()
        local = _LOCAL.fullmatch(spec)
        try:
            if local:
                with warnings.catch_warnings():
                    # its scheduler's small HTTP server (health, metrics; no dashboard) takes another free
                    # port on 127.0.0.1 when 8787 is taken, and says so as a warning: that is expected here
                    warnings.filterwarnings("ignore", message="Port .* is already in use")
                    self.local = distributed.LocalCluster(
                        n_workers=int(local.group(1)), threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address=None, worker_dashboard_address=None, silence_logs=logging.ERROR,
                    )
            self.client = distributed.Client(self.local if local else spec, timeout=f"{connect:g}s",
                                             set_as_default=False)
        except (OSError, TimeoutError) as exc:
            if self.local is not None:
                self.local.close()
            raise ClusterLostError(f"cannot reach the Dask scheduler at {spec} ({type(exc).__name__}): start it "
                                   f"(`dask scheduler`, then `dask worker {spec}` on every node) or fix --cluster"
                                   ) from None
        self.address = str(self.client.scheduler.address)
        try:
            self._wait_for_workers()
            self.workers_at_start = self._workers()
            try:
                answers = self.client.run(versions)
            except Exception as exc:
                if _import_failed(exc):
                    raise self._not_installed(exc) from None
                raise
            for name, theirs in answers.items():
                self._check(theirs, name)
            # a Workload pickles to its model, ranges and data; the references are computed once, here
            _ = work.references, work.plan
            self.work_future = self.client.scatter(work, broadcast=True, hash=False)
        except BaseException:
            self.close(abort=True)
            raise

    # -- the Runner interface -------------------------------------------------------------------
    def map(self, payloads: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if not payloads:
            return
        if self.work_future.status != "finished":  # every worker holding it died: ship it again
            self._wait_for_workers()
            self.work_future = self.client.scatter(self.work, broadcast=True, hash=False)
        futures = [self._submit(p) for p in payloads]
        try:
            for i in range(len(futures)):
                result = self._result(futures, i, payloads[i])
                self.done += 1  # counted before the yield: a consumer may never ask past the last result
                self._status(futures)
                yield result
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def close(self, abort: bool = False) -> None:
        """Closing the client releases its tasks (queued ones never run; a running one finishes on its
        worker, whose result nobody reads); a ``local:N`` cluster stops its workers. Same with ``abort``."""
        for closing in (getattr(self, "client", None), self.local):
            if closing is None:
                continue
            try:
                closing.close()
            except Exception:  # a scheduler already gone: nothing left to close
                pass

    # -- steps ----------------------------------------------------------------------------------
    def _submit(self, payload: dict[str, Any]) -> Any:
        # Unique keys: a genome asked again (another batch, a resume) is a new task, never a stale result.
        return self.client.submit(evaluate_task, self.work_future, payload, pure=False,
                                  key=f"qae-evaluate-{self._token}-{next(self._keys)}")

    def _result(self, futures: list[Any], i: int, payload: dict[str, Any]) -> dict[str, Any]:
        """The i-th task's result. Waits while the cluster has workers (a worker's death is the
        scheduler's to handle: it runs the task again on another), submits the task again if its input
        died with every worker holding it, and gives up after ``grace_s`` without any worker."""
        from distributed import KilledWorker

        future = futures[i]
        alone_since: float | None = None
        resubmits = 0
        while True:
            try:
                result, theirs, worker = future.result(timeout=POLL_S)
            except TimeoutError:
                pass
            except KilledWorker as exc:
                # the candidate killed every worker it ran on (allowed-failures times): that is its record
                return {"error_kind": "WORKER_DIED",
                        "message": f"every cluster worker that ran this candidate died ({str(exc)[:200]})"}
            except Exception as exc:
                if _import_failed(exc):  # a worker that cannot import qae's task code
                    raise self._not_installed(exc) from None
                # cancelled: the scheduler is gone, or the task's input (the scattered workload) was lost
                # with the last worker holding it; then it runs again once workers are back
                if not self._alive():
                    raise self._lost(f"its scheduler is unreachable ({type(exc).__name__})") from None
                resubmits += 1
                if resubmits > 3:
                    raise self._lost(f"a task failed {resubmits} times ({type(exc).__name__}: {str(exc)[:120]})"
                                     ) from None
                self._wait_for_workers()
                if self.work_future.status != "finished":
                    self.work_future = self.client.scatter(self.work, broadcast=True, hash=False)
                futures[i] = future = self._submit(payload)
                continue
            else:
                self._check(theirs, worker)
                return result
            workers = self._workers()
            self._status(futures, workers)
            if workers:
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > self.grace_s:
                raise self._lost(f"it has had no worker for {self.grace_s:g} s")

    def _workers(self) -> int:
        try:
            return len(self.client.nthreads())
        except Exception:
            raise self._lost("its scheduler is unreachable") from None

    def _alive(self) -> bool:
        try:
            self.client.nthreads()
        except Exception:
            return False
        return True

    def _wait_for_workers(self) -> None:
        if self._workers():
            return
        try:
            self.client.wait_for_workers(1, timeout=self.grace_s)
        except TimeoutError:
            raise self._lost(f"it has had no worker for {self.grace_s:g} s") from None

    def _lost(self, why: str) -> ClusterLostError:
        return ClusterLostError(f"the Dask cluster at {self.spec} cannot evaluate: {why}; start its workers "
                                f"(`dask worker {self.address}`)")

    def _not_installed(self, exc: Exception) -> InputError:
        return InputError(f"the workers of the Dask cluster at {self.spec} cannot import qae's code "
                          f"({str(exc)[:160]}): pip install '{EXTRA}' of this qae on every node")

    def _check(self, theirs: dict[str, str], worker: str) -> None:
        if theirs != self._head:
            diff = ", ".join(f"{k} {theirs.get(k)} (here {v})" for k, v in self._head.items() if theirs.get(k) != v)
            raise InputError(f"cluster worker {worker} runs {diff}: install the same versions on every node "
                             f"(pip install '{EXTRA}' from the same qae), so it scores as this host would")

    def _status(self, futures: list[Any], workers: int | None = None) -> None:
        if self.on_status is None:
            return
        if workers is None:
            workers = self._workers()
        self.on_status(ClusterStatus(self.spec, workers, sum(not f.done() for f in futures), self.done))
