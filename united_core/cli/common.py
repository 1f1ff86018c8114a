"""What every ``united`` sub-command shares: exit statuses, roles, logging set-up.

Why a module of its own: the sub-command modules import it and not one another.
"""

from __future__ import annotations

import logging
import sys

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
ROLES = ("server", "client")

log = logging.getLogger("united")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "debug":
        # py-libp2p logs routine dial and handshake failures as warnings.
        logging.getLogger("libp2p").setLevel(logging.ERROR)
