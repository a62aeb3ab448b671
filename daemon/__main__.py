"""``python -m daemon`` is ``florence-watch``."""

import sys

from .cli import main

sys.exit(main())
