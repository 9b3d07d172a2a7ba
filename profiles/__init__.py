"""Hardware profiles (YAML, every number with its source) and the analytic cost model.

Public API: ``load_profile(name_or_path) -> Profile``, ``list_profiles()``, ``kernels_of(profile)``
(the kernels a target runs: ``qdq`` plus its ``kernels:``) with ``kernel_options(profile, kernel)``
(the widths, block sizes and accuracy levels to offer), and in
``profiles.costmodel``: ``predict(layers, genome, profile, graph=None) -> Prediction``,
``predict_model(model, genome, profile)`` and ``CostTable`` for populations.
"""

from __future__ import annotations

from profiles.schema import Profile, kernel_options, kernels_of, list_profiles, load_profile

__all__ = ["Profile", "kernel_options", "kernels_of", "list_profiles", "load_profile"]
