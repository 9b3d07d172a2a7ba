"""The run archive: one SQLite file per run holding everything a search saw, with provenance.

Contract:
- ``runs`` has one row: the full configuration and the engine state after the last tell. A killed
  run resumes from that state, so the state and the evaluations it counts are written in the same
  transaction (``Archive.record``): after a crash either both or neither are there.
- ``candidates`` holds each genome once per target (hash, full genome, generation, parents).
- ``value_log`` holds every objective value with its source (``measured``, ``predicted``,
  ``computed``, ``simulated``) and the details that back it (device or profile, calibration id,
  expected error, method). Values are appended, never relabelled or overwritten; the newest value
  of a source is the current one, and the merge rule (measured beats predicted) is applied when
  reading, not stored.
- ``errors`` holds typed error records (error kind, message) per candidate and target.
- The Pareto front is never stored: it is derived from these tables when asked.
- ``added`` marks the candidates that entered the run outside the search (``harness.run.finetune``):
  kind ``finetuned``, made by a quantization-aware fine-tune, with its parent's hash and the
  provenance (steps, data, seed, settings, loss curve, validation scores, the fine-tuned float
  model's file and digest): its parent's genome, its own hash and values; kind ``given``, a genome a
  user brought to fine-tune, built and scored like a search candidate. Neither has an engine record:
  the engine never proposed them, and the front is derived with them.
- ``test_scores`` holds, after the search, each front point's, uniform baseline's and FP32's score
  on the test split with its interval and paired verdicts (``harness.run.testsplit``); the engine
  state never depends on it.

Thread safety: one ``Archive`` per thread or process; SQLite serialises writers (WAL mode).

One module (~600 lines) because the SQLite schema, its transactions and the typed rows it returns
must change together; nothing else touches the database.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import ArchiveWriteError, InputError

SCHEMA_VERSION = 1
SOURCES = ("measured", "simulated", "predicted", "computed")
#: For ranking, a source earlier in this list beats a later one for the same candidate and target.
MERGE_ORDER = ("measured", "simulated", "predicted", "computed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS engine_state (
    target TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    target TEXT NOT NULL,
    hash TEXT NOT NULL,
    seq INTEGER NOT NULL,
    genome TEXT NOT NULL,
    generation INTEGER NOT NULL,
    emulated INTEGER NOT NULL,
    feasible INTEGER,
    violation REAL,
    record TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (target, hash)
);
CREATE TABLE IF NOT EXISTS value_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    hash TEXT NOT NULL,
    objective TEXT NOT NULL,
    value REAL NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('measured', 'simulated', 'predicted', 'computed')),
    detail TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS value_log_candidate ON value_log (target, hash);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    hash TEXT NOT NULL,
    error_kind TEXT NOT NULL,
    message TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    target TEXT NOT NULL,
    hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'done', 'failed')),
    device TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (target, hash)
);
CREATE TABLE IF NOT EXISTS gaps (
    target TEXT NOT NULL,
    generation INTEGER NOT NULL,
    hash TEXT NOT NULL,
    device TEXT NOT NULL,
    predicted REAL NOT NULL,
    measured REAL NOT NULL,
    fit_n INTEGER NOT NULL,
    calibration_id TEXT,
    created REAL NOT NULL,
    statistic TEXT
);
CREATE TABLE IF NOT EXISTS fits (
    target TEXT NOT NULL,
    generation INTEGER NOT NULL,
    n INTEGER NOT NULL,
    calibration_id TEXT NOT NULL,
    method TEXT NOT NULL,
    hashes TEXT NOT NULL,
    in_sample_mape REAL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    target TEXT NOT NULL,
    device TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS device_accuracy (
    target TEXT NOT NULL,
    hash TEXT NOT NULL,
    device TEXT NOT NULL,
    accuracy REAL,
    mean_cosine REAL,
    host_accuracy REAL,
    metric TEXT,
    error_kind TEXT,
    message TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (target, hash)
);
CREATE TABLE IF NOT EXISTS test_scores (
    hash TEXT PRIMARY KEY,
    row TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS layer_times (
    target TEXT NOT NULL,
    hash TEXT NOT NULL,
    device TEXT NOT NULL,
    data TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (target, hash, device)
);
CREATE TABLE IF NOT EXISTS added (
    target TEXT NOT NULL,
    hash TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('finetuned', 'given')),
    parent TEXT,
    provenance TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (target, hash)
);
CREATE TABLE IF NOT EXISTS history (
    target TEXT NOT NULL,
    generation INTEGER NOT NULL,
    evaluations INTEGER NOT NULL,
    hypervolume REAL NOT NULL,
    cache_hit_rate REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (target, generation)
);
"""


class InvalidValueError(ValueError):
    """A value or detail the archive refuses (NaN, infinity, not a number): stored as an error record
    of its candidate instead, so a bad number never reaches a front or stops a search."""


def strict_json(obj: Any, what: str) -> str:
    """Standard JSON only (no NaN/Infinity, which other JSON readers reject)."""
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise InvalidValueError(f"{what} is not finite standard JSON ({exc})") from None


def check_value(objective: str, v: Value) -> None:
    """Raise ``InvalidValueError`` for a value that must not be stored (see ``InvalidValueError``)."""
    if v.source not in SOURCES:
        raise InvalidValueError(f"{objective}: unknown value source {v.source!r}")
    if isinstance(v.value, bool) or not isinstance(v.value, (int, float)) or not math.isfinite(v.value):
        raise InvalidValueError(f"{objective} = {v.value!r} from {v.source} is not a finite number")
    strict_json(v.detail, f"{objective} detail")


@dataclass(frozen=True)
class Value:
    """One objective value and where it comes from."""

    value: float
    source: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, **self.detail}


@dataclass
class Candidate:
    target: str
    hash: str
    seq: int
    genome: dict[str, Any]
    generation: int
    emulated: bool
    feasible: bool | None
    violation: float | None
    values: dict[str, Value]
    #: the candidate a fine-tune started from, for a fine-tuned candidate (``Archive.add_candidate``)
    parent: str | None = None
    #: ``search`` (the engine proposed it), ``finetuned`` or ``given`` (see the ``added`` table)
    origin: str = "search"


class Archive:
    """A run's SQLite archive; see the module docstring for what each table guarantees."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            # A reader (qae report/export, possibly while a search writes) never creates the file or
            # writes the schema into it: mode=ro refuses every write at the SQLite level.
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.OperationalError, OSError) as exc:
            raise self._write_error(exc) from None
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            if not self._has_gap_statistic():  # an archive written before gaps said which statistic they compare
                self._db.execute("ALTER TABLE gaps ADD COLUMN statistic TEXT")

    def _has_gap_statistic(self) -> bool:
        return any(row[1] == "statistic" for row in self._db.execute("PRAGMA table_info(gaps)"))

    @classmethod
    def open_existing(cls, path: str | Path, readonly: bool = False) -> Archive:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no archive at {path}: give a run folder that `qae search` wrote")
        if path.stat().st_size == 0:
            raise InputError(
                f"{path} is empty (0 bytes; the search stopped before it wrote anything): "
                f"start the search again (remove the folder or use another --out)"
            )
        try:
            archive = cls(path, readonly=readonly)
            archive.config()
        except sqlite3.DatabaseError:
            raise InputError(f"{path} is not a qae archive (SQLite error): give a run folder qae wrote") from None
        return archive

    def _write_error(self, exc: BaseException) -> ArchiveWriteError:
        detail = getattr(exc, "strerror", None) or str(exc)
        return ArchiveWriteError(
            f"cannot write {self.path} ({detail}): free disk space (or raise the file size limit) on "
            f"{self.path.parent}, then continue with `qae search --resume {self.path.parent}`"
        )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing: BEGIN IMMEDIATE takes the write lock up front, so no writer interleaves.

        An OS-level failure (disk full, file size limit, I/O error) becomes one ``ArchiveWriteError``
        saying what to free and how to resume; what was committed before stays valid."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._write_error(exc) from None
        try:
            yield self._db
        except BaseException as exc:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # a failed write may already have rolled the transaction back
            if isinstance(exc, sqlite3.OperationalError):
                raise self._write_error(exc) from None
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise self._write_error(exc) from None

    # -- run ------------------------------------------------------------------------------------
    def start(self, config: dict[str, Any]) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (id, config, status, created, updated) VALUES (1, ?, 'running', ?, ?)",
                (strict_json(config, "the run configuration"), now, now),
            )

    def update_config(self, config: dict[str, Any]) -> None:
        """Replace the stored configuration (a resume that overrides --devices, or re-anchors paths)."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET config = ?, updated = ? WHERE id = 1",
                       (strict_json(config, "the run configuration"), time.time()))

    def config(self) -> dict[str, Any]:
        row = self._db.execute("SELECT config FROM runs WHERE id = 1").fetchone()
        if row is None:
            raise InputError(f"{self.path} holds no run: start one with `qae search`")
        return dict(json.loads(row[0]))

    def set_status(self, status: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, updated = ? WHERE id = 1", (status, time.time()))

    def status(self) -> str:
        row = self._db.execute("SELECT status FROM runs WHERE id = 1").fetchone()
        return str(row[0]) if row else "absent"

    # -- engine state ---------------------------------------------------------------------------
    def engine_state(self, target: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT state FROM engine_state WHERE target = ?", (target,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    # -- writing a told evaluation ---------------------------------------------------------------
    def record(
        self,
        target: str,
        genome_hash: str,
        genome: dict[str, Any],
        generation: int,
        emulated: bool,
        feasible: bool | None,
        violation: float | None,
        values: dict[str, Value],
        errors: list[tuple[str, str]],
        engine_state: dict[str, Any],
        engine_generation: int,
        engine_record: dict[str, Any] | None = None,
    ) -> None:
        """Store one evaluation and the engine state that counts it, in one transaction.

        ``engine_record`` is the engine's own record of the evaluation; with it the engine state can
        leave completed records out (they are rebuilt from this table on resume).
        """
        now = time.time()
        values, bad = self._split_valid(values)
        if bad:  # a value that cannot be stored makes the candidate a failed one, recorded once
            errors = [*errors, *(("INVALID_VALUE", m) for m in bad)]
            feasible = False
        with self.transaction() as db:
            seq = db.execute("SELECT COUNT(*) FROM candidates WHERE target = ?", (target,)).fetchone()[0]
            db.execute(
                "INSERT INTO candidates (target, hash, seq, genome, generation, emulated, feasible, violation, "
                "record, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    target,
                    genome_hash,
                    seq,
                    json.dumps(genome, sort_keys=True),
                    generation,
                    int(emulated),
                    None if feasible is None else int(feasible),
                    violation,
                    None if engine_record is None else json.dumps(engine_record),
                    now,
                ),
            )
            self._insert_values(db, target, genome_hash, values, now)
            for kind, message in errors:
                db.execute(
                    "INSERT INTO errors (target, hash, error_kind, message, created) VALUES (?, ?, ?, ?, ?)",
                    (target, genome_hash, kind, message, now),
                )
            self._save_state(db, target, engine_state, engine_generation, now)

    def save_engine_state(self, target: str, state: dict[str, Any], generation: int) -> None:
        with self.transaction() as db:
            self._save_state(db, target, state, generation, time.time())

    def add_values(self, target: str, genome_hash: str, values: dict[str, Value]) -> None:
        """Append values (a measurement arriving later, a re-prediction): never overwrites."""
        with self.transaction() as db:
            self._insert_values(db, target, genome_hash, values, time.time())

    def add_history(self, target: str, generation: int, evaluations: int, hypervolume: float, hit_rate: float) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO history (target, generation, evaluations, hypervolume, cache_hit_rate, "
                "created) VALUES (?, ?, ?, ?, ?, ?)",
                (target, generation, evaluations, hypervolume, hit_rate, time.time()),
            )

    @staticmethod
    def _split_valid(values: dict[str, Value]) -> tuple[dict[str, Value], list[str]]:
        good, bad = {}, []
        for objective, v in values.items():
            try:
                check_value(objective, v)
            except InvalidValueError as exc:
                bad.append(str(exc))
            else:
                good[objective] = v
        return good, bad

    @staticmethod
    def _insert_values(
        db: sqlite3.Connection, target: str, genome_hash: str, values: dict[str, Value], now: float
    ) -> None:
        for objective, v in values.items():
            check_value(objective, v)
            db.execute(
                "INSERT INTO value_log (target, hash, objective, value, source, detail, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (target, genome_hash, objective, float(v.value), v.source, strict_json(v.detail, objective), now),
            )

    @staticmethod
    def _save_state(db: sqlite3.Connection, target: str, state: dict[str, Any], generation: int, now: float) -> None:
        db.execute(
            "INSERT OR REPLACE INTO engine_state (target, state, generation, updated) VALUES (?, ?, ?, ?)",
            (target, json.dumps(state), generation, now),
        )
        db.execute("UPDATE runs SET updated = ? WHERE id = 1", (now,))

    # -- reading ----------------------------------------------------------------------------------
    def engine_records(self, target: str) -> list[dict[str, Any]]:
        """The engine's records of a target's evaluations, in the order they were told."""
        rows = self._db.execute(
            "SELECT record FROM candidates WHERE target = ? AND record IS NOT NULL ORDER BY seq", (target,)
        ).fetchall()
        return [dict(json.loads(r[0])) for r in rows]

    def targets(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT target FROM candidates ORDER BY target").fetchall()
        return [r[0] for r in rows]

    def candidates(self, target: str) -> list[Candidate]:
        """Every candidate of a target with its current values under the merge rule."""
        rows = self._db.execute(
            "SELECT hash, seq, genome, generation, emulated, feasible, violation FROM candidates WHERE target = ? "
            "ORDER BY seq",
            (target,),
        ).fetchall()
        values = self._current_values(target)
        added = self.added(target)
        return [
            Candidate(
                target,
                h,
                seq,
                json.loads(g),
                gen,
                bool(emu),
                None if feas is None else bool(feas),
                viol,
                values.get(h, {}),
                added[h]["parent"] if h in added else None,
                added[h]["kind"] if h in added else "search",
            )
            for h, seq, g, gen, emu, feas, viol in rows
        ]

    # -- fine-tuned candidates (issue 19) ---------------------------------------------------------
    def add_candidate(
        self,
        target: str,
        genome_hash: str,
        genome: dict[str, Any],
        kind: str,
        parent: str | None,
        emulated: bool,
        feasible: bool | None,
        violation: float | None,
        values: dict[str, Value],
        provenance: dict[str, Any],
    ) -> bool:
        """Store a candidate made outside the search (``kind`` finetuned or given) of ``target``: the
        candidate (no engine record), its values and its provenance, in one transaction. False (and
        nothing written) when the target holds that hash already."""
        now = time.time()
        text = strict_json({**provenance, "kind": kind, "parent": parent}, "the candidate's provenance")
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM candidates WHERE target = ? AND hash = ?", (target, genome_hash)).fetchone():
                return False
            generation = db.execute("SELECT generation FROM candidates WHERE target = ? AND hash = ?",
                                    (target, parent)).fetchone()
            seq = db.execute("SELECT COUNT(*) FROM candidates WHERE target = ?", (target,)).fetchone()[0]
            db.execute(
                "INSERT INTO candidates (target, hash, seq, genome, generation, emulated, feasible, violation, "
                "record, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (target, genome_hash, seq, json.dumps(genome, sort_keys=True), generation[0] if generation else 0,
                 int(emulated), None if feasible is None else int(feasible), violation, now),
            )
            self._insert_values(db, target, genome_hash, values, now)
            db.execute("INSERT INTO added (target, hash, kind, parent, provenance, created) VALUES (?, ?, ?, ?, ?, ?)",
                       (target, genome_hash, kind, parent, text, now))
        return True

    def proposed(self, target: str) -> list[str]:
        """The hashes of the candidates the engine proposed (those with its record), in the order told:
        they pair one to one with ``engine_records``."""
        rows = self._db.execute(
            "SELECT hash FROM candidates WHERE target = ? AND record IS NOT NULL ORDER BY seq", (target,)
        ).fetchall()
        return [r[0] for r in rows]

    def finetuned(self, target: str | None = None) -> dict[str, dict[str, Any]]:
        """{hash: provenance (with ``parent``)} of the fine-tuned candidates (of ``target``)."""
        return {h: row for h, row in self.added(target).items() if row["kind"] == "finetuned"}

    def added(self, target: str | None = None) -> dict[str, dict[str, Any]]:
        """{hash: provenance (with ``kind`` and ``parent``)} of the candidates added outside the search
        (of ``target``); {} for an archive from before fine-tuning."""
        sql, args = "SELECT hash, kind, parent, provenance FROM added", tuple[str, ...]()
        if target is not None:
            sql, args = sql + " WHERE target = ?", (target,)
        try:
            rows = self._db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # an older archive, opened read-only
            return {}
        out = {}
        for h, kind, parent, text in rows:
            try:
                row = json.loads(text)
            except ValueError:
                continue
            if isinstance(row, dict):
                out[h] = {**row, "kind": kind, "parent": parent}
        return out

    def created(self, target: str) -> dict[str, float]:
        """When each candidate of ``target`` was recorded (``time.time()``): the front at any moment of
        a run is the front of the candidates recorded by then."""
        rows = self._db.execute("SELECT hash, created FROM candidates WHERE target = ?", (target,)).fetchall()
        return {h: float(t) for h, t in rows}

    def _current_values(self, target: str) -> dict[str, dict[str, Value]]:
        rank = {s: i for i, s in enumerate(MERGE_ORDER)}
        best: dict[str, dict[str, tuple[int, int, Value]]] = {}
        rows = self._db.execute(
            "SELECT id, hash, objective, value, source, detail FROM value_log WHERE target = ? ORDER BY id",
            (target,),
        )
        for row_id, h, objective, value, source, detail in rows:
            entry = (rank[source], -row_id, Value(value, source, json.loads(detail)))
            current = best.setdefault(h, {}).get(objective)
            # Measured beats predicted; among the same source, the newest wins.
            if current is None or entry[:2] < current[:2]:
                best[h][objective] = entry
        return {h: {o: e[2] for o, e in objs.items()} for h, objs in best.items()}

    def value_history(self, target: str, genome_hash: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT objective, value, source, detail, created FROM value_log WHERE target = ? AND hash = ? ORDER BY id",
            (target, genome_hash),
        ).fetchall()
        return [{"objective": o, "value": v, "source": s, **json.loads(d), "created": c} for o, v, s, d, c in rows]

    def errors(self, target: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT target, hash, error_kind, message FROM errors"
        args: tuple[Any, ...] = ()
        if target is not None:
            sql += " WHERE target = ?"
            args = (target,)
        return [{"target": t, "hash": h, "error_kind": k, "message": m} for t, h, k, m in self._db.execute(sql, args)]

    def history(self, target: str) -> list[dict[str, float]]:
        rows = self._db.execute(
            "SELECT generation, evaluations, hypervolume, cache_hit_rate FROM history WHERE target = ? "
            "ORDER BY generation",
            (target,),
        ).fetchall()
        return [{"generation": g, "evaluations": e, "hypervolume": hv, "cache_hit_rate": r} for g, e, hv, r in rows]

    # -- hardware in the loop ---------------------------------------------------------------------
    def queue_job(self, target: str, genome_hash: str) -> bool:
        """Queue a measurement once per candidate and target; False if it was queued before."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO jobs (target, hash, status, created, updated) VALUES (?, ?, 'queued', ?, ?)",
                (target, genome_hash, now, now),
            )
            return cur.rowcount == 1

    def jobs(self, target: str, status: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT hash, status, device, attempts FROM jobs WHERE target = ?"
        args: tuple[Any, ...] = (target,)
        if status:
            sql += " AND status = ?"
            args += (status,)
        return [
            {"hash": h, "status": st, "device": d, "attempts": a}
            for h, st, d, a in self._db.execute(sql + " ORDER BY created", args)
        ]

    def finish_job(
        self,
        target: str,
        genome_hash: str,
        device: str,
        values: dict[str, Value],
        gap: dict[str, Any] | None,
        engine_update: tuple[dict[str, Any], dict[str, Any], int] | None,
    ) -> bool:
        """A measurement lands: its values, the job marked done, the gap and the revised engine record, at once.

        A measurement with a value the archive refuses (NaN, not a number) is a failed job instead,
        closed for good (never queued again); returns False then."""
        _, bad = self._split_valid(values)
        gap_ok = gap is None or all(
            isinstance(gap.get(k), (int, float)) and math.isfinite(gap[k]) for k in ("predicted", "measured")
        )
        if bad or not gap_ok:
            self.fail_job(target, genome_hash, device, "INVALID_MEASUREMENT",
                          "; ".join(bad) or "the measured latency is not a finite number", final=True)
            return False
        now = time.time()
        with self.transaction() as db:
            self._insert_values(db, target, genome_hash, values, now)
            db.execute(
                "UPDATE jobs SET status = 'done', device = ?, attempts = attempts + 1, updated = ? "
                "WHERE target = ? AND hash = ?",
                (device, now, target, genome_hash),
            )
            if gap is not None:
                db.execute(
                    "INSERT INTO gaps (target, generation, hash, device, predicted, measured, fit_n, calibration_id, "
                    "created, statistic) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        target,
                        gap["generation"],
                        genome_hash,
                        device,
                        gap["predicted"],
                        gap["measured"],
                        gap["fit_n"],
                        gap.get("calibration_id"),
                        now,
                        gap.get("statistic"),
                    ),
                )
            if engine_update is not None:
                record, state, generation = engine_update
                self._update_record(db, target, genome_hash, record)
                self._save_state(db, target, state, generation, now)
        return True

    def fail_job(self, target: str, genome_hash: str, device: str, kind: str, message: str, final: bool) -> None:
        """A measurement failed: the error is kept; a final failure closes the job, else it stays queued."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, device = ?, attempts = attempts + 1, updated = ? "
                "WHERE target = ? AND hash = ?",
                ("failed" if final else "queued", device, now, target, genome_hash),
            )
            db.execute(
                "INSERT INTO errors (target, hash, error_kind, message, created) VALUES (?, ?, ?, ?, ?)",
                (target, genome_hash, kind, f"{device}: {message}"[:2000], now),
            )

    def revise(
        self,
        target: str,
        updates: list[tuple[str, dict[str, Value], dict[str, Any]]],
        state: dict[str, Any],
        generation: int,
        fit: dict[str, Any] | None = None,
    ) -> None:
        """Re-predictions after a refit: new values and revised engine records, with the fit, at once."""
        now = time.time()
        with self.transaction() as db:
            if fit is not None:
                db.execute(
                    "INSERT INTO fits (target, generation, n, calibration_id, method, hashes, in_sample_mape, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        target,
                        fit["generation"],
                        fit["n"],
                        fit["calibration_id"],
                        fit["method"],
                        json.dumps(fit["hashes"]),
                        fit.get("in_sample_mape"),
                        now,
                    ),
                )
            for genome_hash, values, record in updates:
                self._insert_values(db, target, genome_hash, values, now)
                self._update_record(db, target, genome_hash, record)
            self._save_state(db, target, state, generation, now)

    @staticmethod
    def _update_record(db: sqlite3.Connection, target: str, genome_hash: str, record: dict[str, Any]) -> None:
        db.execute(
            "UPDATE candidates SET record = ? WHERE target = ? AND hash = ?", (json.dumps(record), target, genome_hash)
        )

    def add_event(self, target: str, device: str | None, kind: str, message: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (target, device, kind, message, created) VALUES (?, ?, ?, ?, ?)",
                (target, device, kind, message, time.time()),
            )

    def events(self, target: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT target, device, kind, message, created FROM events", tuple[str, ...]()
        if target is not None:
            sql, args = sql + " WHERE target = ?", (target,)
        return [
            {"target": t, "device": d, "kind": k, "message": m, "created": c}
            for t, d, k, m, c in self._db.execute(sql + " ORDER BY created", args)
        ]

    def gaps(self, target: str) -> list[dict[str, Any]]:
        """Predicted (just before measuring) against measured latency, each with the latency statistic
        both are (``statistic``: the one the prediction was made for; ``p50`` in an archive written before
        gaps recorded it, which compared the measured p50 whatever the profile predicted)."""
        stat = "statistic" if self._has_gap_statistic() else "NULL"  # a read-only open of an older archive
        rows = self._db.execute(
            f"SELECT generation, hash, device, predicted, measured, fit_n, calibration_id, {stat} FROM gaps "
            "WHERE target = ? ORDER BY created",
            (target,),
        )
        return [
            {"generation": g, "hash": h, "device": d, "predicted": p, "measured": m, "fit_n": n, "calibration_id": c,
             "statistic": s or "p50"}
            for g, h, d, p, m, n, c, s in rows
        ]

    def fits(self, target: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT generation, n, calibration_id, method, hashes, in_sample_mape FROM fits WHERE target = ? "
            "ORDER BY created",
            (target,),
        )
        return [
            {"generation": g, "n": n, "calibration_id": c, "method": m, "hashes": json.loads(h), "in_sample_mape": e}
            for g, n, c, m, h, e in rows
        ]

    def latest_value(self, target: str, genome_hash: str, objective: str, source: str) -> Value | None:
        row = self._db.execute(
            "SELECT value, source, detail FROM value_log "
            "WHERE target = ? AND hash = ? AND objective = ? AND source = ? ORDER BY id DESC LIMIT 1",
            (target, genome_hash, objective, source),
        ).fetchone()
        return None if row is None else Value(row[0], row[1], json.loads(row[2]))

    def set_device_accuracy(self, target: str, genome_hash: str, device: str, row: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO device_accuracy (target, hash, device, accuracy, mean_cosine, host_accuracy, "
                "metric, error_kind, message, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    target,
                    genome_hash,
                    device,
                    row.get("accuracy"),
                    row.get("mean_cosine"),
                    row.get("host_accuracy"),
                    row.get("metric"),
                    row.get("error_kind"),
                    row.get("message"),
                    time.time(),
                ),
            )

    def device_accuracy(self, target: str) -> dict[str, dict[str, Any]]:
        rows = self._db.execute(
            "SELECT hash, device, accuracy, mean_cosine, host_accuracy, metric, error_kind, message "
            "FROM device_accuracy WHERE target = ?",
            (target,),
        )
        return {
            h: {
                "device": d,
                "accuracy": a,
                "mean_cosine": c,
                "host_accuracy": ha,
                "metric": m,
                "error_kind": k,
                "message": msg,
            }
            for h, d, a, c, ha, m, k, msg in rows
        }

    # -- the test split (scored once, after the search) -------------------------------------------
    def set_test_scores(self, rows: list[dict[str, Any]], replace_all: bool = False) -> None:
        """Store test-split scores (``harness.run.testsplit``), one row per genome hash (or ``fp32``),
        all in one transaction; ``replace_all`` first drops every stored row (the test file changed)."""
        now = time.time()
        encoded = [(str(r["hash"]), strict_json(r, "a test score")) for r in rows]
        with self.transaction() as db:
            if replace_all:
                db.execute("DELETE FROM test_scores")
            db.executemany("INSERT OR REPLACE INTO test_scores (hash, row, created) VALUES (?, ?, ?)",
                           [(h, row, now) for h, row in encoded])

    def test_scores(self) -> dict[str, dict[str, Any]]:
        """Every stored test score by hash; {} for a run that scored none (or predates test splits)."""
        try:
            rows = self._db.execute("SELECT hash, row FROM test_scores").fetchall()
        except sqlite3.OperationalError:  # an archive from before test splits, opened read-only
            return {}
        out = {}
        for h, text in rows:
            try:
                row = json.loads(text)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("value"), (int, float)):
                out[h] = row
        return out

    # -- per-layer times (a device's per-op profile split by layer, agent 1.5) ----------------------
    def set_layer_times(self, target: str, genome_hash: str, device: str, data: dict[str, Any]) -> None:
        """Store one measurement's per-layer times: ``measured`` (``harness.quant.opmap.LayerTimes``,
        ms per layer and unattributed per op type, from the device's profiler) and ``predicted`` (the
        target's cost model per layer), each labelled with its source."""
        text = strict_json({"measured": {**data["measured"], "source": "measured"},
                            "predicted": {**data["predicted"], "source": "predicted"}}, "layer times")
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO layer_times (target, hash, device, data, created) "
                       "VALUES (?, ?, ?, ?, ?)", (target, genome_hash, device, text, time.time()))

    def layer_times(self, target: str) -> dict[str, dict[str, Any]]:
        """{hash: {device, measured, predicted}} of ``target`` (the latest device's per hash); {} for an
        archive from before per-layer times."""
        try:
            rows = self._db.execute("SELECT hash, device, data FROM layer_times WHERE target = ? ORDER BY created",
                                    (target,)).fetchall()
        except sqlite3.OperationalError:  # an older archive, opened read-only
            return {}
        out = {}
        for h, device, text in rows:
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict) and isinstance(data.get("measured"), dict):
                out[h] = {"device": device, **data}
        return out

    def count(self, target: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM candidates WHERE target = ?", (target,)).fetchone()[0])
