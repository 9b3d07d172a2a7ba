"""Fitness cache: host-side accuracy and size of a genome, keyed by what determines them.

The key is (model sha256, genome hash, evaluation settings hash); the settings cover the
calibration and evaluation data, the calibration method, the ONNX Runtime version and the quantizer's
BUILD_VERSION, so a cached
value is only reused when rebuilding the candidate would give the same numbers. Stored in SQLite
under the cache folder, shared by runs and worker processes; hits and misses are counted per
instance so a run can report its hit rate.

The cache is a convenience, never an authority: a file that does not open as this cache (cut by a
full disk, overwritten, another program's database) is moved aside to ``evals.sqlite.corrupt`` and
rebuilt with a one-line warning, and every entry read is checked against ``ENTRY_SCHEMA`` (types,
finite numbers): a bad one is dropped and counts as a miss, so the genome is evaluated again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import jsonschema

from harness.core.inputs import non_finite_at, warn
from harness.core.paths import cache_dir

_COLUMNS = ["model", "genome", "settings", "result", "created"]
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
#: What ``EvalReport.to_dict()`` stores; only what a reader of the cache relies on is required.
ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["accuracy", "metric", "n", "file_bytes", "weight_bytes", "stored_weight_bytes", "emulated"],
    "properties": {
        "accuracy": {"type": "number"},
        "metric": {"type": "string"},
        "n": {"type": "integer", "minimum": 1},
        "file_bytes": _COUNT,
        "weight_bytes": _COUNT,
        "stored_weight_bytes": _COUNT,
        "emulated": {"type": "boolean"},
        "emulated_layers": {"type": "array", "items": {"type": "string"}},
        "top1_agreement": _NUMBER_OR_NULL,
        "mean_cosine": _NUMBER_OR_NULL,
        "labelled_accuracy": _NUMBER_OR_NULL,
        "sqnr_db": _NUMBER_OR_NULL,
        "scores": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": {"type": "number"}},
        },
        "metric_note": {"type": "string"},
        "sample_stats": {"type": ["object", "null"]},
    },
}
_ENTRY = jsonschema.Draft202012Validator(ENTRY_SCHEMA)


def _memory() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE evals (model TEXT, genome TEXT, settings TEXT, result TEXT, created REAL, "
               "PRIMARY KEY (model, genome, settings))")
    return db


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def entry_problem(text: str) -> str | None:
    """Why a stored result cannot be used (one phrase), or None when it is a valid entry."""
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return "not JSON"
    err = next(iter(_ENTRY.iter_errors(value)), None)
    if err is not None:
        where = ".".join(str(p) for p in err.absolute_path) or "top level"
        return f"{where}: {err.message[:80]}"
    bad = non_finite_at(value)
    return f"{bad} is not finite" if bad else None


class EvalCache:
    """Get/put host evaluations; safe across processes (SQLite with a busy timeout)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else cache_dir() / "evals.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        try:
            self._db = self._open()
        except sqlite3.OperationalError as exc:  # locked, read-only, no space: the file is not at fault
            self._db = _memory()
            warn(f"fitness cache {self.path} cannot be used now ({str(exc)[:80]}): this run caches in memory only")
        except sqlite3.DatabaseError as exc:
            self._db = self._rebuild(f"it does not open as a fitness cache ({str(exc)[:80]})")

    def _open(self) -> sqlite3.Connection:
        """Connect, create the table if new, and check the file really is this cache."""
        db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS evals (model TEXT, genome TEXT, settings TEXT, result TEXT, "
                "created REAL, PRIMARY KEY (model, genome, settings))"
            )
            columns = [row[1] for row in db.execute("PRAGMA table_info(evals)")]
            if columns != _COLUMNS:
                raise sqlite3.DatabaseError(f"its table has columns {columns}, not {_COLUMNS}")
            db.execute("SELECT count(*) FROM evals").fetchone()  # reads the table's pages
        except BaseException:
            db.close()
            raise
        return db

    def _rebuild(self, why: str) -> sqlite3.Connection:
        """Move the damaged file (and its WAL) aside and start an empty cache; never fatal."""
        aside = self.path.with_name(self.path.name + ".corrupt")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            try:
                if suffix:
                    src.unlink(missing_ok=True)  # a journal belongs to the damaged file
                elif src.exists():
                    os.replace(src, aside)
            except OSError:
                pass
        try:
            db = self._open()
            warn(f"fitness cache {self.path} was moved aside to {aside.name} and rebuilt: {why}")
        except sqlite3.DatabaseError as exc:  # the folder itself is unusable: cache in memory for this run
            db = _memory()
            warn(f"fitness cache {self.path} cannot be used ({str(exc)[:80]}): this run caches in memory only")
        return db

    def get(self, model: str, genome: str, settings: str) -> dict[str, Any] | None:
        key = (model, genome, settings)
        try:
            row = self._db.execute(
                "SELECT result FROM evals WHERE model = ? AND genome = ? AND settings = ?", key
            ).fetchone()
        except sqlite3.OperationalError:  # busy past the timeout: a miss, the file is fine
            row = None
        except sqlite3.DatabaseError as exc:  # damaged after it opened: heal, and count a miss
            self._db.close()
            self._db = self._rebuild(f"reading it failed ({str(exc)[:80]})")
            row = None
        if row is not None:
            problem = entry_problem(row[0]) if isinstance(row[0], str) else "not text"
            if problem is None:
                self.hits += 1
                return dict(json.loads(row[0]))
            warn(f"fitness cache entry for genome {genome} is invalid ({problem}): it is recomputed")
            self._delete(key)
        self.misses += 1
        return None

    def _delete(self, key: tuple[str, str, str]) -> None:
        try:
            self._db.execute("DELETE FROM evals WHERE model = ? AND genome = ? AND settings = ?", key)
        except sqlite3.DatabaseError:
            pass  # the put that follows the recomputation replaces it anyway

    def put(self, model: str, genome: str, settings: str, result: dict[str, Any]) -> None:
        text = json.dumps(result, sort_keys=True)
        if entry_problem(text) is not None:
            return  # never store what a later read would refuse (e.g. a NaN score)
        row = (model, genome, settings, text, time.time())
        sql = "INSERT OR REPLACE INTO evals (model, genome, settings, result, created) VALUES (?, ?, ?, ?, ?)"
        try:
            self._db.execute(sql, row)
        except sqlite3.OperationalError:
            return  # busy or full: the value is recomputed next time, nothing is wrong with it
        except sqlite3.DatabaseError as exc:
            self._db.close()
            self._db = self._rebuild(f"writing it failed ({str(exc)[:80]})")
            self._db.execute(sql, row)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def close(self) -> None:
        self._db.close()
