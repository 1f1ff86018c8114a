"""``ctl status`` and the plugins' part of it (``united_status``): a member shows its
session with the server (URL, logged in, since when, the last error)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from united_core.testing import call, make_node_dir, running_community, running_node, until


def test_hook_united_status(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_community(tmp_path, members=("alice",), channels=()) as community:

            async def logged_in() -> bool:
                return bool((await community.call("alice", "status"))["discovery"]["logged_in"])

            await until(logged_in, 10, "alice to log in")
            session = (await community.call("alice", "status"))["discovery"]
            assert session["logged_in"] is True and session["last_error"] is None
            assert session["server_url"] == community.node("server").service("directory").url
            assert datetime.fromisoformat(session["since"]).tzinfo is not None
            assert "discovery" not in await community.call("server", "status")
            shown = await community.ctl("alice", "status")  # text for people
            assert shown.returncode == 0, shown.stderr
            assert "discovery:" in shown.stdout and "logged_in: yes" in shown.stdout

        # A member whose server does not answer: not logged in, and why.
        config = make_node_dir(
            tmp_path,
            "lonely",
            plugins=("discovery",),
            extra='[discovery]\nserver_url = "ws://127.0.0.1:9/ws"\n',
        )
        async with running_node(config) as node:

            async def failed() -> object:
                return (await call(node, "status"))["discovery"]["last_error"]

            await until(failed, 10, "the first failed login")
            session = (await call(node, "status"))["discovery"]
            assert session["logged_in"] is False and "127.0.0.1" in session["last_error"]
            assert session["last_error_at"] >= session["since"]

    asyncio.run(scenario())
