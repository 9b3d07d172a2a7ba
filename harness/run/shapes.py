"""The input shapes a predicting or measuring command uses, and where each comes from.

One source of truth for ``qae predict``, ``qae measure`` and ``qae search``: ``--input-shape``
wins, then the shapes of one inference of the data (calibration or evaluation set), then the
model's own fixed dimensions (or a builtin's declared ones). A symbolic dimension that none of
these fixes is a one-line error naming the input and the flags: never a silent 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.model import ModelInfo, load_model

#: The flags a user gives shapes with, for messages.
SHAPE_FLAGS = "--input-shape NAME=D1xD2x... or --data/--calib"
#: Where an input's shape came from.
SOURCES = ("flag", "data", "model", "builtin")


@dataclass
class Shaped:
    """A model inventoried at the shapes of one inference, and each input's shape and source."""

    model: ModelInfo
    sources: dict[str, str] = field(default_factory=dict)
    data: str | None = None

    def table(self) -> dict[str, dict[str, Any]]:
        """{input: {"shape": dims, "source": flag|data|model|builtin}} (JSON-able)."""
        out: dict[str, dict[str, Any]] = {}
        for spec in self.model.inputs:
            if spec.name in self.model.shapes_used:
                row: dict[str, Any] = {"shape": list(self.model.shapes_used[spec.name]),
                                       "source": self.sources.get(spec.name, "model")}
                if row["source"] == "data" and self.data:
                    row["data"] = self.data
                out[spec.name] = row
        return out

    def lines(self) -> list[str]:
        """One line per input: ``input x: 1x3x32x32 (from data calib.npz)``."""
        words = {"flag": "--input-shape", "model": "the model's fixed dimensions",
                 "builtin": "the builtin's declared shape", "data": f"data {self.data}" if self.data else "the data"}
        out = []
        for name, row in self.table().items():
            where = words[row["source"]]
            dims = "x".join(map(str, row["shape"])) or "scalar"
            out.append(f"input {name}: {dims} (from {where})")
        return out


def shape_sources(model: ModelInfo, flags: dict[str, list[int]], data_names: set[str] | frozenset[str] = frozenset()
                  ) -> dict[str, str]:
    """Where each known input shape of ``model`` came from, given the flag and data shapes applied."""
    out = {}
    for spec in model.inputs:
        if spec.name in flags:
            out[spec.name] = "flag"
        elif spec.name in data_names:
            out[spec.name] = "data"
        elif spec.rank_known and all(d is not None for d in spec.shape):
            out[spec.name] = "model"
        elif spec.name in model.shapes_used:
            out[spec.name] = "builtin"
    return out


def resolve_shapes(
    spec: str | Path,
    flags: dict[str, list[int]] | None = None,
    data: str | Path | None = None,
    options: Any = None,
    require: bool = True,
    require_layers: bool = True,
) -> Shaped:
    """Load ``spec`` at the shapes one inference runs at (see the module docstring).

    ``data`` (a builtin's shipped calibration set when none is given) is an .npz whose first
    inference sets the shapes ``flags`` leave open (``options``: a ``DataOptions`` saying which
    inputs are constant and where the sample axis is). ``require`` raises ``InputError`` when an
    input's shape is still unknown.
    """
    flags = dict(flags or {})
    model = load_model(spec, flags or None, require_layers=require_layers)
    if data is None and model.builtin and model.unresolved_inputs():
        from harness.core.model import builtin_data

        data = builtin_data(model.builtin, "calib")  # a builtin's shipped data, as its search uses
    data_names: set[str] = set()
    if data is not None:
        from harness.quant.data import load_dataset

        dataset = load_dataset(data, model, options)
        from_data = {k: v for k, v in dataset.inference_shapes().items() if k not in flags}
        if from_data:
            # The data's real first inference resolves what shape inference cannot; with a flag
            # overriding some input the feed would not match, so then shape inference alone.
            sample = dataset.first_feed() if not flags else None
            model = model.at_shapes(from_data, sample)
            fixed = {i.name for i in model.inputs if i.rank_known and None not in i.shape}
            data_names = set(from_data) - fixed
    if require:
        model.require_shapes(SHAPE_FLAGS)
    return Shaped(model, shape_sources(model, flags, data_names), None if data is None else str(data))
