"""Where qae keeps files of its own between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$QAE_CACHE_DIR``, else ``~/.cache/qae``: calibration ranges, the fitness cache, exported builtins."""
    root = os.environ.get("QAE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "qae"
