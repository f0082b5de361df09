"""``python -m artbank_pl`` is the ``artbank`` command."""

import sys

from artbank_pl.cli import main

sys.exit(main())
