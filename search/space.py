"""The search space: which choices each layer allows, and genomes as tuples of choice indices.

A genome is ``tuple[int, ...]`` with one index per layer into that layer's list of allowed choices.
Choices are opaque to the engine (in practice a gene such as ``(weight_bits, activation_bits,
scheme, granularity)`` or a ``harness.core.genome.Gene``); the engine compares them only with ``==``
and never looks inside. Keeping genomes as small integer tuples makes them hashable, cheap to
copy and trivially JSON-serialisable, which is what resume needs.

A ``SearchSpace`` is immutable after construction. Its ``fingerprint`` is stable across processes
and Python versions for JSON-able choices (other choices are fingerprinted by ``repr``), so a
stored run can check that it is being resumed against the same space.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.errors import SearchError

Genome = tuple[int, ...]
#: Distance between two choice values; used to fall back to the nearest allowed choice.
ChoiceDistance = Callable[[Any, Any], float]


@dataclass(frozen=True)
class PerLayer:
    """A baseline value per layer, where one uniform value would not say it: e.g. ONNX Runtime's
    dynamic int8, whose matmuls and embedding tables are quantized differently. ``uniform`` takes it
    like a single value (layers lacking their value fall back to the nearest choice)."""

    values: tuple[Any, ...]


def _canonical_json(value: Any) -> str:
    # sort_keys + fixed separators: the same value gives the same bytes in every process.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def genome_key(genome: Sequence[int]) -> str:
    """Canonical key of a genome: sha256 hex of its JSON index list. Stable across processes."""
    return hashlib.sha256(_canonical_json([int(g) for g in genome]).encode()).hexdigest()


class SearchSpace:
    """Per-layer allowed choices and the genome helpers that depend only on them.

    ``choices[i]`` lists the values layer ``layer_names[i]`` may take, in a fixed order (the order
    defines the genome indices, so it must not change between a run and its resume). Every layer
    needs at least one choice. ``distance`` (optional) lets ``uniform`` fall back to the nearest
    allowed choice on layers that lack the requested value.
    """

    def __init__(
        self,
        layer_names: Sequence[str],
        choices: Sequence[Sequence[Any]],
        distance: ChoiceDistance | None = None,
    ) -> None:
        if len(layer_names) != len(choices):
            raise SearchError(f"search space: {len(layer_names)} layer names but {len(choices)} choice lists")
        if not layer_names:
            raise SearchError("search space: no layers to search over")
        if len(set(layer_names)) != len(layer_names):
            raise SearchError("search space: layer names must be unique")
        for name, options in zip(layer_names, choices):
            if len(options) == 0:
                raise SearchError(f"search space: layer {name!r} allows no choice")
        self.layer_names: tuple[str, ...] = tuple(layer_names)
        self.choices: tuple[tuple[Any, ...], ...] = tuple(tuple(c) for c in choices)
        self.distance = distance
        self.sizes: np.ndarray = np.array([len(c) for c in self.choices], dtype=np.int64)

    # -- shape ------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    def size(self) -> int:
        """Number of distinct genomes (a Python int: it overflows any fixed-width type quickly)."""
        total = 1
        for n in self.sizes.tolist():
            total *= int(n)
        return total

    @property
    def fingerprint(self) -> str:
        """sha256 of the layer names and choice lists: equal iff genomes mean the same thing."""
        payload = _canonical_json({"layers": list(self.layer_names), "choices": [list(c) for c in self.choices]})
        return hashlib.sha256(payload.encode()).hexdigest()

    # -- genome helpers ---------------------------------------------------------------------------
    def index_of(self, layer: int, value: Any) -> int | None:
        """Index of ``value`` among layer ``layer``'s choices, or None when not allowed there."""
        for i, option in enumerate(self.choices[layer]):
            if option == value:
                return i
        return None

    def uniform(self, value: Any) -> Genome | None:
        """The genome that gives every layer ``value`` (or, for a ``PerLayer``, each layer its own).

        Layers that do not allow ``value`` take the nearest allowed choice under ``distance``
        (ties go to the lower index); without a ``distance`` the uniform genome does not exist
        and None is returned, so callers skip that baseline.
        """
        if isinstance(value, PerLayer) and len(value.values) != self.n_layers:
            raise SearchError(f"search space: a per-layer baseline has {len(value.values)} values for "
                              f"{self.n_layers} layers")
        genome: list[int] = []
        for layer in range(self.n_layers):
            wanted = value.values[layer] if isinstance(value, PerLayer) else value
            index = self.index_of(layer, wanted)
            if index is None:
                if self.distance is None:
                    return None
                dist = self.distance
                index = min(range(len(self.choices[layer])), key=lambda i: (dist(wanted, self.choices[layer][i]), i))
            genome.append(index)
        return tuple(genome)

    def random(self, rng: np.random.Generator) -> Genome:
        """A uniformly random genome; draws exactly one vector from ``rng``."""
        return tuple(int(g) for g in rng.integers(0, self.sizes))

    def is_valid(self, genome: Sequence[int]) -> bool:
        """True when ``genome`` has one integer index per layer, each in range."""
        if len(genome) != self.n_layers:
            return False
        for g, n in zip(genome, self.sizes.tolist()):
            if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or not 0 <= g < n:
                return False
        return True

    def clip(self, genome: Sequence[int]) -> Genome:
        """Bring each index into its layer's range (pads/truncates to the layer count)."""
        values = [int(g) for g in genome][: self.n_layers]
        values += [0] * (self.n_layers - len(values))
        return tuple(int(min(max(g, 0), n - 1)) for g, n in zip(values, self.sizes.tolist()))

    def decode(self, genome: Sequence[int]) -> dict[str, Any]:
        """Layer name -> choice value, for the harness to build the candidate."""
        if not self.is_valid(genome):
            raise SearchError(f"genome {tuple(genome)!r} is not valid in this search space")
        return {name: self.choices[i][g] for i, (name, g) in enumerate(zip(self.layer_names, genome))}

    def encode(self, values: Sequence[Any]) -> Genome:
        """Choice values in layer order -> genome; every value must be allowed on its layer."""
        if len(values) != self.n_layers:
            raise SearchError(f"encode: {len(values)} values for {self.n_layers} layers")
        genome = []
        for layer, value in enumerate(values):
            index = self.index_of(layer, value)
            if index is None:
                raise SearchError(f"encode: {value!r} is not allowed on layer {self.layer_names[layer]!r}")
            genome.append(index)
        return tuple(genome)
