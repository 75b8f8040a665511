"""``python -m fairfx``: the command line (see :mod:`fairfx.cli`)."""

import sys

from .cli import main

sys.exit(main())
