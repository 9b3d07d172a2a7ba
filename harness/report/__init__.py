"""What a run shows: the HTML report, its plots, front.json.

May import: ``harness.core`` and ``harness.run`` (it reads the archive). Never ``harness.cli``.
"""
