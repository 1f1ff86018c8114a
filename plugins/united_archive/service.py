"""The archive service: batched writes, history pages, lookups and submissions.

Live messages (``united_message_received``, already accepted by gossip) go
through a bounded queue to one writer task that commits them in batches (up to
``batch_max`` per transaction, waiting at most ``batch_wait_ms`` for more): a
full queue slows the event pump, it never drops. A batch that fails as a whole
is written again message by message, so one message that storage cannot take
never rolls back another's.

Submissions are judged envelope by envelope by the node's acceptance path
(origin ``SUBMISSION``): the answer carries a verdict for every envelope, the
sequence number it got or why it was refused and whether that is permanent.
An envelope the archive already holds is answered with its number without
being judged or written again. Accepted ones are written in (Lamport hint,
sender key) order and answered once committed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from united_core.acceptance import Acceptor, Judgement, JudgePool, Origin, Reason
from united_core.api import NodeAPI, call_async
from united_core.envelope import SignedMessage, message_id_from_wire
from united_core.wire import envelope_pb2
from united_core.wire import frames_pb2 as pb

from .config import Config
from .store import ArchiveStore, Stored

if TYPE_CHECKING:
    from united_directory.protocol import FrameContext

log = logging.getLogger(__name__)
E = pb.ErrorCode
MAX_SUBMIT = 1000
# After a restart, messages stamped while the server was down wait at least this many
# reorder windows (members log in after their reconnect backoff), and uploads keep
# the window open up to SETTLE_CAP windows after the start. Within that cap, a
# sender's gossip also waits until the sender itself has reconciled (its
# ``SubmitMessages.reconciled``): only then can none of its older messages still come.
SETTLE_AFTER_RESTART = 2
SETTLE_CAP = 10
MAX_LOOKUP = 5000
REASON_CODES = {reason: getattr(pb, f"REFUSAL_REASON_{reason.name}") for reason in Reason}
# A history page stays well inside one WebSocket frame.
PAGE_MARGIN = 16 * 1024  # a page stays this far below the largest frame a client reads
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
    submitted_known: int = 0  # already archived: answered without a write
    refused: int = 0
    write_errors: int = 0
    lookups: int = 0
    history_pages: int = 0
    ingested: int = 0  # gossip messages handed to the archive


class ArchiveService:
    def __init__(self, config: Config, data_dir: Path, acceptor: Acceptor | None = None) -> None:
        self.config = config
        self.acceptor = acceptor or Acceptor()
        # Submissions' signatures are checked on every CPU (started and closed with us).
        self.judges = JudgePool(self.acceptor, name="united-archive-verify")
        self.path = data_dir / config.database
        self.store: ArchiveStore | None = None
        self.stats = ArchiveStats()
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(config.queue_max)
        self._writer: asyncio.Task[None] | None = None
        self._submit_lock = asyncio.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # member id -> (tokens, time)
        # Ids recently stored from submissions: their gossip copy needs no write.
        self._submitted_ids: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        # Late gossip (sent while this server was away), waiting to be ordered.
        self._late: dict[bytes, SignedMessage] = {}
        self._late_flush: asyncio.Task[None] | None = None
        self._started_ms = 0.0
        self._settle_until = 0.0
        # Senders (keys) whose reconciliation after this start is done.
        self._reconciled: set[bytes] = set()
        # Set once every plugin has started: heads are announced through it.
        self.node: NodeAPI | None = None
        # What the directory says (absent without it): channels by topic, as
        # (channel id, name), and members' names by key, for the operator's views.
        self.channels: dict[str, tuple[str, str]] = {}
        self.names: dict[bytes, str] = {}

    async def start(self) -> None:
        self._started_ms = time.time() * 1000
        # Right after a (re)start, members come back and reconcile: live gossip
        # waits with their uploads, so the outage is numbered in one Lamport order.
        self._settle_until = time.time() + self.config.reorder_window
        self.store = await ArchiveStore.open(self.path)
        self.judges.start()
        self._writer = asyncio.create_task(self._write_loop(), name="united-archive-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop (nothing received is left unwritten)."""
        if self._late_flush is not None:
            self._late_flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._late_flush
        if self._late and self._writer is not None:
            await self.write(self._take_late([], everything=True))
        if self._writer is not None:
            await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.judges.close()
        if self.store is not None:
            await self.store.close()

    async def ingest(self, message: SignedMessage) -> None:
        """A message accepted from gossip. A late one (stamped before this server
        started, or long ago: sent while it was away and replayed or gossiped to it
        when it came back) waits briefly to be numbered in Lamport
        order with the other late ones and with the reconciling members' uploads."""
        self.stats.ingested += 1
        if message.id in self._submitted_ids:  # a member's upload got here before gossip
            return
        now_ms = time.time() * 1000
        if (
            self._late  # while late ones wait, everything waits: one Lamport order
            or now_ms < self._settle_until * 1000  # just (re)started: members reconcile
            or self._unreconciled(message.sender_pubkey)  # its older ones may still come
            or message.timestamp < self._started_ms  # sent before this server (re)started
            or now_ms - message.timestamp > self.config.late_after * 1000
        ):
            self._late[message.id] = message
            if message.timestamp < self._started_ms:
                # Sent while this server was down: the senders' own uploads come when
                # they log in again (after their reconnect backoff); wait for them.
                start = self._started_ms / 1000
                self._settle_until = max(
                    self._settle_until, start + SETTLE_AFTER_RESTART * self.config.reorder_window
                )
            if self._late_flush is None or self._late_flush.done():
                self._late_flush = asyncio.create_task(
                    self._flush_late(), name="united-archive-late"
                )
            return
        await self._queue.put(_Write([message]))

    async def _flush_late(self) -> None:
        """Write the waiting messages once the window has been quiet for
        ``reorder_window`` (a reconciliation upload keeps it open, up to a cap);
        those of senders still to reconcile wait for them, up to the cap."""
        while self._late:
            self._settle_until = max(self._settle_until, time.time() + self.config.reorder_window)
            await asyncio.sleep(max(0.0, self._settle_until - time.time()))
            if time.time() < self._settle_until:
                continue
            async with self._submit_lock:
                batch = self._take_late([])
                if batch:
                    await self.write(batch)
            if self._late:  # their senders' reconciliation (or the cap) releases them
                left = self._settle_cap() - time.time()
                await asyncio.sleep(min(self.config.reorder_window, max(0.05, left)))

    def _settle_cap(self) -> float:
        """When settling after this server's start ends, whatever is still missing."""
        return self._started_ms / 1000 + SETTLE_CAP * self.config.reorder_window

    def _unreconciled(self, sender: bytes) -> bool:
        """Whether ``sender`` may still upload older messages of its own: it has not
        reconciled since this server started, and the settling cap is not reached."""
        return sender not in self._reconciled and time.time() < self._settle_cap()

    def _extend_settling(self) -> None:
        """A reconciliation arrived: keep ordering together for a while more, within
        ``SETTLE_CAP x reorder_window`` of this server's start."""
        cap = self._settle_cap()
        self._settle_until = min(
            cap, max(self._settle_until, time.time() + self.config.reorder_window)
        )

    def _take_late(
        self, others: list[SignedMessage], *, everything: bool = False
    ) -> list[SignedMessage]:
        """``others`` with the waiting late messages of reconciled senders (all of
        them when ``everything``), in (Lamport hint, sender) order; the others'
        keep waiting."""
        merged = {m.id: m for m in others}
        for mid in [m.id for m in others if m.id in self._late]:
            del self._late[mid]  # uploaded: the gossip copy is the same message
        for mid, message in list(self._late.items()):
            if everything or not self._unreconciled(message.sender_pubkey):
                merged.setdefault(mid, message)
                del self._late[mid]
        return sorted(merged.values(), key=lambda m: (m.sequence_hint, m.sender_pubkey))

    def _budget(self, member_id: str, count: int) -> bool:
        """Take ``count`` from the member's submission bucket; False if it lacks them."""
        now = time.monotonic()
        rate, burst = self.config.submit_rate, float(self.config.submit_burst)
        tokens, updated = self._buckets.get(member_id, (burst, now))
        tokens = min(burst, tokens + (now - updated) * rate)
        ok = tokens >= count
        self._buckets[member_id] = (tokens - count if ok else tokens, now)
        return ok

    def _remember_submitted(self, message_id: bytes) -> None:
        self._submitted_ids[message_id] = None
        while len(self._submitted_ids) > 10_000:
            self._submitted_ids.popitem(last=False)

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
            messages = [m for w in batch for m in w.messages]
            try:
                stored = await self.store.append(messages)
            except Exception:
                log.exception("archive write of %d messages failed; writing one by one", size)
                stored = [await self._append_one(m) for m in messages]
            self._account(stored, time.perf_counter() - started)
            await self._announce_heads(stored)
            offset = 0
            for w in batch:
                part = stored[offset : offset + len(w.messages)]
                offset += len(w.messages)
                if w.done is not None and not w.done.done():
                    w.done.set_result(part)
                self._queue.task_done()

    async def _announce_heads(self, stored: list[Stored]) -> None:
        """Fire ``united_history_advanced`` once per topic that got new numbers (a
        directory hook: absent without the directory, then nothing is fired)."""
        if self.node is None:
            return
        heads: dict[str, int] = {}
        for item in stored:
            if item.new and item.error is None and item.seq > heads.get(item.topic, 0):
                heads[item.topic] = item.seq
        caller = getattr(self.node.hook, "united_history_advanced", None)
        if not heads or caller is None:
            return
        for topic, seq in heads.items():
            try:
                await call_async(caller(node=self.node, topic=topic, last_seq=seq))
            except Exception:
                log.exception("announcing the head of %s failed", topic)

    async def _append_one(self, message: SignedMessage) -> Stored:
        assert self.store is not None
        try:
            return (await self.store.append([message]))[0]
        except Exception as exc:
            self.stats.write_errors += 1
            log.error("the archive cannot store message %s: %s", message.id.hex()[:12], exc)
            return Stored(message.id, message.topic, 0, False, f"{type(exc).__name__}: {exc}")

    def _account(self, stored: list[Stored], seconds: float) -> None:
        s = self.stats
        s.batches += 1
        s.largest_batch = max(s.largest_batch, len(stored))
        s.write_seconds += seconds
        for item in stored:
            if item.error is not None:
                continue
            if item.new:
                s.stored += 1
            else:
                s.duplicates += 1

    # ---- frames ------------------------------------------------------------------------

    async def history(
        self, node: NodeAPI, ctx: FrameContext, frame: pb.ClientFrame
    ) -> pb.ServerFrame:
        assert self.store is not None
        request = frame.history
        topic = ctx.topic_of(request.channel_id)
        if topic is None:
            return _error(E.ERROR_CODE_UNKNOWN_CHANNEL, f"no channel {request.channel_id!r}")
        limit = min(request.limit or self.config.page_max, self.config.page_max)
        page = await self.store.page(topic, request.from_seq, limit)
        self.stats.history_pages += 1
        # Pages are bounded in bytes too: a page must fit in one frame a client
        # reads, whatever the payload sizes (at least one message per page, which
        # always fits).
        page_bytes = ctx.max_frame_bytes - PAGE_MARGIN
        encoded: list[bytes] = []
        size, next_seq = 0, page.next_seq
        for seq, wire in page.messages:
            if encoded and size + len(wire) + PAGE_OVERHEAD > page_bytes:
                next_seq = seq
                break
            encoded.append(_stored_message(seq, wire))
            size += len(wire) + PAGE_OVERHEAD
        # The stored envelopes are spliced in as they are (each was accepted, so it
        # decodes to itself) and the page parsed once in C: no object per message.
        history_page = pb.HistoryPage.FromString(b"".join(encoded))
        history_page.channel_id = request.channel_id
        history_page.next_seq = next_seq
        history_page.last_seq = page.last_seq
        return pb.ServerFrame(history_page=history_page)

    async def lookup(
        self, node: NodeAPI, ctx: FrameContext, frame: pb.ClientFrame
    ) -> pb.ServerFrame:
        """Which of the asked-for ids the archive holds, with their numbers."""
        assert self.store is not None
        ids = [bytes(i) for i in frame.lookup.message_ids]
        if len(ids) > MAX_LOOKUP:
            return _error(E.ERROR_CODE_TOO_LARGE, f"at most {MAX_LOOKUP} ids per lookup")
        self.stats.lookups += 1
        known = await self.store.known([i for i in ids if len(i) == 32])
        return pb.ServerFrame(
            lookup_result=pb.LookupResult(
                found=[
                    pb.SequenceAssigned(
                        message_id=mid, channel_id=ctx.channel_of(topic) or "", seq=seq
                    )
                    for mid, (topic, seq) in known.items()
                ]
            )
        )

    async def submit(
        self, node: NodeAPI, ctx: FrameContext, frame: pb.ClientFrame
    ) -> pb.ServerFrame:
        """Judge and store each envelope on its own; answer a verdict for each."""
        assert self.store is not None
        envelopes = frame.submit.envelopes
        if len(envelopes) > MAX_SUBMIT:
            return _error(E.ERROR_CODE_TOO_LARGE, f"at most {MAX_SUBMIT} envelopes per submission")
        # One submission at a time: members reconciling at once after an outage
        # upload the same messages, and the second must find the first's stored.
        async with self._submit_lock:
            return await self._submit(ctx, envelopes, reconciled=frame.submit.reconciled)

    async def _submit(
        self, ctx: FrameContext, envelopes: Any, *, reconciled: bool = False
    ) -> pb.ServerFrame:
        assert self.store is not None
        wires = [env.SerializeToString() for env in envelopes]
        ids = [message_id_from_wire(w) for w in wires]
        known = await self.store.known(ids)
        assigned: list[pb.SequenceAssigned] = []
        refused: list[pb.EnvelopeRefused] = []
        accepted: list[SignedMessage] = []
        topics = _ChannelTopics(ctx)
        submitter = ctx.member.peer_id
        unknown = [(mid, wire) for mid, wire in zip(ids, wires, strict=True) if mid not in known]
        for mid in ids:
            if mid in known:  # judged when it was first stored; keeps its number
                topic, seq = known[mid]
                assigned.append(_assigned(ctx, mid, topic, seq))
                self.stats.submitted_known += 1
        if unknown and not self._budget(ctx.member.member_id, len(unknown)):
            # Charged before any signature is checked: a member cannot make the
            # server verify more than submit_rate envelopes a second for it.
            refused += [_rate_limited(mid, self.config.submit_rate) for mid, _ in unknown]
            unknown = []

        # Verification (about 45 us an envelope) off the event loop, on every CPU.
        judgements = await self.judges.judge_many(
            [wire for _, wire in unknown], Origin.SUBMISSION, topics=topics, from_peer=submitter
        )
        for (mid, _), judgement in zip(unknown, judgements, strict=True):
            if judgement.accepted and judgement.message is not None:
                accepted.append(judgement.message)
            else:
                refused.append(_refused(mid, judgement))
        # Messages sent while the server was away get numbers in (Lamport, sender) order,
        # together with the late gossip copies of them waiting to be written.
        submitted_ids = {m.id for m in accepted}
        if accepted and time.time() < self._started_ms / 1000 + SETTLE_CAP * (
            self.config.reorder_window
        ):
            self._extend_settling()
        if reconciled:  # the sender's own older messages are all here now
            self._reconciled.add(ctx.member.public_key)
        batch = self._take_late(accepted) if accepted or reconciled else []
        for stored in await self.write(batch) if batch else []:
            if stored.id not in submitted_ids:
                continue  # a late gossip message written with this submission
            if stored.error is not None:
                refused.append(
                    pb.EnvelopeRefused(
                        message_id=stored.id,
                        reason=pb.REFUSAL_REASON_INTERNAL,
                        permanent=False,
                        detail="the archive could not store it; retry later",
                    )
                )
            else:
                assigned.append(_assigned(ctx, stored.id, stored.topic, stored.seq))
                self._remember_submitted(stored.id)
        self.stats.submitted += len(accepted)
        self.stats.refused += len(refused)
        return pb.ServerFrame(submit_result=pb.SubmitResult(assigned=assigned, refused=refused))

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        heads = self.store.heads() if self.store is not None else {}
        counts = self.store.counts() if self.store is not None else {}
        return {
            # What the archive holds: messages, channels with messages, and each
            # channel's highest sequence number (by name where the directory says).
            "messages": sum(counts.values()),
            "channels": len(heads),
            "last_seq": {self.channel_label(topic): seq for topic, seq in sorted(heads.items())},
            "stored": s.stored,
            "duplicates": s.duplicates,
            "batches": s.batches,
            "largest_batch": s.largest_batch,
            "queued": self._queue.qsize(),
            "submitted": s.submitted,
            "submitted_known": s.submitted_known,
            "refused": s.refused,
            "write_errors": s.write_errors,
            "lookups": s.lookups,
            "history_pages": s.history_pages,
            "ingested": s.ingested,
            "late_waiting": len(self._late),
            "write_seconds": round(s.write_seconds, 6),
        }

    def status(self) -> dict[str, Any]:
        """For ``ctl status``: what the archive holds and its newest message."""
        if self.store is None:
            return {}
        counts = self.store.counts()
        status: dict[str, Any] = {
            "messages": sum(counts.values()),
            "channels": len(self.store.heads()),
        }
        if self.store.last_stored is not None:
            topic, seq, stored_at = self.store.last_stored
            status["last_channel"] = self.channel_label(topic)
            status["last_seq"] = seq
            status["last_stored_at"] = datetime.datetime.fromtimestamp(
                stored_at, datetime.UTC
            ).isoformat(timespec="seconds")
        return status

    # ---- the operator's view (ctl history) -----------------------------------------------

    def channel_label(self, topic: str) -> str:
        """A topic's channel name where known, else the topic."""
        known = self.channels.get(topic)
        return known[1] if known else topic

    def resolve(self, channel: str) -> str | None:
        """The topic of ``channel``: a channel name, a channel id, or a topic the
        archive holds (a channel since deleted, a node without the directory)."""
        for topic, (channel_id, name) in self.channels.items():
            if channel in (name, channel_id, topic):
                return topic
        assert self.store is not None
        return channel if channel in self.store.heads() else None

    async def history_rows(
        self, channel: str, *, limit: int, from_seq: int | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` messages of ``channel`` (or ``limit`` from
        ``from_seq`` on), oldest first, as rows for people and scripts."""
        assert self.store is not None
        topic = self.resolve(channel)
        if topic is None:
            raise KeyError(channel)
        if from_seq is None:
            messages = await self.store.latest(topic, limit)
        else:
            messages = (await self.store.page(topic, from_seq, limit)).messages
        own = self.node.identity.public_key if self.node is not None else b""
        rows = []
        for seq, wire in messages:
            env = envelope_pb2.Envelope.FromString(wire)
            key = bytes(env.sender_pubkey)
            sender = "server" if key == own else self.names.get(key) or f"key:{key.hex()[:12]}"
            rows.append(
                {
                    "seq": seq,
                    "channel": self.channel_label(topic),
                    "sender": sender,
                    "text": env.payload.decode("utf-8", errors="replace"),
                    "timestamp": env.timestamp,
                    "sequence_hint": env.sequence_hint,
                    "id": message_id_from_wire(wire).hex(),
                }
            )
        return rows


class _ChannelTopics:
    """The topics of the server's channels, as a container the acceptance path checks."""

    def __init__(self, ctx: FrameContext) -> None:
        self._ctx = ctx

    def __contains__(self, topic: object) -> bool:
        return isinstance(topic, str) and self._ctx.channel_of(topic) is not None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _stored_message(seq: int, wire: bytes) -> bytes:
    """``HistoryPage.messages`` entry (field 2) holding ``StoredMessage(seq, envelope)``
    in protobuf's encoding, the envelope being ``wire`` as stored."""
    body = b"\x08" + _varint(seq) + b"\x12" + _varint(len(wire)) + wire
    return b"\x12" + _varint(len(body)) + body


def _error(code: int, message: str) -> pb.ServerFrame:
    """A refusal, as the directory's frame-handler contract has it: an error frame
    returned (the directory fills in the request id)."""
    return pb.ServerFrame(error=pb.Error(code=code, message=message))  # type: ignore[arg-type]


def _assigned(ctx: FrameContext, mid: bytes, topic: str, seq: int) -> pb.SequenceAssigned:
    return pb.SequenceAssigned(message_id=mid, channel_id=ctx.channel_of(topic) or "", seq=seq)


def _rate_limited(mid: bytes, rate: float) -> pb.EnvelopeRefused:
    return pb.EnvelopeRefused(
        message_id=mid,
        reason=pb.REFUSAL_REASON_RATE_LIMITED,
        permanent=False,
        detail=f"over this member's upload budget ({rate:g} envelopes/s); retry later",
    )


def _refused(mid: bytes, judgement: Judgement) -> pb.EnvelopeRefused:
    reason = judgement.reason or Reason.MALFORMED
    return pb.EnvelopeRefused(
        message_id=mid,
        reason=REASON_CODES[reason],
        permanent=reason.permanent,
        detail=judgement.detail[:200],
    )


@contextlib.asynccontextmanager
async def archive_service(
    config: Config, data_dir: Path, acceptor: Acceptor
) -> AsyncIterator[ArchiveService]:
    service = ArchiveService(config, data_dir, acceptor)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
