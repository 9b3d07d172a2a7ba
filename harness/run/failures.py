"""How many candidates of a target failed, and why: the summary a search prints per target and at
the end, derived from the archive (never stored), so ``qae report`` and a resumed run agree.

A failed candidate is one the host could not build or evaluate: it has an error record and no
objective value. Device measurement failures are not counted here (the candidate still has host
values and predictions); the report lists them with the device events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from harness.run.archive import Archive


@dataclass(frozen=True)
class FailureSummary:
    target: str
    candidates: int
    failed: int
    #: the most common error among the failed candidates: its kind, first line and count
    kind: str | None = None
    first_line: str | None = None
    count: int = 0

    @property
    def mostly_failed(self) -> bool:
        """More than half of the target's candidates failed: its front says little."""
        return self.candidates > 0 and 2 * self.failed > self.candidates

    def line(self) -> str:
        """One line for the terminal (no markup)."""
        if not self.failed:
            return f"{self.target}: all {self.candidates} candidates evaluated"
        common = f"; most common ({self.count}x): {self.kind}: {self.first_line}" if self.kind else ""
        return f"{self.target}: {self.failed} of {self.candidates} candidates failed{common}"


def first_line(message: str, limit: int = 200) -> str:
    lines = [s.strip() for s in message.strip().splitlines() if s.strip()]
    text = lines[0] if lines else "(no message)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_summary(archive: Archive, target: str) -> FailureSummary:
    cands = archive.candidates(target)
    failed = {c.hash for c in cands if not c.values}
    if not failed:
        return FailureSummary(target, len(cands), 0)
    reasons: Counter[tuple[str, str]] = Counter()
    for err in archive.errors(target):
        if err["hash"] in failed:
            reasons[(err["error_kind"], first_line(err["message"]))] += 1
    if not reasons:
        return FailureSummary(target, len(cands), len(failed))
    (kind, line), count = reasons.most_common(1)[0]
    return FailureSummary(target, len(cands), len(failed), kind, line, count)


def failure_summaries(archive: Archive) -> list[FailureSummary]:
    return [failure_summary(archive, target) for target in archive.targets()]
