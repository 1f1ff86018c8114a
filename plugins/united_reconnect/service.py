"""Redial peers whose connection dropped: the policy half of issue 11's "one owner for dialing".

- Peers that matter for delivery (the server and the community's members: the
  gossipsub mesh is formed among them) are redialed with exponential backoff,
  ``united_reconnect_delay(peer_id, attempt)`` (1 s, 2 s, 4 s, ... at most 30 s by
  default); other peers are remembered and redialed only on demand (``ctl
  reconnect``).
- A presence update with a peer's (new) addresses redials it at once: a member
  that restarted on another port is found again within seconds.
- Both ends of a broken pair retry; the one with the larger PeerId waits
  ``tie_break_delay`` longer and skips its dial if the other's arrived first, so
  the pair ends with one connection, never two or none.
- After ``replacement_after`` seconds of failures, one other member online now in
  a channel the lost peer was in is dialed (once per loss), while the lost peer is
  still retried at the longest delay.

Every dial goes through the node's dialer (``core.dialer``), which records the
reason of each failure; this service records the next retry there, so ``ctl
peers`` shows both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from united_core.api import DialerAPI, NodeAPI

from .config import Config

log = logging.getLogger(__name__)
CORE_PLUGIN = "core"  # the name the node registers its own plugin under (its default policy)


class PresenceLike(Protocol):
    peer_id: str
    addrs: tuple[str, ...]


@dataclass(eq=False)
class Lost:
    """A peer being redialed."""

    peer_id: str
    since: float
    attempt: int = 0
    replaced: bool = False
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def backoff(attempt: int, base: float, cap: float) -> float:
    return float(min(cap, base * 2 ** min(max(attempt, 0), 62)))


class Reconnector:
    def __init__(self, config: Config, node: NodeAPI, dialer: DialerAPI) -> None:
        self.config = config
        self.node = node
        self.dialer = dialer
        self.own = node.identity.peer_id
        self.important: set[str] = set()  # the server and the members
        self.presence: dict[str, set[str]] = {}  # channel topic -> online peer ids
        self.seen_in: dict[str, set[str]] = {}  # peer id -> topics it was ever online in
        self.lost: dict[str, Lost] = {}
        self.stopping = False
        self.redials = 0
        self.restored = 0
        self.replacements: list[str] = []

    # ---- what the directory tells us --------------------------------------------------

    def set_members(self, member_ids: Iterable[str], trusted: Iterable[str]) -> None:
        self.important = set(member_ids) | set(trusted)

    def set_presence(self, topic: str, online: Iterable[PresenceLike]) -> None:
        online = tuple(online)
        self.presence[topic] = {p.peer_id for p in online}
        for presence in online:
            if presence.peer_id == self.own:
                continue
            self.important.add(presence.peer_id)
            self.seen_in.setdefault(presence.peer_id, set()).add(topic)
            self.dialer.remember_addrs(presence.peer_id, presence.addrs)
            lost = self.lost.get(presence.peer_id)
            if lost is not None:  # back online (maybe on a new port): redial now
                lost.kick.set()

    # ---- connection events ------------------------------------------------------------

    def connected(self, peer_id: str) -> None:
        lost = self.lost.pop(peer_id, None)
        if lost is not None:
            self.restored += 1
            log.info(
                "reconnected to %s after %.1f s (%d attempts)",
                peer_id,
                time.time() - lost.since,
                lost.attempt,
            )
            if lost.task is not None and lost.task is not asyncio.current_task():
                lost.task.cancel()

    def disconnected(self, peer_id: str) -> None:
        if self.stopping or peer_id == self.own or peer_id in self.lost:
            return
        if peer_id not in self.important:
            self.dialer.plan(peer_id, None, "on demand (ctl reconnect)")
            return
        lost = self.lost[peer_id] = Lost(peer_id, time.time())
        lost.task = asyncio.get_running_loop().create_task(
            self._redial(lost), name=f"reconnect-{peer_id[-6:]}"
        )

    # ---- the policy ---------------------------------------------------------------------

    def own_delay(self, attempt: int) -> float:
        """This plugin's answer to ``united_reconnect_delay`` (from ``[reconnect]``)."""
        return backoff(attempt, self.config.base, self.config.max)

    def delay(self, peer_id: str, attempt: int) -> float:
        """``united_reconnect_delay``, firstresult, with this plugin's ``[reconnect]``
        numbers in place of the core's default: the first answer of any other
        implementation (in pluggy's call order) wins; else ``own_delay``."""
        args = {"peer_id": peer_id, "attempt": attempt}
        for impl in reversed(self.node.hook.united_reconnect_delay.get_hookimpls()):
            if impl.plugin_name == CORE_PLUGIN:
                continue
            try:
                answer = impl.function(*[args[name] for name in impl.argnames])
            except Exception as exc:
                log.error("united_reconnect_delay of %s failed: %s", impl.plugin_name, exc)
                continue
            if isinstance(answer, int | float) and answer == answer:
                return float(answer)
        return self.own_delay(attempt)

    async def _redial(self, lost: Lost) -> None:
        peer_id = lost.peer_id
        try:
            while not self.stopping:
                delay = self.delay(peer_id, lost.attempt)
                if delay < 0:
                    self.dialer.plan(peer_id, None, "given up by the policy")
                    self.lost.pop(peer_id, None)
                    return
                if peer_id > self.own:  # the smaller PeerId dials first
                    delay += self.config.tie_break_delay
                self.dialer.plan(peer_id, time.time() + delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.kick.wait(), delay)
                if lost.kick.is_set():
                    lost.kick.clear()
                    if peer_id > self.own and not self.dialer.is_connected(peer_id):
                        await asyncio.sleep(self.config.tie_break_delay)
                if self.dialer.is_connected(peer_id):
                    self.connected(peer_id)
                    return
                self.redials += 1
                try:
                    await self.dialer.dial(peer_id)
                    self.connected(peer_id)
                    return
                except Exception:  # the dialer recorded why
                    lost.attempt += 1
                if not lost.replaced and time.time() - lost.since >= self.config.replacement_after:
                    lost.replaced = True
                    await self._replace(peer_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("redialing %s failed", peer_id)
            self.lost.pop(peer_id, None)

    async def _replace(self, peer_id: str) -> None:
        """Dial one member online now in a channel ``peer_id`` was in (it may have
        left the directory's list since), not connected yet."""
        connected = {p["peer_id"] for p in await self.node.p2p.peers()}
        for topic in sorted(self.seen_in.get(peer_id, ())):
            online = self.presence.get(topic, set())
            for candidate in sorted(online - connected - {self.own, peer_id}):
                try:
                    await self.dialer.dial(candidate)
                except Exception:
                    continue
                self.replacements.append(candidate)
                log.info("replaced %s (unreachable) with %s", peer_id, candidate)
                return
        log.info("no replacement for %s: no other online member to dial", peer_id)

    def stats(self) -> dict[str, Any]:
        now = time.time()
        return {
            "redialing": {
                p: {"attempt": lost.attempt, "lost_for_s": round(now - lost.since, 1)}
                for p, lost in sorted(self.lost.items())
            },
            "redials": self.redials,
            "restored": self.restored,
            "replacements": list(self.replacements),
        }

    async def stop(self) -> None:
        self.stopping = True
        tasks = [lost.task for lost in self.lost.values() if lost.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.lost.clear()


@contextlib.asynccontextmanager
async def reconnector(
    config: Config, node: NodeAPI, dialer: DialerAPI
) -> AsyncIterator[Reconnector]:
    service = Reconnector(config, node, dialer)
    try:
        yield service
    finally:
        await service.stop()
