"""The ``qae`` command line: one module per command group, ``main`` dispatches, ``common`` holds
the argparse set-up several groups share. Nothing imports the CLI.

May import every other room of ``harness``, ``profiles`` and ``search``.
"""
