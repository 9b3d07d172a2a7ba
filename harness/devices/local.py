"""The ``local`` transport: the real agent as a subprocess on this host, over the same JSON-lines
protocol as ssh (the local backend is the remote one over a pipe).

The agent runs straight from the package (nothing to upload); its model cache is the device's
``cache_dir``, or ``$QAE_CACHE_DIR/agent`` for the built-in ``local`` device when that is set.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
from typing import IO

from harness.devices.config import DeviceConfig
from harness.devices.transport import AGENT_FILE, AgentTransport, DeviceError, Pipe

DEFAULT_CACHE = "~/.cache/qae/agent"


class ProcessPipe:
    """A ``Pipe`` over a child process's stdin/stdout; stderr is drained into a short tail."""

    def __init__(self, argv: list[str]) -> None:
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
        except OSError as exc:
            raise DeviceError("RUNTIME_MISSING", f"cannot start {argv[0]}: {exc}") from None
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()

    def _drain(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        for line in iter(stream.readline, b""):
            self._tail.append(line.decode(errors="replace").rstrip())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def readline(self, limit: int) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline(limit)

    def link_alive(self) -> bool:
        return True  # there is no link to lose: an EOF means the agent itself ended

    def stderr_tail(self) -> str:
        return " | ".join(self._tail)[-500:]

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cache_dir(device: DeviceConfig) -> str:
    if device.cache_dir == DEFAULT_CACHE and os.environ.get("QAE_CACHE_DIR"):
        return os.path.join(os.environ["QAE_CACHE_DIR"], "agent")
    return os.path.expanduser(device.cache_dir)


class LocalTransport(AgentTransport):
    """The agent in a subprocess of this host."""

    def __init__(self, device: DeviceConfig) -> None:
        super().__init__(device)
        self.pipe: ProcessPipe | None = None

    def _open_pipe(self) -> Pipe:
        # The default "python3" means this host's interpreter for a local device: it has qae's runtime.
        python = sys.executable if self.device.python == "python3" else self.device.python
        argv = [python, "-u", str(AGENT_FILE), "serve", "--cache-dir", cache_dir(self.device),
                "--sysfs-root", self.device.sysfs_root]
        self.pipe = ProcessPipe(argv)
        return self.pipe

    @property
    def agent_pid(self) -> int | None:
        """PID of the running agent (tests kill it to check crash handling)."""
        return self.pipe.pid if self.pipe is not None and self.client is not None else None
