"""When a member probes (asyncio side): once connected to the server, when its announced
addresses change, every ``interval``; after a failure, ``retry`` later.

The server is any peer the member list trusts (``trusted_peer_ids``, from
``united_members_changed``); one server's verdict is enough. The probe itself
runs in the trio-side service (:mod:`.service`), through ``call_service``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from united_core.api import NodeAPI

from ..verdict import candidates
from .config import Config

log = logging.getLogger(__name__)

SERVICE = "autonat-client"


class Prober:
    def __init__(self, config: Config, node: NodeAPI) -> None:
        self.config = config
        self.node = node
        self.trusted: frozenset[str] = frozenset()
        self.probed_addrs: tuple[str, ...] | None = None  # what the last adopted probe checked
        self.next_at: float | None = None  # loop time of the next scheduled probe
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    # ---- what makes it probe ------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def set_trusted(self, trusted: frozenset[str]) -> None:
        if trusted != self.trusted:
            self.trusted = trusted
            self.wake()

    def connected(self, peer_id: str, relayed: bool) -> None:
        if peer_id in self.trusted and not relayed:
            self.wake()

    def addrs_changed(self, addrs: tuple[str, ...]) -> None:
        if self.probed_addrs is not None and candidates(addrs) != self.probed_addrs:
            self.wake()

    # ---- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = None if self.next_at is None else max(0.0, self.next_at - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            if not self.node.running:
                self.next_at = loop.time() + 1.0  # hooks not registered yet: look again soon
                continue
            try:
                await self.probe()
            except Exception:
                log.exception("AutoNAT probe failed")
                self.next_at = loop.time() + self.config.retry

    async def server(self) -> str | None:
        """A trusted peer this node is connected to directly (the server)."""
        for peer in await self.node.p2p.peers():
            if peer["peer_id"] in self.trusted and not peer.get("relayed"):
                return str(peer["peer_id"])
        return None

    async def probe(self, addrs: list[str] | None = None) -> dict[str, Any]:
        """Probe now: this node's announced addresses (the verdict is adopted), or
        ``addrs`` (a check of those only: the node's reachability stays)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            server = await self.server()
            if server is None:
                if addrs is None:
                    self.next_at = None  # until a server connects (or members change)
                return {"error": "not connected to a server (a trusted peer) directly"}
            own = candidates(self.node.p2p.announce_addrs) if addrs is None else tuple(addrs)
            outcome: dict[str, Any] = await self.node.p2p.call_service(
                SERVICE, "probe", server, list(own), addrs is None
            )
            if addrs is None:
                if "verdict" in outcome:
                    self.probed_addrs = own
                    self.next_at = loop.time() + self.config.interval
                elif outcome.get("not_offered"):
                    self.next_at = loop.time() + self.config.interval  # an older server
                else:
                    wait = max(self.config.retry, float(outcome.get("retry_after") or 0))
                    self.next_at = loop.time() + wait
                log.info(
                    "AutoNAT: %s (nat %s) by %s%s",
                    outcome.get("verdict", "no verdict"),
                    outcome.get("nat", "-"),
                    server,
                    f": {outcome['error']}" if outcome.get("error") else "",
                )
            return outcome

    def next_probe_in(self) -> float | None:
        if self.next_at is None:
            return None
        return round(max(0.0, self.next_at - asyncio.get_running_loop().time()), 1)


@contextlib.asynccontextmanager
async def prober(config: Config, node: NodeAPI) -> AsyncIterator[Prober]:
    service = Prober(config, node)
    task = asyncio.create_task(service.run(), name="autonat-prober")
    try:
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
