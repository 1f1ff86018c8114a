"""The operator reads the archive: ``ctl history`` on a real server, in a process as
people and scripts run it, and the archive's figures in the stats."""

from __future__ import annotations

import asyncio
from pathlib import Path

from united_archive.store import ArchiveStore

from united_core import envelope
from united_core.containers import collect_commands
from united_core.identity import Identity
from united_core.plugins import get_plugin_manager
from united_core.testing import running_community


def test_the_store_counts_and_reads_the_newest_across_a_restart(tmp_path: Path) -> None:
    alice = Identity.generate()

    def seal(topic: str, i: int) -> envelope.SignedMessage:
        return envelope.seal(alice, topic=topic, payload=f"{topic}{i}".encode(), sequence_hint=i)

    async def scenario() -> None:
        store = await ArchiveStore.open(tmp_path / "a.sqlite3")
        try:
            assert store.last_stored is None and store.counts() == {}
            a = [seal("t/a", i) for i in range(4)]
            await store.append([*a, seal("t/b", 0)])
            await store.append([a[1]])  # known: counted once
            assert store.counts() == {"t/a": 4, "t/b": 1}
            assert store.last_stored is not None and store.last_stored[:2] == ("t/b", 1)
            assert [seq for seq, _ in await store.latest("t/a", 2)] == [3, 4]
        finally:
            await store.close()
        reopened = await ArchiveStore.open(tmp_path / "a.sqlite3")
        try:
            assert reopened.counts() == {"t/a": 4, "t/b": 1}
            assert reopened.last_stored is not None and reopened.last_stored[:2] == ("t/b", 1)
        finally:
            await reopened.close()

    asyncio.run(scenario())


def test_ctl_history_on_the_server_reads_the_archive(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_community(tmp_path, ("alice",), channels=("general", "dev")) as c:
            for i in range(5):
                await c.call(
                    "alice", "send", "general", f"m{i}" + ("\nsecond line" if i == 4 else "")
                )
            await c.call("alice", "send", "dev", "elsewhere")

            async def archived() -> bool:
                return bool((await c.stats("server"))["archive"]["messages"] == 6)

            await c.until(archived, 20, "six messages in the archive")
            figures = (await c.stats("server"))["archive"]
            assert figures["channels"] == 2
            assert figures["last_seq"] == {"general": 5, "dev": 1}
            # ctl status: what the archive holds and the newest message it stored.
            status = (await c.call("server", "status"))["archive"]
            assert status["messages"] == 6 and status["channels"] == 2
            assert (status["last_channel"], status["last_seq"]) == ("dev", 1)
            assert status["last_stored_at"].endswith("+00:00")

            # For people: a table, the newest N (oldest first), one line a message.
            table = await c.ctl("server", "history", "general", "--limit", "3")
            assert table.returncode == 0, table.stderr
            lines = table.stdout.rstrip("\n").splitlines()
            assert lines[0].split() == ["SEQ", "TIME", "SENDER", "TEXT"]
            assert [line.split()[0] for line in lines[1:]] == ["3", "4", "5"]
            assert all(" alice " in line for line in lines[1:])
            assert lines[-1].endswith("m4 \u21b5 second line")
            assert lines[1].endswith("  m2")

            # For scripts: JSON rows, the newest 50 by default; --from pages forward.
            rows = (await c.ctl("server", "history", "general", "--json")).json()
            assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
            assert rows[0]["text"] == "m0" and rows[0]["sender"] == "alice"
            assert rows[0]["channel"] == "general" and len(rows[0]["id"]) == 64
            assert {"timestamp", "sequence_hint"} <= set(rows[0])
            page = (
                await c.ctl("server", "history", "general", "--from", "2", "--limit", "2", "--json")
            ).json()
            assert [r["text"] for r in page] == ["m1", "m2"]
            by_id = await c.call("server", "history", c.channels["dev"]["channel_id"])
            assert [r["text"] for r in by_id] == ["elsewhere"]

            # Refusals: one line, exit 1.
            for args, why in (
                (("nope",), "no channel 'nope' in the archive; channels: dev, general"),
                (("general", "--limit", "0"), "--limit must be between 1 and 10000"),
                (("general", "--limit", "x"), "--limit takes a number"),
                (("--limit", "3"), "usage: history CHANNEL [--from SEQ] [--limit N]"),
            ):
                refused = await c.ctl("server", "history", *args)
                assert refused.returncode == 1, args
                assert why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    asyncio.run(scenario())


def test_history_keeps_its_name_unless_another_plugin_serves_it() -> None:
    """A server has the archive's ``history``; a node that also runs the member's cache
    keeps the cache's ``history`` and gets the archive's as ``archive-history``."""
    server = collect_commands(get_plugin_manager(["archive"]))
    assert "history" in server and "server's archive" in server["history"].help
    both = collect_commands(get_plugin_manager(["discovery", "cache", "archive"]))
    assert "local cache" in both["history"].help
    assert "server's archive" in both["archive-history"].help
