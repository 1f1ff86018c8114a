"""JudgePool: batches judged on worker threads give exactly the one-by-one verdicts."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from united_core import envelope
from united_core.acceptance import Acceptor, JudgePool, Origin, Reason, Refusal, Rules, Verdict
from united_core.identity import Identity
from united_core.wire import envelope_pb2

ALICE, BOB = Identity.generate(), Identity.generate()
TOPIC = "united/s/general"
NOW = 1_800_000_000.0


def sealed(identity: Identity, i: int, *, topic: str = TOPIC) -> bytes:
    ts = int(NOW * 1000) - 1000 + i
    return envelope.seal(
        identity, topic=topic, payload=f"m{i}".encode(), sequence_hint=ts, timestamp_ms=ts
    ).wire


def forged(i: int) -> bytes:
    env = envelope_pb2.Envelope.FromString(sealed(ALICE, i))
    env.payload = b"changed"
    return env.SerializeToString()


def pool_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name)]


def test_a_batch_gets_the_one_by_one_verdicts_in_order_with_one_forgery() -> None:
    """One forged signature in the middle of a batch spread over several threads is
    refused on its own; every other envelope gets the verdict ``judge`` gives it, and
    plugin validators are called in the batch's order, one at a time."""
    seen: list[bytes] = []
    lock = threading.Lock()
    active = [0]

    def plugins(message: envelope.SignedMessage, origin: Origin, from_peer: str) -> list[object]:
        with lock:
            active[0] += 1
            assert active[0] == 1, "validators ran concurrently"
        try:
            seen.append(message.id)
            if message.sender_pubkey == BOB.public_key:
                return [Refusal(Verdict.REJECT, "bob is muted", Reason.NOT_A_MEMBER)]
            return [Verdict.ACCEPT]
        finally:
            with lock:
                active[0] -= 1

    acceptor = Acceptor(Rules(), plugins, clock=lambda: NOW)
    datas = [sealed(ALICE, i) for i in range(300)]
    datas[150] = forged(150)
    datas[10] = b"\xff\xff garbage"
    datas[200] = sealed(ALICE, 200, topic="united/s/other")
    datas[250] = sealed(BOB, 250)
    expected = [acceptor.judge(d, Origin.SUBMISSION, topics={TOPIC}) for d in datas]
    order = list(seen)
    seen.clear()

    async def batch() -> list[object]:
        async with JudgePool(acceptor, workers=3, name="test-judge") as pool:
            assert len(pool_threads("test-judge")) <= 3
            return list(await pool.judge_many(datas, Origin.SUBMISSION, topics={TOPIC}))

    judged = asyncio.run(batch())
    assert judged == expected
    assert seen == order  # same plugin calls, same order
    reasons = {i: j.reason for i, j in enumerate(expected) if not j.accepted}
    assert reasons == {
        10: Reason.MALFORMED,
        150: Reason.BAD_SIGNATURE,
        200: Reason.UNKNOWN_CHANNEL,
        250: Reason.NOT_A_MEMBER,
    }
    assert expected[150].message is None  # a forgery is never authentic
    assert sum(j.accepted for j in expected) == 296


def test_topic_binding_and_history_origin_match_judge() -> None:
    acceptor = Acceptor(Rules(), clock=lambda: NOW)
    datas = [sealed(ALICE, i) for i in range(100)]
    datas[40] = sealed(ALICE, 40, topic="united/s/other")
    datas[41] = forged(41)

    async def batch() -> list[object]:
        async with JudgePool(acceptor, workers=2) as pool:
            return list(await pool.judge_many(datas, Origin.HISTORY, topic=TOPIC))

    judged = asyncio.run(batch())
    assert judged == [acceptor.judge(d, Origin.HISTORY, topic=TOPIC) for d in datas]
    assert judged[40].reason is Reason.WRONG_TOPIC  # type: ignore[attr-defined]
    assert judged[41].reason is Reason.BAD_SIGNATURE  # type: ignore[attr-defined]


def test_the_pool_ends_its_threads_when_closed_and_refuses_work_after() -> None:
    acceptor = Acceptor(Rules(), clock=lambda: NOW)
    datas = [sealed(ALICE, i) for i in range(200)]

    async def scenario() -> None:
        pool = JudgePool(acceptor, workers=2, name="test-close")
        with pytest.raises(RuntimeError):
            await pool.judge_many(datas, Origin.HISTORY)
        pool.start()
        assert pool.running
        assert all(j.accepted for j in await pool.judge_many(datas, Origin.HISTORY))
        assert pool_threads("test-close")
        # A caller cancelled mid-batch: closing still waits for the running slices.
        task = asyncio.ensure_future(pool.judge_many(datas * 20, Origin.HISTORY))
        await asyncio.sleep(0.01)
        task.cancel()
        await pool.close()
        assert not pool.running
        assert not pool_threads("test-close")
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(RuntimeError):
            await pool.judge_many(datas, Origin.HISTORY)

    asyncio.run(scenario())


def test_the_node_services_start_and_stop_their_pools(tmp_path: Path) -> None:
    """The archive's and the cache's pools live exactly as long as their services."""
    from united_archive.config import Config
    from united_archive.service import ArchiveService

    async def scenario() -> None:
        service = ArchiveService(Config(), tmp_path)
        assert not service.judges.running
        await service.start()
        assert service.judges.running
        await service.judges.judge_many([sealed(ALICE, 1)] * 100, Origin.HISTORY)
        assert pool_threads("united-archive-verify")
        await service.stop()
        assert not service.judges.running
        assert not pool_threads("united-archive-verify")

    asyncio.run(scenario())
