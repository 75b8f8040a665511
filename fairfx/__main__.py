"""``python -m fairfx``: the command line (see :mod:`fairfx.apps.cli`)."""

import sys

from .apps.cli import main

sys.exit(main())
