"""Build the peers' virtual environments from the pyproject extras (``make peers-venvs``).

    python -m benchmarks.peers_venvs [--only peers,peers-aimet,peers-inc] [--dry-run]

The peers cannot share one environment (their pins clash, see pyproject.toml and PEERS.md), and none
may share qae's: each extra goes into a venv of its own beside ``.venv`` (``.venv-peers``,
``.venv-peers-aimet``, ``.venv-peers-inc``), where ``bench_peers.peer_python`` finds it. qae itself is
not installed there: ``peers_run.py`` imports only numpy, onnx, onnxruntime and the peer.

Every install is constrained to the onnx and onnxruntime that qae's own venv runs (a peer's model is
made and checked with the same runtime qae measures it with) and to torch 2.13.0, the CPU build this
machine kind keeps on disk; any other torch would download gigabytes. A venv whose stamp (the
requirement list and constraints it was built from) matches is left as it is; a failed install
leaves no stamp, so the next run tries again, and bench_peers reports that peer as missing with its
import error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
#: extra -> the venv it goes into (``bench_peers.PEERS`` names the same folders)
VENVS = {"peers": ".venv-peers", "peers-aimet": ".venv-peers-aimet", "peers-inc": ".venv-peers-inc"}
STAMP = ".qae-peers-installed"


def constraints() -> list[str]:
    """The versions every peer venv is held to: qae's onnx and onnxruntime, and the on-disk torch."""
    return [f"onnx=={version('onnx')}", f"onnxruntime=={version('onnxruntime')}", "torch==2.13.0"]


def requirements(extra: str) -> list[str]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    if extra not in extras:
        raise SystemExit(f"pyproject.toml has no extra {extra!r}: use one of {', '.join(VENVS)}")
    return [str(r) for r in extras[extra]]


def build(extra: str, dry_run: bool = False) -> str:
    """Create or update the venv of ``extra``; one line saying what happened."""
    venv = ROOT / VENVS[extra]
    reqs, cons = requirements(extra), constraints()
    want = hashlib.sha256(json.dumps([reqs, cons]).encode()).hexdigest()
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text().strip() == want:
        return f"{VENVS[extra]}: up to date ({', '.join(reqs)})"
    if dry_run:
        return f"{VENVS[extra]}: would install {', '.join(reqs)} with {', '.join(cons)}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cfile = venv / "constraints.txt"
    cfile.write_text("\n".join(cons) + "\n")
    # onnx and onnxruntime named too: a peer that does not depend on them still needs them to run
    cmd = [str(python), "-m", "pip", "install", "-q", "-c", str(cfile), *reqs,
           f"onnx=={version('onnx')}", f"onnxruntime=={version('onnxruntime')}"]
    print(f"{VENVS[extra]}: pip install {' '.join(reqs)} (constraints: {', '.join(cons)})", flush=True)
    done = subprocess.run(cmd)
    if done.returncode != 0:
        stamp.unlink(missing_ok=True)
        return f"{VENVS[extra]}: pip failed (exit {done.returncode}); bench_peers will report its peers as missing"
    stamp.write_text(want + "\n")
    return f"{VENVS[extra]}: installed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers_venvs", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(VENVS), help="comma-separated extras (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="say what would be installed")
    args = ap.parse_args(argv)
    extras = [e.strip() for e in args.only.split(",") if e.strip()]
    for extra in extras:
        if extra not in VENVS:
            ap.error(f"unknown extra {extra!r}: use any of {', '.join(VENVS)}")
    lines = [build(extra, args.dry_run) for extra in extras]
    print("\n".join(lines))
    return 0  # a peer that did not install is a result of the benchmark, not a failure of the set-up


if __name__ == "__main__":
    raise SystemExit(main())
