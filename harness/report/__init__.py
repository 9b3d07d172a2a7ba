"""What a run shows: the HTML report (interactive, one file that opens offline), its PNG plots,
front.json, the Markdown summary, and the live page served on 127.0.0.1 while a search runs.

May import: ``harness.core`` and ``harness.run`` (it reads the archive). Never ``harness.cli``.
"""
