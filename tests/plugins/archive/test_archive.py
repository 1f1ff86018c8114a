"""The server archive: real SQLite files, a real server node, real WebSocket clients."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import running_node
from support import registered, server_config
from united_archive.store import ArchiveStore
from united_directory import protocol
from united_directory.client.session import DirectoryClient, DirectoryError

from united_core import envelope
from united_core.envelope import message_id_from_wire
from united_core.identity import Identity
from united_core.testing import Community
from united_core.wire import frames_pb2 as pb

E = pb.ErrorCode
ALICE, BOB = Identity.generate(), Identity.generate()


def seal(identity: Identity, topic: str, text: str, hint: int) -> envelope.SignedMessage:
    return envelope.seal(identity, topic=topic, payload=text.encode(), sequence_hint=hint)


def test_store_assigns_numbers_per_channel_once_and_keeps_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await ArchiveStore.open(tmp_path / "a.sqlite3")
        a = [seal(ALICE, "t/a", f"a{i}", i) for i in range(5)]
        b = [seal(BOB, "t/b", f"b{i}", i) for i in range(3)]
        stored = await store.append([a[0], b[0], a[1], a[2], b[1]])
        assert [(s.topic, s.seq, s.new) for s in stored] == [
            ("t/a", 1, True),
            ("t/b", 1, True),
            ("t/a", 2, True),
            ("t/a", 3, True),
            ("t/b", 2, True),
        ]
        again = await store.append([a[1], a[3], a[3]])  # a duplicate, a new one, the same twice
        assert [(s.seq, s.new) for s in again] == [(2, False), (4, True), (4, False)]
        await store.close()
        reopened = await ArchiveStore.open(tmp_path / "a.sqlite3")
        assert reopened.last_seq("t/a") == 4 and reopened.last_seq("t/b") == 2
        assert [(s.seq, s.new) for s in await reopened.append([a[4], b[2]])] == [
            (5, True),
            (3, True),
        ]
        await reopened.close()

    asyncio.run(scenario())


def test_history_pages_skip_permanent_holes(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "a.sqlite3"
        store = await ArchiveStore.open(path)
        await store.append([seal(ALICE, "t", f"m{i}", i) for i in range(10)])
        await store.close()
        with sqlite3.connect(path) as db:  # seqs 3, 4 and 8 are gone for good
            db.execute("DELETE FROM messages WHERE seq IN (3, 4, 8)")
        store = await ArchiveStore.open(path)
        seen, start = [], 1
        while start:
            page = await store.page("t", start, 3)
            assert page.last_seq == 10
            seen.extend(seq for seq, _ in page.messages)
            start = page.next_seq
        assert seen == [1, 2, 5, 6, 7, 9, 10]
        empty = await store.page("t", 11, 3)
        assert empty.messages == [] and empty.next_seq == 0
        await store.close()

    asyncio.run(scenario())


def test_gossip_and_submissions_are_archived_once_in_lamport_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_node(server_config(tmp_path, plugins=("archive",))) as server:
            directory = server.service("directory")
            archive = server.service("archive")
            url = f"ws://127.0.0.1:{directory.port}/ws"
            channel = await directory.create_channel("general")
            client, alice, _, _ = await registered(url, directory, "alice")
            # A message that reached the server by gossip...
            live = seal(alice, channel.topic, "live", 10)
            await archive.ingest(live)
            await archive._queue.join()
            # ...then a submission after an outage: out of order, with that message again.
            offline = [seal(alice, channel.topic, f"offline-{h}", h) for h in (30, 20, 40)]
            reply = await client.request(
                pb.ClientFrame(
                    submit=pb.SubmitMessages(
                        envelopes=[
                            pb_envelope(m) for m in [offline[0], live, offline[1], offline[2]]
                        ]
                    )
                )
            )
            assigned = {a.message_id: a.seq for a in reply.submit_result.assigned}
            assert assigned[live.id] == 1  # kept its number
            # (Lamport, sender) order: hints 20, 30, 40.
            assert [assigned[m.id] for m in sorted(offline, key=lambda m: m.sequence_hint)] == [
                2,
                3,
                4,
            ]
            # Submitting the same again changes nothing.
            reply = await client.request(
                pb.ClientFrame(submit=pb.SubmitMessages(envelopes=[pb_envelope(offline[0])]))
            )
            assert reply.submit_result.assigned[0].seq == assigned[offline[0].id]
            # History, page by page.
            texts, start = [], 1
            while start:
                page = await client.request(
                    pb.ClientFrame(
                        history=pb.HistoryRequest(
                            channel_id=channel.channel_id, from_seq=start, limit=2
                        )
                    )
                )
                texts += [(m.seq, m.envelope.payload.decode()) for m in page.history_page.messages]
                start = page.history_page.next_seq
            assert texts == [(1, "live"), (2, "offline-20"), (3, "offline-30"), (4, "offline-40")]
            assert archive.snapshot()["stored"] == 4
            await client.close()

    asyncio.run(scenario())


def test_a_senders_gossip_waits_for_its_reconciliation_after_a_restart(tmp_path: Path) -> None:
    """After a (re)start the archive cannot know whether a sender still holds older
    messages of its own: its gossip is numbered only after its reconciliation says
    so (``SubmitMessages.reconciled``), or once settling ends for a silent sender."""

    async def scenario() -> None:
        window = 0.2  # settling ends 10 windows after the start
        config = server_config(
            tmp_path, extra=f"[archive]\nreorder_window = {window}\n", plugins=("archive",)
        )
        async with running_node(config) as server:
            directory, archive = server.service("directory"), server.service("archive")
            url = f"ws://127.0.0.1:{directory.port}/ws"
            channel = await directory.create_channel("general")
            client, alice, _, _ = await registered(url, directory, "alice")

            async def seqs(*messages: envelope.SignedMessage) -> list[int]:
                reply = await client.request(
                    pb.ClientFrame(lookup=pb.LookupMessages(message_ids=[m.id for m in messages]))
                )
                found = {f.message_id: f.seq for f in reply.lookup_result.found}
                return [found.get(m.id, 0) for m in messages]

            newest = seal(alice, channel.topic, "newest", 30)
            await archive.ingest(newest)  # by gossip, before alice reconciled
            await asyncio.sleep(4 * window)  # the plain reorder window has passed
            assert await seqs(newest) == [0]
            older = [seal(alice, channel.topic, f"older-{h}", h) for h in (10, 20)]
            reply = await client.request(
                pb.ClientFrame(submit=pb.SubmitMessages(envelopes=[pb_envelope(m) for m in older]))
            )
            assert len(reply.submit_result.assigned) == 2
            assert await seqs(*older, newest) == [1, 2, 0]  # still waiting for the end
            await client.request(pb.ClientFrame(submit=pb.SubmitMessages(reconciled=True)))
            assert await seqs(*older, newest) == [1, 2, 3]

            # A sender that never reconciles waits only until settling ends.
            bob_client, bob, _, _ = await registered(url, directory, "bob")
            silent = seal(bob, channel.topic, "silent", 40)
            await archive.ingest(silent)
            deadline = time.monotonic() + 20 * window + 5
            while await seqs(silent) == [0] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await seqs(silent) == [4]
            await client.close()
            await bob_client.close()

    asyncio.run(scenario())


def pb_envelope(message: envelope.SignedMessage) -> object:
    from united_core.wire import envelope_pb2

    return envelope_pb2.Envelope.FromString(message.wire)


def test_each_submitted_envelope_gets_its_own_verdict(tmp_path: Path, toy_plugins: Path) -> None:
    """Bad envelopes in a batch are refused one by one, with reasons; the rest are stored.

    Regressions: a 2^64-1 Lamport hint rolled back the whole write batch, an
    envelope dated 2001 was archived, a server-side plugin validator could not
    stop a submission, and one bad envelope failed the whole submission.
    """

    async def scenario() -> None:
        config = server_config(tmp_path, plugins=("archive", "gatekeeper"))
        async with running_node(config) as server:
            directory = server.service("directory")
            url = f"ws://127.0.0.1:{directory.port}/ws"
            channel = await directory.create_channel("general")
            client, alice, _, _ = await registered(url, directory, "alice")
            now = int(time.time() * 1000)
            good = [seal(alice, channel.topic, f"good {i}", now + i) for i in range(3)]
            forged = pb_envelope(seal(alice, channel.topic, "hi", now))
            forged.payload = b"changed"  # type: ignore[attr-defined]
            bad = {
                "not_a_member": pb_envelope(seal(Identity.generate(), channel.topic, "hi", now)),
                "unknown_channel": pb_envelope(seal(alice, "united/other/x", "hi", now)),
                "bad_signature": forged,
                "out_of_bounds": pb_envelope(seal(alice, channel.topic, "huge", 2**64 - 1)),
                "stale": pb_envelope(
                    envelope.seal(
                        alice,
                        topic=channel.topic,
                        payload=b"from 2001",
                        sequence_hint=1,
                        timestamp_ms=978_307_200_000,
                    )
                ),
                "from_the_future": pb_envelope(
                    envelope.seal(
                        alice,
                        topic=channel.topic,
                        payload=b"later",
                        sequence_hint=now,
                        timestamp_ms=now + 86_400_000,
                    )
                ),
                "policy": pb_envelope(seal(alice, channel.topic, "a forbidden word", now)),
            }
            batch = [pb_envelope(good[0]), *bad.values(), pb_envelope(good[1])]
            batch.append(pb_envelope(good[2]))
            reply = await client.request(
                pb.ClientFrame(submit=pb.SubmitMessages(envelopes=batch))  # type: ignore[arg-type]
            )
            result = reply.submit_result
            assert sorted(a.seq for a in result.assigned) == [1, 2, 3]
            assert {bytes(a.message_id) for a in result.assigned} == {m.id for m in good}
            reasons = {
                pb.RefusalReason.Name(r.reason).removeprefix("REFUSAL_REASON_").lower(): r
                for r in result.refused
            }
            assert set(reasons) == set(bad)
            assert all(r.permanent for r in result.refused)
            assert "forbidden" in reasons["policy"].detail
            # The refused ids are the ids of what was sent (garbage included).
            assert bytes(reasons["bad_signature"].message_id) == message_id_from_wire(
                forged.SerializeToString()  # type: ignore[attr-defined]
            )
            archive = server.service("archive")
            assert archive.snapshot()["stored"] == 3
            # The session is still open and a resubmission answers the same numbers.
            again = await client.request(
                pb.ClientFrame(submit=pb.SubmitMessages(envelopes=[pb_envelope(good[1])]))
            )
            assert [a.seq for a in again.submit_result.assigned] == [
                next(a.seq for a in result.assigned if bytes(a.message_id) == good[1].id)
            ]
            garbage = await client.request(
                pb.ClientFrame(
                    submit=pb.SubmitMessages(
                        envelopes=[pb_envelope(seal(alice, channel.topic, "x", now))]
                    ),
                )
            )
            assert len(garbage.submit_result.assigned) == 1
            with pytest.raises(DirectoryError) as info:
                await client.request(pb.ClientFrame(history=pb.HistoryRequest(channel_id="nope")))
            assert info.value.code == E.ERROR_CODE_UNKNOWN_CHANNEL
            # A lookup answers only what the archive holds.
            found = await client.request(
                pb.ClientFrame(lookup=pb.LookupMessages(message_ids=[good[0].id, b"\0" * 32]))
            )
            assert [bytes(f.message_id) for f in found.lookup_result.found] == [good[0].id]
            # Ids that are not 32 bytes are skipped; over 5,000 ids is refused whole;
            # neither ends the session.
            odd = [b"", b"\x01", good[0].id + b"x", good[0].id[:31], b"\xff" * 4096]
            found = await client.request(
                pb.ClientFrame(lookup=pb.LookupMessages(message_ids=[*odd, good[0].id]))
            )
            assert [bytes(f.message_id) for f in found.lookup_result.found] == [good[0].id]
            with pytest.raises(DirectoryError) as info:
                await client.request(
                    pb.ClientFrame(lookup=pb.LookupMessages(message_ids=[good[0].id] * 5001))
                )
            assert info.value.code == E.ERROR_CODE_TOO_LARGE
            found = await client.request(
                pb.ClientFrame(lookup=pb.LookupMessages(message_ids=[good[0].id] * 5000))
            )
            assert {bytes(f.message_id) for f in found.lookup_result.found} == {good[0].id}
            await client.close()

    asyncio.run(scenario())


def test_hook_united_register_frame_handlers(tmp_path: Path) -> None:
    """Without the archive plugin, the directory does not serve history."""

    async def scenario() -> None:
        async with running_node(server_config(tmp_path)) as server:
            directory = server.service("directory")
            url = f"ws://127.0.0.1:{directory.port}/ws"
            channel = await directory.create_channel("general")
            client, _, _, _ = await registered(url, directory, "alice")
            with pytest.raises(DirectoryError) as info:
                await client.request(
                    pb.ClientFrame(history=pb.HistoryRequest(channel_id=channel.channel_id))
                )
            assert info.value.code == E.ERROR_CODE_UNEXPECTED
            await client.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_acknowledged_submissions_survive_sigkill(tmp_path: Path) -> None:
    """A SubmitResult is an acknowledgement: SIGKILL the server, restart it, all there."""
    community = Community(tmp_path)
    try:
        server = community.start_server()
        channel = community.create_channel("general")
        invite = server.ctl("invite")

        async def submit_then_read(kill: bool) -> list[int]:
            client = await DirectoryClient.connect(invite["url"])
            try:
                if kill:
                    welcome = await client.register(ALICE, "alice", invite["code"])
                    assert welcome.you.member_id
                    acked = []
                    for batch in range(20):
                        msgs = [
                            seal(ALICE, channel["topic"], f"m{batch}-{i}", batch * 10 + i)
                            for i in range(10)
                        ]
                        reply = await client.request(
                            pb.ClientFrame(
                                submit=pb.SubmitMessages(envelopes=[pb_envelope(m) for m in msgs])
                            )
                        )
                        acked += [a.seq for a in reply.submit_result.assigned]
                    return acked
                await client.login(ALICE)
                seqs, start = [], 1
                while start:
                    page = await client.request(
                        pb.ClientFrame(
                            history=pb.HistoryRequest(
                                channel_id=channel["channel_id"], from_seq=start
                            )
                        )
                    )
                    seqs += [m.seq for m in page.history_page.messages]
                    start = page.history_page.next_seq
                return seqs
            finally:
                await client.close()

        acked = asyncio.run(submit_then_read(kill=True))
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        server.start()
        assert asyncio.run(submit_then_read(kill=False)) == sorted(acked) == list(range(1, 201))
    finally:
        community.stop()


def test_history_pages_fit_in_a_frame_whatever_the_payloads(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_node(server_config(tmp_path, plugins=("archive",))) as server:
            directory, archive = server.service("directory"), server.service("archive")
            url = f"ws://127.0.0.1:{directory.port}/ws"
            channel = await directory.create_channel("general")
            client, alice, _, _ = await registered(url, directory, "alice")
            big = "x" * (envelope.MAX_PAYLOAD_BYTES - 100)
            await archive.write([seal(alice, channel.topic, big + str(i), i) for i in range(10)])
            seqs, start, pages = [], 1, 0
            while start:
                page = await client.request(
                    pb.ClientFrame(
                        history=pb.HistoryRequest(
                            channel_id=channel.channel_id, from_seq=start, limit=500
                        )
                    )
                )
                assert page.ByteSize() <= protocol.MAX_FRAME_BYTES
                seqs += [m.seq for m in page.history_page.messages]
                start, pages = page.history_page.next_seq, pages + 1
            assert seqs == list(range(1, 11)) and pages >= 3
            await client.close()

    asyncio.run(scenario())


def test_a_large_submission_is_verified_in_parallel_one_forgery_refused_alone(
    tmp_path: Path,
) -> None:
    """A submission spread over the archive's verifying threads: the forged envelope in
    the middle is refused with its reason, every other one is stored, in Lamport order;
    the threads end with the node."""
    import threading

    def verifying_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("united-archive-verify")]

    async def scenario() -> None:
        config = server_config(tmp_path, plugins=("archive",))
        async with running_node(config) as server:
            directory, archive = server.service("directory"), server.service("archive")
            assert archive.judges.running
            url = f"ws://127.0.0.1:{directory.port}/ws"
            channel = await directory.create_channel("general")
            client, alice, _, _ = await registered(url, directory, "alice")
            now = int(time.time() * 1000)
            good = [seal(alice, channel.topic, f"m{i}", now + i) for i in range(400)]
            forged = pb_envelope(seal(alice, channel.topic, "forged", now + 200))
            forged.payload = b"changed"  # type: ignore[attr-defined]
            batch = [pb_envelope(m) for m in good]
            batch.insert(200, forged)
            reply = await client.request(
                pb.ClientFrame(submit=pb.SubmitMessages(envelopes=batch))  # type: ignore[arg-type]
            )
            result = reply.submit_result
            assert len(result.refused) == 1
            refusal = result.refused[0]
            assert refusal.reason == pb.REFUSAL_REASON_BAD_SIGNATURE and refusal.permanent
            assert bytes(refusal.message_id) == message_id_from_wire(
                forged.SerializeToString()  # type: ignore[attr-defined]
            )
            numbers = {bytes(a.message_id): a.seq for a in result.assigned}
            assert [numbers[m.id] for m in good] == list(range(1, 401))
            assert archive.snapshot()["stored"] == 400
            assert verifying_threads()
            await client.close()
        assert not archive.judges.running
        assert not verifying_threads()

    asyncio.run(scenario())
