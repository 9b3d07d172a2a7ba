"""The one root exception type of qae and its few subclasses.

Every error a user can cause (bad file, bad genome, data that does not fit the model) is a
``QaeError`` whose message is one line naming the problem and the fix. The CLI prints it without a
traceback and exits with ``exit_code``. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class QaeError(Exception):
    """Root of every error qae raises on purpose; ``str(err)`` is the one-line message."""

    exit_code: int = 2


class InputError(QaeError):
    """The user's input (model, data, genome, profile, config) is wrong; the message says how."""


class ModelError(InputError):
    """The model file cannot be read, checked or quantized as asked."""


class DataError(InputError):
    """A calibration or evaluation data set does not fit the model."""


class GenomeError(InputError):
    """A genome names an unknown layer or an unsupported value."""


class SearchFailedError(QaeError):
    """A search finished (archive and report written) but most candidates of a target failed to
    build or evaluate: its front says little, so the run is reported as failed."""

    exit_code = 3


class RunInUseError(QaeError):
    """Another qae process holds the run folder's lock (a search still going, or a resume of it)."""


class RunChangedError(QaeError):
    """A resumed run's inputs (model, data, profiles) are not the files the run was started with."""


class ArchiveWriteError(QaeError):
    """Writing the run folder failed at the OS level (disk full, file too large, I/O error)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the CLI prints how to resume and exits 128 + the signal number.

    A ``KeyboardInterrupt`` so that every ``finally`` and ``except KeyboardInterrupt`` treat both alike."""

    def __init__(self, exit_code: int = 130, run: str | None = None) -> None:
        super().__init__()
        self.exit_code = exit_code
        self.run = run


class ClusterLostError(QaeError):
    """The cluster a search evaluates on (``--cluster``) lost every worker, or its scheduler: the
    archive holds every candidate recorded so far and ``qae search --resume RUN`` continues."""
