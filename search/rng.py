"""JSON form of a numpy bit-generator state, exact for every JSON reader.

Integers become ``{"int": "<decimal>"}`` and arrays ``{"array": [...], "dtype": ...}`` so 128-bit
PCG64 words survive readers that parse numbers as doubles (SQLite's json_extract, JavaScript).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from search.errors import SearchError


def encode_rng_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """``bit_generator.state`` -> a JSON-able dict (see the module docstring)."""

    def encode(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return {"int": str(int(value))}
        if isinstance(value, np.ndarray):
            return {"array": [str(int(x)) for x in value.ravel()], "dtype": str(value.dtype)}
        return value

    return {str(k): encode(v) for k, v in state.items()}


def restore_rng(data: Mapping[str, Any]) -> np.random.Generator:
    """A Generator whose next draws equal those of the generator ``data`` was saved from."""

    def decode(value: Any) -> Any:
        if isinstance(value, Mapping) and set(value) == {"int"}:
            return int(value["int"])
        if isinstance(value, Mapping) and set(value) == {"array", "dtype"}:
            return np.array([int(x) for x in value["array"]], dtype=value["dtype"])
        if isinstance(value, Mapping):
            return {k: decode(v) for k, v in value.items()}
        return value

    state = decode(data)
    try:
        bit_generator = getattr(np.random, str(state["bit_generator"]))()
        bit_generator.state = state
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SearchError(f"engine state: the RNG state cannot be restored ({exc})") from None
    return np.random.Generator(bit_generator)
