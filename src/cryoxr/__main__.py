"""``python -m cryoxr`` runs the ``cryoxr`` command."""

import sys

from cryoxr.cli import main

sys.exit(main())
