"""The stats bus: snapshots computed on request, a live stream only while watched.

Plugins contribute through ``united_collect_stats``; the core adds the P2P
runtime's own view. Nothing here runs periodically unless a subscriber is
attached: ``subscribe()`` is an async generator, and its loop lives exactly as
long as that subscriber does.
"""

from __future__ import annotations

import asyncio
import inspect
import json
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

    def collect(self) -> dict[str, Any]:
        """Every plugin's ``united_collect_stats``, under that plugin's own name.

        A plugin's module and its hook object (``<name>.hooks``) count as one
        plugin; their dicts are merged. One plugin can never overwrite another's.
        """
        node = self._node
        plugins: dict[str, Any] = {}
        for impl in node.pm.hook.united_collect_stats.get_hookimpls():
            name = impl.plugin_name.removesuffix(".hooks")
            kwargs = {arg: node for arg in impl.argnames if arg == "node"}
            try:
                contribution: Any = impl.function(**kwargs)
            except Exception:
                log.exception("the stats of plugin %s failed", name)
                continue
            if inspect.isawaitable(contribution):
                if inspect.iscoroutine(contribution):
                    contribution.close()
                log.error("united_collect_stats of plugin %s is async; it must not be", name)
                contribution = {"error": "united_collect_stats must be a plain function"}
            if not contribution:
                continue
            try:
                json.dumps(contribution)
            except (TypeError, ValueError) as exc:
                log.error("the stats of plugin %s are not JSON: %s", name, exc)
                contribution = {"error": f"not JSON-serialisable: {exc}"}
            if name in plugins and isinstance(plugins[name], dict):
                plugins[name] = {**plugins[name], **dict(contribution)}
            else:
                plugins[name] = contribution
        return plugins

    async def snapshot(self) -> dict[str, Any]:
        node = self._node
        self.snapshots_built += 1
        plugins = self.collect()
        return {
            "time": time.time(),
            "peer_id": node.identity.peer_id,
            "peers": await node.p2p.peers(),
            "p2p": await node.p2p.snapshot(),
            "plugins": plugins,
        }

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Yield a snapshot about every ``interval`` seconds, for as long as iterated."""
        from .api import call_async

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
