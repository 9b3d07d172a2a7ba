"""Fitness cache: host-side accuracy and size of a genome, keyed by what determines them.

The key is (model sha256, genome hash, evaluation settings hash); the settings cover the
calibration and evaluation data, the calibration method and the ONNX Runtime version, so a cached
value is only reused when rebuilding the candidate would give the same numbers. Stored in SQLite
under the cache folder, shared by runs and worker processes; hits and misses are counted per
instance so a run can report its hit rate.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from harness.core.paths import cache_dir


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class EvalCache:
    """Get/put host evaluations; safe across processes (SQLite with a busy timeout)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else cache_dir() / "evals.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS evals (model TEXT, genome TEXT, settings TEXT, result TEXT, created REAL, "
            "PRIMARY KEY (model, genome, settings))"
        )
        self.hits = 0
        self.misses = 0

    def get(self, model: str, genome: str, settings: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT result FROM evals WHERE model = ? AND genome = ? AND settings = ?", (model, genome, settings)
        ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return dict(json.loads(row[0]))

    def put(self, model: str, genome: str, settings: str, result: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO evals (model, genome, settings, result, created) VALUES (?, ?, ?, ?, ?)",
            (model, genome, settings, json.dumps(result, sort_keys=True), time.time()),
        )

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def close(self) -> None:
        self._db.close()
