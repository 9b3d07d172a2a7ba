"""The shared vocabulary of the host side: what every other room speaks.

- ``model``: loading and checking an ONNX model, its inputs/outputs and quantizable layers
  (``LayerSpec``, ``ModelInfo``), the builtin workloads' paths.
- ``genome``: ``Gene`` and ``Genome`` (one gene per layer), their canonical form and hash.
- ``errors``: ``QaeError``, the root of every error qae raises on purpose, and its subclasses.
- ``atomic``: atomic file writes; ``paths``: where qae keeps its caches.

May import: the standard library, numpy, onnx, yaml and ``harness.builtin`` (by name, at run time).
Never imports another ``harness`` room, ``profiles`` or ``search``.
"""
