"""Per-layer search spaces for the search benchmark (issue 17), evaluated on demand.

A ``LayerSpace`` is a built-in's space exactly as ``qae search`` sees it for the ``host-cpu-local``
target: one gene per layer from qae's own menu (``harness.run.seeds.layer_choices``: static / dynamic
/ weight-only int8 and int4, the per-tensor Conv genes, the block-quantized MatMulNBits kernels),
far too many genomes to enumerate (digits-vit: 14 layers; digits-cnn: 10). Each genome a method
asks for is built and scored for real once (host accuracy and mean cosine on the validation split,
exact weight bytes, latency predicted by the calibrated profile) and kept in a SQLite cache under
results/bench/cache/, keyed by everything the numbers depend on; a later run (or another method,
seed or worker process) reuses it. Its interface is the one ``bench_search`` reads from the
enumerated ``Table``: ``names``, ``choices``, ``rows[genome]``, ``extra["mean_cosine"]``, plus qae's
seeding for ``run_qae`` (``probe_genomes``, ``seed_values``, ``ladder``) from the harness functions
``run_search`` calls.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROFILE = "host-cpu-local"
#: name -> built-in
LAYER_SPACES = {"digits-vit-layers": "builtin:digits-vit", "digits-cnn-layers": "builtin:digits-cnn"}
Genome = tuple[int, ...]


#: random genomes a per-layer space's latency version predicts, besides one uniform genome per choice
LATENCY_PROBES = 512


def latency_probes(choices: Sequence[Sequence[Any]], n: int = LATENCY_PROBES) -> list[Genome]:
    """The genomes a space's latency version is predicted on: for each choice index, the genome of that
    choice in every layer (the last where a layer has fewer), and ``n`` random ones (seeded, fixed)."""
    widest = max(len(c) for c in choices)
    out = [tuple(min(i, len(c) - 1) for c in choices) for i in range(widest)]
    rng = np.random.default_rng(20261204)
    out += [tuple(int(rng.integers(len(c))) for c in choices) for _ in range(n)]
    return out


def latency_fingerprint(latencies: Sequence[float]) -> str:
    """A hash of predicted latencies, exactly (``repr`` of each float): what a space's stored runs depend
    on besides its scores, since qae's runs search on them and the fronts are drawn from them."""
    return hashlib.sha256(json.dumps([repr(float(x)) for x in latencies]).encode()).hexdigest()[:16]


def _menu(workload: str, profile: Any) -> tuple[Any, Any, list[Any], list[str], list[list[Any]], Any, Any]:
    """A built-in's per-layer space for ``profile`` as ``qae search`` builds it: the workload, its
    search config, the genes per layer, the layer names, the choices, the ``SearchSpace`` and the cost
    table that predicts its latencies."""
    from harness.quant.workload import Workload
    from harness.run.config import SearchConfig
    from harness.run.seeds import choice_distance, gene_value, layer_choices
    from profiles.costmodel import CostTable, GraphStats
    from search import SearchSpace

    work = Workload.open(workload)
    cfg = SearchConfig(model=workload, profiles=[profile.name])
    genes = layer_choices(work, cfg, profile)
    names = [layer.name for layer in work.model.layers]
    choices: list[list[Any]] = [[gene_value(g) for g in gs] for gs in genes]
    space = SearchSpace(names, choices, distance=choice_distance)
    costs = CostTable(work.model.layers, profile, GraphStats.of(work.model))
    return work, cfg, genes, names, choices, space, costs


def _predicted(work: Any, space: Any, costs: Any, genome: Genome) -> float:
    from harness.run.evaluation import layers_dict

    return float(costs.predict(work.genome({"layers": layers_dict(space.decode(genome))})).latency_ms)


def latency_version(name: str, profile: Any) -> str:
    """What per-layer space ``name``'s latencies are, as a hash of ``profile``'s predictions for a fixed
    set of its genomes (``latency_probes``): a change to the cost model's code or to the profile that
    moves no prediction keeps the space's stored runs; one that moves any re-runs them."""
    work, _, _, _, choices, space, costs = _menu(LAYER_SPACES[name], profile)
    return latency_fingerprint([_predicted(work, space, costs, g) for g in latency_probes(choices)])


class LayerSpace:
    """A built-in's per-layer space, evaluated on demand through a SQLite cache (module docstring)."""

    enumerable = False

    def __init__(self, name: str, cache_dir: Path) -> None:
        import onnxruntime

        from harness.quant.quantize import build_kinds, build_version
        from profiles import load_profile

        self.name = name
        self.workload = LAYER_SPACES[name]
        profile = load_profile(PROFILE)
        self.work, self.cfg, self.genes, self.names, self.choices, self.space, self.costs = _menu(
            self.workload, profile)
        assert self.work.eval_data is not None
        # the scores (accuracy, cosine, bytes) follow the model, the data, the build and the menu; the
        # predicted latency also follows the cost model's code and the profile's numbers, so it is
        # predicted afresh, never cached, and only the space's key (which stored runs are filed under)
        # names them (``latency_version``): a cost-model change that moves a prediction re-runs the
        # searches without re-scoring a genome
        scores = {
            "model_sha256": self.work.model.sha256, "calib": self.work.calib.sha256,
            "eval": self.work.eval_data.sha256, "onnxruntime": onnxruntime.__version__,
            "int8": "exact",  # exact integer products on every host (harness.quant.exact)
            "build": build_version(build_kinds(self.work.model)),
            "choices": json.dumps(self.choices, default=str),
        }
        self.score_key = hashlib.sha256(json.dumps(scores, sort_keys=True).encode()).hexdigest()[:16]
        self.latency_version = latency_fingerprint(
            [_predicted(self.work, self.space, self.costs, g) for g in latency_probes(self.choices)])
        self.key = hashlib.sha256(f"{self.score_key}|{self.latency_version}".encode()).hexdigest()[:16]
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(cache_dir / f"{name}.sqlite", timeout=120, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS rows (key TEXT, genome TEXT, accuracy REAL, mean_cosine REAL, "
                        "weight_bytes REAL, latency_ms REAL, seconds REAL, PRIMARY KEY (key, genome))")
        self._memo: dict[Genome, tuple[np.ndarray, float | None]] = {}
        fp32 = self._cached(())
        if fp32 is None:
            fp32 = self.work.evaluate(None).accuracy
            self.db.execute("INSERT OR IGNORE INTO rows VALUES (?, ?, ?, NULL, NULL, NULL, NULL)",
                            (self.score_key, "fp32", float(fp32)))
        self.fp32 = float(fp32)
        self.rows = _Rows(self)
        self.extra: dict[str, Any] = {"mean_cosine": _Cosine(self), "fp32_accuracy": self.fp32}
        #: seconds spent building and scoring genomes (cache misses) in this process
        self.evaluation_seconds = 0.0

    # -- evaluation --------------------------------------------------------------------------------
    def _cached(self, genome: Genome) -> float | None:
        if genome:
            return None
        got = self.db.execute("SELECT accuracy FROM rows WHERE key = ? AND genome = 'fp32'",
                              (self.score_key,)).fetchone()
        return None if got is None else float(got[0])

    def payload(self, genome: Genome) -> dict[str, Any]:
        from harness.run.evaluation import layers_dict

        return {"layers": layers_dict(self.space.decode(genome))}

    def evaluate(self, genome: Genome) -> tuple[np.ndarray, float | None]:
        """(accuracy loss vs FP32, weight bytes, predicted latency ms) and the mean cosine."""
        import time

        from harness.run import evaluation

        g = tuple(int(x) for x in genome)
        if g in self._memo:
            return self._memo[g]
        text = json.dumps(list(g))
        payload = self.payload(g)
        got = self.db.execute("SELECT accuracy, mean_cosine, weight_bytes FROM rows WHERE key = ? AND "
                              "genome = ?", (self.score_key, text)).fetchone()
        if got is not None and not _valid_row(got):
            got = None  # a damaged cache entry is evaluated again (and replaced)
        if got is None:
            t0 = time.perf_counter()
            # on this space's own workload: the process-wide one (``evaluation.worker_init``) is
            # whichever space was opened last, and a benchmark holds several open
            host = evaluation.evaluate_on(self.work, payload)
            if "error_kind" in host:
                raise RuntimeError(f"{self.name}: genome {g} failed to build: {host['message']}")
            seconds = time.perf_counter() - t0
            self.evaluation_seconds += seconds
            got = (host["accuracy"], host.get("mean_cosine"), host["weight_bytes"])
            self.db.execute("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, NULL, ?)",
                            (self.score_key, text, *got, seconds))
        latency = self.costs.predict(self.work.genome(payload)).latency_ms
        row = np.array([self.fp32 - float(got[0]), float(got[2]), float(latency)])
        out = (row, None if got[1] is None else float(got[1]))
        self._memo[g] = out
        return out

    def random_genome(self, rng: np.random.Generator) -> Genome:
        return self.space.random(rng)

    # -- qae's seeding, as harness.run.search.run_search does it -----------------------------------
    def search_space(self) -> Any:
        return self.space

    def probe_genomes(self) -> list[Genome]:
        """harness.run.seeds.probe_genes as genomes of this space (one layer at w4a8, the rest fp)."""
        from harness.core.genome import Genome as HGenome
        from harness.run.seeds import gene_value, probe_genes

        out = []
        for data in probe_genes(self.work, self.cfg):
            genome = HGenome.from_dict(data, self.work.layer_ops)
            values = [gene_value(genome[name]) for name in self.names]
            out.append(self.space.encode(values))
        return out

    def seed_values(self, sensitivity: Sequence[float] | None) -> tuple[Any, ...]:
        from harness.run.seeds import seed_values

        return tuple(seed_values(self.work, self.cfg, self.genes, sensitivity))

    @property
    def ladder(self) -> tuple[Any, ...]:
        from harness.run.config import SENSITIVITY_LADDER

        return tuple((*v, self.cfg.scheme, self.cfg.granularity) for v in SENSITIVITY_LADDER)


def _valid_row(row: Sequence[Any]) -> bool:
    """accuracy in [0, 1], mean cosine None or in [-1, 1], bytes finite and >= 0."""
    import math

    accuracy, cosine, size = row
    numbers = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (accuracy, size))
    return (numbers and 0.0 <= accuracy <= 1.0 and size >= 0
            and (cosine is None or (isinstance(cosine, (int, float)) and -1.0 - 1e-9 <= cosine <= 1.0 + 1e-9)))


class _Rows:
    """``space.rows[genome]``: the objective row, evaluated (and cached) on first use."""

    def __init__(self, space: LayerSpace) -> None:
        self.space = space

    def __getitem__(self, genome: Sequence[int]) -> np.ndarray:
        return self.space.evaluate(tuple(genome))[0]

    def __iter__(self) -> Iterator[Genome]:
        raise TypeError(f"{self.space.name} is not enumerable")


class _Cosine:
    def __init__(self, space: LayerSpace) -> None:
        self.space = space

    def get(self, genome: Sequence[int], default: Any = None) -> float | None:
        value = self.space.evaluate(tuple(genome))[1]
        return default if value is None else value

    def __getitem__(self, genome: Sequence[int]) -> float | None:
        return self.get(genome)
