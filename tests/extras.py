"""Optional extras in tests: skip without them outside CI, fail under CI (which installs them)."""

from __future__ import annotations


def require_litert() -> None:
    """Skip without the litert extra; under CI (which installs it with the dev extra) fail instead, so a
    missing install step is not hidden by a skip. Nothing is imported (litert-torch brings JAX)."""
    import importlib.util
    import os

    import pytest

    if all(importlib.util.find_spec(m) for m in ("ai_edge_quantizer", "ai_edge_litert", "litert_torch")):
        return
    if os.environ.get("CI"):
        raise ImportError("the litert extra is missing: pip install 'qae[litert]'")
    pytest.skip("the litert extra: pip install 'qae[litert]'", allow_module_level=True)
