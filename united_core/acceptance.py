"""One door for every message: the judgement of an envelope, whatever way it came in.

Every path that lets an envelope into a node asks :meth:`Acceptor.judge`:
gossip from a peer (on the trio thread), a member's submission to the server's
archive, this node's own publish, and pages of history from the server. The
checks run in one order, and the first that fails decides:

1. size, decoding, shape (``envelope.open_envelope``);
2. the signature (everything after this is about an authentic envelope);
3. topic binding: the envelope names the topic it arrived on (gossip), or a
   topic the receiver serves (submissions);
4. bounds: ``timestamp`` and ``sequence_hint`` fit a signed 64-bit integer
   (what SQLite and most stores hold);
5. freshness, by origin (:class:`Rules`): gossip and own publishes within
   ``max_message_age`` of now, submissions within ``max_submission_age`` (long
   enough for offline reconciliation); nothing from further in the future than
   ``max_future_skew``, neither its timestamp nor its Lamport hint; history is
   the server's record and is not aged;
6. every plugin's ``united_validate_message`` (membership and volume limits
   are plugins; any REJECT wins, then any IGNORE).

A refusal says why (:class:`Reason`) and whether it is *permanent*: a permanent
refusal will never turn into an acceptance for that envelope on that path, so a
client may drop it; a transient one (a volume limit) may be retried later.

Batches (a history page, a submission) go through :class:`JudgePool`, which
gives each envelope the same judgement with the signatures checked on every CPU.

This module imports neither trio nor libp2p: both threads call it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import hashlib
import inspect
import os
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

from . import defaults
from .envelope import (
    BadSignature,
    EnvelopeError,
    EnvelopeTooLarge,
    SignedMessage,
    TopicMismatch,
    open_envelope,
)

# SQLite INTEGER (and Java's long, and many a JSON decoder) stops here.
MAX_STORED_INT = 2**63 - 1


class Verdict(enum.Enum):
    """A validator's answer (gossipsub's accept / reject / ignore)."""

    ACCEPT = "accept"
    REJECT = "reject"  # invalid: dropped, not forwarded, the forwarder's score drops once
    IGNORE = "ignore"  # dropped and not forwarded, nobody's score changes


class Origin(enum.Enum):
    """How an envelope reached the node; the rules depend on it."""

    GOSSIP = "gossip"  # a gossipsub message from a peer, on a topic
    SUBMISSION = "submission"  # a member uploaded it to this node's archive
    PUBLISH = "publish"  # this node is about to publish it
    HISTORY = "history"  # a page of the server's archive (already judged there)


class Reason(enum.Enum):
    """Why an envelope was refused. ``permanent`` refusals never change on a retry."""

    MALFORMED = ("malformed", True)
    TOO_LARGE = ("too_large", True)
    BAD_SIGNATURE = ("bad_signature", True)
    WRONG_TOPIC = ("wrong_topic", True)
    UNKNOWN_CHANNEL = ("unknown_channel", True)
    OUT_OF_BOUNDS = ("out_of_bounds", True)
    FROM_THE_FUTURE = ("from_the_future", True)
    STALE = ("stale", True)
    NOT_A_MEMBER = ("not_a_member", True)
    POLICY = ("policy", True)  # a plugin validator refused it
    RATE_LIMITED = ("rate_limited", False)  # the sender's volume limit; retry later

    def __init__(self, code: str, permanent: bool) -> None:
        self.code = code
        self.permanent = permanent


@dataclass(frozen=True)
class Refusal:
    """What a plugin validator may return instead of a bare :class:`Verdict`, to say why.

    ``reason`` is shown to users (``ctl send`` prints it); ``code`` classifies it.
    """

    verdict: Verdict
    reason: str
    code: Reason = Reason.POLICY


@dataclass(frozen=True)
class Judgement:
    """The answer of :meth:`Acceptor.judge`."""

    verdict: Verdict
    message: SignedMessage | None = None  # set when the envelope decoded and verified
    reason: Reason | None = None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPT

    @property
    def permanent(self) -> bool:
        return self.reason is not None and self.reason.permanent

    @property
    def authentic(self) -> bool:
        """The envelope's signature verified: the verdict is about the author's
        message itself, so it may be remembered under the envelope id. A refusal
        of unauthenticated bytes (a forged copy) must never be, or anyone could
        condemn someone else's message by sending a broken copy first."""
        return self.message is not None

    def describe(self) -> str:
        if self.accepted:
            return "accepted"
        assert self.reason is not None
        return f"{self.reason.code}: {self.detail}" if self.detail else self.reason.code


class MessageRefused(Exception):
    """An envelope this node was asked to publish or store was refused; says why."""

    def __init__(self, judgement: Judgement) -> None:
        super().__init__(judgement.describe())
        self.judgement = judgement


@dataclass(frozen=True)
class Rules:
    """Freshness windows, per origin. Plugins set them from their sections
    (``united_p2p_configure``): ``[mesh]`` for gossip, ``[archive]`` for submissions."""

    max_message_age: float = defaults.MAX_MESSAGE_AGE
    max_future_skew: float = defaults.MAX_FUTURE_SKEW
    max_submission_age: float = defaults.MAX_SUBMISSION_AGE


# (message, origin, from_peer) -> each plugin's verdict, Refusal or None.
PluginValidators = Callable[[SignedMessage, Origin, str], list[object]]


def _no_plugins(message: SignedMessage, origin: Origin, from_peer: str) -> list[object]:
    return []


def undecodable_id(data: bytes) -> bytes:
    """The id of bytes that are not an envelope (docs/wire-format.md): stable, never an
    envelope's id, so a refusal can name what it refused."""
    return hashlib.sha256(b"united/undecodable\x00" + data).digest()


class Acceptor:
    """Judges envelopes; one per node, shared by every path (thread-safe if plugins are)."""

    def __init__(
        self,
        rules: Rules | None = None,
        plugins: PluginValidators = _no_plugins,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules or Rules()
        self._plugins = plugins
        self._clock = clock

    def judge(
        self,
        data: bytes,
        origin: Origin,
        *,
        topic: str | None = None,
        topics: Container[str] | None = None,
        from_peer: str = "",
    ) -> Judgement:
        """Judge ``data`` (an encoded envelope) arriving by ``origin``.

        :param topic: the topic it arrived on (gossip, history); it must be named by it.
        :param topics: the topics the receiver serves (submissions); it must name one.
        :param from_peer: the forwarding or submitting peer (base58), for plugins.
        """
        opened = open_checked(data, topic)
        if isinstance(opened, Judgement):
            return opened
        return self.judge_message(opened, origin, topics=topics, from_peer=from_peer)

    def judge_opened(
        self,
        opened: Sequence[SignedMessage | Judgement],
        origin: Origin,
        *,
        topics: Container[str] | None = None,
        from_peer: str = "",
    ) -> list[Judgement]:
        """Steps 3 to 6, in order, for what :func:`open_checked` returned: the same
        verdicts, in the same order of plugin calls, as :meth:`judge` one by one."""
        return [
            item
            if isinstance(item, Judgement)
            else self.judge_message(item, origin, topics=topics, from_peer=from_peer)
            for item in opened
        ]

    def judge_message(
        self,
        message: SignedMessage,
        origin: Origin,
        *,
        topics: Container[str] | None = None,
        from_peer: str = "",
    ) -> Judgement:
        """Steps 3 to 6 for an envelope already opened (its signature verified)."""
        if topics is not None and message.topic not in topics:
            return _refuse(message, Reason.UNKNOWN_CHANNEL, f"no channel has topic {message.topic}")
        if message.timestamp > MAX_STORED_INT or message.sequence_hint > MAX_STORED_INT:
            return _refuse(message, Reason.OUT_OF_BOUNDS, "timestamp or sequence_hint over 2^63-1")
        if origin is not Origin.HISTORY:
            refused = self._freshness(message, origin)
            if refused is not None:
                return refused
        return self._ask_plugins(message, origin, from_peer)

    def _freshness(self, message: SignedMessage, origin: Origin) -> Judgement | None:
        rules = self.rules
        now_ms = self._clock() * 1000
        ceiling = now_ms + rules.max_future_skew * 1000
        if message.timestamp > ceiling:
            return _refuse(
                message,
                Reason.FROM_THE_FUTURE,
                f"stamped {(message.timestamp - now_ms) / 1000:.0f} s ahead of this node's clock",
            )
        if message.sequence_hint > ceiling:
            return _refuse(message, Reason.FROM_THE_FUTURE, "Lamport hint ahead of the clock")
        max_age = rules.max_submission_age if origin is Origin.SUBMISSION else rules.max_message_age
        age = (now_ms - message.timestamp) / 1000
        if age > max_age:
            return Judgement(
                Verdict.IGNORE,
                message,
                Reason.STALE,
                f"stamped {age:.0f} s ago, over the {max_age:.0f} s window for {origin.value}"
                + (" (is this node's clock right?)" if origin is Origin.PUBLISH else ""),
            )
        return None

    def _ask_plugins(self, message: SignedMessage, origin: Origin, from_peer: str) -> Judgement:
        try:
            answers = self._plugins(message, origin, from_peer)
        except Exception as exc:  # a broken validator fails closed
            return _refuse(message, Reason.POLICY, f"a validator failed: {type(exc).__name__}")
        ignored: Judgement | None = None
        for answer in answers:
            if inspect.isawaitable(answer):  # an async validator: its verdict would be lost
                if inspect.iscoroutine(answer):
                    answer.close()
                return _refuse(
                    message,
                    Reason.POLICY,
                    "a united_validate_message implementation is async; it must be a plain "
                    "function (it runs on the trio thread)",
                )
            if isinstance(answer, Refusal):
                verdict, reason, code = answer.verdict, answer.reason, answer.code
            elif isinstance(answer, Verdict):
                verdict, reason, code = answer, "refused by a plugin validator", Reason.POLICY
            else:
                continue
            if verdict is Verdict.REJECT:
                return Judgement(Verdict.REJECT, message, code, reason)
            if verdict is Verdict.IGNORE and ignored is None:
                ignored = Judgement(Verdict.IGNORE, message, code, reason)
        return ignored or Judgement(Verdict.ACCEPT, message)


def _refuse(message: SignedMessage, reason: Reason, detail: str) -> Judgement:
    return Judgement(Verdict.REJECT, message, reason, detail)


def open_checked(data: bytes, topic: str | None = None) -> SignedMessage | Judgement:
    """Steps 1 and 2 of :meth:`Acceptor.judge` (and the topic binding, checked after the
    signature): the opened envelope, or the refusal. A pure function of its arguments,
    so any thread may run it; almost all of its time is the Ed25519 check, in C with
    the GIL released, so threads run it in parallel."""
    try:
        return open_envelope(data, expected_topic=topic)
    except TopicMismatch as exc:
        return Judgement(Verdict.REJECT, None, Reason.WRONG_TOPIC, str(exc))
    except BadSignature as exc:
        return Judgement(Verdict.REJECT, None, Reason.BAD_SIGNATURE, str(exc))
    except EnvelopeTooLarge as exc:
        return Judgement(Verdict.REJECT, None, Reason.TOO_LARGE, str(exc))
    except EnvelopeError as exc:
        return Judgement(Verdict.REJECT, None, Reason.MALFORMED, str(exc))


def _open_all(datas: Sequence[bytes], topic: str | None) -> list[SignedMessage | Judgement]:
    return [open_checked(data, topic) for data in datas]


def verify_workers() -> int:
    """Threads a :class:`JudgePool` uses: one per CPU (Ed25519 is CPU-bound C code)."""
    return max(1, os.cpu_count() or 1)


class JudgePool:
    """Judges batches of envelopes (history pages, submissions) on worker threads.

    :meth:`judge_many` answers exactly what :meth:`Acceptor.judge` would, envelope by
    envelope and in order: the decoding and the signature check (steps 1 and 2, pure)
    run in slices on every worker at once; then steps 3 to 6 run in order on one
    worker, so plugin validators see the envelopes in the batch's order, one at a
    time, as they would one by one. A refusal is the refused envelope's alone.

    Asyncio only (the trio thread keeps calling :meth:`Acceptor.judge`). Its owner
    starts it and closes it (``async with``): closing waits for the slices still
    running, so no thread outlives it.
    """

    MIN_SLICE = 32  # envelopes: below this, a thread hop costs more than it saves

    def __init__(
        self, acceptor: Acceptor, workers: int | None = None, *, name: str = "united-verify"
    ) -> None:
        self.acceptor = acceptor
        self.workers = workers or verify_workers()
        self._name = name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.workers, thread_name_prefix=self._name
            )

    async def close(self) -> None:
        """Stop the workers: queued slices are dropped (their callers were cancelled or
        the node is stopping), running ones finish; returns once every thread ended."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def __aenter__(self) -> JudgePool:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def judge_many(
        self,
        datas: Sequence[bytes],
        origin: Origin,
        *,
        topic: str | None = None,
        topics: Container[str] | None = None,
        from_peer: str = "",
    ) -> list[Judgement]:
        """:meth:`Acceptor.judge` for each of ``datas``, in order (same arguments)."""
        executor = self._executor
        if executor is None:
            raise RuntimeError("the judge pool is not running")
        if not datas:
            return []
        loop = asyncio.get_running_loop()
        slices = max(1, min(self.workers, len(datas) // self.MIN_SLICE))
        step = -(-len(datas) // slices)
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(executor, _open_all, datas[i : i + step], topic)
                for i in range(0, len(datas), step)
            )
        )
        opened = [item for part in parts for item in part]
        judge = functools.partial(
            self.acceptor.judge_opened, opened, origin, topics=topics, from_peer=from_peer
        )
        return await loop.run_in_executor(executor, judge)
