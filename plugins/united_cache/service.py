"""Keep the local cache complete and in the server's order.

- Every accepted message is written to the cache on arrival (unconfirmed).
- While connected, unconfirmed messages are submitted every ``sync_interval``:
  the server stores what it lacks and answers every message's sequence number,
  so received messages are confirmed as well as our own.
- After every login (the server may have been down, or we were): submit what is
  unconfirmed, then fill the gaps of each joined channel page by page. Sequence
  numbers the server no longer has are recorded as holes and not asked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from united_core.envelope import EnvelopeError, SignedMessage, open_envelope
from united_core.wire import envelope_pb2
from united_core.wire import frames_pb2 as pb

from .config import Config
from .store import CachedMessage, CacheStore

if TYPE_CHECKING:
    from united_core.node import Node

log = logging.getLogger(__name__)


class CacheService:
    def __init__(self, config: Config, node: Node, data_dir: Path, discovery: Any) -> None:
        self.config = config
        self.node = node
        self.path = data_dir / config.database
        self.discovery = discovery
        self.store: CacheStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()
        self.filled = 0
        self.submitted = 0
        self.syncs = 0
        # Our own messages the server has not numbered yet (shown in stats).
        self.own_unconfirmed: set[bytes] = set()

    async def start(self) -> None:
        self.store = await CacheStore.open(self.path)
        self.discovery.add_login_listener(self.sync_after_login)
        self._task = asyncio.create_task(self._periodic(), name="united-cache-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
            if self.discovery.connected.is_set():
                try:
                    await self.submit_unconfirmed()
                except Exception as exc:
                    log.info("cache sync deferred: %s", exc)

    async def sync_after_login(self) -> None:
        async with self._sync_lock:
            await self.submit_unconfirmed()
            await self.fill_gaps()
            self.syncs += 1

    # ---- submissions -------------------------------------------------------------------

    async def submit_unconfirmed(self) -> int:
        assert self.store is not None
        confirmed = 0
        while True:
            batch = await self.store.unconfirmed(self.config.submit_batch)
            if not batch:
                return confirmed
            assigned = await self._submit(batch)
            await self.store.confirm(assigned)
            self.own_unconfirmed.difference_update(message_id for message_id, _ in assigned)
            confirmed += len(assigned)
            self.submitted += len(assigned)
            if len(batch) < self.config.submit_batch or not assigned:
                return confirmed

    async def _submit(self, batch: list[CachedMessage]) -> list[tuple[bytes, int]]:
        from united_discovery.session import DirectoryError  # same distribution's client type

        frame = pb.ClientFrame(
            submit=pb.SubmitMessages(
                envelopes=[envelope_pb2.Envelope.FromString(m.wire) for m in batch]
            )
        )
        try:
            reply = await self.discovery.request(frame)
        except DirectoryError as exc:
            if len(batch) == 1:
                log.warning("the server refuses cached message %s: %s", batch[0].id.hex()[:12], exc)
                return []
            # One bad apple: submit one by one so the rest still get their numbers.
            out: list[tuple[bytes, int]] = []
            for message in batch:
                out += await self._submit([message])
            return out
        return [(bytes(a.message_id), int(a.seq)) for a in reply.submit_result.assigned]

    # ---- gap filling ------------------------------------------------------------------

    async def fill_gaps(self) -> int:
        total = 0
        for channel in list(self.discovery.cache.joined):
            total += await self._fill(channel.channel_id, channel.topic)
        self.filled += total
        return total

    async def _fill(self, channel_id: str, topic: str) -> int:
        assert self.store is not None
        have = await self.store.seqs(topic)
        start, added = _first_missing(have, 1), 0
        while True:
            reply = await self.discovery.request(
                pb.ClientFrame(
                    history=pb.HistoryRequest(
                        channel_id=channel_id, from_seq=start, limit=self.config.page_size
                    )
                )
            )
            page = reply.history_page
            messages, seqs = [], []
            for stored in page.messages:
                try:
                    message = open_envelope(
                        stored.envelope.SerializeToString(), expected_topic=topic
                    )
                except EnvelopeError as exc:
                    log.warning("dropping an invalid message from history: %s", exc)
                    continue
                messages.append(message)
                seqs.append(int(stored.seq))
            added += await self.store.add(messages, seqs)
            self.own_unconfirmed.difference_update(m.id for m in messages)
            returned = set(seqs)
            end = page.next_seq - 1 if page.next_seq else page.last_seq
            holes = [s for s in range(start, end + 1) if s not in returned and s not in have]
            if holes:
                await self.store.add_holes(topic, holes)
            have |= returned | set(holes)
            if not page.next_seq:
                return added
            start = _first_missing(have, page.next_seq)

    # ---- reading ----------------------------------------------------------------------

    async def history(self, channel: str, from_seq: int, limit: int) -> list[dict[str, Any]]:
        assert self.store is not None
        channel_id = self.discovery.resolve(channel)
        joined = {c.channel_id: c for c in self.discovery.cache.joined}
        if channel_id is None or channel_id not in joined:
            raise KeyError(channel)
        names = {m.public_key: m.display_name for m in self.discovery.cache.members}
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
            "filled": self.filled,
            "syncs": self.syncs,
        }


def _first_missing(have: set[int], start: int) -> int:
    seq = max(1, start)
    while seq in have:
        seq += 1
    return seq


@contextlib.asynccontextmanager
async def cache_service(
    config: Config, node: Node, data_dir: Path, discovery: Any
) -> AsyncIterator[CacheService]:
    service = CacheService(config, node, data_dir, discovery)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
