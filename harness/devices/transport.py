"""Transports: how the host gets a measurement from a device.

Contract
--------
``connect(device)`` returns a ``Transport`` for a ``DeviceConfig``: ``ssh`` (paramiko, host keys
verified), ``local`` (the same agent as a subprocess here) or ``simulated`` (answers from a cost
model or a function, labelled ``simulated``). A transport is used by one thread at a time; it may
keep a connection and an agent process open between calls and re-opens them after a failure.

* ``handshake()`` returns the agent's facts (version, Python, OS, CPU, runtimes, sensors, governor)
  plus ``clock_offset_s`` and ``rtt_s``; it raises ``DeviceError`` (with ``kind``) on failure.
* ``measure(model_path, settings)`` never raises for a device or model failure: it returns a
  ``MeasureRecord`` with ``ok=False``, an ``error_kind`` and a one-line ``message``.
* ``infer(model_path, data_path, settings)`` runs the ``.npz`` inputs through the model ON the
  device and returns an ``InferRecord`` with the first output (reduced as asked) as a float32
  array; like ``measure`` it never raises for a device, runtime, model or data failure. A simulated
  transport answers UNSUPPORTED: it has no runtime to run inputs on.
* ``close()`` ends the agent and the connection; calling it twice is harmless.

Measured numbers are labelled ``measured``; a simulated transport labels its numbers ``simulated``.

Nothing an agent sends is trusted: every frame and result is checked against the schemas in
``harness.devices.replies`` (non-finite numbers refused) and a bad one is a PROTOCOL failure that ends
the session. A session the host gives up on (no reply in time) is ended on the device too: the local
transport kills the agent's process group; the ssh one sends ``kill`` by the greeting's checked PIDs
over a fresh exec channel.

One module (~550 lines) because the interface, its records and errors, and the agent-protocol client
that the local and SSH transports share are one contract; the implementations live beside it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from harness.core.errors import QaeError
from harness.devices.config import DeviceConfig
from harness.devices.replies import BadReply, check, parse_frame

PROTOCOL_VERSION = 2
#: protocols this host speaks: 1 (agents before 1.3) has no process groups; 2 adds ``pgid`` to the greeting
PROTOCOLS = (1, 2)
MAX_FRAME = 8 * 1024 * 1024
CHUNK = 1 << 20
AGENT_FILE = Path(__file__).resolve().parents[2] / "device_agents" / "agent.py"

#: Failures worth a retry after a back-off: the device or the link dropped out, not the model.
TRANSIENT_KINDS = frozenset({"CONNECT", "AGENT_CRASHED", "UPLOAD"})
#: Failures that say something about the device (counted for its health), not about the candidate.
DEVICE_KINDS = frozenset({"CONNECT", "AUTH", "HOSTKEY", "UPLOAD", "RUNTIME_MISSING", "PROTOCOL", "AGENT_CRASHED",
                          "SENSOR"})


class DeviceError(QaeError):
    """A device-side failure with a typed ``kind`` (CONNECT, AUTH, HOSTKEY, PROTOCOL, ...)."""

    exit_code = 3

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.detail = message


@dataclass
class MeasureSettings:
    """How to measure: timed runs continue until both ``runs`` and ``min_seconds`` are reached
    (TFLite benchmark_model defaults), after a warm-up of ``warmup_runs`` and ``warmup_seconds``.
    ``timeout_s`` is the hard limit on the measurement child; ``idle_seconds`` the idle-power window
    (used only with a sensor); ``genome`` is passed to a simulated device's cost model."""

    runs: int = 50
    min_seconds: float = 1.0
    warmup_runs: int = 1
    warmup_seconds: float = 0.5
    timeout_s: float = 120.0
    threads: int | None = None
    affinity: list[int] | None = None
    cooldown_s: float = 0.0
    profile_ops: bool = False
    max_seconds: float = 150.0
    idle_seconds: float = 1.0
    genome: Any = None
    #: the float model a genome applies to (for a simulated device's cost model); never sent to a device
    base_model: str | None = None
    #: the shapes of one inference {input: dims} the agent feeds (symbolic dimensions set); None sends
    #: nothing, and an agent then feeds 1 for a symbolic dimension and says so in the record's method
    input_shapes: dict[str, list[int]] | None = None

    def to_agent(self, device: DeviceConfig) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("genome", "base_model", "input_shapes")}
        if self.input_shapes is not None:  # only when known: an agent older than 1.2 ignores the key
            d["input_shapes"] = {k: [int(x) for x in v] for k, v in self.input_shapes.items()}
        d["threads"] = self.threads if self.threads is not None else device.threads
        aff = self.affinity if self.affinity is not None else device.affinity
        d["affinity"] = list(aff) if aff is not None else None
        d["providers"] = list(device.providers)
        return d


@dataclass
class MeasureRecord:
    """One measurement or one failure. ``latency_ms`` has p50, p90, mean, std, min, max, n;
    ``runs_ms`` is every timed run in ms (at most 20000, evenly spaced when there were more; the
    summary covers all), ``None`` from an agent older than 1.4 that does not send them;
    ``energy_j`` is per inference over the timed runs, ``None`` without a sensor, and
    ``energy_method`` says what was measured. ``error_kind`` is ``None`` exactly when ``ok``."""

    ok: bool
    source: str
    device: str
    model_sha256: str | None = None
    latency_ms: dict[str, float] | None = None
    load_ms: float | None = None
    first_run_ms: float | None = None
    peak_memory_bytes: int | None = None
    memory_growth_bytes: int | None = None
    energy_j: float | None = None
    energy_method: str | None = None
    idle_power_w: float | None = None
    op_times_ms: dict[str, float] | None = None
    #: agent 1.5 with ``profile_ops``: {runs, run_ms, nodes: [{name, op_type, provider, ms}]} (medians per run)
    op_profile: dict[str, Any] | None = None
    method: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    error_kind: str | None = None
    message: str = ""
    uploaded_bytes: int = 0
    phases_s: dict[str, float] = field(default_factory=dict)
    energy: dict[str, Any] | None = None
    runs_ms: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def failure(cls, device: str, kind: str, message: str, source: str = "measured", **kw: Any) -> MeasureRecord:
        return cls(ok=False, source=source, device=device, error_kind=kind, message=message, **kw)


@dataclass
class InferSettings:
    """How to run inputs on the device. ``batch`` is the inputs per run (a model with a fixed batch
    dimension uses that instead); ``reduce`` is ``"none"`` (the raw first output, e.g. logits) or
    ``"mean_pool"`` (mean over axis 1, [N, T, D] -> [N, D], weighted by the integer mask array named
    ``mask_input`` in the data file, e.g. ``attention_mask``; unweighted when it is ``None``).
    ``timeout_s`` is the hard limit on the inference child; ``threads`` defaults to the device's."""

    timeout_s: float = 120.0
    threads: int | None = None
    batch: int = 64
    reduce: str = "none"
    mask_input: str | None = None

    def to_agent(self, device: DeviceConfig) -> dict[str, Any]:
        d = asdict(self)
        d["threads"] = self.threads if self.threads is not None else device.threads
        d["providers"] = list(device.providers)
        return d


@dataclass
class InferRecord:
    """One on-device inference or one failure. ``outputs`` is the (reduced) first output as a
    float32 array with ``n`` rows, or ``None`` on failure; ``to_dict`` gives its shape and dtype
    instead of the values. ``source`` is ``measured`` when the device computed it. ``seconds`` is the
    time the runtime spent running all inputs (model load excluded). ``error_kind`` is ``None``
    exactly when ``ok``: MODEL_LOAD, DATA_LOAD (the host cannot read the data file), RUN_TIMEOUT,
    OOM, RUNTIME_MISSING, REMOTE_ERROR (e.g. data arrays that do not match the model's inputs),
    PROTOCOL, UPLOAD, CONNECT, AGENT_CRASHED, UNSUPPORTED."""

    ok: bool
    source: str
    device: str
    model_sha256: str | None = None
    data_sha256: str | None = None
    outputs: np.ndarray | None = None
    n: int = 0
    seconds: float | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    error_kind: str | None = None
    message: str = ""
    uploaded_bytes: int = 0
    method: dict[str, Any] = field(default_factory=dict)
    phases_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, outputs=None))
        d.pop("outputs")
        d["output_shape"] = list(self.outputs.shape) if self.outputs is not None else None
        d["output_dtype"] = str(self.outputs.dtype) if self.outputs is not None else None
        return d

    @classmethod
    def failure(cls, device: str, kind: str, message: str, source: str = "measured", **kw: Any) -> InferRecord:
        return cls(ok=False, source=source, device=device, error_kind=kind, message=message, **kw)


class Transport:
    """Interface; see the module docstring for the contract."""

    device: DeviceConfig

    def handshake(self) -> dict[str, Any]:
        raise NotImplementedError

    def measure(self, model_path: Path, settings: MeasureSettings) -> MeasureRecord:
        raise NotImplementedError

    def infer(self, model_path: Path, data_path: Path, settings: InferSettings) -> InferRecord:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pipe(Protocol):
    """A byte pipe to a started agent: what ``AgentTransport`` needs from ssh or a subprocess."""

    def write(self, data: bytes) -> None: ...
    def readline(self, limit: int) -> bytes: ...
    def close(self) -> None: ...
    def link_alive(self) -> bool: ...
    def stderr_tail(self) -> str: ...
    def exit_status(self) -> int | None: ...
    def kill_remote(self, pid: int, pgid: int | None) -> None: ...


_EOF = b""


class AgentClient:
    """JSON-lines client of one agent process. A reader thread turns lines into a queue so every
    wait has a deadline; EOF or a broken frame ends the session."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.lines: queue.Queue[bytes | BaseException] = queue.Queue()
        self.next_id = 1
        self.dead = False
        self.hello: dict[str, Any] = {}
        #: set when the host gave up on a silent agent: ``close`` then ends the process, not just the pipe
        self.hung = False
        threading.Thread(target=self._read, daemon=True, name="qae-agent-reader").start()

    def _read(self) -> None:
        try:
            while True:
                line = self.pipe.readline(MAX_FRAME + 1)
                self.lines.put(line)
                if not line:
                    return
        except BaseException as exc:  # the link broke under us: the caller sees it as EOF with a cause
            self.lines.put(exc)

    def recv_line(self, timeout: float, phase: str) -> bytes:
        try:
            item = self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            self.dead = self.hung = True
            kind = "RUN_TIMEOUT" if phase == "measure" else ("UPLOAD" if phase == "upload" else "CONNECT")
            raise DeviceError(kind, f"no reply from the agent within {timeout:.1f} s ({phase} phase)") from None
        if isinstance(item, BaseException) or item == _EOF:
            self.dead = True
            if not self.pipe.link_alive():
                raise DeviceError("CONNECT", f"connection to the device was lost during {phase}")
            tail = self.pipe.stderr_tail()
            status = self.pipe.exit_status()
            if phase == "connect" and not self.hello and (status in (126, 127) or "not found" in tail
                                                          or "No such file" in tail):
                # the shell could not run the interpreter: retrying cannot help, the config must change
                raise DeviceError("RUNTIME_MISSING", "cannot start the agent's interpreter (exit status "
                                  f"{status}): {tail or 'no message'}; set 'python:' in devices.yaml to an "
                                  "interpreter that exists on the device")
            raise DeviceError("AGENT_CRASHED", f"the agent ended during {phase}" + (f": {tail}" if tail else ""))
        if len(item) > MAX_FRAME:
            self.dead = True
            raise DeviceError("PROTOCOL", f"agent sent a frame over {MAX_FRAME} bytes")
        return item

    def parse(self, line: bytes) -> dict[str, Any]:
        try:
            return parse_frame(line)
        except ValueError as exc:
            self.dead = True
            if "non-finite" in str(exc):
                raise DeviceError("PROTOCOL", f"agent sent a frame with a {exc}: numbers must be finite") from None
            shown = line[:120].decode(errors="replace").strip()
            raise DeviceError("PROTOCOL", f"agent printed a line that is not a protocol frame: {shown!r} "
                              "(is a login script or library writing to stdout?)") from None

    def start(self, timeout: float) -> dict[str, Any]:
        frame = self.parse(self.recv_line(timeout, "connect"))
        if frame.get("type") != "hello" or frame.get("protocol") not in PROTOCOLS:
            self.dead = True
            raise DeviceError("PROTOCOL", f"agent greeting {str(frame)[:200]} is not protocol "
                              f"{' or '.join(map(str, PROTOCOLS))}")
        self._check("greeting", frame)
        self.hello = frame
        return frame

    def _check(self, what: str, value: Any) -> None:
        try:
            check(what, value)
        except BadReply as exc:
            self.dead = True  # an agent that says nonsense once is not trusted with the next request
            raise DeviceError("PROTOCOL", str(exc)) from None

    def call(self, op: str, args: dict[str, Any], timeout: float, phase: str) -> dict[str, Any]:
        """Send one request and wait for its reply; a typed failure becomes ``DeviceError``."""
        if self.dead:
            raise DeviceError("AGENT_CRASHED", "agent session already ended")
        rid = self.next_id
        self.next_id += 1
        data = (json.dumps({"id": rid, "op": op, "args": args}, separators=(",", ":")) + "\n").encode()
        if len(data) > MAX_FRAME:
            raise DeviceError("PROTOCOL", f"request of {len(data)} bytes exceeds the frame cap")
        try:
            self.pipe.write(data)
        except (OSError, EOFError) as exc:
            self.dead = True
            kind = "CONNECT" if not self.pipe.link_alive() else "AGENT_CRASHED"
            raise DeviceError(kind, f"cannot send to the agent: {exc}") from None
        frame = self.parse(self.recv_line(timeout, phase))
        if frame.get("id") != rid:
            self.dead = True
            raise DeviceError("PROTOCOL", f"reply id {frame.get('id')!r} does not answer request {rid}")
        self._check("reply", frame)
        if frame["ok"]:
            result: dict[str, Any] = frame["result"]
            if op in ("hello", "ping", "has_model", "put", "measure", "infer", "fetch", "sensors", "bye"):
                self._check(op, result)
            return result
        err = frame["error"]
        kind = err.get("kind", "REMOTE_ERROR")
        if kind == "PROTOCOL":
            self.dead = True
        msg = err.get("message", "")
        if kind == "REMOTE_ERROR":
            msg = f"agent raised {err.get('type', 'an exception')}: {msg}"
        raise DeviceError(kind, msg)

    def close(self) -> None:
        if not self.dead:
            try:
                self.call("bye", {}, 2.0, "close")
            except DeviceError:
                pass
        self.dead = True
        # a hung agent (or a foreign process) does not exit on EOF: end it and its process group. The
        # greeting was schema-checked, so pid and pgid are ints > 1 (kill 0 / -1 would hit everything).
        if self.hung and self.hello.get("pid") is not None:
            self.pipe.kill_remote(int(self.hello["pid"]), self.hello.get("pgid"))
        self.pipe.close()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def model_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a warm loop does not re-read it."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


class _Progress:
    """What one device call has done so far: seconds per phase (``start`` closes the phase in progress,
    so the phase an error cut short keeps its time so far) and the bytes uploaded."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.uploaded = 0
        self.current = ""
        self._t = 0.0

    def start(self, name: str) -> None:
        self.stop()
        self.current, self._t = name, time.perf_counter()

    def stop(self) -> None:
        if self.current:
            self.phases[self.current] = time.perf_counter() - self._t
            self.current = ""


class AgentTransport(Transport):
    """A transport that talks to the real agent; subclasses only start it (``_open_pipe``)."""

    kind = "agent"

    def __init__(self, device: DeviceConfig) -> None:
        self.device = device
        self.client: AgentClient | None = None

    def _open_pipe(self) -> Pipe:
        raise NotImplementedError

    def _session(self) -> AgentClient:
        if self.client is not None and not self.client.dead:
            return self.client
        self._drop()
        pipe = self._open_pipe()
        client = AgentClient(pipe)
        try:
            client.start(self.device.connect_timeout_s + 30.0)
        except BaseException:
            client.close()
            raise
        self.client = client
        return client

    def _drop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def handshake(self) -> dict[str, Any]:
        client = self._session()
        timeout = self.device.connect_timeout_s + 30.0
        facts = client.call("hello", {}, timeout, "connect")
        # Cristian's method over the quickest of three pings: the agent read its clock about
        # half-way through the round trip (hello itself is slow: it imports the runtimes).
        best: tuple[float, float] | None = None
        for _ in range(3):
            t0 = time.time()
            remote = client.call("ping", {}, timeout, "connect")["time"]
            t1 = time.time()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, remote - (t0 + t1) / 2)
        assert best is not None
        facts["rtt_s"], facts["clock_offset_s"] = best
        facts["transport"] = self.device.transport
        return facts

    def upload(self, client: AgentClient, path: Path, sha: str, ext: str | None = None) -> int:
        """Send the model (or, with ``ext=".npz"``, a data file) unless the device already has it by
        sha256; returns bytes sent."""
        if ext is None:
            ext = path.suffix if path.suffix in (".onnx", ".tflite") else ".onnx"
        timeout = self.device.upload_timeout_s
        if client.call("has_model", {"sha256": sha, "ext": ext}, timeout, "upload")["present"]:
            return 0
        sent = 0
        size = path.stat().st_size
        with path.open("rb") as f:
            while True:
                data = f.read(CHUNK)
                last = sent + len(data) >= size
                client.call("put", {"sha256": sha, "ext": ext, "offset": sent, "last": last,
                                    "data": base64.b64encode(data).decode()}, timeout, "upload")
                sent += len(data)
                if last:
                    return sent

    def _open(self, progress: _Progress, files: list[tuple[Path, str, str | None]]) -> AgentClient:
        """Connect, then upload each (path, sha256, ext) the agent lacks."""
        progress.start("connect")
        client = self._session()
        progress.start("upload")
        for path, sha, ext in files:
            progress.uploaded += self.upload(client, path, sha, ext)
        return client

    def _after_error(self, progress: _Progress) -> None:
        progress.stop()
        if self.client is not None and self.client.dead:
            self._drop()

    def measure(self, model_path: Path, settings: MeasureSettings) -> MeasureRecord:
        model_path = Path(model_path)
        name = self.device.name
        try:
            sha = model_sha256(model_path)
        except OSError as exc:
            return MeasureRecord.failure(name, "MODEL_LOAD", f"cannot read {model_path}: {exc}")
        progress = _Progress()
        try:
            client = self._open(progress, [(model_path, sha, None)])
            progress.start("measure")
            ext = model_path.suffix if model_path.suffix in (".onnx", ".tflite") else ".onnx"
            wait = settings.timeout_s + settings.cooldown_s + settings.idle_seconds + 30.0
            res = client.call("measure", {"sha256": sha, "ext": ext, "settings": settings.to_agent(self.device),
                                          "sensor": self.device.sensor}, wait, "measure")
            progress.stop()
        except DeviceError as exc:
            self._after_error(progress)
            return MeasureRecord.failure(name, exc.kind, exc.detail, model_sha256=sha, uploaded_bytes=progress.uploaded,
                                         phases_s=progress.phases)
        energy = res.get("energy")
        env = res.get("environment", {})
        env["transport"] = self.device.transport
        return MeasureRecord(
            ok=True, source="measured", device=name, model_sha256=sha, latency_ms=res["latency_ms"],
            load_ms=res["load_ms"], first_run_ms=res["first_run_ms"], peak_memory_bytes=res["peak_memory_bytes"],
            memory_growth_bytes=res["memory_growth_bytes"],
            energy_j=energy["per_inference_j"] if energy else None,
            energy_method=energy["method"] if energy else None,
            idle_power_w=energy.get("idle_power_w") if energy else None,
            op_times_ms=res.get("op_times_ms"), op_profile=res.get("op_profile"), method=res.get("method", {}),
            environment=env,
            uploaded_bytes=progress.uploaded, phases_s=progress.phases, energy=energy,
            runs_ms=[float(t) for t in res["runs_ms"]] if res.get("runs_ms") is not None else None,
        )

    def infer(self, model_path: Path, data_path: Path, settings: InferSettings) -> InferRecord:
        """Upload the model and the data once each (by sha256), run ``infer`` on the agent, and pull
        the output bytes (inline, or by ``fetch`` in chunks), checked against the agent's sha256."""
        model_path, data_path = Path(model_path), Path(data_path)
        name = self.device.name
        try:
            sha = model_sha256(model_path)
        except OSError as exc:
            return InferRecord.failure(name, "MODEL_LOAD", f"cannot read {model_path}: {exc}")
        if data_path.suffix != ".npz":
            return InferRecord.failure(name, "DATA_LOAD", f"data file {data_path} is not an .npz", model_sha256=sha)
        try:
            data_sha = model_sha256(data_path)
        except OSError as exc:
            return InferRecord.failure(name, "DATA_LOAD", f"cannot read {data_path}: {exc}", model_sha256=sha)
        progress = _Progress()
        try:
            client = self._open(progress, [(model_path, sha, None), (data_path, data_sha, ".npz")])
            progress.start("infer")
            ext = model_path.suffix if model_path.suffix in (".onnx", ".tflite") else ".onnx"
            # error phase "measure": a silent agent here is a RUN_TIMEOUT
            res = client.call("infer", {"sha256": sha, "ext": ext, "data_sha256": data_sha,
                                        "settings": settings.to_agent(self.device)},
                              settings.timeout_s + 30.0, "measure")
            progress.start("fetch")
            raw, pieces = self._result_bytes(client, res)
            progress.stop()
            outputs = np.frombuffer(raw, dtype="<f4").reshape([int(d) for d in res["shape"]]).astype(np.float32)
        except DeviceError as exc:
            self._after_error(progress)
            return InferRecord.failure(name, exc.kind, exc.detail, model_sha256=sha, data_sha256=data_sha,
                                       uploaded_bytes=progress.uploaded, phases_s=progress.phases)
        except (KeyError, TypeError, ValueError) as exc:  # a reply that does not describe its bytes
            return InferRecord.failure(name, "PROTOCOL", f"malformed infer reply: {type(exc).__name__}: {exc}",
                                       model_sha256=sha, data_sha256=data_sha, uploaded_bytes=progress.uploaded,
                                       phases_s=progress.phases)
        env = res.get("environment", {})
        env["transport"] = self.device.transport
        method = dict(res.get("method", {}))
        method["load_ms"] = res.get("load_ms")
        method["transfer"] = f"fetch in {pieces} pieces" if pieces else "inline"
        return InferRecord(ok=True, source="measured", device=name, model_sha256=sha, data_sha256=data_sha,
                           outputs=outputs, n=int(res["n"]), seconds=float(res["seconds"]), environment=env,
                           uploaded_bytes=progress.uploaded, method=method, phases_s=progress.phases)

    def _result_bytes(self, client: AgentClient, res: dict[str, Any]) -> tuple[bytes, int]:
        """The output bytes of an ``infer`` reply and the number of ``fetch`` calls (0: inline),
        checked against the reply's size and sha256 (a mismatch is PROTOCOL)."""
        parts: list[bytes] = []
        if "data" in res:
            raw = base64.b64decode(res["data"])
        else:
            got = 0
            while True:
                piece = client.call("fetch", {"result_id": res["result_id"], "offset": got},
                                    self.device.upload_timeout_s, "fetch")
                data = base64.b64decode(piece["data"])
                parts.append(data)
                got += len(data)
                if piece.get("last") or not data:
                    break
            raw = b"".join(parts)
        if len(raw) != int(res["nbytes"]) or hashlib.sha256(raw).hexdigest() != res["sha256"]:
            raise DeviceError("PROTOCOL", f"inference result corrupted in transfer ({len(raw)} bytes, "
                              f"expected {res['nbytes']})")
        return raw, len(parts)

    def close(self) -> None:
        self._drop()
