"""The word filter on real nodes (a server and members on loopback, in this process),
set up with the fixtures ``united`` ships for pytest: united_community, united_node_dir,
united_node. Each test runs its scenario with ``asyncio.run``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from united_wordfilter.commands import render_panel, render_wordcount
from united_wordfilter.config import Config
from united_wordfilter.service import WordFilter

from united_core.api import Origin, Reason, Refusal, SignedMessage, Verdict

WORDS = '[wordfilter]\nwords = ["heck", "Darn"]\n'


def test_a_forbidden_word_is_refused_with_the_reason_and_never_delivered(
    united_community: Any,
) -> None:
    async def scenario() -> None:
        async with united_community(("alice", "bob"), plugins=["wordfilter"], extra=WORDS) as c:
            refused = await c.ctl("alice", "send", "general", "what the HECK is this")
            assert refused.returncode == 1
            assert "contains a forbidden word: heck" in refused.stderr

            sent = await c.ctl("alice", "send", "general", "hello there, friends")
            assert sent.returncode == 0, sent.stderr

            async def bob_counted() -> Any:
                rows = (await c.call("bob", "wordcount"))["channels"]
                return rows.get("general", {}).get("messages")

            await c.until(bob_counted, 15, "bob to receive the allowed message")
            report = (await c.ctl("bob", "wordcount", "general", "--json")).json()
            assert report["channels"] == {"general": {"messages": 1, "words": 3}}

            text = await c.ctl("bob", "wordcount")
            assert text.returncode == 0
            assert "#general: 1 message(s), 3 word(s)" in text.stdout

            stats = await c.stats("alice")
            assert stats["wordfilter"]["refused"] == {"publish": 1}
            assert stats["wordfilter"]["channels"]["general"] == {"messages": 1, "words": 3}

    asyncio.run(scenario())


def test_a_member_without_the_list_is_stopped_by_the_others(united_community: Any) -> None:
    """alice's node filters nothing; the server and bob ignore her forbidden message
    on gossip (without lowering anybody's score) and still deliver the next one."""

    async def scenario() -> None:
        async with united_community(
            ("alice", "bob"),
            plugins=["wordfilter"],
            extra=WORDS,
            node_extra={"alice": "[wordfilter]\nwords = []\n"},
        ) as c:
            assert (await c.ctl("alice", "send", "general", "darn it")).returncode == 0
            assert (await c.ctl("alice", "send", "general", "all good")).returncode == 0

            async def server_refused() -> Any:
                return (await c.stats("server"))["wordfilter"]["refused"].get("gossip")

            async def bob_counted() -> Any:
                return (await c.stats("bob"))["wordfilter"]["channels"]["general"]["messages"]

            await c.until(server_refused, 15, "the server to ignore the forbidden message")
            await c.until(bob_counted, 15, "bob to receive the allowed message")
            assert (await c.stats("bob"))["wordfilter"]["channels"]["general"] == {
                "messages": 1,
                "words": 2,
            }
            assert (await c.stats("alice"))["wordfilter"]["channels"]["general"]["messages"] == 2
            scores = await c.server.p2p.scores()
            assert scores[c.members["alice"].identity.peer_id] >= 0

    asyncio.run(scenario())


def test_a_word_list_entry_must_be_one_word(united_node_dir: Any, united_node: Any) -> None:
    config = united_node_dir(plugins=["wordfilter"], extra='[wordfilter]\nwords = ["two words"]\n')

    async def scenario() -> None:
        async with united_node(config):
            pass

    with pytest.raises(Exception, match=r"\[wordfilter\] words: 'two words' is not a single word"):
        asyncio.run(scenario())


def test_a_single_node_counts_its_own_messages_and_stops_cleanly(
    united_node_dir: Any, united_node: Any, united_ctl: Any
) -> None:
    config = united_node_dir(plugins=["wordfilter"], extra="[wordfilter]\ncount_words = false\n")

    async def scenario() -> None:
        async with united_node(config) as node:
            assert node.running
            off = await united_ctl(config, "wordcount")
            assert off.returncode == 1
            assert "word counting is off" in off.stderr
            stats = (await node.stats.snapshot())["plugins"]["wordfilter"]
            assert stats == {"words": 0, "refused": {}, "counting": False, "channels": {}}

    asyncio.run(scenario())


def message(text: str) -> SignedMessage:
    return SignedMessage(
        id=b"\x00" * 32,
        sender_pubkey=b"\x01" * 32,
        topic="united/server/channel",
        message_type=1,
        timestamp=0,
        sequence_hint=0,
        payload=text.encode(),
        signature=b"\x02" * 64,
        wire=b"",
    )


def test_the_verdict_depends_on_the_origin() -> None:
    word_filter = WordFilter(Config(words=("heck",)))
    reject = Refusal(Verdict.REJECT, "contains a forbidden word: heck", Reason.POLICY)
    assert word_filter.judge(message("Heck!"), Origin.PUBLISH) == reject
    assert word_filter.judge(message("heck"), Origin.SUBMISSION) == reject
    ignored = word_filter.judge(message("oh heck"), Origin.GOSSIP)
    assert ignored is not None and ignored.verdict is Verdict.IGNORE
    assert word_filter.judge(message("heck"), Origin.HISTORY) is None
    assert word_filter.judge(message("checkpoint"), Origin.PUBLISH) is None  # whole words
    assert word_filter.refused() == {"publish": 1, "submission": 1, "gossip": 1}


def test_render_for_people_and_the_panel() -> None:
    result = {
        "words": 2,
        "refused": {"publish": 2, "gossip": 1},
        "counting": True,
        "channels": {"general": {"messages": 4, "words": 9}},
    }
    assert render_wordcount(result) == (
        "#general: 4 message(s), 9 word(s)\nrefused: 3 (gossip 1, publish 2)"
    )
    lines = render_panel({"plugins": {"wordfilter": result}})
    assert lines[-1] == "  refused: 3 of 2 listed word(s)"
    assert render_panel({"plugins": {}}) == ["  (no figures yet)"]
