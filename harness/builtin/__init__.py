"""Embedded default workloads that ship with qae, so a first run needs no model or data of its own.

Each workload is a folder next to this file holding three disjoint, fixed data splits and a
``meta.json`` (what the workload is, its metric, split sizes under ``splits``):

- ``calib.npz``: calibration, sets the quantization ranges;
- ``eval.npz``: validation, what the search optimises (``harness.core.model.builtin_data(name, "eval")``);
- ``test.npz``: test, what is reported; the search never sees it.

``builtin:digits-vit`` is the folder ``digits_vit/`` (it also ships ``model.onnx``), produced by
``python -m harness.builtin.train_digits_vit`` (``--data-only`` rewrites the splits without
retraining; the splits themselves are ``harness.builtin.digits_data``). ``builtin:digits-cnn`` is
``digits_cnn/``, the same files on the same splits for a MobileNet-style CNN, produced by ``python -m
harness.builtin.train_digits_cnn``; both training scripts share ``harness.builtin.digits_train``.
``builtin:minilm-l6`` is ``minilm_l6/`` plus ``sentences.json`` (the text of each split), produced by
``python -m harness.builtin.make_minilm_data``; its model is exported on first use
(``harness.builtin.minilm``).
"""
