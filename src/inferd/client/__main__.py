"""`python -m inferd.client ...` runs `inferd bench ...` (for environments without the `inferd` script)."""

import sys

from .bench import main

sys.exit(main())
