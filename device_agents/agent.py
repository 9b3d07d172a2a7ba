#!/usr/bin/env python3
"""qae device agent: measures models on the device it runs on, the way a benchmark tool would.

Contract
--------
* One file, Python >= 3.8, standard library + numpy + the device's runtime (onnxruntime for
  ``.onnx``; LiteRT for ``.tflite`` via ``ai_edge_litert``, else ``tflite_runtime``). It never imports
  qae's host code, opens no port and writes nothing secret.
* ``agent.py serve [--cache-dir DIR] [--sysfs-root ROOT]`` speaks JSON lines on stdin/stdout. Stdout
  is reserved for the protocol: at start-up the real stdout is moved to a private descriptor and fd 1
  is pointed at stderr, so a library printing to stdout cannot corrupt a frame. Frames are capped at
  ``MAX_FRAME`` bytes.
* The agent speaks first: ``{"type": "hello", "protocol": 2, "agent_version": ..., "pid": ...,
  "pgid": ...}`` (protocol 1 had no ``pgid``; nothing else changed). A host that gives up on a silent
  agent ends it by that PID over a separate channel.
  Requests are ``{"id": N, "op": OP, "args": {...}}``; each gets exactly one reply
  ``{"id": N, "ok": true, "result": {...}}`` or ``{"id": N, "ok": false, "error": {"kind", "type",
  "message", "traceback"}}``. ``kind`` REMOTE_ERROR means "the remote code raised"; PROTOCOL means "the
  protocol broke" (bad frame, unknown op) and the agent exits after saying so. Measurement failures
  carry their own kinds (MODEL_LOAD, RUN_TIMEOUT, OOM, RUNTIME_MISSING, AGENT_CRASHED).
* Ops: ``hello`` (handshake facts), ``ping``, ``has_model``, ``put`` (framed, content-addressed
  upload: models live at ``CACHE/models/<sha256><ext>`` (``.onnx``/``.tflite``), input data at
  ``CACHE/data/<sha256>.npz``; both are verified before they are renamed into place), ``measure``,
  ``infer``, ``fetch``, ``sensors`` and ``bye``.
* ``measure`` feeds random inputs. Its settings may carry ``input_shapes`` {input: [dims]}, the
  shapes of one inference the host resolved (from its data or ``--input-shape``): they set every
  symbolic dimension, and an input with a symbolic dimension the host left out is an INPUT_SHAPE
  failure. A host that sends no ``input_shapes`` (protocol 1 before agent 1.2) gets 1 for each
  symbolic dimension, listed in the result's ``method.symbolic_dims_set_to_1``; ``method.input_shapes``
  always says what was fed.
* A ``measure`` result carries the summary ``latency_ms`` (p50, p90, mean, std, min, max, n) and,
  from agent 1.4, ``runs_ms``: every timed run in ms (at most ``MAX_RUNS``, evenly spaced over the
  timed window when there were more; ``method.runs_sent`` says which), so the host can put an
  interval on the p50 and test one model against another. Older hosts ignore the key.
* With ``profile_ops`` (an ``.onnx`` model), from agent 1.5 the result also carries ``op_profile``:
  after the timed runs, a second session with ONNX Runtime's profiler runs 5-20 more times (never
  counted in ``latency_ms``); the agent parses the profile and sends, per node of the graph ONNX
  Runtime ran, ``{name, op_type, provider, ms}`` (median over the profiled runs of the node's kernel
  time in that run), the number of ``runs`` and ``run_ms`` (their median duration).
  ``op_times_ms`` ({node: ms}, a mean before 1.5, the median since) stays for older hosts.
* Each measurement runs in a fresh child process (``agent.py child``) with a hard timeout; the child
  leads its own process group, so a timeout ends it and anything it started (a sensor command), and
  it dies with the agent (PR_SET_PDEATHSIG on Linux, and a parent check in the timed loop elsewhere).
* ``infer`` runs an uploaded model on an uploaded ``.npz`` (arrays matched to model inputs by name,
  ``labels`` ignored) in the same kind of child (mode ``infer``) and keeps the FIRST output, reduced
  (``none`` or ``mean_pool``), as float32 little-endian bytes in ``CACHE/results/<id>.f32``. The
  reply carries shape, n, seconds, runtime and a sha256 of the bytes; the bytes come inline (base64)
  when they are at most ``INLINE_MAX``, else the host pulls them with ``fetch`` {result_id, offset}
  in ``FETCH_CHUNK`` pieces (each reply under the frame cap). The file is deleted after its last
  piece is fetched, and any older result is deleted when the next ``infer`` starts. Outputs over
  ``MAX_RESULT`` bytes are refused (use a reduce or fewer inputs). ``.tflite`` inference is not
  implemented yet (UNSUPPORTED).
* Energy comes only from a real sensor, labelled with its method; with no sensor it is absent.

This module is longer than qae's usual ~500 lines because the design asks for the agent to be a
single uploadable file.

One file by design (DESIGN.md): it is uploaded to the device and run there alone, standard library
and numpy only, so it cannot be split into a package.
"""

from __future__ import annotations

# ruff: noqa: UP031  (%-formatting reads the same on every Python the agent supports)
import base64
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

AGENT_VERSION = "1.6.1"  # 1.5: per-op profiles (``op_profile``: op type, provider, median per run); 1.5.1: load average
# 1.6: LiteRT: the handshake names the runtime .tflite models run on (``runtimes.litert``), measurements record the
# XNNPACK delegate and threads, host shapes match signature input names, and each timed run sets the inputs and
# reads the outputs (as onnxruntime's run does); 1.6.1: ``cpu_model`` carries the CPU's generation ids (x86
# family / model / stepping, ARM implementer / part)
PROTOCOL_VERSION = 2  # 2: the greeting adds "pgid"; each child leads its own process group
MAX_FRAME = 8 * 1024 * 1024
RESULT_MARK = "QAE-RESULT "
INLINE_MAX = 1 << 20  # result bytes sent inline in the ``infer`` reply
FETCH_CHUNK = 4 << 20  # result bytes per ``fetch`` reply (base64: ~5.4 MiB, under the frame cap)
MAX_RESULT = 1 << 30  # larger outputs are refused: reduce them on the device first
MAX_RUNS = 20000  # timed runs sent back per measurement (~20 bytes each, well under the frame cap)
MODEL_EXTS = (".onnx", ".tflite")
DATA_EXTS = (".npz",)
REDUCES = ("none", "mean_pool")


class AgentFailure(Exception):
    """A failure with a typed kind (MODEL_LOAD, RUN_TIMEOUT, ...) to report to the host."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------------------------
# Sensors. Counter sensors (RAPL, an external command printing joules) are polled and their deltas
# accumulated with wrap-around; power sensors (INA3221, power_supply, a command printing watts) are
# sampled and integrated with the trapezoid rule.
# --------------------------------------------------------------------------------------------


def _read_text(path):
    with open(path) as f:
        return f.read().strip()


def _glob(pattern):
    import glob

    return sorted(glob.glob(pattern))


class Sensor:
    """Base: ``kind`` is "counter" (read() returns cumulative joules) or "power" (read() in watts)."""

    name = "sensor"
    kind = "power"
    method = ""

    def read(self):
        raise NotImplementedError

    def delta(self, before, after):
        return after - before

    def describe(self):
        return {"name": self.name, "kind": self.kind, "method": self.method}


class RaplSensor(Sensor):
    """Intel/AMD RAPL package domains under ``ROOT/sys/class/powercap/intel-rapl:N`` (sub-domains
    are inside their package, so only top-level packages are summed). The counter wraps at
    ``max_energy_range_uj``."""

    name = "rapl"
    kind = "counter"

    def __init__(self, root):
        base = os.path.join(root, "sys/class/powercap")
        self.domains = [d for d in _glob(os.path.join(base, "intel-rapl:*"))
                        if os.path.basename(d).count(":") == 1 and os.path.exists(os.path.join(d, "energy_uj"))]
        if not self.domains:
            raise LookupError("no RAPL domain")
        for d in self.domains:
            _read_text(os.path.join(d, "energy_uj"))  # raises PermissionError when not root (Linux >= 5.10)
        self.ranges = []
        names = []
        for d in self.domains:
            rng = os.path.join(d, "max_energy_range_uj")
            self.ranges.append(int(_read_text(rng)) if os.path.exists(rng) else 2 ** 32)
            nm = os.path.join(d, "name")
            names.append(_read_text(nm) if os.path.exists(nm) else os.path.basename(d))
        self.method = "RAPL energy_uj counter, CPU package domains (%s); not the whole board" % ", ".join(names)

    def read(self):
        return [int(_read_text(os.path.join(d, "energy_uj"))) for d in self.domains]

    def delta(self, before, after):
        total = 0
        for b, a, rng in zip(before, after, self.ranges):
            total += (a - b) if a >= b else (rng - b + a)  # the counter wrapped once since the last poll
        return total / 1e6


class Ina3221Sensor(Sensor):
    """Jetson INA3221 board input rail (VDD_IN is already the board total: other rails are never
    added). JetPack 5-6: hwmon ``in*_label`` with ``in*_input`` (mV) and ``curr*_input`` (mA);
    JetPack <= 4: iio ``rail_name_K`` with ``in_powerK_input`` (mW)."""

    name = "ina3221"
    kind = "power"
    RAILS = ("VDD_IN", "POM_5V_IN")

    def __init__(self, root, rail=None):
        wanted = (rail,) if rail else self.RAILS
        self.read_fn: Any = None
        for label_path in _glob(os.path.join(root, "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label")):
            label = _read_text(label_path)
            if label in wanted:
                d = os.path.dirname(label_path)
                idx = os.path.basename(label_path)[2:-len("_label")]
                mv, ma = os.path.join(d, "in%s_input" % idx), os.path.join(d, "curr%s_input" % idx)
                self.read_fn = lambda mv=mv, ma=ma: float(_read_text(mv)) * float(_read_text(ma)) / 1e6
                self.method = "Jetson INA3221 rail %s (whole board input), hwmon mV x mA" % label
                break
        if self.read_fn is None:
            for name_path in _glob(os.path.join(root, "sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*")):
                label = _read_text(name_path)
                if label in wanted:
                    idx = name_path.rsplit("_", 1)[1]
                    p = os.path.join(os.path.dirname(name_path), "in_power%s_input" % idx)
                    self.read_fn = lambda p=p: float(_read_text(p)) / 1e3
                    self.method = "Jetson INA3221 rail %s (whole board input), iio in_power (mW)" % label
                    break
        if self.read_fn is None:
            raise LookupError("no INA3221 rail %s" % "/".join(wanted))
        self.read_fn()

    def read(self):
        return self.read_fn()


class PowerSupplySensor(Sensor):
    """Linux/Android battery: ``current_now`` (uA) x ``voltage_now`` (uV). Drivers disagree on the
    sign of a discharging current, so the magnitude is used; it is battery-level and coarse, and
    while charging it misses what the charger supplies."""

    name = "power_supply"
    kind = "power"

    def __init__(self, root):
        self.dir = ""
        for d in _glob(os.path.join(root, "sys/class/power_supply/*")):
            if all(os.path.exists(os.path.join(d, f)) for f in ("current_now", "voltage_now")):
                self.dir = d
                break
        if not self.dir:
            raise LookupError("no power_supply with current_now and voltage_now")
        status_path = os.path.join(self.dir, "status")
        status = _read_text(status_path) if os.path.exists(status_path) else "unknown"
        self.method = ("power_supply %s current_now x voltage_now, |sign| normalised (battery-level, coarse; "
                       "status %s)" % (os.path.basename(self.dir), status))
        self.read()

    def read(self):
        ua = float(_read_text(os.path.join(self.dir, "current_now")))
        uv = float(_read_text(os.path.join(self.dir, "voltage_now")))
        return abs(ua) * uv / 1e12


class CommandSensor(Sensor):
    """A user's meter script: ``argv`` run without a shell, its last output line a number in joules
    (a cumulative counter) or watts (instantaneous power)."""

    name = "command"

    def __init__(self, argv, unit):
        if not argv or unit not in ("J", "W"):
            raise ValueError("a command sensor needs argv and unit J or W")
        self.argv = [str(a) for a in argv]
        self.kind = "counter" if unit == "J" else "power"
        self.method = "external command %s printing %s" % (os.path.basename(self.argv[0]),
                                                           "joules" if unit == "J" else "watts")
        self.read()

    def read(self):
        out = subprocess.run(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10,
                             check=True).stdout.decode()
        return float(out.strip().splitlines()[-1].split()[0])


def make_sensor(spec, root):
    """The sensor a host asked for: None or "none" -> None; "auto" -> the first that works of RAPL,
    INA3221, power_supply; a name; or a dict ``{kind: command, argv: [...], unit: J|W}`` or
    ``{kind: ina3221, rail: NAME}``. Raises LookupError when a named sensor is not there."""
    if spec in (None, "none", ""):
        return None
    if isinstance(spec, dict):
        kind = spec.get("kind")
        if kind == "command":
            return CommandSensor(spec.get("argv"), spec.get("unit", "J"))
        if kind == "ina3221":
            return Ina3221Sensor(root, spec.get("rail"))
        return make_sensor(kind, root)
    makers = {"rapl": RaplSensor, "ina3221": Ina3221Sensor, "power_supply": PowerSupplySensor}
    if spec == "auto":
        for make in makers.values():
            try:
                return make(root)
            except (LookupError, OSError, ValueError):
                continue
        return None
    if spec not in makers:
        raise LookupError("unknown sensor %r (rapl, ina3221, power_supply, command, auto, none)" % spec)
    try:
        return makers[spec](root)
    except (OSError, ValueError) as exc:
        raise LookupError("sensor %s is not readable: %s" % (spec, exc)) from exc


def discover_sensors(root):
    found = []
    for name in ("rapl", "ina3221", "power_supply"):
        try:
            found.append(make_sensor(name, root).describe())
        except LookupError as exc:
            if "not readable" in str(exc):
                found.append({"name": name, "error": str(exc)})
    return found


class EnergyMeter:
    """Energy over a window: a thread polls the sensor every ``interval`` s, accumulating counter
    deltas (so wraps between polls are seen) or integrating power samples."""

    def __init__(self, sensor, interval=0.05):
        self.sensor = sensor
        self.interval = interval
        self.joules = 0.0
        self.samples = 0
        self.t_first = self.t_last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        last, t_last = self.sensor.read(), time.perf_counter()
        self.t_first = self.t_last = t_last
        self.samples = 1
        while True:
            stopping = self._stop.wait(self.interval)
            now, t_now = self.sensor.read(), time.perf_counter()
            self.samples += 1
            if self.sensor.kind == "counter":
                self.joules += self.sensor.delta(last, now)
            else:
                self.joules += 0.5 * (last + now) * (t_now - t_last)
            last, t_last = now, t_now
            self.t_last = t_now
            if stopping:
                return

    def start(self):
        self._thread.start()

    def stop(self):
        """(joules, seconds) between the first and the last sample: the window actually covered."""
        self._stop.set()
        self._thread.join()
        return self.joules, self.t_last - self.t_first


# --------------------------------------------------------------------------------------------
# Environment facts
# --------------------------------------------------------------------------------------------


#: /proc/cpuinfo fields that tell CPU generations apart where the name does not: x86 family / model /
#: stepping, an ARM core's implementer and part
_CPU_IDS = (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"),
            ("CPU implementer", "implementer"), ("CPU part", "part"))


def cpu_model(root="/"):
    """The CPU's name, with its generation's ids where /proc/cpuinfo gives them ("AMD EPYC (family 26
    model 2 stepping 1)"): a cloud host names Zen 4 and Zen 5 "AMD EPYC" alike, and a calibration must
    be able to tell which one its measurements were taken on."""
    name, ids = None, {}
    try:
        with open(os.path.join(root, "proc/cpuinfo")) as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key in ("model name", "Hardware", "Processor", "cpu model") and name is None and value:
                    name = value
                ids.setdefault(key, value)
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    found = [f"{label} {ids[key]}" for key, label in _CPU_IDS if ids.get(key)]
    return f"{name} ({' '.join(found)})" if found else name


def governor(root="/"):
    path = os.path.join(root, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    try:
        return _read_text(path)
    except OSError:
        return None


def temperatures(root="/"):
    temps = {}
    for zone in _glob(os.path.join(root, "sys/class/thermal/thermal_zone*")):
        try:
            temps[_read_text(os.path.join(zone, "type"))] = int(_read_text(os.path.join(zone, "temp"))) / 1000.0
        except (OSError, ValueError):
            continue
    return temps


def loadavg():
    """The 1-minute load average (runnable tasks) or None where the OS has none: a measurement taken
    while the device is busy says so."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def runtimes():
    found = {}
    try:
        import onnxruntime as ort

        found["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    except Exception as exc:  # any import failure means "not usable here"
        found["onnxruntime"] = {"error": "%s: %s" % (type(exc).__name__, exc)}
    for mod in ("ai_edge_litert", "tflite_runtime"):
        attr = mod + ".interpreter"
        try:
            m = __import__(attr, fromlist=["Interpreter"])
            found[mod] = {"version": getattr(sys.modules.get(mod), "__version__", getattr(m, "__version__", "?"))}
        except Exception as exc:
            found[mod] = {"error": "%s: %s" % (type(exc).__name__, exc)}
    # What a .tflite runs on: the first importable of ai_edge_litert and tflite_runtime (LiteRunner's order).
    usable = [m for m in ("ai_edge_litert", "tflite_runtime") if "error" not in found[m]]
    found["litert"] = ({"module": usable[0], "version": found[usable[0]]["version"],
                        "delegate": "XNNPACK (default CPU delegate)"} if usable
                       else {"error": "neither ai_edge_litert nor tflite_runtime is importable"})
    try:
        import numpy

        found["numpy"] = {"version": numpy.__version__}
    except Exception as exc:
        found["numpy"] = {"error": str(exc)}
    return found


def handshake(root):
    return {
        "agent_version": AGENT_VERSION,
        "protocol": PROTOCOL_VERSION,
        "python": platform.python_version(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(root),
        "cpu_count": os.cpu_count(),
        "runtimes": runtimes(),
        "sensors": discover_sensors(root),
        "governor": governor(root),
        "temperatures_c": temperatures(root),
        "time": time.time(),
        "pid": os.getpid(),
    }


def rss_bytes(field="VmRSS"):
    """Resident memory of this process from /proc (``VmHWM`` is the peak); getrusage elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# --------------------------------------------------------------------------------------------
# The measurement child
# --------------------------------------------------------------------------------------------


def _die_with_parent():
    """Ask Linux to SIGKILL this child when the agent dies, so no measurement outlives it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _stats(times_ms):
    import numpy as np

    a = np.asarray(times_ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()),
            "std": float(a.std()), "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def _kept_runs(times_ms):
    """Every timed run in ms (rounded to the nanosecond), or ``MAX_RUNS`` of them evenly spaced over the
    timed window when there are more (the summary in ``latency_ms`` always covers all of them)."""
    n = len(times_ms)
    if n > MAX_RUNS:
        step = float(n - 1) / (MAX_RUNS - 1)
        times_ms = [times_ms[round(i * step)] for i in range(MAX_RUNS)]
    return [round(float(t), 6) for t in times_ms]


def _runs_sent(kept, n):
    return "all %d timed runs" % n if kept == n else "%d of %d timed runs, evenly spaced" % (kept, n)


_NP_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
             "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def feed_shape(name, declared, given, assumed):
    """The shape to feed input ``name``: the host's ``given`` shapes win (checked against the declared
    rank and fixed dims). A symbolic dimension without a given shape is an INPUT_SHAPE failure when
    the host sent shapes (``given`` is a dict: it knows the model's inputs); an older host sends none
    (``given`` is None), and then the dimension is fed as 1 and listed in ``assumed`` so the result
    says so rather than timing the wrong shape silently."""
    if declared is None:  # the file declares no shape at all: only the host can say
        if given is not None and name in given:
            return [int(d) for d in given[name]]
        raise AgentFailure("INPUT_SHAPE", "input %r declares no shape and the host sent none for it" % name)
    declared = [d if isinstance(d, int) and d > 0 else None for d in declared]
    if given is not None and name in given:
        shape = [int(d) for d in given[name]]
        if len(shape) != len(declared) or any(d is not None and d != g for d, g in zip(declared, shape)):
            raise AgentFailure("INPUT_SHAPE", "input %r is declared %s; the host sent shape %s"
                               % (name, ["?" if d is None else d for d in declared], shape))
        if any(d <= 0 for d in shape):
            raise AgentFailure("INPUT_SHAPE", "input %r: the host sent shape %s with a size <= 0" % (name, shape))
        return shape
    if None in declared:
        if given is not None:
            raise AgentFailure("INPUT_SHAPE", "input %r has symbolic dimensions %s and the host sent no shape for it"
                               % (name, ["?" if d is None else d for d in declared]))
        assumed.append(name)
    return [1 if d is None else d for d in declared]


def _random_input(np, shape, dtype, rng):
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 2, shape).astype(dtype)  # indices: small values stay in range


class OrtRunner:
    def __init__(self, path, s, profile=False, random_feed=True):
        try:
            import onnxruntime as ort
        except Exception as exc:
            raise AgentFailure("RUNTIME_MISSING", "onnxruntime is not importable: %s" % exc) from exc
        import numpy as np

        self.version = ort.__version__
        opts = ort.SessionOptions()
        if s.get("threads"):
            opts.intra_op_num_threads = int(s["threads"])
            opts.inter_op_num_threads = 1
        if profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(s["_tmp"], "ort_profile")
        available = ort.get_available_providers()
        providers = s.get("providers") or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise AgentFailure("RUNTIME_MISSING", "execution providers %s are not in this onnxruntime (has %s)"
                               % (", ".join(missing), ", ".join(available)))
        try:
            self.sess = ort.InferenceSession(path, opts, providers=providers)
        except Exception as exc:
            raise AgentFailure("MODEL_LOAD", "onnxruntime cannot load the model: %s" % str(exc)[:500]) from exc
        self.providers = self.sess.get_providers()
        self.feed = {}
        self.assumed: list[str] = []  # inputs whose symbolic dims were fed as 1 (an older host sent no shapes)
        if not random_feed:
            return
        rng = np.random.default_rng(0)
        given = s.get("input_shapes")
        self.feed = {i.name: _random_input(np, feed_shape(i.name, i.shape, given, self.assumed),
                                           _NP_TYPES.get(i.type, "float32"), rng)
                     for i in self.sess.get_inputs()}

    def run(self):
        self.sess.run(None, self.feed)

    def op_profile(self, runs):
        """ORT's profile of ``runs`` runs, parsed here (stdlib only): per node of the graph ONNX Runtime
        ran (after its fusions), its op type, execution provider and median kernel time per run (ms,
        a node's kernels within one run summed; ``iqm_ms`` the interquartile mean), plus the median
        of the profiled runs themselves.
        These runs are extra: they never count towards the reported latency."""
        import statistics

        for _ in range(runs + 1):  # the session's first run allocates: it is left out below
            self.run()
        path = self.sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
        os.unlink(path)
        windows = sorted((ev.get("ts", 0), ev.get("ts", 0) + ev.get("dur", 0)) for ev in events
                         if ev.get("cat") == "Session" and ev.get("name") == "model_run")[1:]
        per_run: dict[str, dict[int, float]] = {}
        info: dict[str, tuple[str, Any]] = {}
        order: list[str] = []
        for ev in events:
            name = ev.get("name", "")
            if ev.get("cat") != "Node" or not name.endswith("_kernel_time"):
                continue
            node = name[: -len("_kernel_time")]
            ts = ev.get("ts", 0)
            run = next((i for i, (a, b) in enumerate(windows) if a <= ts <= b), -1)
            if run < 0:
                continue  # the first run, or outside every run
            if node not in per_run:
                per_run[node] = {}
                args = ev.get("args") or {}
                info[node] = (str(args.get("op_name", "")), args.get("provider"))
                order.append(node)
            per_run[node][run] = per_run[node].get(run, 0.0) + ev.get("dur", 0) / 1000.0
        nodes = []
        for node in order:
            times = list(per_run[node].values())
            # a node missing from some runs (a branch not taken) ran 0 ms there
            times += [0.0] * max(0, len(windows) - len(times))
            op, provider = info[node]
            nodes.append({"name": node, "op_type": op, "provider": provider if isinstance(provider, str) else None,
                          "ms": statistics.median(times), "iqm_ms": interquartile_mean(times)})
        run_ms = statistics.median([(b - a) / 1000.0 for a, b in windows]) if windows else None
        return {"runs": runs, "nodes": nodes, "run_ms": run_ms}


def interquartile_mean(values):
    """The mean of the middle half of ``values``: robust like the median, but it resolves the
    sub-microsecond differences that a profiler counting whole microseconds hides in a median."""
    xs = sorted(values)
    k = len(xs) // 4
    mid = xs[k:len(xs) - k] or xs
    return sum(mid) / len(mid)


class LiteRunner:
    def __init__(self, path, s):
        interpreter = None
        errors = []
        for mod in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
            try:
                interpreter = __import__(mod, fromlist=["Interpreter"]).Interpreter
                top = mod.split(".")[0]
                self.version = "%s %s" % (top, getattr(sys.modules[top], "__version__", "?"))
                break
            except Exception as exc:
                errors.append("%s: %s" % (mod, exc))
        if interpreter is None:
            raise AgentFailure("RUNTIME_MISSING", "no LiteRT runtime: " + "; ".join(errors))
        import numpy as np

        try:
            kw = {"num_threads": int(s["threads"])} if s.get("threads") else {}
            self.it = interpreter(model_path=path, **kw)
            self.it.allocate_tensors()
        except Exception as exc:
            raise AgentFailure("MODEL_LOAD", "LiteRT cannot load the model: %s" % str(exc)[:500]) from exc
        # The interpreter's default op resolver applies XNNPACK, LiteRT's default CPU delegate, to every
        # op it supports (ai_edge_litert and tflite_runtime alike); num_threads is the device entry's threads.
        self.providers = ["XNNPACK (default CPU delegate)", "threads %s" % (s.get("threads") or "default")]
        self.assumed: list[str] = []
        rng = np.random.default_rng(0)
        given = s.get("input_shapes")
        details = self.it.get_input_details()
        # The host names inputs as the model's signature does ("pixels"); the tensors may carry a prefix
        # ("serving_default_pixels"): match the host's shapes by signature name, then by tensor name.
        by_index = {}
        try:
            for key in self.it.get_signature_list():
                for sname, d in self.it.get_signature_runner(key).get_input_details().items():
                    by_index[int(d["index"])] = sname
        except Exception:  # a model without signatures (older converters): tensor names only
            by_index = {}
        resized = False
        for d in details:
            # shape_signature holds -1 for a dynamic dimension; shape then holds 1 for it
            sig = [int(x) for x in d.get("shape_signature", d["shape"])]
            name = d["name"]
            if given and name not in given and by_index.get(int(d["index"])) in given:
                name = by_index[int(d["index"])]
            shape = feed_shape(name, sig, given, self.assumed)
            if shape != [int(x) for x in d["shape"]]:
                self.it.resize_tensor_input(d["index"], shape)
                resized = True
        if resized:
            self.it.allocate_tensors()
            details = self.it.get_input_details()
        self.feed = []
        for d in details:
            # plain ints: _random_input reads a numpy int32 dimension as unknown (and fed 1)
            shape = [int(x) for x in d["shape"]]
            self.feed.append((d["index"], _random_input(np, shape, np.dtype(d["dtype"]).name, rng)))
        self.outputs = [d["index"] for d in self.it.get_output_details()]
        self.feed_shapes = {d["name"]: [int(x) for x in d["shape"]] for d in details}

    def run(self):
        # Each run feeds the inputs and reads the outputs, as onnxruntime's run(feed) does, so that the two
        # runtimes' timings cover the same work (on a model of a few microseconds the copies show).
        for index, value in self.feed:
            self.it.set_tensor(index, value)
        self.it.invoke()
        for index in self.outputs:
            self.it.get_tensor(index)


def measure_child(req):
    """Runs in a fresh process: load, first run, warm-up, timed runs, memory, energy."""
    s = req["settings"]
    parent = req.get("agent_pid", os.getppid())
    if s.get("affinity"):
        os.sched_setaffinity(0, set(int(c) for c in s["affinity"]))
    import numpy  # noqa: F401  (imported before the baseline so it is not counted as model memory)

    path = req["model_path"]
    profile = bool(s.get("profile_ops")) and path.endswith(".onnx")
    if path.endswith(".tflite"):
        t0 = time.perf_counter()
        baseline = rss_bytes()
        runner: Any = LiteRunner(path, s)
    else:
        try:
            import onnxruntime  # noqa: F401
        except Exception as exc:
            raise AgentFailure("RUNTIME_MISSING", "onnxruntime is not importable: %s" % exc) from exc
        baseline = rss_bytes()
        t0 = time.perf_counter()
        runner = OrtRunner(path, s)
    load_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    runner.run()
    first_ms = (time.perf_counter() - t0) * 1000

    warm_n, t_w = 0, time.perf_counter()
    while warm_n < int(s.get("warmup_runs", 1)) or time.perf_counter() - t_w < float(s.get("warmup_seconds", 0.5)):
        runner.run()
        warm_n += 1
    warm_s = time.perf_counter() - t_w

    sensor = req.get("_sensor")
    meter = EnergyMeter(sensor) if sensor is not None else None
    if meter:
        meter.start()
    runs, min_s, max_s = int(s.get("runs", 50)), float(s.get("min_seconds", 1.0)), float(s.get("max_seconds", 150.0))
    times = []
    t_start = time.perf_counter()
    clock = time.perf_counter
    while True:
        t0 = clock()
        runner.run()
        t1 = clock()
        times.append((t1 - t0) * 1000)
        if len(times) >= runs and t1 - t_start >= min_s:
            break
        if t1 - t_start >= max_s:
            break
        if len(times) % 64 == 0 and os.getppid() != parent:
            os._exit(3)  # the agent is gone: nobody will read this result
    timed_s = clock() - t_start
    energy = None
    if meter:
        joules, window = meter.stop()
        energy = {"joules": joules, "window_s": window, "samples": meter.samples,
                  "per_inference_j": joules / len(times)}
    peak = rss_bytes("VmHWM")
    op_times = op_profile = None
    if profile:
        prof = OrtRunner(path, s, profile=True)
        op_profile = prof.op_profile(max(5, min(len(times), 20)))
        op_times = {n["name"]: n["ms"] for n in op_profile["nodes"]}
    if isinstance(runner, OrtRunner):
        fed = {k: [int(d) for d in v.shape] for k, v in runner.feed.items()}
    else:
        fed = runner.feed_shapes
    return {
        "input_shapes": fed, "symbolic_dims_set_to_1": runner.assumed,
        "latency_ms": _stats(times), "runs_ms": _kept_runs(times), "load_ms": load_ms, "first_run_ms": first_ms,
        "warmup": {"runs": warm_n, "seconds": warm_s}, "timed_seconds": timed_s,
        "peak_memory_bytes": peak, "baseline_memory_bytes": baseline, "memory_growth_bytes": max(0, peak - baseline),
        "energy": energy, "op_times_ms": op_times, "op_profile": op_profile,
        "runtime": {"name": "onnxruntime" if path.endswith(".onnx") else "litert", "version": runner.version,
                    "providers": runner.providers},
    }


def _feed_arrays(np, arrays, inputs):
    """Match data arrays to model inputs by name and check them; returns ({name: array}, n).

    ``inputs`` is a list of (name, shape, dtype name). Arrays are cast within their kind (float64 ->
    float32, int32 -> int64); a float array for an integer input (or the reverse), a missing name,
    a rank or fixed-dimension mismatch, or arrays of different lengths raise ValueError."""
    have = sorted(k for k in arrays if k != "labels")
    feed = {}
    for name, shape, dtype in inputs:
        if name not in arrays or name == "labels":
            raise ValueError("model input %r has no array of that name in the data file (it has: %s); arrays are "
                             "matched to model inputs by name" % (name, ", ".join(have) or "nothing"))
        a = arrays[name]
        want = np.dtype(dtype)
        if a.dtype != want:
            if a.dtype.kind != want.kind and not (a.dtype.kind in "iub" and want.kind in "iub"):
                raise ValueError("data array %r is %s but model input %r is %s" % (name, a.dtype, name, want))
            a = a.astype(want)
        if len(shape) != a.ndim:
            raise ValueError("data array %r has shape %s but model input %r has rank %d %s"
                             % (name, list(a.shape), name, len(shape), list(shape)))
        for axis, (d, got) in enumerate(zip(shape, a.shape)):
            if axis > 0 and isinstance(d, int) and d > 0 and d != got:
                raise ValueError("data array %r has shape %s but model input %r needs %s (axis %d)"
                                 % (name, list(a.shape), name, list(shape), axis))
        feed[name] = a
    lengths = set(a.shape[0] for a in feed.values())
    if len(lengths) != 1:
        raise ValueError("data arrays for the model inputs have different lengths: %s"
                         % {k: int(v.shape[0]) for k, v in feed.items()})
    return feed, lengths.pop()


def _reduce(np, out, reduce, mask):
    """The FIRST output of one batch, reduced: ``none`` as is; ``mean_pool`` the mean over axis 1
    weighted by ``mask`` [b, T] (unweighted without a mask), [b, T, D] -> [b, D]."""
    out = np.asarray(out)
    if out.dtype.kind not in "fiub":
        raise ValueError("the model's first output is %s, not numeric" % out.dtype)
    if reduce == "none":
        return out.astype("<f4")
    if out.ndim < 3:
        raise ValueError("reduce mean_pool needs a first output of rank >= 3 [N, T, D], got shape %s"
                         % list(out.shape))
    x = out.astype(np.float64)
    if mask is None:
        return x.mean(axis=1).astype("<f4")
    m = np.asarray(mask).astype(np.float64)
    if m.shape != x.shape[:2]:
        raise ValueError("mask shape %s does not match the output's first two axes %s"
                         % (list(m.shape), list(x.shape[:2])))
    m = m.reshape(m.shape + (1,) * (x.ndim - 2))
    return ((x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)).astype("<f4")


def infer_child(req):
    """Runs in a fresh process: load the model and the data, run every input in batches, keep the
    first output reduced, and write it as float32 little-endian bytes to ``req["result_path"]``."""
    import numpy as np

    s = req["settings"]
    reduce = s.get("reduce") or "none"
    mask_name = s.get("mask_input")
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:
        raise AgentFailure("RUNTIME_MISSING", "onnxruntime is not importable: %s" % exc) from exc
    t0 = time.perf_counter()
    runner = OrtRunner(req["model_path"], s, random_feed=False)
    load_ms = (time.perf_counter() - t0) * 1000
    sess = runner.sess
    inputs = [(i.name, list(i.shape), _NP_TYPES.get(i.type, "float32")) for i in sess.get_inputs()]
    with np.load(req["data_path"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    feed, n = _feed_arrays(np, arrays, inputs)
    mask = None
    if reduce == "mean_pool" and mask_name:
        if mask_name not in arrays:
            raise ValueError("mask_input %r is not an array in the data file (it has: %s)"
                             % (mask_name, ", ".join(sorted(arrays))))
        mask = arrays[mask_name]
        if mask.dtype.kind not in "iub" or mask.ndim != 2 or mask.shape[0] != n:
            raise ValueError("mask %r must be an integer array [N, T] with N = %d, got %s %s"
                             % (mask_name, n, mask.dtype, list(mask.shape)))
    fixed = inputs[0][1][0] if inputs and inputs[0][1] else None
    batch = fixed if isinstance(fixed, int) and fixed > 0 else max(1, int(s.get("batch") or 64))
    out_name = sess.get_outputs()[0].name
    parts = []
    parent = req.get("agent_pid", os.getppid())
    t_run = time.perf_counter()
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        chunk = {k: v[start:stop] for k, v in feed.items()}
        real = stop - start
        if real < batch and fixed == batch:  # a fixed batch: pad with the last row, drop its outputs
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch - real, axis=0)]) for k, v in chunk.items()}
        try:
            out = sess.run([out_name], chunk)[0]
        except MemoryError:
            raise
        except Exception as exc:
            if "bad_alloc" in str(exc) or "Failed to allocate" in str(exc):
                raise AgentFailure("OOM", "the runtime ran out of memory: %s" % str(exc)[:500]) from exc
            raise ValueError("the runtime failed on inputs %d-%d: %s" % (start, stop, str(exc)[:800])) from exc
        if np.ndim(out) == 0 or np.shape(out)[0] != len(next(iter(chunk.values()))):
            raise ValueError("the first output %r has shape %s: its first axis is not the batch"
                             % (out_name, list(np.shape(out))))
        parts.append(_reduce(np, np.asarray(out)[:real], reduce, None if mask is None else mask[start:stop]))
        if os.getppid() != parent:
            os._exit(3)  # the agent is gone: nobody will read this result
    seconds = time.perf_counter() - t_run
    result = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype="<f4")
    if result.nbytes > MAX_RESULT:
        raise ValueError("the output is %d bytes, over the %d-byte limit: reduce it on the device (reduce "
                         "mean_pool) or send fewer inputs" % (result.nbytes, MAX_RESULT))
    data = result.tobytes()
    part = req["result_path"] + ".part"
    with open(part, "wb") as f:
        f.write(data)
    os.replace(part, req["result_path"])
    return {
        "shape": [int(d) for d in result.shape], "dtype": "float32", "nbytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "n": int(n), "seconds": seconds, "load_ms": load_ms,
        "batch": int(batch), "batches": len(parts), "output_name": out_name,
        "runtime": {"name": "onnxruntime", "version": runner.version, "providers": runner.providers},
    }


def child_main():
    _die_with_parent()
    try:
        req = json.loads(sys.stdin.read())
        if os.getppid() != req.get("agent_pid", os.getppid()):
            os._exit(3)  # the agent died before PR_SET_PDEATHSIG took hold: nobody will read this result
        if req.get("sensor") not in (None, "none"):
            req["_sensor"] = make_sensor(req["sensor"], req.get("sysfs_root", "/"))
        if req.get("mode", "measure") == "infer":
            out = {"ok": True, "result": infer_child(req)}
        else:
            out = {"ok": True, "result": measure_child(req)}
    except AgentFailure as exc:
        out = {"ok": False, "error": {"kind": exc.kind, "message": str(exc)}}
    except MemoryError:
        out = {"ok": False, "error": {"kind": "OOM", "message": "the runtime ran out of memory"}}
    except Exception as exc:
        out = {"ok": False, "error": {"kind": "REMOTE_ERROR", "type": type(exc).__name__, "message": str(exc)[:2000],
                                      "traceback": traceback.format_exc()[-4000:]}}
    sys.stdout.write(RESULT_MARK + json.dumps(out) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# The server loop
# --------------------------------------------------------------------------------------------


class Agent:
    def __init__(self, cache_dir, sysfs_root, out):
        self.cache = os.path.abspath(os.path.expanduser(cache_dir))
        self.models = os.path.join(self.cache, "models")
        self.data = os.path.join(self.cache, "data")
        self.results = os.path.join(self.cache, "results")
        self.tmp = os.path.join(self.cache, "tmp")
        for d in (self.models, self.data, self.results, self.tmp):
            os.makedirs(d, exist_ok=True)
        self.root = sysfs_root
        self.out = out
        self.measured = 0

    def send(self, frame):
        data = (json.dumps(frame, separators=(",", ":")) + "\n").encode()
        if len(data) > MAX_FRAME:
            frame = {"id": frame.get("id"), "ok": False,
                     "error": {"kind": "PROTOCOL", "message": "reply of %d bytes exceeds the frame cap" % len(data)}}
            data = (json.dumps(frame) + "\n").encode()
        self.out.write(data)
        self.out.flush()

    def model_path(self, sha, ext):
        """Where a model lives: ``CACHE/models/<sha256><ext>``, ext ``.onnx`` or ``.tflite``."""
        _check_sha(sha)
        if ext not in MODEL_EXTS:
            raise AgentFailure("PROTOCOL", "model extension %r is neither .onnx nor .tflite" % str(ext)[:20])
        return os.path.join(self.models, sha + ext)

    def blob_path(self, sha, ext):
        """Where an uploaded file lives: a model (see ``model_path``) or input data at
        ``CACHE/data/<sha256>.npz``; any other extension is a PROTOCOL failure."""
        if ext in DATA_EXTS:
            _check_sha(sha)
            return os.path.join(self.data, sha + ext)
        return self.model_path(sha, ext)

    def result_path(self, rid):
        if not isinstance(rid, str) or len(rid) != 32 or any(c not in "0123456789abcdef" for c in rid):
            raise AgentFailure("PROTOCOL", "bad result_id %r" % str(rid)[:80])
        return os.path.join(self.results, rid + ".f32")

    def op_hello(self, args):
        return handshake(self.root)

    def op_ping(self, args):
        return {"time": time.time()}

    def op_has_model(self, args):
        return {"present": os.path.exists(self.blob_path(args["sha256"], args["ext"]))}

    def op_put(self, args):
        final = self.blob_path(args["sha256"], args["ext"])
        part = final + ".part"
        data = base64.b64decode(args["data"])
        mode = "r+b" if args["offset"] and os.path.exists(part) else "wb"
        with open(part, mode) as f:
            f.seek(args["offset"])
            f.write(data)
        if not args.get("last"):
            return {"received": args["offset"] + len(data)}
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != args["sha256"]:
            os.unlink(part)
            raise AgentFailure("UPLOAD", "upload corrupted: sha256 %s, expected %s" % (h.hexdigest(), args["sha256"]))
        os.replace(part, final)
        return {"stored": final, "bytes": os.path.getsize(final)}

    def op_sensors(self, args):
        sensor = make_sensor(args.get("sensor", "auto"), self.root)
        if sensor is None:
            return {"sensor": None}
        return {"sensor": sensor.describe(), "reading": sensor.read()}

    def op_measure(self, args):
        s = dict(args["settings"])
        path = self.model_path(args["sha256"], args["ext"])
        if not os.path.exists(path):
            raise AgentFailure("UPLOAD", "model %s is not on the device; upload it first" % args["sha256"][:12])
        cooldown = float(s.get("cooldown_s") or 0)
        if cooldown and self.measured:
            time.sleep(cooldown)  # let clocks and temperature settle between models
        self.measured += 1
        sensor_spec = args.get("sensor")
        idle_power = None
        sensor = None
        if sensor_spec not in (None, "none"):
            try:
                sensor = make_sensor(sensor_spec, self.root)
            except (LookupError, ValueError) as exc:
                raise AgentFailure("SENSOR", str(exc)) from exc
        idle_s = float(s.get("idle_seconds", 1.0))
        if sensor is not None and idle_s > 0:
            meter = EnergyMeter(sensor)
            meter.start()
            time.sleep(idle_s)
            joules, window = meter.stop()
            idle_power = joules / window
        s["_tmp"] = self.tmp
        req = {"model_path": path, "settings": s, "agent_pid": os.getpid(),
               "sensor": sensor_spec if sensor is not None else None, "sysfs_root": self.root}
        env_before = {"governor": governor(self.root), "temperatures_c": temperatures(self.root),
                      "loadavg": loadavg()}
        t0 = time.perf_counter()
        res = run_child(req, float(s.get("timeout_s", 120.0)))
        res["agent_seconds"] = time.perf_counter() - t0
        if res.get("energy") is not None and sensor is not None:
            e = res["energy"]
            e["method"] = sensor.method
            e["sensor"] = sensor.name
            e["idle_power_w"] = idle_power
            if idle_power is not None:
                n = res["latency_ms"]["n"]
                e["net_per_inference_j"] = (e["joules"] - idle_power * e["window_s"]) / n
        res["environment"] = {
            "agent_version": AGENT_VERSION, "python": platform.python_version(), "os": platform.platform(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "runtime": res.pop("runtime"),
            "governor": env_before["governor"], "temperatures_c_before": env_before["temperatures_c"],
            "temperatures_c_after": temperatures(self.root),
            "loadavg_1m_before": env_before["loadavg"], "loadavg_1m_after": loadavg(),
        }
        res["method"] = {
            "runs_min": int(s.get("runs", 50)), "min_seconds": float(s.get("min_seconds", 1.0)),
            "max_seconds": float(s.get("max_seconds", 150.0)), "warmup_runs_min": int(s.get("warmup_runs", 1)),
            "warmup_seconds_min": float(s.get("warmup_seconds", 0.5)), "warmup": res.pop("warmup"),
            "threads": s.get("threads"), "affinity": s.get("affinity"), "cooldown_s": cooldown,
            "timeout_s": float(s.get("timeout_s", 120.0)), "timed_seconds": res["timed_seconds"],
            "process": "fresh child process per model", "clock": "time.perf_counter around each run",
            "runs_sent": _runs_sent(len(res["runs_ms"]), res["latency_ms"]["n"]),
            "idle_seconds": idle_s if sensor is not None else None, "profile_ops": bool(s.get("profile_ops")),
            "agent_seconds": res.pop("agent_seconds"),
            "input_shapes": res.pop("input_shapes", None),
            "symbolic_dims_set_to_1": res.pop("symbolic_dims_set_to_1", []),
        }
        return res

    def op_infer(self, args):
        """Run the data file ``data_sha256`` through the model in a fresh child; see the module
        docstring for the reply (inline bytes or a ``result_id`` to ``fetch``)."""
        s = dict(args.get("settings") or {})
        path = self.model_path(args["sha256"], args["ext"])
        data_path = self.blob_path(args["data_sha256"], ".npz")
        reduce = s.get("reduce") or "none"
        if reduce not in REDUCES:
            raise ValueError("reduce %r is not one of %s" % (reduce, ", ".join(REDUCES)))
        for p, what in ((path, "model"), (data_path, "data file")):
            if not os.path.exists(p):
                raise AgentFailure("UPLOAD", "%s %s is not on the device; upload it first"
                                   % (what, os.path.basename(p)[:12]))
        if path.endswith(".tflite"):
            raise AgentFailure("UNSUPPORTED", "on-device inference of .tflite models is not implemented in "
                               "agent %s (only .onnx with onnxruntime)" % AGENT_VERSION)
        for old in os.listdir(self.results):  # a host that died mid-fetch left it: nobody will ask again
            try:
                os.unlink(os.path.join(self.results, old))
            except OSError:
                pass
        rid = hashlib.sha256(os.urandom(32)).hexdigest()[:32]
        result_path = self.result_path(rid)
        s["_tmp"] = self.tmp
        req = {"mode": "infer", "model_path": path, "data_path": data_path, "result_path": result_path,
               "settings": s, "agent_pid": os.getpid()}
        timeout = float(s.get("timeout_s", 120.0))
        t0 = time.perf_counter()
        res = run_child(req, timeout, "inference")
        res["agent_seconds"] = time.perf_counter() - t0
        res["environment"] = {
            "agent_version": AGENT_VERSION, "python": platform.python_version(), "os": platform.platform(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "runtime": res.pop("runtime"),
            "governor": governor(self.root),
        }
        res["method"] = {"reduce": reduce, "mask_input": s.get("mask_input"), "batch": res.pop("batch"),
                         "batches": res.pop("batches"), "threads": s.get("threads"), "timeout_s": timeout,
                         "output": res.pop("output_name"), "process": "fresh child process per call"}
        if res["nbytes"] <= INLINE_MAX:
            with open(result_path, "rb") as f:
                res["data"] = base64.b64encode(f.read()).decode()
            os.unlink(result_path)
        else:
            res["result_id"] = rid
        return res

    def op_fetch(self, args):
        """Up to ``FETCH_CHUNK`` bytes of a stored ``infer`` result from ``offset``; the result is
        deleted once its last byte has been sent."""
        path = self.result_path(args.get("result_id"))
        offset = int(args.get("offset", 0))
        if not os.path.exists(path):
            raise AgentFailure("UPLOAD", "result %s is not on the device (already fetched, or replaced by a "
                               "later infer)" % str(args.get("result_id"))[:12])
        total = os.path.getsize(path)
        if offset < 0 or offset > total:
            raise ValueError("offset %d is outside the result (%d bytes)" % (offset, total))
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(FETCH_CHUNK)
        last = offset + len(data) >= total
        if last:
            os.unlink(path)
        return {"offset": offset, "total": total, "last": last, "data": base64.b64encode(data).decode()}

    def serve(self, inp):
        self.send({"type": "hello", "protocol": PROTOCOL_VERSION, "agent_version": AGENT_VERSION, "pid": os.getpid(),
                   "pgid": os.getpgid(0)})
        # Requests are read by a thread, so an EOF (the host closed the channel, or sshd died) is seen
        # while a measurement runs too: the child is then ended at once instead of running on for
        # minutes with nobody to read its result.
        import queue

        lines: queue.Queue[bytes] = queue.Queue()
        t = threading.Thread(target=_read_requests, args=(inp, lines), name="qae-agent-stdin")
        t.daemon = True
        t.start()
        while True:
            line = lines.get()
            if not line:
                return 0
            rid = None
            try:
                if len(line) > MAX_FRAME:
                    raise AgentFailure("PROTOCOL", "request frame exceeds %d bytes" % MAX_FRAME)
                try:
                    req = json.loads(line)
                    rid, op, args = req["id"], req["op"], req.get("args") or {}
                except (ValueError, KeyError, TypeError) as exc:
                    raise AgentFailure("PROTOCOL", "bad request frame: %s" % exc) from exc
                if op == "bye":
                    self.send({"id": rid, "ok": True, "result": {}})
                    return 0
                handler = getattr(self, "op_" + str(op), None)
                if handler is None:
                    raise AgentFailure("PROTOCOL", "unknown op %r" % op)
                self.send({"id": rid, "ok": True, "result": handler(args)})
            except AgentFailure as exc:
                self.send({"id": rid, "ok": False, "error": {"kind": exc.kind, "message": str(exc)}})
                if exc.kind == "PROTOCOL":
                    return 2
            except RemoteError as exc:
                self.send({"id": rid, "ok": False, "error": exc.err})
            except Exception as exc:
                self.send({"id": rid, "ok": False, "error": {
                    "kind": "REMOTE_ERROR", "type": type(exc).__name__, "message": str(exc)[:2000],
                    "traceback": traceback.format_exc()[-4000:]}})


_CHILD: dict[str, Any] = {"proc": None, "host_gone": False}
_CHILD_LOCK = threading.Lock()


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever it started
    except OSError:
        try:
            proc.kill()
        except OSError:
            pass


def _read_requests(inp, lines):
    try:
        while True:
            line = inp.readline(MAX_FRAME + 1)
            lines.put(line)
            if not line:
                break
    except (OSError, ValueError):
        lines.put(b"")
    with _CHILD_LOCK:
        _CHILD["host_gone"] = True
        proc = _CHILD["proc"]
    if proc is not None:
        _kill_group(proc)


def _check_sha(sha):
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise AgentFailure("PROTOCOL", "bad sha256 %r" % str(sha)[:80])


def run_child(req, timeout, what="measurement"):
    """Run one measurement (or inference: ``req["mode"]``) in a fresh interpreter; a hard timeout
    kills it (RUN_TIMEOUT)."""
    proc = subprocess.Popen([sys.executable, "-u", os.path.abspath(__file__), "child"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    with _CHILD_LOCK:
        _CHILD["proc"] = proc
        gone = _CHILD["host_gone"]
    if gone:
        _kill_group(proc)
    try:
        out, err = proc.communicate(json.dumps(req).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise AgentFailure("RUN_TIMEOUT", "%s did not finish within its %.1f s timeout" % (what, timeout)) from None
    finally:
        with _CHILD_LOCK:
            _CHILD["proc"] = None
            gone = _CHILD["host_gone"]
    if gone:
        raise AgentFailure("AGENT_CRASHED", "the host closed the channel during the %s" % what)
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith(RESULT_MARK):
            reply = json.loads(line[len(RESULT_MARK):])
            if reply["ok"]:
                return reply["result"]
            e = reply["error"]
            if e["kind"] == "REMOTE_ERROR":
                raise RemoteError(e)
            raise AgentFailure(e["kind"], e["message"])
    tail = err.decode(errors="replace").strip()[-500:]
    if proc.returncode == -signal.SIGKILL:
        raise AgentFailure("OOM", "%s child was killed (SIGKILL, likely the out-of-memory killer): %s" % (what, tail))
    if "MemoryError" in tail or "std::bad_alloc" in tail:
        raise AgentFailure("OOM", "%s child ran out of memory: %s" % (what, tail))
    raise AgentFailure("AGENT_CRASHED", "%s child exited with status %s and no result: %s"
                       % (what, proc.returncode, tail))


class RemoteError(Exception):
    """A REMOTE_ERROR from the child, passed through with its type and traceback."""

    def __init__(self, err):
        super().__init__(err.get("message"))
        self.err = err


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[0] if argv else "serve"
    opts = {"--cache-dir": os.path.join("~", ".cache", "qae", "agent"), "--sysfs-root": "/"}
    rest = argv[1:]
    while rest:
        key = rest.pop(0)
        if key not in opts or not rest:
            sys.stderr.write("usage: agent.py serve|child|info [--cache-dir DIR] [--sysfs-root ROOT]\n")
            return 2
        opts[key] = rest.pop(0)
    if cmd == "child":
        child_main()
        return 0
    if cmd == "info":
        print(json.dumps(handshake(opts["--sysfs-root"]), indent=1))
        return 0
    # Keep the protocol stream private: anything else printing to fd 1 lands on stderr instead.
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = os.fdopen(proto_fd, "wb", buffering=0)
    agent = Agent(opts["--cache-dir"], opts["--sysfs-root"], out)
    try:
        return agent.serve(sys.stdin.buffer)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    _code = main()
    for _stream in (sys.stdout, sys.stderr):
        try:
            _stream.flush()
        except (OSError, ValueError):
            pass
    # not sys.exit: the request reader thread may sit in stdin's readline, and the interpreter's
    # shutdown would then abort on stdin's lock instead of exiting with this status
    os._exit(_code or 0)
