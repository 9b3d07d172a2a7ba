"""The agent's protocol, spoken directly over its pipes."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.devices.transport import AGENT_FILE


class Raw:
    def __init__(self, cache: Path) -> None:
        self.p = subprocess.Popen([sys.executable, "-u", str(AGENT_FILE), "serve", "--cache-dir", str(cache)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.hello = self.read()

    def read(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        return dict(json.loads(self.p.stdout.readline()))

    def send(self, line: bytes) -> dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write(line + b"\n")
        self.p.stdin.flush()
        return self.read()

    def call(self, rid: int, op: str, **args: Any) -> dict[str, Any]:
        return self.send(json.dumps({"id": rid, "op": op, "args": args}).encode())

    def close(self) -> int:
        self.p.kill()
        return self.p.wait(10)


def test_python38_syntax_and_no_harness_import() -> None:
    src = AGENT_FILE.read_text()
    tree = ast.parse(src, feature_version=(3, 8))
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "harness" not in imported and "paramiko" not in imported


def test_hello_and_requests(tmp_path: Path) -> None:
    a = Raw(tmp_path)
    assert a.hello["type"] == "hello" and a.hello["protocol"] == 2 and a.hello["pgid"] > 1
    facts = a.call(1, "hello")["result"]
    assert facts["cpu_count"] >= 1 and "onnxruntime" in facts["runtimes"] and "governor" in facts
    sha = "0" * 64
    assert a.call(2, "has_model", sha256=sha, ext=".onnx") == {"id": 2, "ok": True, "result": {"present": False}}
    # remote code raised: a typed REMOTE_ERROR, and the session goes on
    r = a.call(3, "put", sha256=sha)
    assert not r["ok"] and r["error"]["kind"] == "REMOTE_ERROR" and r["error"]["type"] == "KeyError"
    data = b"hello model"
    good = hashlib.sha256(data).hexdigest()
    r = a.call(4, "put", sha256=sha, ext=".onnx", offset=0, last=True, data=base64.b64encode(data).decode())
    assert r["error"]["kind"] == "UPLOAD"
    r = a.call(5, "put", sha256=good, ext=".onnx", offset=0, last=True, data=base64.b64encode(data).decode())
    assert r["ok"] and (tmp_path / "models" / f"{good}.onnx").read_bytes() == data
    assert a.call(6, "has_model", sha256=good, ext=".onnx")["result"]["present"]
    assert a.call(7, "ping")["result"]["time"] > 0
    assert a.call(8, "bye")["ok"]
    a.close()


def test_protocol_errors_end_the_session(tmp_path: Path) -> None:
    a = Raw(tmp_path)
    r = a.send(b"this is not json")
    assert not r["ok"] and r["error"]["kind"] == "PROTOCOL"
    assert a.p.wait(10) == 2
    b = Raw(tmp_path)
    r = b.call(1, "format_disk")
    assert r["error"]["kind"] == "PROTOCOL" and "unknown op" in r["error"]["message"]
    b.close()
    c = Raw(tmp_path)
    assert c.call(1, "has_model", sha256="../../etc/passwd", ext=".onnx")["error"]["kind"] == "PROTOCOL"
    c.close()


def test_stdout_is_reserved(tmp_path: Path) -> None:
    """A print() inside the agent process lands on stderr, never in the protocol stream."""
    code = (f"import runpy; m = runpy.run_path({str(AGENT_FILE)!r}, run_name='agent'); "
            f"m['main'](['serve', '--cache-dir', {str(tmp_path)!r}])")
    p = subprocess.run([sys.executable, "-c", code + "; print('stray')"], input=b'{"id":1,"op":"ping"}\n',
                       capture_output=True, timeout=60)
    lines = p.stdout.decode().splitlines()
    assert all(json.loads(line) for line in lines) and "stray" in p.stderr.decode()
