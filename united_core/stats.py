"""The stats bus: snapshots computed on request, a live stream only while watched.

Plugins contribute through ``united_collect_stats``; the core adds the P2P
runtime's own view. Nothing here runs periodically unless a subscriber is
attached: ``subscribe()`` is an async generator, and its loop lives exactly as
long as that subscriber does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)


class StatsBus:
    def __init__(self, node: Node, interval: float = 1.0) -> None:
        self._node = node
        self.interval = interval
        self.subscribers = 0
        self.snapshots_built = 0
        self.ticks = 0

    async def snapshot(self) -> dict[str, Any]:
        node = self._node
        self.snapshots_built += 1
        plugins: dict[str, Any] = {}
        for contribution in node.pm.hook.united_collect_stats(node=node):
            if contribution:
                plugins.update(contribution)
        return {
            "time": time.time(),
            "peer_id": node.identity.peer_id,
            "peers": await node.p2p.peers(),
            "p2p": await node.p2p.snapshot(),
            "plugins": plugins,
        }

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Yield a snapshot about every ``interval`` seconds, for as long as iterated."""
        from .node import call_async

        self.subscribers += 1
        try:
            while True:
                started = time.monotonic()
                self.ticks += 1
                try:
                    await call_async(self._node.pm.hook.united_stats_refresh(node=self._node))
                except Exception:
                    log.exception("a united_stats_refresh hook failed")
                yield await self.snapshot()
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            self.subscribers -= 1
