"""The service manager's notification protocol (sd_notify(3)), without libsystemd.

Why a module of its own: ``united run`` speaks it to systemd (``Type=notify``,
``WatchdogSec=``), and it is small enough to own: one datagram per message,
``KEY=VALUE`` lines, to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a
path, or ``@name`` for the abstract namespace). Without ``$NOTIFY_SOCKET``
every call does nothing. A message that cannot be sent is logged once and
dropped: the node never stops because its service manager went away.

``$WATCHDOG_USEC`` (set by ``WatchdogSec=``) asks for ``WATCHDOG=1`` at least
that often; :attr:`Notifier.watchdog_interval` is half of it, as sd_watchdog_enabled(3)
advises. ``$WATCHDOG_PID``, when set, names the process meant: another one
ignores it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify_address(value: str) -> str | None:
    """The socket address of a ``$NOTIFY_SOCKET`` value; ``None`` if unsupported."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # the abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock:... and relative paths: not for a node


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or ``None``."""
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


class Notifier:
    """Sends ``KEY=VALUE`` messages to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = notify_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%s is not a socket path or @name; not notifying", raw)
        self.watchdog_interval = (
            watchdog_interval(env, os.getpid()) if self.address is not None else None
        )
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; True if sent."""
        if self.address is None:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify the service manager (%s): %s", fields[0], exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
