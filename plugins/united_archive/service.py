"""The archive service: batched writes, history pages, and submissions.

Live messages (``united_message_received``) go through a bounded queue to one
writer task that commits them in batches (up to ``batch_max`` per transaction,
waiting at most ``batch_wait_ms`` for more): a full queue slows the event pump,
it never drops. Submissions from reconnecting clients are written in
(Lamport hint, sender key) order and answered once committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from united_core import frames
from united_core.envelope import EnvelopeError, SignedMessage, open_envelope
from united_core.wire import envelope_pb2
from united_core.wire import frames_pb2 as pb

from .config import Config
from .store import ArchiveStore, Stored

if TYPE_CHECKING:
    from united_core.node import Node

log = logging.getLogger(__name__)
E = pb.ErrorCode
MAX_SUBMIT = 1000
# A history page stays well inside one WebSocket frame.
PAGE_BYTES = frames.MAX_FRAME_BYTES - 16 * 1024
PAGE_OVERHEAD = 16  # per-message protobuf framing (tags, lengths, seq)


@dataclass
class _Write:
    messages: list[SignedMessage]
    done: asyncio.Future[list[Stored]] | None = None


@dataclass
class ArchiveStats:
    stored: int = 0
    duplicates: int = 0
    batches: int = 0
    largest_batch: int = 0
    write_seconds: float = 0.0
    submitted: int = 0
    history_pages: int = 0


class ArchiveService:
    def __init__(self, config: Config, data_dir: Path) -> None:
        self.config = config
        self.path = data_dir / config.database
        self.store: ArchiveStore | None = None
        self.stats = ArchiveStats()
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(config.queue_max)
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.store = await ArchiveStore.open(self.path)
        self._writer = asyncio.create_task(self._write_loop(), name="united-archive-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop (nothing received is left unwritten)."""
        if self._writer is not None:
            await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self.store is not None:
            await self.store.close()

    async def ingest(self, message: SignedMessage) -> None:
        await self._queue.put(_Write([message]))

    async def write(self, messages: list[SignedMessage]) -> list[Stored]:
        """Write ``messages`` in this order and return once they are committed."""
        done: asyncio.Future[list[Stored]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Write(messages, done))
        return await done

    async def _write_loop(self) -> None:
        assert self.store is not None
        while True:
            first = await self._queue.get()
            batch = [first]
            size = len(first.messages)
            deadline = time.monotonic() + self.config.batch_wait_ms / 1000
            while size < self.config.batch_max:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                batch.append(item)
                size += len(item.messages)
            started = time.perf_counter()
            try:
                stored = await self.store.append([m for w in batch for m in w.messages])
            except Exception as exc:
                log.exception("archive write failed")
                for w in batch:
                    if w.done is not None and not w.done.done():
                        w.done.set_exception(exc)
                    self._queue.task_done()
                continue
            self._account(stored, time.perf_counter() - started)
            offset = 0
            for w in batch:
                part = stored[offset : offset + len(w.messages)]
                offset += len(w.messages)
                if w.done is not None and not w.done.done():
                    w.done.set_result(part)
                self._queue.task_done()

    def _account(self, stored: list[Stored], seconds: float) -> None:
        s = self.stats
        s.batches += 1
        s.largest_batch = max(s.largest_batch, len(stored))
        s.write_seconds += seconds
        for item in stored:
            if item.new:
                s.stored += 1
            else:
                s.duplicates += 1

    # ---- frames ------------------------------------------------------------------------

    async def history(
        self, node: Node, ctx: frames.FrameContext, frame: pb.ClientFrame
    ) -> pb.ServerFrame:
        assert self.store is not None
        request = frame.history
        topic = ctx.topic_of(request.channel_id)
        if topic is None:
            raise frames.FrameError(
                E.ERROR_CODE_UNKNOWN_CHANNEL, f"no channel {request.channel_id!r}"
            )
        limit = min(request.limit or self.config.page_max, self.config.page_max)
        page = await self.store.page(topic, request.from_seq, limit)
        self.stats.history_pages += 1
        # Pages are bounded in bytes too: a page must fit in one frame, whatever
        # the payload sizes (at least one message per page, which always fits).
        messages: list[pb.StoredMessage] = []
        size, next_seq = 0, page.next_seq
        for seq, wire in page.messages:
            if messages and size + len(wire) + PAGE_OVERHEAD > PAGE_BYTES:
                next_seq = seq
                break
            messages.append(
                pb.StoredMessage(seq=seq, envelope=envelope_pb2.Envelope.FromString(wire))
            )
            size += len(wire) + PAGE_OVERHEAD
        return pb.ServerFrame(
            history_page=pb.HistoryPage(
                channel_id=request.channel_id,
                messages=messages,
                next_seq=next_seq,
                last_seq=page.last_seq,
            )
        )

    async def submit(
        self, node: Node, ctx: frames.FrameContext, frame: pb.ClientFrame
    ) -> pb.ServerFrame:
        envelopes = frame.submit.envelopes
        if len(envelopes) > MAX_SUBMIT:
            raise frames.FrameError(
                E.ERROR_CODE_TOO_LARGE, f"at most {MAX_SUBMIT} envelopes per submission"
            )
        messages = []
        for env in envelopes:
            try:
                message = open_envelope(env.SerializeToString())
            except EnvelopeError as exc:
                raise frames.FrameError(
                    E.ERROR_CODE_BAD_SIGNATURE, f"rejected envelope: {exc}"
                ) from None
            if ctx.channel_of(message.topic) is None:
                raise frames.FrameError(
                    E.ERROR_CODE_UNKNOWN_CHANNEL, f"no channel for topic {message.topic!r}"
                )
            if not ctx.members.allows_key(message.sender_pubkey):
                raise frames.FrameError(
                    E.ERROR_CODE_NOT_A_MEMBER, "an envelope's sender is not a member"
                )
            messages.append(message)
        # Messages sent while the server was away get numbers in (Lamport, sender) order.
        messages.sort(key=lambda m: (m.sequence_hint, m.sender_pubkey))
        stored = await self.write(messages)
        self.stats.submitted += len(messages)
        return pb.ServerFrame(
            submit_result=pb.SubmitResult(
                assigned=[
                    pb.SequenceAssigned(
                        message_id=s.id, channel_id=ctx.channel_of(s.topic) or "", seq=s.seq
                    )
                    for s in stored
                ]
            )
        )

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "stored": s.stored,
            "duplicates": s.duplicates,
            "batches": s.batches,
            "largest_batch": s.largest_batch,
            "queued": self._queue.qsize(),
            "submitted": s.submitted,
            "history_pages": s.history_pages,
        }


@contextlib.asynccontextmanager
async def archive_service(config: Config, data_dir: Path) -> AsyncIterator[ArchiveService]:
    service = ArchiveService(config, data_dir)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
