"""The server's NAT-observation tokens (plain data; the sockets are in :mod:`.service`).

A token goes to a member only inside an AutoNAT ``result``, over its
authenticated libp2p connection; it is good for :data:`TOKEN_USES`
observations within :data:`TOKEN_TTL` seconds. The reflector ports answer a
connection only when its line is a live token: nobody but a member learns
anything from them, and a member at most twice per probe.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from ..wire import OBSERVE_TOKEN_CHARS

TOKEN_TTL = 30.0  # seconds a token stays valid
TOKEN_USES = 2  # one observation per reflector port
MAX_TOKENS = 4096  # live tokens at most (probes are rate-limited per member anyway)


class Tokens:
    """Live tokens: issued by :meth:`issue`, spent by :meth:`redeem` (trio thread only)."""

    def __init__(
        self,
        ttl: float = TOKEN_TTL,
        uses: int = TOKEN_USES,
        limit: int = MAX_TOKENS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.uses, self.limit, self.clock = ttl, uses, limit, clock
        self._live: dict[str, tuple[float, int]] = {}  # token -> (expires, uses left); oldest first

    def __len__(self) -> int:
        return len(self._live)

    def issue(self) -> str:
        now = self.clock()
        for token in [t for t, (expires, _) in self._live.items() if expires <= now]:
            del self._live[token]
        while len(self._live) >= self.limit:  # the oldest goes first
            del self._live[next(iter(self._live))]
        token = secrets.token_hex(OBSERVE_TOKEN_CHARS // 2)
        self._live[token] = (now + self.ttl, self.uses)
        return token

    def redeem(self, token: str) -> bool:
        """Whether ``token`` is live; if so, one of its uses is spent."""
        entry = self._live.get(token)
        if entry is None:
            return False
        expires, left = entry
        if expires <= self.clock() or left <= 0:
            del self._live[token]
            return False
        if left == 1:
            del self._live[token]
        else:
            self._live[token] = (expires, left - 1)
        return True
