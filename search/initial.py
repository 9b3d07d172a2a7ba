"""The initial population: uniform baselines, sensitivity-guided genomes, then random fill.

Order matters and is part of the contract: baselines first (in the caller's order), then
sensitivity-guided genomes (rung by rung, shallow to deep), then random genomes; duplicates are
dropped keeping the first. When the seeded genomes alone exceed the population size the list is
cut in that order, so baselines always make it in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from search.space import Genome, SearchSpace

#: Sensitivity probes (one evaluation per layer or group) may take at most this share of a run's
#: evaluation budget; beyond it a run starts from its uniform seeds instead (issue 17: on a small
#: budget the probes cost more than the guided genomes return).
PROBE_BUDGET_SHARE = 0.15


def probes_affordable(n_probes: int, budget: int | None) -> bool:
    """Whether ``n_probes`` probe evaluations fit ``PROBE_BUDGET_SHARE`` of ``budget`` (None: no limit)."""
    return budget is None or n_probes <= PROBE_BUDGET_SHARE * budget


def baseline_genomes(space: SearchSpace, baselines: Sequence[Any]) -> list[Genome]:
    """Uniform genomes for each baseline choice value; values the space cannot express are skipped."""
    out: list[Genome] = []
    for value in baselines:
        genome = space.uniform(value)
        if genome is not None:
            out.append(genome)
    return out


def sensitivity_genomes(
    space: SearchSpace,
    sensitivity: Sequence[float],
    ladder: Sequence[Any],
    depths: Sequence[float],
) -> list[Genome]:
    """Genomes that lower the precision of the least sensitive layers first.

    ``ladder`` lists choice values from the highest precision to the lowest (e.g. fp, w8a8, w4a8).
    The base is the uniform genome of ``ladder[0]``; for each lower rung and each depth fraction d
    the ceil(d * L) least sensitive layers (lowest score; ties by layer order) take that rung where
    it is allowed, and keep the base choice where it is not. Without a base genome, none.
    """
    if len(sensitivity) != space.n_layers:
        raise ValueError(f"{len(sensitivity)} sensitivity scores for {space.n_layers} layers")
    if len(ladder) < 2:
        return []
    base = space.uniform(ladder[0])
    if base is None:
        return []
    order = np.argsort(np.asarray(sensitivity, dtype=float), kind="stable").tolist()
    out: list[Genome] = []
    for rung in ladder[1:]:
        for depth in depths:
            count = min(space.n_layers, math.ceil(depth * space.n_layers))
            genome = list(base)
            for layer in order[:count]:
                index = space.index_of(layer, rung)
                if index is not None:
                    genome[layer] = index
            out.append(tuple(genome))
    return out


def initial_population(
    space: SearchSpace,
    rng: np.random.Generator,
    size: int,
    seeded: Sequence[Genome],
    max_random_attempts: int,
) -> list[Genome]:
    """``seeded`` (deduplicated, cut to ``size``) then random genomes until ``size`` or the space ends."""
    out: list[Genome] = []
    seen: set[Genome] = set()
    for genome in seeded:
        if genome not in seen and len(out) < size:
            seen.add(genome)
            out.append(genome)
    target = min(size, space.size)
    attempts = 0
    while len(out) < target and attempts < max_random_attempts:
        attempts += 1
        genome = space.random(rng)
        if genome not in seen:
            seen.add(genome)
            out.append(genome)
    return out
