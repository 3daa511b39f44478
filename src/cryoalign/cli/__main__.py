"""`python -m cryoalign.cli` (as `python -m cryoalign`, but leaving through sys.exit)."""

import sys

from . import main

sys.exit(main())
