"""Real SSH servers on 127.0.0.1 for tests: an in-process paramiko server and OpenSSH sshd.

Both run commands the way sshd does (``/bin/sh -c COMMAND`` as this user), with generated host and
user keys in a temporary folder and a known_hosts file the test writes. Neither is a mock: the ssh
transport speaks real SSH to them and the real agent runs behind them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import paramiko.common

SSHD = "/usr/sbin/sshd"


@dataclass
class Keys:
    host_key: paramiko.PKey
    host_key_file: Path
    user_key: paramiko.PKey
    user_key_file: Path


def make_keys(root: Path) -> Keys:
    """ECDSA host and user keys (fast to generate; both paramiko and OpenSSH read the PEM files)."""
    root.mkdir(parents=True, exist_ok=True)
    host = paramiko.ECDSAKey.generate()
    user = paramiko.ECDSAKey.generate()
    host_file, user_file = root / "host_key", root / "user_key"
    host.write_private_key_file(str(host_file))
    user.write_private_key_file(str(user_file))
    os.chmod(host_file, 0o600)
    os.chmod(user_file, 0o600)
    return Keys(host, host_file, user, user_file)


def write_known_hosts(path: Path, port: int, key: paramiko.PKey) -> Path:
    path.write_text(f"[127.0.0.1]:{port} {key.get_name()} {key.get_base64()}\n")
    return path


class _Server(paramiko.ServerInterface):
    def __init__(self, owner: ParamikoServer) -> None:
        self.owner = owner
        self.event = threading.Event()

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return int(paramiko.common.OPEN_SUCCEEDED)
        return int(paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.owner.user and key == self.owner.authorized:
            return int(paramiko.common.AUTH_SUCCESSFUL)
        return int(paramiko.common.AUTH_FAILED)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=self.owner._run, args=(channel, command.decode()), daemon=True).start()
        return True


@dataclass
class ParamikoServer:
    """An SSH server in this process: accepts the user key, runs exec requests with ``/bin/sh -c``
    and pipes the channel to the process. ``stop()`` drops every connection (like killing sshd)."""

    keys: Keys
    user: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    transports: list[paramiko.Transport] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.authorized = paramiko.ECDSAKey(data=self.keys.user_key.asbytes())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.stopped:
                conn.close()
                return
            t = paramiko.Transport(conn)
            t.add_server_key(self.keys.host_key)
            self.transports.append(t)
            try:
                t.start_server(server=_Server(self))
            except (paramiko.SSHException, EOFError, OSError):
                continue

    def _run(self, chan: paramiko.Channel, command: str) -> None:
        env = dict(os.environ, **self.env)
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, bufsize=0, start_new_session=True)
        self.procs.append(proc)

        def pump_in() -> None:
            assert proc.stdin is not None
            try:
                while True:
                    data = chan.recv(65536)
                    if not data:
                        break
                    proc.stdin.write(data)
            except (OSError, EOFError):
                pass
            try:
                proc.stdin.close()
            except OSError:
                pass

        def pump_err() -> None:
            assert proc.stderr is not None
            for data in iter(lambda: proc.stderr.read(4096) if proc.stderr else b"", b""):
                try:
                    chan.sendall_stderr(data)
                except (OSError, EOFError):
                    return

        threading.Thread(target=pump_in, daemon=True).start()
        threading.Thread(target=pump_err, daemon=True).start()
        assert proc.stdout is not None
        try:
            for data in iter(lambda: proc.stdout.read(65536) if proc.stdout else b"", b""):
                chan.sendall(data)
        except (OSError, EOFError):
            proc.kill()
        code = proc.wait()
        try:
            chan.send_exit_status(code if code >= 0 else 128 - code)  # a signal, as sh reports it
            chan.close()
        except (OSError, EOFError):
            pass

    def stop(self) -> None:
        """Drop the listener and every connection, and end the processes they ran."""
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        except OSError:
            pass
        self.sock.close()
        for t in self.transports:
            t.close()
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenSshServer:
    """OpenSSH sshd on 127.0.0.1 with a generated config; ``stop()`` kills it and its sessions."""

    def __init__(self, root: Path, keys: Keys) -> None:
        self.root = root
        self.keys = keys
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        auth = root / "authorized_keys"
        auth.write_text(f"{keys.user_key.get_name()} {keys.user_key.get_base64()} qae-test\n")
        os.chmod(auth, 0o600)
        cfg = root / "sshd_config"
        cfg.write_text(
            f"ListenAddress 127.0.0.1\nAuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {root / 'sshd.pid'}\nPrintMotd no\nLogLevel ERROR\n"
        )
        os.makedirs("/run/sshd", exist_ok=True)
        self.log = (root / "sshd.log").open("wb")
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-p", str(self.port), "-f", str(cfg), "-h", str(keys.host_key_file)],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()[-500:]}")

    def children(self) -> list[int]:
        """PIDs of processes whose parent is this sshd (its per-connection sessions)."""
        kids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                        kids.append(int(d.name))
                except (OSError, IndexError, ValueError):
                    continue
        return kids

    def stop(self, sessions: bool = True) -> None:
        """Stop sshd; with ``sessions`` also kill its per-connection children (a hard server stop)."""
        time.sleep(0.5)  # let a closing client's session exit, or sshd leaves a zombie
        if sessions:
            for pid in self.children():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def have_sshd() -> bool:
    return os.path.exists(SSHD) and shutil.which("sh") is not None


def ssh_device(port: int, keys: Keys, known_hosts: Path, cache: Path, **kw: Any) -> Any:
    """A ``DeviceConfig`` for a test server: this user, the venv's Python, a private cache."""
    import getpass
    import sys

    from harness.devices.config import DeviceConfig

    base: dict[str, Any] = dict(
        name=kw.pop("name", "ssh-test"), transport="ssh", host="127.0.0.1", port=port, user=getpass.getuser(),
        key_file=str(keys.user_key_file), known_hosts=str(known_hosts), python=sys.executable,
        cache_dir=str(cache), sensor="none", connect_timeout_s=10.0, upload_timeout_s=30.0, keepalive_s=5.0,
    )
    base.update(kw)
    return DeviceConfig(**base)


@contextlib.contextmanager
def open_transport(kind: str, root: Path) -> Iterator[Any]:
    """A connected transport of ``kind`` ("local", or "ssh-paramiko": the in-process server under
    ``root`` with its own keys and known_hosts), closed (and the server stopped) on exit."""
    from harness.devices.config import DeviceConfig
    from harness.devices.connect import connect

    if kind == "local":
        t = connect(DeviceConfig(name="local", transport="local", cache_dir=str(root / "cache"), sensor="none"))
        try:
            yield t
        finally:
            t.close()
        return
    keys = make_keys(root / "keys")
    server = ParamikoServer(keys, user=getpass.getuser(), env={"HOME": str(root)})
    try:
        t = connect(ssh_device(server.port, keys, write_known_hosts(root / "known_hosts", server.port,
                                                                     keys.host_key), root / "cache"))
        try:
            yield t
        finally:
            t.close()
    finally:
        server.stop()
