"""Run the gnrdaemon command line: ``python -m gnr_daemon ...``."""

import sys

from .cli import main

sys.exit(main())
