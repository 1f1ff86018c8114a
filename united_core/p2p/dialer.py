"""The node's one dialer: every plugin asks it instead of dialing itself (issue 11).

Why a module of its own: dialing used to be done by whoever wanted a connection
(the mesh, discovery, ``ctl connect``), each with its own error handling, none
recording why a dial failed, and none undoing py-libp2p's dial backoff (after a
failed dial the swarm refuses that peer for 60 s, which stranded a member that
restarted). The dialer

- refuses wildcard addresses (``0.0.0.0``, ``::``) and port 0: they reach the
  dialer's own machine, never the peer;
- dedupes concurrent dials to one peer (the second caller shares the first dial,
  unless it brings addresses the first is not dialing: it then dials them once
  the first has failed);
- clears py-libp2p's dial backoff for the peer before each dial it decides to
  make (``peers.clear_dial_backoff``: a named, version-checked adjustment) and
  dials exactly the addresses it is given (stale ones from before a restart are
  dropped from the peerstore first);
- remembers, per peer: the addresses it was dialed at, when it connected, the
  last dial error (``Type: message <- cause``, never empty) and when, and the
  next retry a policy (the ``reconnect`` plugin) planned.

It runs on the asyncio side and imports neither trio nor libp2p: the dial itself
is a callable the runtime gives it (``Peers.dial``, run on the trio thread).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..netaddrs import describe_error, is_wildcard

log = logging.getLogger(__name__)

DialFn = Callable[[str, list[str]], Awaitable[str]]


class DialRefused(ValueError):
    """A dial the dialer will not make (no usable address): nothing was sent."""


@dataclass
class PeerRecord:
    """What the dialer knows of one peer (times are epoch seconds)."""

    peer_id: str
    addrs: tuple[str, ...] = ()
    connected_since: float | None = None
    direction: str = ""
    last_error: str = ""
    last_error_at: float | None = None
    last_attempt_at: float | None = None
    next_retry_at: float | None = None
    retry_note: str = ""  # e.g. "on demand" for peers redialed only lazily
    dials: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addrs": list(self.addrs),
            "connected": self.connected_since is not None,
            "connected_since": self.connected_since,
            "direction": self.direction,
            "last_error": self.last_error or None,
            "last_error_at": self.last_error_at,
            "last_attempt_at": self.last_attempt_at,
            "next_retry_at": self.next_retry_at,
            "retry_note": self.retry_note or None,
            "dials": self.dials,
            "failures": self.failures,
        }


def usable_addrs(addrs: Iterable[str]) -> list[str]:
    """``addrs`` without ``/p2p/...``, wildcards and port 0, deduped, order kept.

    A relayed address keeps its relay: ``<relay addr>/p2p/<relay>/p2p-circuit``
    (a trailing ``/p2p/<peer>`` is dropped; the relay's address is checked as a
    direct one, and may be empty: the relay is then dialed by its connection)."""
    out: list[str] = []
    for addr in addrs:
        if "/p2p-circuit" in addr:
            head = addr.split("/p2p-circuit")[0]
            relay_addr = head.split("/p2p/")[0]
            if "/p2p/" not in head or (relay_addr and relay_addr not in usable_addrs([relay_addr])):
                continue
            bare = f"{head}/p2p-circuit"
        else:
            bare = addr.split("/p2p/")[0]
            if not bare or is_wildcard(bare) or "/tcp/0/" in bare + "/":
                continue
        if bare not in out:
            out.append(bare)
    return out


@dataclass
class Dialer:
    """Asyncio side. ``dial_fn(peer_id, addrs)`` makes one real dial (the runtime's)."""

    dial_fn: DialFn
    own_peer_id: str = ""
    records: dict[str, PeerRecord] = field(default_factory=dict)
    _inflight: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    _inflight_addrs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def record(self, peer_id: str) -> PeerRecord:
        rec = self.records.get(peer_id)
        if rec is None:
            rec = self.records[peer_id] = PeerRecord(peer_id)
        return rec

    def known(self, peer_id: str) -> PeerRecord | None:
        return self.records.get(peer_id)

    def is_connected(self, peer_id: str) -> bool:
        rec = self.records.get(peer_id)
        return rec is not None and rec.connected_since is not None

    def remember_addrs(self, peer_id: str, addrs: Iterable[str]) -> None:
        """Addresses a peer can be dialed at (a presence, an outbound connection)."""
        usable = usable_addrs(addrs)
        if usable and peer_id != self.own_peer_id:
            self.record(peer_id).addrs = tuple(usable)

    def plan(self, peer_id: str, at: float | None, note: str = "") -> None:
        """What a policy decided: the next retry time (``None``: none planned)."""
        rec = self.record(peer_id)
        rec.next_retry_at = at
        rec.retry_note = note

    def forget(self, peer_id: str) -> None:
        self.records.pop(peer_id, None)

    # ---- connection events (the runtime feeds them) ----------------------------------

    def connected(self, peer_id: str, addrs: tuple[str, ...], direction: str) -> None:
        rec = self.record(peer_id)
        if rec.connected_since is None:
            rec.connected_since = time.time()
        rec.direction = direction
        rec.next_retry_at = None
        rec.retry_note = ""
        if direction == "outbound":  # the remote end of an outbound one is a listen address
            usable = usable_addrs(addrs)
            if usable:
                rec.addrs = tuple(dict.fromkeys([*usable, *rec.addrs]))

    def disconnected(self, peer_id: str) -> None:
        rec = self.records.get(peer_id)
        if rec is not None:
            rec.connected_since = None

    # ---- dialing ------------------------------------------------------------------------

    async def dial(self, peer_id: str, addrs: Iterable[str] = ()) -> str:
        """Connect to ``peer_id`` at ``addrs`` (else the addresses remembered for it).

        Returns the PeerId. Raises :class:`DialRefused` when no address is usable,
        else whatever the dial raised (its description is recorded). A dial to a
        peer that is being dialed already waits for that dial instead, and dials
        afterwards only if it brought addresses the running dial did not try, or
        if the caller that started the running dial was cancelled (its
        cancellation is not ours to raise).
        """
        if peer_id == self.own_peer_id:
            raise DialRefused("that is this node's own PeerId")
        given = list(addrs)
        usable = usable_addrs(given)
        rec = self.record(peer_id)
        if not usable and not given:
            usable = list(rec.addrs)
        if not usable:
            what = ", ".join(given) if given else "none known"
            error = f"DialRefused: no dialable address for {peer_id} ({what})"
            rec.last_error, rec.last_error_at = error, time.time()
            raise DialRefused(error)
        running = self._inflight.get(peer_id)
        while running is not None:
            same = set(usable) <= set(self._inflight_addrs.get(peer_id, ()))
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not running.cancelled() or (task is not None and task.cancelling()):
                    raise  # we are the ones cancelled
                # The caller that started it was cancelled, not us: dial ourselves.
            except Exception:
                if same:
                    raise
                # New addresses (the peer came back elsewhere): the running dial
                # could not reach them; dial them now.
            running = self._inflight.get(peer_id)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[peer_id] = future
        self._inflight_addrs[peer_id] = tuple(usable)
        rec.last_attempt_at = time.time()
        rec.dials += 1
        try:
            result = await self.dial_fn(peer_id, usable)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            rec.failures += 1
            rec.last_error = describe_error(exc)
            rec.last_error_at = time.time()
            log.info("could not dial %s at %s: %s", peer_id, " ".join(usable), rec.last_error)
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody shares it
            raise
        else:
            rec.addrs = tuple(dict.fromkeys([*usable, *rec.addrs]))
            if rec.connected_since is None:
                rec.connected_since = time.time()
                rec.direction = rec.direction or "outbound"
            rec.next_retry_at, rec.retry_note = None, ""
            future.set_result(result)
            return result
        finally:
            self._inflight.pop(peer_id, None)
            self._inflight_addrs.pop(peer_id, None)

    def rows(self, connected: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``ctl peers``: each connected peer (live, from the host), then each
        remembered peer that is not connected, with its last error and next retry."""
        out = []
        live = set()
        for peer in connected:
            live.add(peer["peer_id"])
            rec = self.records.get(peer["peer_id"])
            row = dict(peer)
            row["connected"] = True
            row["connected_since"] = rec.connected_since if rec else None
            out.append(row)
        for peer_id, rec in sorted(self.records.items()):
            if peer_id in live:
                continue
            row = rec.as_dict()
            row["connected"], row["connected_since"] = False, None
            out.append(row)
        return out
