"""Embedded default workloads that ship with qae, so a first run needs no model or data of its own.

Each workload is a folder next to this file holding ``model.onnx``, ``calib.npz``, ``eval.npz`` and
``meta.json``, plus the script that rebuilt it (``train_<name>.py``). ``builtin:digits-vit`` is the
folder ``digits_vit/``, produced by ``python -m harness.builtin.train_digits_vit``.
"""
