"""The ``local`` transport: the real agent as a subprocess on this host, over the same JSON-lines
protocol as ssh (the local backend is the remote one over a pipe).

The agent runs straight from the package (nothing to upload); its model cache is the device's
``cache_dir``, or ``$QAE_CACHE_DIR/agent`` for the built-in ``local`` device when that is set.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from harness.devices.config import DeviceConfig
from harness.devices.transport import AGENT_FILE, AgentTransport, DeviceError, Pipe

#: stderr kept from an agent: its last lines, each cut short (a runaway library cannot fill memory)
TAIL_LINES = 20
TAIL_LINE_BYTES = 1000

DEFAULT_CACHE = "~/.cache/qae/agent"


class ProcessPipe:
    """A ``Pipe`` over a child process's stdin/stdout; stderr is drained into a short tail. The child
    leads its own process group, so giving up on it ends everything it started."""

    def __init__(self, argv: list[str]) -> None:
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise DeviceError("RUNTIME_MISSING", f"cannot start {argv[0]}: {exc}; set 'python:' in devices.yaml "
                              "to an interpreter that exists") from None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        threading.Thread(target=drain_tail, args=(self.proc.stderr, self._tail), daemon=True).start()

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

    def exit_status(self) -> int | None:
        try:
            return self.proc.wait(timeout=1.0)  # EOF on stdout comes just before the exit
        except subprocess.TimeoutExpired:
            return None

    def kill_remote(self, pid: int, pgid: int | None) -> None:
        """End the agent's process group (it leads it: ``start_new_session``). ``pid`` and ``pgid``
        are the agent's own word, so they are not used: only our child's group is ever signalled."""
        self._kill_group()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()

    def close(self) -> None:
        # stdin first (the real agent exits on EOF); stdout only once the process is gone, since
        # closing it would wait on the reader thread's lock for as long as a hung process stays
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is self.proc.stdout:
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self._kill_group()
            try:
                if stream is not None:
                    stream.close()
            except (OSError, ValueError):
                pass


def drain_tail(stream: Any, tail: collections.deque[str]) -> None:
    """Keep the last lines of ``stream`` in ``tail``, each at most ``TAIL_LINE_BYTES``; a line without
    an end is read in pieces, so neither one line nor the total kept can grow without bound."""
    if stream is None:
        return
    try:
        for line in iter(lambda: stream.readline(TAIL_LINE_BYTES), b""):
            tail.append(line.decode(errors="replace").rstrip())
    except (OSError, ValueError):
        return


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
