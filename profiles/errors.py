"""The one exception type ``profiles`` raises on purpose.

``profiles`` imports nothing of ``harness`` (the cost model is usable and testable on its own), so it
cannot subclass ``harness.core.errors.QaeError``; the CLI reports a ``ProfileError`` like any
``QaeError``: one line naming the problem and the fix, exit code 2.
"""

from __future__ import annotations


class ProfileError(ValueError):
    """A profile file, a profile's numbers or a calibration's inputs are wrong; the message says how."""

    exit_code: int = 2
