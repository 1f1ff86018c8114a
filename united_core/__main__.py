"""``python -m united_core``: the same as the ``united`` command."""

import sys

from united_core.cli import main

sys.exit(main())
