"""``united run``: run a node in the foreground until SIGINT, SIGTERM or ``ctl stop``.

Why a module of its own: it is the only sub-command that starts a node, and
the one that maps start-up failures (key, port, runtime) to exit statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from ..api import CLIError
from ..identity import IdentityError
from .common import EXIT_CONFIG, EXIT_OK, log, setup_logging


def cmd_run(args: argparse.Namespace) -> int:
    from ..control import ControlSocketBusy
    from ..node import Node, P2PRuntimeDied, load_settings

    settings, pm, warnings = load_settings(Path(args.config))
    setup_logging(settings["node"].log_level)
    for warning in warnings:
        log.warning("%s", warning)

    async def main() -> None:
        node = Node(settings, pm)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.request_stop)
        await node.run()

    try:
        asyncio.run(main())
    except Exception as exc:
        cause = leaf(exc)
        if isinstance(cause, IdentityError):
            raise CLIError(str(cause), EXIT_CONFIG) from None
        if isinstance(cause, OSError | ControlSocketBusy):
            raise CLIError(f"cannot start: {cause}") from None
        if isinstance(cause, P2PRuntimeDied):
            raise CLIError(str(cause)) from None
        raise
    return EXIT_OK


def leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
