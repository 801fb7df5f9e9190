"""``python -m sklearn_musc``: the command line (see :mod:`sklearn_musc.cli`)."""

import sys

from .cli import main

sys.exit(main())
