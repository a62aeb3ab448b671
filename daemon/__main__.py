"""``python -m daemon`` is ``florence-watch``."""

import sys

from daemon.cli import main

sys.exit(main())
