"""What a search is asked to do: its objectives, budgets, per-layer menu and baselines, and its
``SearchConfig`` (stored in the archive, so a resumed run is the same run)."""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.errors import InputError
from harness.core.genome import Bits

OBJECTIVES = ("accuracy", "size", "latency", "energy", "memory")
DEFAULT_OBJECTIVES = ("accuracy", "size", "latency")
#: Objective -> (budget key in a profile, unit label)
UNITS = {"accuracy": "accuracy loss (in the metric's unit)", "size": "bytes", "latency": "ms", "energy": "mJ",
         "memory": "bytes"}


def metric_unit(metric: str | None) -> str:
    """The unit of an accuracy score by its metric name: an SQNR is in dB, a user metric is a score,
    top-1, agreement and retrieval metrics are fractions."""
    name = (metric or "").lower()
    if name.startswith("sqnr"):
        return "dB"
    if name in ("top1", "top1_agreement", "agreement", "retrieval_top1_agreement", "embedding", "classification",
                "auto", "mean_cosine", "cosine", "labelled_accuracy"):
        return "fraction"
    return "score"
BUDGET_KEYS = {
    "latency": "latency_ms",
    "energy": "energy_j",
    "memory": "memory_bytes",
    "size": "size_bytes",
    "accuracy": "accuracy_loss",
}
#: The per-layer menu: (weight bits, activation bits). Emulated widths join with --emulated.
MENU: tuple[tuple[Any, Any], ...] = (
    ("fp", "fp"),
    (8, 8),
    (8, 16),
    (8, "dynamic"),
    (8, "fp"),
    (4, 8),
    (4, 16),
    (4, "fp"),
    (16, 16),
)
EMULATED_MENU: tuple[tuple[Any, Any], ...] = ((6, 8), (3, 8), (2, "fp"), (3, "fp"))
#: Block-quantized kernels (issue 15), offered on a target whose profile runs them: the ops each
#: replaces, and the widths and block sizes the search tries (within what the profile lists).
KERNEL_MENU: dict[str, dict[str, tuple[Any, ...]]] = {
    "matmulnbits": {"ops": ("MatMul",), "bits": (4, 8), "block_sizes": (32, 128)},
    "gather_block": {"ops": ("Gather",), "bits": (4, 8), "block_sizes": (32, 128)},
}
#: ``--rounding``: how weights under 8 bits of the block kernels are rounded (``harness.quant.rounding``)
ROUNDINGS = ("rtn", "mse", "hqq", "gptq")
#: Uniform genomes every initial population holds: static int8, int4 weights, float, and dynamic int8
#: (ONNX Runtime's strongest simple baseline; FACTS.md).
BASELINES: dict[str, tuple[Bits, Bits]] = {
    "w8a8": (8, 8), "w4a8": (4, 8), "fp32": ("fp", "fp"), "w8-dynamic": (8, "dynamic"),
}
#: (scheme, granularity) of embedding tables where a baseline's tool differs from the run's:
#: quantize_dynamic builds per-tensor asymmetric tables.
BASELINE_TABLES: dict[str, tuple[str, str]] = {"w8-dynamic": ("asymmetric", "per_tensor")}
#: The baseline fallback genomes start from.
FALLBACK_BASE = "w8-dynamic"
#: From high to low precision: sensitivity-guided genomes lower the least sensitive layers first.
SENSITIVITY_LADDER = ((8, 8), (4, 8))
#: Fallback genomes: the dynamic baseline with this many of its most sensitive layers reading float
#: activations (a negative number is that fraction of the layers).
FALLBACK_COUNTS = (1, 2, -0.125)


@dataclass
class SearchConfig:
    model: str
    profiles: list[str]
    calib: str | None = None
    data: str | None = None
    method: str = "minmax"
    objectives: list[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    budgets: dict[str, float] = field(default_factory=dict)
    generations: int = 12
    population: int = 24
    seed: int = 0
    workers: int = 1
    emulated: bool = False
    #: ``--sensitivity-probes``: one probe per layer before the search, seeding sensitivity-guided and
    #: fallback genomes. Off by default: in the search benchmark's first round (issue 17) the engine did
    #: at least as well without them in every cell, and on the seeds reported since the two are within
    #: seed noise; its GP screening learns per-layer effects from the population itself.
    sensitivity_probes: bool = False
    scheme: str = "symmetric"
    granularity: str = "per_channel"
    devices: list[str] = field(default_factory=list)
    devices_file: str | None = None
    hil: dict[str, Any] = field(default_factory=dict)
    #: ``--input-shape`` as given ({input: dims}); shapes it leaves open come from the calibration data
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    #: ``harness.quant.data.DataOptions.to_dict()`` (metric, outputs, constant inputs, sample axes)
    data_options: dict[str, Any] = field(default_factory=dict)
    #: the test split: a file (``--test``), or a fraction of ``data`` held out once (``--holdout``)
    test: str | None = None
    holdout: float | None = None
    #: rounding of the block kernels' weights under 8 bits (``ROUNDINGS``)
    rounding: str = "rtn"
    #: seconds from the start (``--time-limit``): no generation starts after it (None: no limit)
    time_limit: float | None = None
    #: ``--cluster``: evaluate on a Dask cluster, ``local:N`` or a scheduler address (``harness.run.cluster``);
    #: not part of the run's identity (a cluster run's archive equals a local one), and a resume may name another
    cluster: str | None = None
    #: ``--runtime``: ``onnxruntime``, ``litert``, or None (chosen by the model: .tflite is LiteRT)
    runtime: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """From an archive's stored config (which also holds derived keys such as model_sha256). A run
        stored before ``sensitivity_probes`` existed ran the probes, and resumes as it started."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.setdefault("sensitivity_probes", True)
        return cls(**known)


def parse_budgets(items: Sequence[str]) -> dict[str, float]:
    """``latency=30`` (ms), ``energy=0.3`` (mJ), ``memory=50`` (MB), ``size=40`` (KB), ``accuracy=0.01``."""
    scale = {"latency": 1.0, "energy": 1e-3, "memory": 1e6, "size": 1e3, "accuracy": 1.0}
    out = {}
    for item in items:
        name, _, raw = item.partition("=")
        if name not in scale:
            raise InputError(f"--budget {item!r}: unknown objective {name!r}: use one of {', '.join(scale)}")
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"--budget {item!r} is not NAME=NUMBER, e.g. latency=30") from None
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"--budget {item!r}: a budget must be a positive finite number, e.g. latency=30")
        out[BUDGET_KEYS[name]] = value * scale[name]
    return out


def default_out(model: str) -> Path:
    stem = model.replace("builtin:", "").replace(os.sep, "_").rsplit(".", 1)[0]
    return Path("results") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def absolute_paths(cfg: SearchConfig) -> SearchConfig:
    """Every file path of a config made absolute, so a resume does not depend on the working directory."""
    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    if not cfg.model.startswith("builtin:"):
        cfg.model = str(absolute(cfg.model))
    cfg.calib, cfg.data, cfg.devices_file = absolute(cfg.calib), absolute(cfg.data), absolute(cfg.devices_file)
    cfg.test = absolute(cfg.test)
    return cfg


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_identity(cfg: SearchConfig, work: Any, profile_names: Sequence[str]) -> dict[str, dict[str, str]]:
    """What a run's results depend on, by content: the model (with its external data), the
    calibration and evaluation data, and each profile file. Stored in the archive; a resume compares."""
    from profiles.schema import resolve

    ident = {"model": {"path": str(work.model.path), "sha256": work.model.sha256},
             "calib": {"path": str(work.calib.path), "sha256": work.calib.sha256}}
    if work.eval_data is not None:
        ident["data"] = {"path": str(work.eval_data.path), "sha256": work.eval_data.sha256}
    if getattr(work, "test_data", None) is not None:
        ident["test"] = {"path": str(work.test_data.path), "sha256": work.test_data.sha256}
    for name in dict.fromkeys(profile_names):
        path = resolve(name)
        ident[f"profile {name}"] = {"path": str(path.resolve()), "sha256": file_sha256(path)}
    return ident


def identity_changes(stored: dict[str, dict[str, str]], current: dict[str, dict[str, str]]) -> list[str]:
    """What differs between a run's stored identity and the files found now, one phrase each."""
    changes = []
    for key in dict.fromkeys([*stored, *current]):
        old, new = stored.get(key), current.get(key)
        if old is None or new is None:
            changes.append(f"{key} {'added' if old is None else 'removed'}")
        elif old["sha256"] != new["sha256"]:
            changes.append(f"{key} {new['path']} changed content (sha256 {old['sha256'][:12]} -> {new['sha256'][:12]})")
    return changes
