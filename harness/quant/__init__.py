"""Quantization and evaluation on the host, with ONNX Runtime.

- ``data``: calibration and evaluation data sets (``.npz``), checked against the model's inputs.
- ``calibration``: activation ranges, computed once per (model, data, method) and cached.
- ``quantize``: a ``Genome`` -> a QDQ / dynamic / weight-only ONNX model (native or emulated widths).
- ``evaluate``: accuracy or agreement on evaluation data, exact and nominal bytes.
- ``workload``: ``Workload``, one model with its data sets: the unit the search and the CLI use.
- ``evalcache``: the fitness cache keyed by model, genome and evaluation settings.
- ``fakequant``: a genome's fake quantization in PyTorch, on the grids ``quantize`` writes (needs torch).
- ``finetune``: quantization-aware fine-tuning of one genome: the torch model, training data, the loop
  and its checkpoints (torch imported only inside; ``require_torch`` names the extra).
- ``tuned``: a fine-tuned candidate's files (trained float model, learned scales) built by ``quantize``.

May import: ``harness.core``, ``harness.builtin``. Never ``harness.devices``, ``harness.run``,
``harness.report``, ``harness.cli``, ``profiles`` or ``search``.
"""
