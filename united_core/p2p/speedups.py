"""Speed-ups of py-libp2p 0.8.1's gossip hot path, each switchable (``[p2p] speedups``).

Correctness adjustments live in :mod:`.pubsub`; these only make the same work
cheaper, with the wire unchanged (every peer, py-libp2p, go or js, sees the
same bytes it would otherwise, minus one field js and go ignore). Each was
measured in ``../shared/PERF-NOTES.md`` and is measured again, switched off one
at a time, by ``bench/mesh_latency.py --breakdown`` (docs/benchmarks.md). Each
is pinned by a test in ``tests/core/test_speedups.py`` that fails when it stops
taking effect. What each would need upstream is in docs/mesh.md ("Speed-ups").

- ``sender-record``: pubsub RPCs carry no signed peer record (py-libp2p attaches
  one to every RPC, and the receiver Ed25519-verifies it: 13 of 14 signature
  checks per delivery). Received records are not verified either: the node
  learns addresses from the directory, never from pubsub, as js and go do.
- ``yamux-window``: a Yamux WINDOW_UPDATE only once half the receive window is
  consumed (go-yamux's rule) instead of after nearly every read (about 3
  frames per received RPC with pubsub's byte-by-byte varint reads, one per
  RPC with buffered reads).
- ``batched-writes``: everything queued for a peer goes out in one stream write
  (one Yamux frame, one Noise message, one syscall) instead of one per RPC.
- ``inline-receive``: a received message is judged in the task that read it
  instead of a new task per message (our validators are synchronous, so
  reading from that peer never waits on an async validator).
- ``buffered-reads``: RPCs are read through a buffer (one stream read yields
  every RPC that arrived) instead of a read per varint byte.
- ``lean-checks``: the publisher does not verify the signature it just made, and
  the sender's public key is decoded once per sender, not once per message.
- ``buffered-tcp``: a TCP connection is read 64 KiB at a time and small reads
  are served from that buffer: Noise reads a 2-byte length, then the message,
  each a socket read and a trio wait of its own; at a chat's pace (one frame
  at a time) that was a third of the receive path.

Process-wide patches (the record builder, Yamux's release rule) consult the
calling trio thread's switches (:func:`bind_speedups`), so several runtimes in
one process (tests) each run with their own set.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
import libp2p.stream_muxer.yamux.yamux as _yamux_module
from google.protobuf.message import DecodeError
from libp2p.abc import INetStream
from libp2p.crypto.keys import PublicKey
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IncompleteReadError, IOException, MessageTooLarge
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import GossipsubEvent, Pubsub
from libp2p.pubsub.rpc_queue import PriorityQueue, RpcQueue
from libp2p.pubsub.utils import maybe_consume_signed_record
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX, signature_validator
from libp2p.utils import encode_uvarint
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from .. import defaults
from .services import libp2p_mismatch

log = logging.getLogger(__name__)

SENDER_RECORD = "sender-record"
YAMUX_WINDOW = "yamux-window"
BATCHED_WRITES = "batched-writes"
INLINE_RECEIVE = "inline-receive"
BUFFERED_READS = "buffered-reads"
LEAN_CHECKS = "lean-checks"
BUFFERED_TCP = "buffered-tcp"
ALL_SPEEDUPS: tuple[str, ...] = defaults.SPEEDUPS
assert set(ALL_SPEEDUPS) == {
    SENDER_RECORD,
    YAMUX_WINDOW,
    BATCHED_WRITES,
    INLINE_RECEIVE,
    BUFFERED_READS,
    LEAN_CHECKS,
    BUFFERED_TCP,
}

SUPPORTED_LIBP2P = ("0.8.",)
READ_SIZE = 64 * 1024  # bytes asked of the stream per buffered read
MAX_BATCH_BYTES = 256 * 1024  # one write carries at most this much (then the next)
_KEY_CACHE_SIZE = 4096

_state = threading.local()
_install_lock = threading.Lock()
_installed: str | bool | None = False  # False: not tried; None: installed; str: why not


def bind_speedups(names: Iterable[str]) -> None:
    """Switch this (trio) thread's process-wide speed-ups: the runtime calls it first thing."""
    _state.on = frozenset(names)


def _on(name: str) -> bool:
    return name in getattr(_state, "on", ())


def mismatch() -> str | None:
    """Why the speed-ups cannot run on the installed py-libp2p, else None."""
    return (
        libp2p_mismatch(
            "the speed-ups module",
            SUPPORTED_LIBP2P,
            attrs={
                Pubsub: (
                    "continuously_read_stream",
                    "handle_sending_messages",
                    "write_msg",
                    "get_hello_packet",
                    "_is_subscribed_to_msg",
                    "handle_subscription",
                    "_handle_dead_peer",
                    "max_inbound_rpc_size",
                    "max_subscriptions_per_rpc",
                ),
                RpcQueue: ("pop",),
                PriorityQueue: ("pop",),
                TrioTCPStream: ("read", "stream"),
                _yamux_module.YamuxStream: (
                    "_auto_tune_and_send_window_update",
                    "_grow_threshold",
                    "target_recv_window",
                ),
            },
        )
        or _module_mismatch()
    )


def _module_mismatch() -> str | None:
    missing = [
        f"{module.__name__}.{name}"
        for module, name in (
            (_pubsub_module, "env_to_send_in_RPC"),
            (_gossipsub_module, "env_to_send_in_RPC"),
        )
        if not callable(getattr(module, name, None))
    ]
    return f"py-libp2p lacks {', '.join(missing)}" if missing else None


def install() -> str | None:
    """Install the process-wide patches once; the reason they cannot be, else None.

    On a mismatch nothing is patched and the runtime runs without speed-ups
    (they change cost, not behaviour): it logs the reason and reports it in stats.
    """
    global _installed
    with _install_lock:
        if _installed is False:
            why = mismatch()
            if why is None:
                _patch_sender_record()
                _patch_yamux_release()
                _patch_tcp_reads()
            _installed = why
        return _installed if isinstance(_installed, str) else None


def _patch_sender_record() -> None:
    build = env_to_send_in_RPC  # what both modules imported

    def env_to_send_in_rpc(host: Any) -> tuple[bytes, bool]:
        """py-libp2p's record builder, skipped (an empty record, cleared before
        writing: ``clear_sender_record``) on a thread with ``sender-record`` on."""
        if _on(SENDER_RECORD):
            return b"", False
        return build(host)

    setattr(_pubsub_module, "env_to_send_in_RPC", env_to_send_in_rpc)  # noqa: B010
    setattr(_gossipsub_module, "env_to_send_in_RPC", env_to_send_in_rpc)  # noqa: B010


def _patch_yamux_release() -> None:
    """With ``yamux-window``, a stream returns credit only once half its window is
    consumed (go-yamux's rule). py-libp2p 0.8.1 sends a WINDOW_UPDATE after
    nearly every read: ``PY_YAMUX_RELEASE_ON_READ=0`` removes one of its two
    reasons, its "partial slack" branch still answers any read while the window
    is below target, so the rule is applied before py-libp2p's own.
    """
    stream_class = _yamux_module.YamuxStream
    auto_tune = stream_class._auto_tune_and_send_window_update

    async def lazy_window_update(self: Any, *, bytes_read: int = 0) -> None:
        if _on(YAMUX_WINDOW):
            async with self.window_lock:
                buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
                consumed = self.target_recv_window - (self.recv_window + buffered)
                if consumed < self._grow_threshold():
                    return  # less than half the window to give back: not yet
        await auto_tune(self, bytes_read=bytes_read)

    stream_class._auto_tune_and_send_window_update = lazy_window_update  # type: ignore[method-assign]


def _patch_tcp_reads() -> None:
    read = TrioTCPStream.read

    async def buffered_read(self: Any, n: int | None = None) -> bytes:
        """``TrioTCPStream.read``: with ``buffered-tcp``, a small read takes up to
        ``READ_SIZE`` from the socket and keeps the rest for the next reads.
        Whatever is buffered is served first, whatever the switch says, so no
        byte is ever reordered."""
        buffered: bytearray | None = getattr(self, "_united_buffer", None)
        if buffered:
            take = len(buffered) if n is None or n < 0 else min(n, len(buffered))
            data = bytes(buffered[:take])
            del buffered[:take]
            return data
        if n is None or n <= 0 or n >= READ_SIZE or not _on(BUFFERED_TCP):
            return bytes(await read(self, n))
        data = bytes(await read(self, READ_SIZE))
        if len(data) <= n:
            return data
        self._united_buffer = bytearray(data[n:])
        return data[:n]

    TrioTCPStream.read = buffered_read  # type: ignore[method-assign]


def clear_sender_record(rpc: rpc_pb2.RPC) -> None:
    """Drop the empty record the patched builder left (an empty field would be sent,
    and py-libp2p receivers drop an RPC whose record does not parse)."""
    if rpc.HasField("senderRecord") and not rpc.senderRecord:
        rpc.ClearField("senderRecord")


class RpcReader:
    """Length-prefixed RPCs from a stream, read through a buffer.

    py-libp2p reads the varint prefix one byte per stream read (each a lock,
    a Yamux window update, a trio reschedule); here one read returns every RPC
    that arrived. Limits are py-libp2p's: a prefix of more than 10 bytes is a
    ``ParseError``, a length above ``limit`` is ``MessageTooLarge`` before the
    body is read.
    """

    def __init__(self, stream: INetStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buf = bytearray()

    async def next(self) -> bytes:
        while True:
            header = _varint(self._buf)
            if header is not None:
                length, size = header
                if length > self._limit:
                    raise MessageTooLarge(
                        f"Message length {length} exceeds maximum allowed {self._limit}"
                    )
                end = size + length
                if len(self._buf) >= end:
                    data = bytes(self._buf[size:end])
                    del self._buf[:end]
                    return data
            chunk = await self._stream.read(READ_SIZE)
            if not chunk:
                raise IncompleteReadError("stream ended inside an RPC")
            self._buf += chunk


def _varint(buf: bytearray) -> tuple[int, int] | None:
    """(value, bytes used) of the uvarint at the start of ``buf``; None if incomplete."""
    value = 0
    for i in range(min(len(buf), 10)):
        b = buf[i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, i + 1
    if len(buf) >= 10:
        raise ParseError("Varint decoding error: integer exceeds maximum size of 64 bits")
    return None


class PubkeyCache:
    """Senders' public keys by ``from_id`` (an Ed25519 PeerId embeds its key):
    decoded once per sender instead of once per message."""

    def __init__(self, size: int = _KEY_CACHE_SIZE) -> None:
        self.size = size
        self._keys: collections.OrderedDict[bytes, PublicKey] = collections.OrderedDict()
        self.decoded = 0  # keys decoded from a PeerId
        self.verified = 0  # signatures checked here

    def verify(self, msg: rpc_pb2.Message) -> bool:
        """py-libp2p's ``signature_validator`` for keys embedded in the PeerId (which,
        like py-libp2p, takes precedence over ``msg.key``); a PeerId without its
        key (RSA) goes to py-libp2p's own."""
        if not msg.signature:
            return signature_validator(msg)
        key = self._keys.get(msg.from_id)
        if key is None:
            try:
                sender = ID(msg.from_id)
                key = sender.extract_public_key()
            except Exception:
                key = None
            if key is None or ID.from_pubkey(key) != sender:
                return signature_validator(msg)
            self.decoded += 1
            self._keys[msg.from_id] = key
            if len(self._keys) > self.size:
                self._keys.popitem(last=False)
        signed = rpc_pb2.Message(
            data=msg.data, topicIDs=msg.topicIDs, from_id=msg.from_id, seqno=msg.seqno
        )
        payload = PUBSUB_SIGNING_PREFIX.encode() + signed.SerializeToString()
        self.verified += 1
        try:
            return bool(key.verify(payload, msg.signature))
        except Exception:
            return False


class SpeedupsPubsub(Pubsub):
    """py-libp2p's Pubsub with the per-host speed-ups (``speedups``: names switched on).

    With all of ``sender-record``, ``buffered-reads`` and ``inline-receive`` off
    the read loop is py-libp2p's own; with ``batched-writes`` off, the send loop.
    """

    def __init__(self, *args: object, speedups: Iterable[str] = (), **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.speedups = frozenset(speedups)
        self.pubkeys = PubkeyCache()

    # ---- sending --------------------------------------------------------------------

    def get_hello_packet(self) -> rpc_pb2.RPC:
        packet = super().get_hello_packet()
        clear_sender_record(packet)
        return packet

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        clear_sender_record(rpc_msg)
        return await super().write_msg(stream, rpc_msg)

    async def handle_sending_messages(
        self, peer_id: ID, stream: INetStream, queue: RpcQueue
    ) -> None:
        """py-libp2p's send loop, writing everything queued in one write (``batched-writes``)."""
        if BATCHED_WRITES not in self.speedups:
            await super().handle_sending_messages(peer_id, stream, queue)
            return
        try:
            while True:
                rpc = await queue.pop()
                if rpc is None:
                    return  # closed
                batch = [rpc]
                size = rpc.ByteSize()
                # CountingRpcQueue.pop_nowait (it signals waiting publishers), else the
                # deque's; looked up per batch, as py-libp2p's loop looks up pop per RPC.
                take: Callable[[], rpc_pb2.RPC | None] = _pop_nowait(queue)
                while size < MAX_BATCH_BYTES and (more := take()) is not None:
                    batch.append(more)
                    size += more.ByteSize()
                if not await self._write_batch(stream, batch):
                    return
        except Exception:
            log.debug("sending loop for %s ended with an error", peer_id, exc_info=True)
            self._handle_dead_peer(peer_id)

    async def _write_batch(self, stream: INetStream, batch: list[rpc_pb2.RPC]) -> bool:
        parts = []
        for rpc in batch:
            clear_sender_record(rpc)
            body = rpc.SerializeToString()
            parts.append(encode_uvarint(len(body)))
            parts.append(body)
        try:
            await stream.write(b"".join(parts))
            return True
        except (StreamClosed, StreamReset):
            log.debug("cannot write to %s: stream closed or reset", stream.muxed_conn.peer_id)
            self._handle_dead_peer(stream.muxed_conn.peer_id)
            return False

    # ---- receiving ------------------------------------------------------------------

    async def continuously_read_stream(self, stream: INetStream) -> None:
        """py-libp2p's read loop with ``buffered-reads``, ``inline-receive`` and
        ``sender-record`` (same handling of publish, subscriptions and control;
        a malformed RPC or varint resets the stream instead of ending the task
        with an exception)."""
        on = self.speedups
        if not on & {BUFFERED_READS, INLINE_RECEIVE, SENDER_RECORD}:
            await super().continuously_read_stream(stream)
            return
        peer_id = stream.muxed_conn.peer_id
        reader = RpcReader(stream, self.max_inbound_rpc_size) if BUFFERED_READS in on else None
        inline = INLINE_RECEIVE in on
        records = SENDER_RECORD not in on
        try:
            while self.manager.is_running:
                if reader is not None:
                    incoming = await reader.next()
                else:
                    incoming = await read_varint_prefixed_bytes_limited(
                        stream, self.max_inbound_rpc_size
                    )
                rpc = rpc_pb2.RPC()
                rpc.ParseFromString(incoming)
                if records and not maybe_consume_signed_record(rpc, self.host, peer_id):
                    log.debug("an invalid signed record from %s: RPC ignored", peer_id)
                    continue
                for msg in rpc.publish:
                    if not self._is_subscribed_to_msg(msg):
                        continue
                    if inline:
                        await self._push_inline(peer_id, msg)
                    elif self.manager.is_running:
                        self.manager.run_task(self.push_msg, peer_id, msg)
                if rpc.subscriptions:
                    if len(rpc.subscriptions) > self.max_subscriptions_per_rpc:
                        log.warning(
                            "peer %s sent %d subscriptions (limit %d): ignored",
                            peer_id,
                            len(rpc.subscriptions),
                            self.max_subscriptions_per_rpc,
                        )
                    else:
                        for sub in rpc.subscriptions:
                            self.handle_subscription(peer_id, sub)
                if rpc.HasField("control"):
                    await self.router.handle_rpc(rpc, peer_id)
                if stream.metric_send_channel is not None:
                    await stream.metric_send_channel.send(_event(peer_id, rpc, len(incoming)))
        except (MessageTooLarge, ParseError, DecodeError) as exc:
            log.warning("a malformed or oversized pubsub RPC from %s: %s", peer_id, exc)
            try:
                await stream.reset()
            except Exception:
                pass
            self._handle_dead_peer(peer_id)
        except (StreamEOF, StreamError, IOException, RawConnError):
            log.debug("pubsub stream from %s ended", peer_id)

    async def _push_inline(self, peer_id: ID, msg: rpc_pb2.Message) -> None:
        try:
            await self.push_msg(peer_id, msg)
        except Exception:
            log.exception("handling a message from %s failed", peer_id)

    def verify_signature(self, msg: rpc_pb2.Message, *, own: bool) -> bool:
        """The pubsub signature check of ``push_msg`` (StrictSign), lean with ``lean-checks``."""
        if LEAN_CHECKS not in self.speedups:
            return signature_validator(msg)
        return True if own else self.pubkeys.verify(msg)


def _pop_nowait(queue: RpcQueue) -> Callable[[], rpc_pb2.RPC | None]:
    own = getattr(queue, "pop_nowait", None)
    if own is not None:
        return own  # type: ignore[no-any-return]
    inner = getattr(queue, "_queue", None)
    return inner.pop if inner is not None else (lambda: None)


def _event(peer_id: ID, rpc: rpc_pb2.RPC, size: int) -> GossipsubEvent:
    event = GossipsubEvent()
    event.peer_id = peer_id.pretty()
    event.message_size = size
    event.publish = bool(rpc.publish)
    event.subopts = bool(rpc.subscriptions)
    event.control = rpc.HasField("control")
    return event
