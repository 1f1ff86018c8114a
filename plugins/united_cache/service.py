"""Keep the local cache complete and in the server's order.

- Every accepted message is written to the cache on arrival (unconfirmed).
- While connected, every ``sync_interval``, unconfirmed messages are looked up
  by id (32 bytes each, no upload): the server answers the numbers it gave.
  Of those it lacks, this node's own are submitted after ``own_upload_delay``
  (gossip normally gets them there first) and others' only once they have
  been here ``upload_grace`` seconds (the server nearly always
  has them through gossip, so members do not upload each other's messages).
  Each submitted envelope gets its own verdict: a number, a permanent refusal
  (marked, never uploaded again, not shown), or a transient one (retried next
  round). A round walks the whole backlog with a cursor, so refused envelopes
  never hold up the ones behind them.
- After every login (the server may have been down, or we were): reconcile, that
  is look up and submit *everything* the server lacks without waiting for the
  grace period, so the first member back hands the server the whole outage in
  one submission, numbered in Lamport order; then fill the gaps of each joined
  channel page by page. Sequence numbers the server no longer has are recorded
  as holes and not asked again.
- While connected, the server pushes each channel's head (its highest sequence
  number, coalesced); when fewer numbers are settled here, the cache first looks
  up its unconfirmed messages (gossip usually brought them), then, if still
  behind, fills that channel's gaps at once: history heals without a login.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from united_core.acceptance import Acceptor, JudgePool, Origin
from united_core.api import NodeAPI, RemoteRefusal
from united_core.envelope import SignedMessage
from united_core.wire import envelope_pb2
from united_core.wire import frames_pb2 as pb

from .config import Config
from .store import CachedMessage, CacheStore, Cursor

log = logging.getLogger(__name__)
# A submission stays well inside one WebSocket frame (the server's default bound is 256 KiB).
SUBMIT_BYTES = 192 * 1024
RETRIES = 10  # transient refusals of one upload before the cache stops trying
MAX_PAGE_SPAN = 100_000  # sequence numbers one history page may settle (holes included)
RETRY_MAX = 600.0  # seconds between retries, at most


class DirectorySession(Protocol):
    """What the cache needs of the session to the server (the discovery plugin's
    service provides it; typed here, so the cache imports no other plugin)."""

    connected: asyncio.Event
    sessions: int
    cache: Any  # .joined (channels), .members

    async def request(self, frame: pb.ClientFrame) -> pb.ServerFrame: ...

    def add_login_listener(self, listener: Callable[[], Awaitable[None]]) -> None: ...

    def add_head_listener(self, listener: Callable[[str, int], Awaitable[None]]) -> None: ...

    def resolve(self, channel: str) -> str | None: ...


class CacheService:
    def __init__(
        self,
        config: Config,
        node: NodeAPI,
        data_dir: Path,
        discovery: DirectorySession,
        acceptor: Acceptor | None = None,
    ) -> None:
        self.config = config
        self.acceptor = acceptor or Acceptor()
        # History pages' signatures are checked on every CPU (started and closed with us).
        self.judges = JudgePool(self.acceptor, name="united-cache-verify")
        self.node = node
        self.path = data_dir / config.database
        self.discovery = discovery
        self.store: CacheStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()
        self._reconciled = -1  # the discovery session whose reconciliation went through
        # Transiently refused uploads: id -> (attempts, do not retry before).
        self._retry: dict[bytes, tuple[int, float]] = {}
        self.filled = 0
        self.submitted = 0
        self.looked_up = 0
        self.refused = 0
        self.deferred = 0
        self.syncs = 0
        self.head_fills = 0  # gap-fills started by a channel head push
        self._heads: dict[str, int] = {}  # channel id -> the latest head pushed
        self._server_heads: dict[str, int] = {}  # channel id -> last_seq of its history
        self._head_tasks: dict[str, asyncio.Task[None]] = {}
        # Our own messages the server has not numbered yet (shown in stats).
        self.own_unconfirmed: set[bytes] = set()

    async def start(self) -> None:
        self.store = await CacheStore.open(self.path)
        self.judges.start()
        self.discovery.add_login_listener(self.sync_after_login)
        add_head_listener = getattr(self.discovery, "add_head_listener", None)
        if add_head_listener is not None:  # an older discovery: gap-fill at login only
            add_head_listener(self.head_moved)
        self._task = asyncio.create_task(self._periodic(), name="united-cache-sync")

    async def stop(self) -> None:
        for task in list(self._head_tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.judges.close()
        if self.store is not None:
            await self.store.close()

    async def received(self, message: SignedMessage) -> None:
        assert self.store is not None
        if (
            await self.store.add([message])
            and message.sender_pubkey == self.node.identity.public_key
        ):
            self.own_unconfirmed.add(message.id)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.config.sync_interval)
            if not self.discovery.connected.is_set():
                continue
            # Until this session's reconciliation went through, every round is one.
            session = self.discovery.sessions
            reconcile = self._reconciled != session
            try:
                async with self._sync_lock:
                    await self.submit_unconfirmed(reconcile=reconcile)
                    if reconcile:
                        self._reconciled = session
            except Exception as exc:
                log.info("cache sync deferred: %s", exc)

    async def sync_after_login(self) -> None:
        session = self.discovery.sessions
        # Members come back together after an outage and hold the same messages:
        # a little jitter lets the first upload land so the others find it by lookup.
        await asyncio.sleep(random.uniform(0, self.config.reconcile_jitter))
        async with self._sync_lock:
            await self.submit_unconfirmed(reconcile=True)
            self._reconciled = session
            await self.fill_gaps()
            self.syncs += 1

    # ---- channel heads --------------------------------------------------------------

    async def head_moved(self, channel_id: str, last_seq: int) -> None:
        """The server's head of ``channel_id`` is ``last_seq``: catch up if behind.

        One catch-up per channel at a time; a head that arrives meanwhile is
        picked up by the running one before it ends."""
        if last_seq <= self._heads.get(channel_id, 0):
            return
        self._heads[channel_id] = last_seq
        if channel_id in self._head_tasks:
            return
        task = asyncio.get_running_loop().create_task(
            self._catch_up(channel_id), name="united-cache-head"
        )
        self._head_tasks[channel_id] = task

    async def _catch_up(self, channel_id: str) -> None:
        assert self.store is not None
        try:
            done = 0
            while done < self._heads[channel_id]:
                head = self._heads[channel_id]
                channel = next(
                    (c for c in self.discovery.cache.joined if c.channel_id == channel_id), None
                )
                if channel is None:
                    return
                async with self._sync_lock:
                    if await self.store.numbered(channel.topic) < head:
                        # Gossip usually brought them: learn their numbers first
                        # (no uploads here: those follow the periodic and login rules).
                        await self.submit_unconfirmed(upload=False)
                    if await self.store.numbered(channel.topic) < head:
                        self.head_fills += 1
                        added = await self._fill(channel_id, channel.topic)
                        self.filled += added
                        if added:
                            log.info("caught up %d messages of %s", added, channel.name)
                done = head
            # A head the server's history does not reach (it claimed more than it
            # has) must not hide the next real one.
            reached = self._server_heads.get(channel_id)
            if reached is not None and reached < self._heads.get(channel_id, 0):
                self._heads[channel_id] = reached
        except Exception as exc:  # the session ended: the next login fills the gaps
            log.info("catching up with the head of %s deferred: %s", channel_id, exc)
        finally:
            self._head_tasks.pop(channel_id, None)

    # ---- submissions -------------------------------------------------------------------

    async def submit_unconfirmed(self, *, reconcile: bool = False, upload: bool = True) -> int:
        """One round over the backlog; returns how many messages got their number.

        Every unconfirmed message is looked up by id; of those the server lacks,
        this node's own are uploaded after ``own_upload_delay`` and others' once
        they have been here ``upload_grace`` seconds (at once when ``reconcile``).
        ``upload=False`` only learns the numbers of those the server holds.
        """
        confirmed = await self._submit_round(reconcile=reconcile, upload=upload)
        if reconcile and upload:
            await self._end_reconciliation()
        return confirmed

    async def _end_reconciliation(self) -> None:
        """Tell the server everything it lacked of ours is uploaded: it numbers our
        gossip that reached it meanwhile after this, so our messages keep their order."""
        try:
            await self.discovery.request(pb.ClientFrame(submit=pb.SubmitMessages(reconciled=True)))
        except RemoteRefusal as exc:  # a server without an archive
            log.debug("end of reconciliation refused (%s)", exc)

    async def _submit_round(self, *, reconcile: bool, upload: bool) -> int:
        assert self.store is not None
        confirmed = 0
        cursor: Cursor | None = None
        own_key = self.node.identity.public_key
        while True:
            batch = await self.store.unconfirmed(self.config.submit_batch, after=cursor)
            if not batch:
                return confirmed
            cursor = batch[-1].cursor
            found = await self._lookup([m.id for m in batch])
            now = time.time()
            own_due = now - (0.0 if reconcile else self.config.own_upload_delay)
            others_due = now - (0.0 if reconcile else self.config.upload_grace)
            missing = [
                m
                for m in batch
                if upload
                and m.id not in found
                and m.received_at <= (own_due if m.sender == own_key else others_due)
                and self._retry.get(m.id, (0, 0.0))[1] <= now
            ]
            assigned = list(found.items())
            for chunk in _by_size(missing, SUBMIT_BYTES):
                assigned += await self._submit(chunk)
            await self.store.confirm(assigned)
            self.own_unconfirmed.difference_update(message_id for message_id, _ in assigned)
            for message_id, _ in assigned:
                self._retry.pop(message_id, None)
            confirmed += len(assigned)
            self.submitted += len(assigned)
            if len(batch) < self.config.submit_batch:
                return confirmed

    async def _lookup(self, ids: list[bytes]) -> dict[bytes, int]:
        """The numbers the server already gave to any of ``ids`` (nothing uploaded)."""
        try:
            reply = await self.discovery.request(
                pb.ClientFrame(lookup=pb.LookupMessages(message_ids=ids))
            )
        except RemoteRefusal as exc:  # a server without lookups: submit everything
            log.debug("lookup refused (%s); submitting instead", exc)
            return {}
        self.looked_up += len(ids)
        wanted = set(ids)
        return {
            bytes(f.message_id): int(f.seq)
            for f in reply.lookup_result.found
            if bytes(f.message_id) in wanted and f.seq > 0
        }

    async def _submit(self, batch: list[CachedMessage]) -> list[tuple[bytes, int]]:
        """Submit ``batch``; mark permanent refusals; return the numbers assigned."""
        frame = pb.ClientFrame(
            submit=pb.SubmitMessages(
                envelopes=[envelope_pb2.Envelope.FromString(m.wire) for m in batch]
            )
        )
        reply = await self.discovery.request(frame)
        result = reply.submit_result
        permanent = []
        now = time.time()
        for refusal in result.refused:
            mid = bytes(refusal.message_id)
            reason = pb.RefusalReason.Name(refusal.reason).removeprefix("REFUSAL_REASON_")
            reason = f"{reason.lower()}: {refusal.detail}" if refusal.detail else reason.lower()
            if refusal.permanent:
                permanent.append((mid, reason))
                continue
            # Transient (the sender's volume limit, a storage error): retry with
            # exponential backoff, and give up after RETRIES so that nothing an
            # attacker makes the server refuse is uploaded forever.
            self.deferred += 1
            attempts = self._retry.get(mid, (0, 0.0))[0] + 1
            if attempts >= RETRIES:
                self._retry.pop(mid, None)
                permanent.append((mid, f"gave up after {attempts} transient refusals ({reason})"))
            else:
                delay = min(RETRY_MAX, self.config.sync_interval * 2**attempts)
                self._retry[mid] = (attempts, now + delay * random.uniform(0.75, 1.25))
            log.info(
                "the server refused cached message %s (%s, %s)",
                bytes(refusal.message_id).hex()[:12],
                reason,
                "permanent" if refusal.permanent else "will retry",
            )
        if permanent:
            await self.store.refuse(permanent)  # type: ignore[union-attr]
            self.refused += len(permanent)
            self.own_unconfirmed.difference_update(mid for mid, _ in permanent)
        return [(bytes(a.message_id), int(a.seq)) for a in result.assigned]

    # ---- gap filling ------------------------------------------------------------------

    async def fill_gaps(self) -> int:
        total = 0
        for channel in list(self.discovery.cache.joined):
            total += await self._fill(channel.channel_id, channel.topic)
        self.filled += total
        return total

    async def _fill(self, channel_id: str, topic: str) -> int:
        """Fetch, check and store the pages of ``channel_id`` from its first missing number.

        Pipelined, in three stages that overlap: while a page's signatures are
        checked (on every CPU), the next page is already being fetched and the
        previous one is being stored. Pages are stored one after the other, in
        order. The early fetch asks where the loop would ask next; should the page
        in hand change that (a server returning numbers past its own
        ``next_seq``), it is dropped and the right page asked for, so the requests
        and the stored rows are those of one page at a time.
        """
        assert self.store is not None
        have = await self.store.seqs(topic)
        start, added = _first_missing(have, 1), 0
        ahead: asyncio.Task[pb.HistoryPage] | None = asyncio.ensure_future(
            self._page(channel_id, start)
        )
        storing: asyncio.Task[int] | None = None
        try:
            while ahead is not None:
                page = await ahead
                ahead = None
                following = _first_missing(have, page.next_seq) if page.next_seq else 0
                if following:
                    ahead = asyncio.ensure_future(self._page(channel_id, following))
                judgements = await self.judges.judge_many(
                    [stored.envelope.SerializeToString() for stored in page.messages],
                    Origin.HISTORY,
                    topic=topic,
                )
                messages, seqs = [], []
                for stored, judgement in zip(page.messages, judgements, strict=True):
                    if not judgement.accepted or judgement.message is None:
                        log.warning("dropping a message from history: %s", judgement.describe())
                        continue
                    messages.append(judgement.message)
                    seqs.append(int(stored.seq))
                returned = set(seqs)
                end = page.next_seq - 1 if page.next_seq else page.last_seq
                # A page never settles more than MAX_PAGE_SPAN numbers (a server that
                # claims a billion holes is asked again later, not believed at once).
                end = min(end, start + MAX_PAGE_SPAN - 1)
                holes = [s for s in range(start, end + 1) if s not in returned and s not in have]
                if storing is not None:  # the page before is stored first
                    added += await storing
                    storing = None
                storing = asyncio.ensure_future(
                    self._store_page(channel_id, topic, page.last_seq, messages, seqs, holes)
                )
                have |= returned | set(holes)
                if not page.next_seq:
                    break
                start = _first_missing(have, page.next_seq)
                if ahead is None or start != following:  # the early fetch was not it
                    await _discard(ahead)
                    ahead = asyncio.ensure_future(self._page(channel_id, start))
            if storing is not None:
                added += await storing
                storing = None
            return added
        finally:
            await _discard(ahead)
            if storing is not None:  # never left half-written: let the write end
                with contextlib.suppress(Exception):
                    await storing

    async def _store_page(
        self,
        channel_id: str,
        topic: str,
        last_seq: int,
        messages: list[SignedMessage],
        seqs: list[int],
        holes: list[int],
    ) -> int:
        assert self.store is not None
        added = await self.store.add(messages, seqs)
        self.own_unconfirmed.difference_update(m.id for m in messages)
        self._server_heads[channel_id] = int(last_seq)
        if holes:
            await self.store.add_holes(topic, holes)
        return added

    async def _page(self, channel_id: str, from_seq: int) -> pb.HistoryPage:
        reply = await self.discovery.request(
            pb.ClientFrame(
                history=pb.HistoryRequest(
                    channel_id=channel_id, from_seq=from_seq, limit=self.config.page_size
                )
            )
        )
        return reply.history_page

    # ---- reading ----------------------------------------------------------------------

    async def history(self, channel: str, from_seq: int | None, limit: int) -> list[dict[str, Any]]:
        assert self.store is not None
        channel_id = self.discovery.resolve(channel)
        joined = {c.channel_id: c for c in self.discovery.cache.joined}
        if channel_id is None or channel_id not in joined:
            raise KeyError(channel)
        names = {
            key: m.display_name
            for m in self.discovery.cache.members
            for key in (m.public_key, *m.previous_keys)
        }
        rows = await self.store.history(joined[channel_id].topic, from_seq, limit)
        out = []
        for row in rows:
            env = envelope_pb2.Envelope.FromString(row.wire)
            out.append(
                {
                    "seq": row.seq,
                    "confirmed": row.confirmed,
                    "sender": names.get(row.sender, "?"),
                    "text": env.payload.decode("utf-8", errors="replace"),
                    "timestamp": row.timestamp,
                    "sequence_hint": row.sequence_hint,
                    "id": row.id.hex(),
                }
            )
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "own_unconfirmed": len(self.own_unconfirmed),
            "confirmed_by_submission": self.submitted,
            "looked_up": self.looked_up,
            "refused_by_server": self.refused,
            "deferred_by_server": self.deferred,
            "filled": self.filled,
            "syncs": self.syncs,
            "head_fills": self.head_fills,
        }


async def _discard(task: asyncio.Task[Any] | None) -> None:
    """Cancel an early page fetch no longer wanted and wait for it to end."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _first_missing(have: set[int], start: int) -> int:
    seq = max(1, start)
    while seq in have:
        seq += 1
    return seq


def _by_size(messages: list[CachedMessage], limit: int) -> list[list[CachedMessage]]:
    """Split ``messages`` into chunks of at most ``limit`` envelope bytes (at least one each)."""
    chunks: list[list[CachedMessage]] = []
    size = 0
    for message in messages:
        if not chunks or size + len(message.wire) > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(message)
        size += len(message.wire) + 8
    return chunks


@contextlib.asynccontextmanager
async def cache_service(
    config: Config, node: NodeAPI, data_dir: Path, discovery: DirectorySession, acceptor: Acceptor
) -> AsyncIterator[CacheService]:
    service = CacheService(config, node, data_dir, discovery, acceptor)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
