"""The ``ssh`` transport: paramiko, host keys verified, the agent uploaded content-addressed.

* Host keys come from the device's ``known_hosts`` (default ``~/.ssh/known_hosts``). An unknown or
  changed key is a ``HOSTKEY`` failure whose message says how to trust the key; nothing is ever
  added silently.
* Auth: the device's ``key_file`` and the SSH agent (``~/.ssh/id_*`` too when no key file is given).
* One connection per transport, reused between measurements, with keepalives; per-phase timeouts
  (``connect_timeout_s``, ``upload_timeout_s``; measurement waits its own timeout plus a margin).
* The agent is started by one fixed bootstrap run as ``python3 -u -c BOOT PATH SHA SIZE serve ...``
  (every argument ``shlex.quote``d): it checks ``CACHE/agent-<sha>.py`` against the sha256 of this
  host's agent, asks for the file on stdin when it is missing or different, then ``exec``s it. The
  agent file is therefore uploaded once per version, over the same channel.
"""

from __future__ import annotations

import collections
import getpass
import hashlib
import logging
import os
import shlex
import threading
from typing import Any

import paramiko

from harness.devices.config import DeviceConfig
from harness.devices.local import TAIL_LINES, drain_tail
from harness.devices.transport import AGENT_FILE, AgentTransport, DeviceError, Pipe

NEED_AGENT = b"QAE-NEED-AGENT\n"

# paramiko logs dropped sockets at ERROR; they surface as typed records instead of stderr noise.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

BOOTSTRAP = """\
import hashlib,os,sys
a=sys.argv[1:];p=os.path.expanduser(a[0]);h=a[1];n=int(a[2])
def ok():
    try:
        with open(p,'rb') as f:return hashlib.sha256(f.read()).hexdigest()==h
    except OSError:return False
if not ok():
    sys.stdout.write('QAE-NEED-AGENT\\n');sys.stdout.flush()
    d=sys.stdin.buffer.read(n)
    if hashlib.sha256(d).hexdigest()!=h:
        sys.stderr.write('qae: agent upload corrupted\\n');sys.exit(3)
    os.makedirs(os.path.dirname(p),exist_ok=True);t=p+'.%d.tmp'%os.getpid()
    with open(t,'wb') as f:f.write(d)
    os.replace(t,p)
os.execv(sys.executable,[sys.executable,'-u',p]+a[3:])
"""


class HostKeyRejected(paramiko.SSHException):
    pass


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse an unknown host key with a message that says how to trust it."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyRejected(
            f"host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in {self.known_hosts}; "
            f"if you trust it, add it: ssh-keyscan {_keyscan_args(hostname)} >> {self.known_hosts}")


def _keyscan_args(hostname: str) -> str:
    if hostname.startswith("["):
        host, _, port = hostname[1:].partition("]:")
        return f"-p {port} {host}"
    return hostname


class SshPipe:
    """A ``Pipe`` over one paramiko exec channel."""

    def __init__(self, client: paramiko.SSHClient, chan: paramiko.Channel) -> None:
        self.client = client
        self.chan = chan
        self.out = chan.makefile("rb")
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        try:
            drain_tail(self.chan.makefile_stderr("rb"), self._tail)
        except (OSError, EOFError, paramiko.SSHException):
            return

    def write(self, data: bytes) -> None:
        self.chan.sendall(data)

    def readline(self, limit: int) -> bytes:
        line: bytes = self.out.readline(limit)
        return line

    def link_alive(self) -> bool:
        t = self.client.get_transport()
        return bool(t is not None and t.is_active())

    def stderr_tail(self) -> str:
        return " | ".join(self._tail)[-500:]

    def exit_status(self) -> int | None:
        # the exit status follows the stdout EOF in a separate message: wait for it briefly
        if self.chan.status_event.wait(2.0):
            return int(self.chan.exit_status)
        return None

    def kill_remote(self, pid: int, pgid: int | None) -> None:
        """SIGKILL the remote agent and its process group (sshd made one per session; an agent of
        protocol 1 does not report it, then the agent's PID stands for it) over a fresh exec channel.
        The command is built from checked ints, never from a string the device sent."""
        group = pid if pgid is None else pgid
        if any(isinstance(x, bool) or not isinstance(x, int) or not 1 < x < 2 ** 31 for x in (pid, group)):
            return
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            return  # the link is gone: sshd ends the session, and the real agent exits on EOF
        argv = ["kill", "-s", "KILL", "--", f"-{group}", str(pid)]  # POSIX form: dash, bash, busybox
        try:
            chan = transport.open_session(timeout=10.0)
            chan.exec_command(" ".join(shlex.quote(a) for a in argv) + " 2>/dev/null")
            chan.status_event.wait(10.0)
            chan.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def close(self) -> None:
        try:
            self.chan.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass


class SshTransport(AgentTransport):
    """The agent on a device reached over SSH; the connection is reused until it fails."""

    def __init__(self, device: DeviceConfig) -> None:
        super().__init__(device)
        self.ssh: paramiko.SSHClient | None = None
        self.agent_source = AGENT_FILE.read_bytes()
        self.agent_sha = hashlib.sha256(self.agent_source).hexdigest()

    @property
    def known_hosts(self) -> str:
        return self.device.known_hosts or os.path.expanduser("~/.ssh/known_hosts")

    def _connect(self) -> paramiko.SSHClient:
        if self.ssh is not None:
            t = self.ssh.get_transport()
            if t is not None and t.is_active():
                return self.ssh
            self.ssh.close()
            self.ssh = None
        dev = self.device
        client = paramiko.SSHClient()
        if os.path.exists(self.known_hosts):
            client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(_RejectUnknown(self.known_hosts))
        pkey = None
        if dev.key_file:
            # Loaded here, not by paramiko's key_filename loop, whose last error (a key type it tried
            # and could not parse) would hide a plain "server refused the key".
            try:
                pkey = paramiko.PKey.from_path(dev.key_file)
            except paramiko.PasswordRequiredException:
                raise DeviceError("AUTH", f"key_file {dev.key_file} is encrypted: load it into ssh-agent "
                                  "and leave key_file out") from None
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise DeviceError("AUTH", f"key_file {dev.key_file} cannot be read as a private key: {exc}") from None
        kw: dict[str, Any] = dict(
            hostname=dev.host, port=dev.port, username=dev.user or getpass.getuser(),
            pkey=pkey, allow_agent=True, look_for_keys=dev.key_file is None,
            timeout=dev.connect_timeout_s, banner_timeout=dev.connect_timeout_s, auth_timeout=dev.connect_timeout_s,
            channel_timeout=dev.connect_timeout_s,
        )
        where = f"{dev.user or getpass.getuser()}@{dev.host}:{dev.port}"
        try:
            client.connect(**kw)
        except HostKeyRejected as exc:
            client.close()
            raise DeviceError("HOSTKEY", str(exc)) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            hn = f"[{dev.host}]:{dev.port}" if dev.port != 22 else str(dev.host)
            raise DeviceError("HOSTKEY", (
                f"host key of {hn} CHANGED (now {exc.key.get_name()} {exc.key.fingerprint}, {self.known_hosts} "
                f"has {exc.expected_key.fingerprint}); the device was re-installed or someone is in the middle. "
                f"If you trust the new key: ssh-keygen -R '{hn}' -f {self.known_hosts} && "
                f"ssh-keyscan {_keyscan_args(hn)} >> {self.known_hosts}")) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise DeviceError("AUTH", f"{where} refused our keys ({exc}); check user and key_file, or that the "
                              "public key is in the device's authorized_keys") from None
        except (TimeoutError, OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            raise DeviceError("CONNECT", f"cannot connect to {where}: {exc or type(exc).__name__}") from None
        transport = client.get_transport()
        if transport is not None and dev.keepalive_s > 0:
            transport.set_keepalive(int(dev.keepalive_s))
        self.ssh = client
        return client

    def command(self) -> str:
        """The one fixed command line this transport runs; every variable part is quoted."""
        dev = self.device
        agent_path = f"{dev.cache_dir.rstrip('/')}/agent-{self.agent_sha[:16]}.py"
        argv = [dev.python, "-u", "-c", BOOTSTRAP, agent_path, self.agent_sha, str(len(self.agent_source)),
                "serve", "--cache-dir", dev.cache_dir, "--sysfs-root", dev.sysfs_root]
        return " ".join(shlex.quote(a) for a in argv)

    def _open_pipe(self) -> Pipe:
        client = self._connect()
        try:
            transport = client.get_transport()
            assert transport is not None
            chan = transport.open_session(timeout=self.device.connect_timeout_s)
            chan.exec_command(self.command())
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._close_ssh()
            raise DeviceError("CONNECT", f"cannot start the agent on {self.device.name}: {exc}") from None
        pipe = SshPipe(client, chan)
        return _BootstrapPipe(pipe, self.agent_source, self.device.upload_timeout_s)

    def _close_ssh(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None

    def close(self) -> None:
        super().close()
        self._close_ssh()


class _BootstrapPipe:
    """Answers the bootstrap's request for the agent file, then behaves as the plain pipe."""

    def __init__(self, pipe: SshPipe, source: bytes, timeout: float) -> None:
        self.pipe = pipe
        self.source = source
        self.timeout = timeout
        self.first = True
        self.uploaded_agent = False

    def readline(self, limit: int) -> bytes:
        line = self.pipe.readline(limit)
        if self.first:
            self.first = False
            if line == NEED_AGENT:
                self.pipe.chan.settimeout(self.timeout)
                self.pipe.write(self.source)
                self.pipe.chan.settimeout(None)
                self.uploaded_agent = True
                line = self.pipe.readline(limit)
        return line

    def write(self, data: bytes) -> None:
        self.pipe.write(data)

    def link_alive(self) -> bool:
        return self.pipe.link_alive()

    def stderr_tail(self) -> str:
        return self.pipe.stderr_tail()

    def exit_status(self) -> int | None:
        return self.pipe.exit_status()

    def kill_remote(self, pid: int, pgid: int | None) -> None:
        self.pipe.kill_remote(pid, pgid)

    def close(self) -> None:
        self.pipe.close()
