"""The one exception type the search engine raises on purpose.

``search`` may not import ``harness`` (it stays device- and runtime-free), so it cannot subclass
``harness.core.errors.QaeError``; the harness wraps a ``SearchError`` into its own ``InputError`` at the
boundary. Messages are one line naming the problem.
"""

from __future__ import annotations


class SearchError(ValueError):
    """A search space, configuration, stored state or tell() call is inconsistent."""
