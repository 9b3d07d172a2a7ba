"""Every builtin ships three disjoint, fixed splits: calib, eval (validation) and test.

Checks the shipped files only (no model export): sizes against meta.json, disjointness by sentence
text for builtin:minilm-l6 (digits-vit's images are checked in test_builtin_digits_vit.py; digits-cnn
ships the very same files, test_builtin_digits_cnn.py), file modes, and ``builtin_data``'s kinds.
That test.npz runs through each model is checked beside each model: test_builtin_digits_vit.py,
test_builtin_digits_cnn.py and test_minilm.py.
"""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from harness.core.errors import InputError
from harness.core.model import BUILTIN_DATA_KINDS, BUILTIN_DIR, BUILTINS, builtin_data, builtin_meta

MINILM = BUILTIN_DIR / "minilm_l6"
TOKENS = ["attention_mask", "input_ids", "token_type_ids"]


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_split_ships_with_its_size_in_meta(name: str) -> None:
    sizes = builtin_meta(name)["splits"]
    assert BUILTIN_DATA_KINDS == ("calib", "eval", "test")
    for kind in BUILTIN_DATA_KINDS:
        path = builtin_data(name, kind)
        assert path.is_file(), path
        assert stat.S_IMODE(path.stat().st_mode) & 0o444 == 0o444, path  # package data: world-readable
        with np.load(path) as npz:
            assert {len(npz[k]) for k in npz.files} == {sizes[kind]}, (name, kind)
    assert sizes["test"] >= 200  # enough samples for a test interval worth reporting


def test_unknown_kind_is_one_line() -> None:
    with pytest.raises(InputError, match=r"unknown data split 'validation' of builtin:digits-vit: use one of calib"):
        builtin_data("digits-vit", "validation")


def test_minilm_splits_are_disjoint_sentences() -> None:
    sentences = json.loads((MINILM / "sentences.json").read_text())
    meta = builtin_meta("minilm-l6")
    texts = {kind: [s["text"] for s in sentences[kind]] for kind in BUILTIN_DATA_KINDS}
    assert {kind: len(t) for kind, t in texts.items()} == {"calib": 64, "eval": 400, "test": 400}
    assert {kind: len(t) for kind, t in texts.items()} == {k: meta["splits"][k] for k in BUILTIN_DATA_KINDS}
    every = [t.lower() for kind in BUILTIN_DATA_KINDS for t in texts[kind]]
    assert len(set(every)) == len(every)  # disjoint, and no duplicate inside a split (case-insensitive)


def test_minilm_test_tokens_are_its_sentences() -> None:
    """test.npz has the inputs and shape of the other splits, and one padded row per test sentence."""
    sentences = json.loads((MINILM / "sentences.json").read_text())
    with np.load(builtin_data("minilm-l6", "test")) as npz, np.load(builtin_data("minilm-l6", "eval")) as ev:
        assert sorted(npz.files) == sorted(ev.files) == TOKENS
        for k in TOKENS:
            assert npz[k].dtype == np.int64 and npz[k].shape == (len(sentences["test"]), 64)
        lengths = npz["attention_mask"].sum(axis=1)
        assert lengths.min() >= 3 and lengths.max() < 64  # [CLS] ... [SEP], nothing truncated
        # No test row is a validation or calibration row (distinct sentences tokenize differently).
        rows = {r.tobytes() for r in npz["input_ids"]}
        assert len(rows) == len(npz["input_ids"])
        assert not rows & {r.tobytes() for r in ev["input_ids"]}
    with np.load(builtin_data("minilm-l6", "calib")) as calib:
        assert not rows & {r.tobytes() for r in calib["input_ids"]}
