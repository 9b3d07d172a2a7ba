"""The evolution engine: genomes as integer vectors, operators, NSGA-II survival, ask/tell.

Never imports ONNX Runtime, paramiko or anything of a device.
"""

from __future__ import annotations

from search.engine import Engine, EngineConfig
from search.errors import SearchError
from search.evaluation import Evaluation, Record
from search.initial import PROBE_BUDGET_SHARE, probes_affordable
from search.metrics import hypervolume, normalise, normalised_hypervolume, recommend, weighted_fitness
from search.nsga2 import budget_violation
from search.operators import (
    AdaptiveMutation,
    ClipRepair,
    Crossover,
    FixedMutation,
    FunctionRepair,
    Mutation,
    NPointCrossover,
    Ranked,
    Repair,
    Selection,
    TournamentSelection,
    UniformCrossover,
)
from search.space import Genome, SearchSpace, genome_key
from search.surrogate import Screening, SurrogateScreening

__all__ = [
    "PROBE_BUDGET_SHARE",
    "AdaptiveMutation",
    "ClipRepair",
    "Crossover",
    "Engine",
    "EngineConfig",
    "Evaluation",
    "FixedMutation",
    "FunctionRepair",
    "Genome",
    "Mutation",
    "NPointCrossover",
    "Ranked",
    "Record",
    "Repair",
    "Screening",
    "SearchError",
    "SearchSpace",
    "Selection",
    "SurrogateScreening",
    "TournamentSelection",
    "UniformCrossover",
    "budget_violation",
    "genome_key",
    "hypervolume",
    "normalise",
    "normalised_hypervolume",
    "probes_affordable",
    "recommend",
    "weighted_fitness",
]
