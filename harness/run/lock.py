"""One process per run folder: an exclusive ``flock`` on RUN/.lock, held for the run's life.

Two searches on one --out, or a --resume of a run still going, would otherwise write one archive
from two processes (and end in an IntegrityError). The lock file holds the PID of its holder so the
refusal can name it; the kernel drops the lock when the holder dies, even on kill -9, so a stale
.lock file never blocks a resume.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from harness.core.errors import ArchiveWriteError, RunInUseError


class RunLock:
    def __init__(self, run: Path) -> None:
        self.run = run
        self.path = run / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.run.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ArchiveWriteError(f"cannot create {self.path} ({exc.strerror}): check the --out folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunInUseError(
                f"run {self.run} is in use by PID {pid}: wait for it or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
