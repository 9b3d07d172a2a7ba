"""The search benchmark's finished runs and per-layer scores, kept in the repository.

``bench_search`` keeps finished runs (results/bench/cache/search_runs.sqlite) and the per-layer spaces'
scores (results/bench/cache/<space>.sqlite) in ignored caches, so an interrupted call continues. A
replaced machine loses them, and running every space again takes longer (hours on two cores) than
one sitting may have. So each call also writes, per space it ran, a snapshot
(results/bench/search_store/<space>.json.gz): the runs behind the space's figures, under their
run-store keys (space key, method, seed, budget, code version), and on a per-layer space the scores
of every genome they evaluated, under the space's score key. A later call loads the snapshot into
the caches before it starts (what the caches hold already wins): runs of unchanged code are not made
again, genomes are not scored again, and a space's figures can be recomputed from the repository
alone. A snapshot crosses a boundary: every run and row in it is checked (shape, types, ranges, the
space's keys) and one that fails is left out with a warning; a damaged file is skipped whole.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.core.atomic import atomic_write_bytes

FORMAT = 1


def snapshot_path(results: Path, space: str) -> Path:
    return results / "search_store" / f"{space}.json.gz"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def valid_run(key: str, run: Any) -> bool:
    """Whether ``run`` is a well-formed finished run of the job ``key`` names (the run store's key:
    ``[space key, method, seed, budget, code version]`` as JSON)."""
    try:
        parts = json.loads(key)
    except (TypeError, ValueError):
        return False
    if not (isinstance(parts, list) and len(parts) == 5 and isinstance(parts[0], str) and isinstance(parts[1], str)
            and all(isinstance(p, int) and not isinstance(p, bool) for p in parts[2:4]) and isinstance(parts[4], str)):
        return False
    _, method, seed, budget, _ = parts
    if not isinstance(run, dict) or [run.get(k) for k in ("method", "seed", "budget")] != [method, seed, budget]:
        return False
    order, after, calls = run.get("order"), run.get("distinct_after_call"), run.get("calls")
    return (isinstance(order, list) and len(order) <= budget
            and all(isinstance(g, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in g)
                    for g in order)
            and isinstance(calls, int) and isinstance(after, list) and len(after) == calls
            and all(isinstance(x, int) for x in after)
            and all(isinstance(run.get(k), (int, float)) and math.isfinite(run[k]) and run[k] >= 0
                    for k in ("seconds", "evaluation_seconds")))


def _valid_genome(text: Any, choices: Sequence[Sequence[Any]]) -> bool:
    if not isinstance(text, str):
        return False
    try:
        genome = json.loads(text)
    except ValueError:
        return False
    return (isinstance(genome, list) and len(genome) == len(choices)
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < len(c)
                    for x, c in zip(genome, choices)))


def _valid_score(row: Any, choices: Sequence[Sequence[Any]]) -> bool:
    """A per-layer space's score row: ``[genome as JSON, accuracy, mean cosine, weight bytes, seconds]``,
    or the FP32 row ``["fp32", accuracy, None, None, None]``."""
    from benchmarks.search_spaces import _valid_row

    if not (isinstance(row, list) and len(row) == 5):
        return False
    text, accuracy, cosine, size, seconds = row
    if text == "fp32":
        return (isinstance(accuracy, (int, float)) and math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0
                and cosine is None and size is None)
    return (_valid_genome(text, choices) and _valid_row((accuracy, cosine, size))
            and (seconds is None or (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0)))


def _orders(runs: Iterable[dict[str, Any]]) -> set[str]:
    return {json.dumps(list(g)) for run in runs for g in run["order"]}


def export(results: Path, space: str, table: Any, store: Any, keep: Callable[[str], bool]) -> Path:
    """Write ``space``'s snapshot: the well-formed runs in ``store`` whose key ``keep`` accepts (the
    space's runs of the checkout's code: this call's and any an earlier call left) and, on a per-layer
    space (one with a ``score_key``), the scores of every genome they evaluated and of FP32. Atomic;
    the same content gives the same bytes (sorted, gzip without a timestamp)."""
    runs = {k: run for k in store.stored_keys() if keep(k) and (run := store.get(k)) is not None}
    body: dict[str, Any] = {"format": FORMAT, "space": space, "runs": sorted(runs.items())}
    score_key = getattr(table, "score_key", None)
    if score_key is not None:
        wanted = _orders(runs.values()) | {"fp32"}
        rows = [list(r) for r in table.db.execute(
            "SELECT genome, accuracy, mean_cosine, weight_bytes, seconds FROM rows WHERE key = ?", (score_key,))
            if r[0] in wanted]
        for r in rows:  # the evaluation time is a note, not a score: milliseconds are plenty
            r[4] = None if r[4] is None else round(r[4], 3)
        body["score_key"], body["rows"] = score_key, sorted(rows, key=lambda r: r[0])
    path = snapshot_path(results, space)
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    atomic_write_bytes(path, gzip.compress(data, mtime=0))
    return path


def load(results: Path, space: str, table: Any, store: Any, runs: bool = True) -> tuple[int, int]:
    """Put ``space``'s snapshot into the run store (unless ``runs`` is False) and, on a per-layer space
    whose score key matches, into its score cache; what is there already is kept. Returns (runs, rows)
    added."""
    path = snapshot_path(results, space)
    if not path.is_file():
        return 0, 0
    try:
        body = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError, EOFError) as e:
        _warn(f"{path}: not a readable snapshot ({e}); it is ignored and rewritten after this call")
        return 0, 0
    if not (isinstance(body, dict) and body.get("format") == FORMAT and body.get("space") == space
            and isinstance(body.get("runs"), list)):
        _warn(f"{path}: not a format-{FORMAT} snapshot of {space}; it is ignored and rewritten after this call")
        return 0, 0
    added_runs = added_rows = 0
    bad_runs = bad_rows = 0
    if runs:
        for item in body["runs"]:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and valid_run(*item)
                    and json.loads(item[0])[0].startswith(f"{space}:")
                    and all(_valid_genome(json.dumps(g), table.choices) for g in item[1]["order"])):
                bad_runs += 1
                continue
            added_runs += store.add(item[0], item[1])
    score_key = getattr(table, "score_key", None)
    if score_key is not None and body.get("score_key") == score_key and isinstance(body.get("rows"), list):
        good = []
        for row in body["rows"]:
            if _valid_score(row, table.choices):
                good.append(row)
            else:
                bad_rows += 1
        before = table.db.total_changes
        table.db.execute("BEGIN")
        table.db.executemany("INSERT OR IGNORE INTO rows VALUES (?, ?, ?, ?, ?, NULL, ?)",
                             [(score_key, *row) for row in good])
        table.db.execute("COMMIT")
        added_rows = table.db.total_changes - before
    if bad_runs or bad_rows:
        _warn(f"{path}: left out {bad_runs} malformed run(s) and {bad_rows} malformed score row(s)")
    return added_runs, added_rows
