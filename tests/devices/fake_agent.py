"""A fake agent: a real executable that speaks the framing of the protocol but answers what a test
says (well-formed garbage, NaN, missing fields) or hangs. It is set as a device's ``python``, so the
local and ssh transports start it exactly as they start the real agent (its arguments are ignored).
Used by tests/devices/test_boundary.py and benchmarks/faults_devices.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GOOD_MEASURE: dict[str, Any] = {
    "latency_ms": {"p50": 1.0, "p90": 1.2, "mean": 1.05, "std": 0.1, "min": 0.9, "max": 1.5, "n": 5},
    "load_ms": 3.0, "first_run_ms": 2.0, "peak_memory_bytes": 10_000_000, "memory_growth_bytes": 1000,
    "energy": None, "op_times_ms": None, "method": {"fake": True}, "environment": {"agent_version": "0-fake"},
}

_SCRIPT = '''#!{python}
import json, os, signal, subprocess, sys, time
REPLIES = {replies!r}
HANG = {hang!r}
PIDFILE = {pidfile!r}
GREETING = {greeting!r}
pids = [os.getpid()]
if HANG:
    # a process that does not end on EOF or a polite signal: only a kill of its group ends it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids.append(subprocess.Popen(["sleep", "1000"]).pid)
if PIDFILE:
    with open(PIDFILE, "w") as f:
        f.write(" ".join(map(str, pids)))
out = sys.stdout
defaults = {{"hello": json.dumps({{"agent_version": "0-fake", "protocol": 2, "pid": os.getpid()}}),
             "ping": None, "has_model": '{{"present": true}}', "bye": "{{}}"}}
out.write((GREETING or json.dumps({{"type": "hello", "protocol": 2, "agent_version": "0-fake",
                                     "pid": os.getpid(), "pgid": os.getpgid(0)}})) + "\\n")
out.flush()
for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    if op == HANG:
        while True:
            time.sleep(1000)
    raw = REPLIES.get(op, defaults.get(op, "{{}}"))
    if raw is None:
        raw = json.dumps({{"time": time.time()}})
    if raw.startswith("!ERROR "):
        out.write('{{"id": %d, "ok": false, "error": %s}}\\n' % (req["id"], raw[7:]))
    else:
        out.write('{{"id": %d, "ok": true, "result": %s}}\\n' % (req["id"], raw))
    out.flush()
    if op == "bye":
        break
'''


def write_fake_agent(path: Path, replies: dict[str, str] | None = None, hang: str | None = None,
                     pidfile: Path | None = None, greeting: str | None = None) -> Path:
    """An executable at ``path``: ``replies`` maps an op to the raw JSON text of its result (or
    ``"!ERROR {...}"`` for an error object); ``hang`` names an op on which it stops answering (and
    it then ignores SIGHUP/SIGTERM and keeps a ``sleep`` child); ``pidfile`` gets its PIDs."""
    path.write_text(_SCRIPT.format(python=sys.executable, replies=dict(replies or {}), hang=hang,
                                   pidfile=str(pidfile) if pidfile else None, greeting=greeting))
    path.chmod(0o755)
    return path


def measure_reply(stats: dict[str, Any] | None = None, **changes: Any) -> str:
    """``GOOD_MEASURE`` with ``stats`` merged into its latency_ms and ``changes`` (``None`` deletes a
    key) as raw JSON text; NaN is written as Python's json writes it (``NaN``)."""
    body = json.loads(json.dumps(GOOD_MEASURE))
    body["latency_ms"].update(stats or {})
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return json.dumps(body)
