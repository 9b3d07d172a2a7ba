"""``python -m harness.cli``: the same as the ``qae`` command."""

import sys

from harness.cli.main import main

sys.exit(main())
