"""What the values of a run are, as front.json, report.html and the terminal say them: the accuracy
with its metric and unit (a fraction shown in %, an SQNR in dB, a user metric as a score), every
other value without an accuracy label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.run.archive import Candidate, Value
from harness.run.config import metric_unit

#: Accuracy metric -> what its axis and column say (a fraction is shown in %)
METRIC_LABELS = {
    "top1": "top-1 accuracy",
    "classification": "top-1 accuracy",
    "top1_agreement": "top-1 agreement with FP32",
    "agreement": "top-1 agreement with FP32",
    "retrieval_top1_agreement": "retrieval top-1 agreement with FP32",
    "embedding": "retrieval top-1 agreement with FP32",
    "sqnr": "SQNR vs FP32",
    "sqnr_db": "SQNR vs FP32",
    "cosine": "cosine with FP32",
    "neg_mse": "minus MSE to FP32",
    "neg_max_abs": "minus max |error| to FP32",
}


@dataclass(frozen=True)
class Accuracy:
    """How a run's accuracy values read: its metric, unit, and the scale they are shown at."""

    metric: str

    @property
    def unit(self) -> str:
        return metric_unit(self.metric)

    @property
    def scale(self) -> float:
        return 100.0 if self.unit == "fraction" else 1.0

    @property
    def label(self) -> str:
        name = METRIC_LABELS.get(self.metric, self.metric)
        unit = {"fraction": "%", "dB": "dB"}.get(self.unit, "score")
        return f"{name} ({unit})"

    def fmt(self, value: float) -> str:
        if self.unit in ("fraction", "dB"):
            return f"{value * self.scale:.2f}"
        return f"{value:.4g}"  # a score of any scale (a user's metric: -1e-4 must not read -0.00)

    def short(self, value: float) -> str:
        if self.unit in ("fraction", "dB"):
            return f"{value * self.scale:.1f}{' %' if self.unit == 'fraction' else ' ' + self.unit}"
        return f"{value:.4g} {self.unit}"


def run_accuracy(cands: list[Candidate]) -> Accuracy:
    """The metric of a run's accuracy values (every candidate is scored with the same one)."""
    for c in cands:
        v = c.values.get("accuracy")
        if v is not None and v.detail.get("metric"):
            return Accuracy(str(v.detail["metric"]))
    return Accuracy("top1")


def labelled(name: str, v: Value) -> dict[str, Any]:
    """A value as front.json shows it: only accuracy carries the accuracy metric; the others say
    what they are (archives written before this rule labelled size and mean_cosine with it too). An
    accuracy value is the validation score the search chose on (the test score is reported apart)."""
    d = {**v.to_dict(), "device_or_profile": v.detail.get("device") or v.detail.get("profile")}
    if name == "accuracy":
        d.setdefault("unit", metric_unit(d.get("metric")))
        d.setdefault("split", "validation")
    elif name == "mean_cosine":
        d.update(metric="mean_cosine", unit="fraction")
    elif name == "sqnr":
        d.update(metric="sqnr", unit="dB")
    else:
        d.pop("metric", None)
    return d
