"""Fault scenarios of the files and data qae reads (issue 13): damaged caches, a NaN profile, hostile
genomes, NaN data and labels out of range, each through the real CLI (``python -m harness.cli``) in
a subprocess on builtin:digits-vit. Run by ``python -m benchmarks.bench_faults``.

Every scenario is ``fn(workdir) -> {"outcome", "detail", "archive", "lost", "duplicated", "orphans"}``
with outcome ``survived`` (a damaged cache was moved aside or recomputed with one warning, and the
run gave the same front as with a good cache), ``clean error`` (exit 2, one ``qae: error:`` line
naming the problem, nothing half written, fast) or ``FAILED``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "harness" / "builtin" / "digits_vit"
PROFILE = "host-cpu"
SEARCH = ["--profile", PROFILE, "--generations", "2", "--population", "6", "--seed", "3"]
#: A hostile genome must be refused in well under this many seconds, process start included.
GENOME_SECONDS = 10.0


def _env(work: Path) -> dict[str, str]:
    # A cache of the scenario's own, so damaging it touches nothing else.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "QAE_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(ROOT)}


def _qae(work: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=_env(work))
    return proc, time.perf_counter() - start


def _search(work: Path, out: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    return _qae(work, "search", "builtin:digits-vit", *SEARCH, "--out", str(work / out), *extra)


def _front(run: Path) -> list[tuple[str, float]]:
    points = json.loads((run / "front.json").read_text())["targets"][PROFILE]["points"]
    return sorted((str(p["id"]), round(float(p["objectives"]["accuracy"]["value"]), 6)) for p in points)


def _row(outcome: str, detail: str, run: Path | None, lost: bool = False) -> dict[str, Any]:
    archive, dup = common.archive_holds(run / "archive.sqlite") if run is not None else ("-", False)
    return {"outcome": outcome, "detail": detail, "archive": archive, "lost": lost, "duplicated": dup,
            "orphans": 0}


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()]


def _clean_error(proc: subprocess.CompletedProcess[str], needle: str) -> tuple[bool, str]:
    """Exit 2, no traceback, the last stderr line is one ``qae: error:`` naming ``needle``."""
    err = proc.stderr
    last = _lines(err)[-1] if _lines(err) else ""
    ok = proc.returncode == 2 and "Traceback" not in err and last.startswith("qae: error: ") and needle in last
    return ok, last[:200] if last else f"exit {proc.returncode}, no stderr"


# -- damaged caches: the run survives, with one warning, and finds the same front ----------------------
def _survives_damaged_cache(work: Path, damage: Callable[[Path], None], warning: str) -> dict[str, Any]:
    first, _ = _search(work, "good")
    if first.returncode != 0:
        return _row("FAILED", f"the baseline search failed: {_lines(first.stderr)[-1:]}", work / "good")
    damage(work / "cache")
    again, _ = _search(work, "damaged")
    run = work / "damaged"
    warnings = [line for line in _lines(again.stderr) if line.startswith("qae: warning:")]
    if again.returncode != 0 or "Traceback" in again.stderr:
        return _row("FAILED", f"exit {again.returncode}: {(_lines(again.stderr) or ['?'])[-1][:160]}", run)
    if not any(warning in w for w in warnings):
        return _row("FAILED", f"no warning saying {warning!r} (stderr: {warnings[:2]})", run)
    same = _front(work / "good") == _front(run)
    detail = f"{warnings[0][:150]}; front {'identical' if same else 'DIFFERENT'} to the good cache's"
    return _row("survived" if same else "FAILED", detail, run, lost=not same)


def corrupt_fitness_cache(work: Path) -> dict[str, Any]:
    def damage(cache: Path) -> None:
        for extra in ("evals.sqlite-wal", "evals.sqlite-shm"):
            (cache / extra).unlink(missing_ok=True)
        (cache / "evals.sqlite").write_bytes(b"\x00garbage: not a database\n" * 4096)

    row = _survives_damaged_cache(work, damage, "moved aside")
    if row["outcome"] == "survived" and not (work / "cache" / "evals.sqlite.corrupt").is_file():
        row.update(outcome="FAILED", detail="no evals.sqlite.corrupt kept")
    return row


def _damage_calibration(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def damage(cache: Path) -> None:
        for path in (cache / "calib").glob("*.json"):
            body = json.loads(path.read_text())
            edited = edit(body)
            path.write_text(edited if isinstance(edited, str) else json.dumps(body))

    return damage


def _first_tensor(body: dict[str, Any]) -> str:
    return sorted(k for k in body["ranges"] if k != "pixels")[0]


def calib_cache_nan(work: Path) -> dict[str, Any]:
    return _survives_damaged_cache(
        work, _damage_calibration(lambda b: b["ranges"].update({_first_tensor(b): [float("nan"), 1.0]})), "recomputed"
    )


def calib_cache_swapped(work: Path) -> dict[str, Any]:
    def swap(body: dict[str, Any]) -> None:
        body["ranges"] = {k: [hi, lo] for k, (lo, hi) in body["ranges"].items()}

    return _survives_damaged_cache(work, _damage_calibration(swap), "recomputed")


def calib_cache_wrong_shape(work: Path) -> dict[str, Any]:
    return _survives_damaged_cache(
        work, _damage_calibration(lambda b: b["ranges"].update({_first_tensor(b): 3.5})), "recomputed"
    )


def calib_cache_huge(work: Path) -> dict[str, Any]:
    return _survives_damaged_cache(
        work, _damage_calibration(lambda b: b["ranges"].update({"pixels": [-1e6, 1e6]})), "recomputed"
    )


def calib_cache_truncated(work: Path) -> dict[str, Any]:
    return _survives_damaged_cache(work, _damage_calibration(lambda b: json.dumps(b)[:40]), "recomputed")


# -- a profile holding NaN -----------------------------------------------------------------------------
def nan_profile(work: Path) -> dict[str, Any]:
    import re

    text = (ROOT / "profiles" / f"{PROFILE}.yaml").read_text()
    # the int8 throughput, as a user's typo or a broken fit would write it
    text, count = re.subn(r"(\n  int8: \{value: )[^,]+", r"\g<1>.nan", text, count=1)
    if not count:
        return _row("FAILED", "scenario cannot find throughput_gmacs.int8 in the profile", None)
    path = work / "nan-profile.yaml"
    path.write_text(text)
    proc, took = _qae(work, "search", "builtin:digits-vit", "--profile", str(path), "--generations", "1",
                      "--population", "4", "--out", str(work / "run"))
    ok, line = _clean_error(proc, "must be a finite number")
    run = work / "run"
    return _row("clean error" if ok else "FAILED", f"{line} ({took:.1f} s)", run if run.exists() else None)


# -- hostile genomes -------------------------------------------------------------------------------------
def _genome_scenario(work: Path, write: Callable[[Path], object], needle: str) -> dict[str, Any]:
    genome = work / "genome.yaml"
    write(genome)
    out = work / "q.onnx"
    proc, took = _qae(work, "quantize", "builtin:digits-vit", "--genome", str(genome), "-o", str(out))
    ok, line = _clean_error(proc, needle)
    if ok and took > GENOME_SECONDS:
        ok, line = False, f"took {took:.1f} s: {line}"
    if out.exists():
        ok, line = False, f"wrote {out.name} anyway: {line}"
    return _row("clean error" if ok else "FAILED", f"{line} ({took:.1f} s)", None)


def genome_non_utf8(work: Path) -> dict[str, Any]:
    return _genome_scenario(work, lambda p: p.write_bytes(b"default:\n  weight_bits: \xff\xfe8\n"), "not UTF-8")


def genome_deep(work: Path) -> dict[str, Any]:
    depth = 100_000
    return _genome_scenario(work, lambda p: p.write_text("layers: " + "[" * depth + "]" * depth + "\n"),
                            "nested more than")


def genome_huge(work: Path) -> dict[str, Any]:
    def write(path: Path) -> None:
        line = b"  blocks.0.attn.q: {weight_bits: 4, activation_bits: 8, scheme: symmetric}\n"
        with path.open("wb") as fh:
            fh.write(b"layers:\n")
            fh.write(line * (54_000_000 // len(line)))

    return _genome_scenario(work, write, "over the")


# -- data --------------------------------------------------------------------------------------------------
def _digits(kind: str) -> dict[str, np.ndarray]:
    with np.load(BUILTIN / f"{kind}.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _data_scenario(work: Path, option: str, arrays: dict[str, np.ndarray], needle: str) -> dict[str, Any]:
    path = work / "data.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    proc, took = _search(work, "run", option, str(path))
    ok, line = _clean_error(proc, needle)
    cached = list((work / "cache" / "calib").glob("*.json")) if option == "--calib" else []
    if cached:
        ok, line = False, f"cached {len(cached)} calibration file(s) of this data: {line}"
    run = work / "run"
    held = common.archive_holds(run / "archive.sqlite")[0]
    if not held.startswith(("0 candidates", "no archive")):
        ok, line = False, f"candidates were evaluated on it ({held}): {line}"
    return _row("clean error" if ok else "FAILED", f"{line} ({took:.1f} s)", run if run.exists() else None)


def all_nan_calibration(work: Path) -> dict[str, Any]:
    arrays = _digits("calib")
    return _data_scenario(work, "--calib", {**arrays, "pixels": np.full_like(arrays["pixels"], np.nan)},
                          "only NaN or Inf")


def all_nan_evaluation(work: Path) -> dict[str, Any]:
    arrays = _digits("eval")
    return _data_scenario(work, "--data", {**arrays, "pixels": np.full_like(arrays["pixels"], np.nan)},
                          "only NaN or Inf")


def labels_out_of_range(work: Path) -> dict[str, Any]:
    arrays = _digits("eval")
    labels = arrays["labels"].copy()
    labels[5] = 57
    return _data_scenario(work, "--data", {**arrays, "labels": labels}, "largest label is 57")


SCENARIOS: list[tuple[str, Callable[[Path], dict[str, Any]]]] = [
    ("corrupt fitness cache", corrupt_fitness_cache),
    ("calibration cache: NaN range", calib_cache_nan),
    ("calibration cache: swapped lo/hi", calib_cache_swapped),
    ("calibration cache: wrong shape", calib_cache_wrong_shape),
    ("calibration cache: absurd input range", calib_cache_huge),
    ("calibration cache: truncated JSON", calib_cache_truncated),
    ("profile with .nan throughput", nan_profile),
    ("genome: non-UTF-8 bytes", genome_non_utf8),
    ("genome: nested 100,000 deep", genome_deep),
    ("genome: 54 MB", genome_huge),
    ("data: all-NaN calibration", all_nan_calibration),
    ("data: all-NaN evaluation", all_nan_evaluation),
    ("data: labels out of range", labels_out_of_range),
]
