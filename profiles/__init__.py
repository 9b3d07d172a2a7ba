"""Hardware profiles (YAML, every number with its source) and the analytic cost model.

Public API: ``load_profile(name_or_path) -> Profile``, ``list_profiles()``, and in
``profiles.costmodel``: ``predict(layers, genome, profile, graph=None) -> Prediction``,
``predict_model(model, genome, profile)`` and ``CostTable`` for populations.
"""

from __future__ import annotations

from profiles.schema import Profile, list_profiles, load_profile

__all__ = ["Profile", "list_profiles", "load_profile"]
