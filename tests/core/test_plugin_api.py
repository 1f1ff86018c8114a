"""The plugin API's promises, on real nodes with the toy plugins.

- Lifecycle: a hook fired while the node starts reaches only plugins that have
  started (their hook objects are registered once every Resource is up).
- Trio-side hooks: one that calls an asyncio-side API gets a clear error naming
  the hook; that message is refused and the node keeps accepting the others.
- Stats: each plugin's figures live under its own name, never overwritten.
- API version: a plugin that needs another API version is a config error.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from conftest import make_node_dir, running_node

from united_core import envelope
from united_core.api import API_VERSION, check_api_requirement

TOPIC = "united/test/api"


def test_a_hook_fired_during_start_up_reaches_only_started_plugins(
    tmp_path: Path, toy_plugins: Path
) -> None:
    import toy_announcer
    import toy_listener

    toy_announcer.EVENTS.clear()
    toy_listener.EVENTS.clear()
    config = make_node_dir(tmp_path, plugins=["recorder", "announcer", "listener"])

    async def scenario() -> None:
        async with running_node(config) as node:
            # The announcer fired while the listener had not started: nobody heard it,
            # and nothing failed (before: "LookupError: ... has not started").
            assert toy_announcer.EVENTS == ["announcer start"]
            assert toy_listener.EVENTS == ["listener start"]
            node.hook.toy_extra_hook()  # once running, every plugin hears
            assert toy_announcer.EVENTS[-1] == "announcer heard"
            assert toy_listener.EVENTS[-1] == "listener heard"
            # Control commands answer "starting" until then; running now:
            assert node.state.value == "running"
        assert toy_listener.EVENTS[-1] == "listener stop"

    asyncio.run(scenario())


def test_a_trio_side_hook_calling_an_asyncio_api_gets_a_clear_error(
    tmp_path: Path, toy_plugins: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_a = make_node_dir(tmp_path, "a", plugins=["recorder", "announcer"])
    config_b = make_node_dir(tmp_path, "b", plugins=[])

    async def scenario() -> None:
        async with running_node(config_a) as a, running_node(config_b) as b:
            await a.p2p.subscribe(TOPIC)
            await b.p2p.subscribe(TOPIC)
            await b.p2p.connect(a.p2p.listen_addrs[0])
            await asyncio.sleep(1.5)
            for i, payload in enumerate((b"call-asyncio", b"hello", b"again")):
                sealed = envelope.seal(b.identity, topic=TOPIC, payload=payload, sequence_hint=i)
                await b.p2p.publish(TOPIC, sealed.wire)
            import toy_recorder

            def got() -> list[bytes]:
                return [
                    k["payload"]
                    for n, k in toy_recorder.CALLS
                    if n == "message_received" and k["node"] == a.identity.peer_id
                ]

            async with asyncio.timeout(10):
                while len(got()) < 2:
                    await asyncio.sleep(0.05)
            assert got() == [b"hello", b"again"]  # the node keeps accepting messages
            assert a.p2p.counters.rejected == 1

    with caplog.at_level(logging.ERROR, logger="united_core"):
        asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if "united_validate_message" in r.getMessage()]
    assert errors, [r.getMessage() for r in caplog.records]
    assert "P2PRuntime.peers" in errors[0] and "trio-side hook" in errors[0]


def test_two_plugins_contribute_stats_under_their_own_names(
    tmp_path: Path, toy_plugins: Path
) -> None:
    config = make_node_dir(tmp_path, plugins=["recorder", "listener"])

    async def scenario() -> None:
        async with running_node(config) as node:
            plugins = (await node.stats.snapshot())["plugins"]
            assert plugins["recorder"]["calls"] >= 0
            assert plugins["listener"] == {"calls": -1}

    asyncio.run(scenario())


def test_api_version_requirements() -> None:
    major, minor = API_VERSION
    assert check_api_requirement(f">={major}.{minor}") is None
    assert check_api_requirement(f">={major}.0,<{major + 1}") is None
    assert "needs plugin API" in (check_api_requirement(f">={major + 1}.0") or "")
    assert "cannot read" in (check_api_requirement("latest") or "")


def test_a_plugin_needing_another_api_version_is_a_config_error(
    tmp_path: Path, toy_plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import toy_listener

    from united_core.config import ConfigError
    from united_core.node import load_settings

    monkeypatch.setattr(toy_listener, "UNITED_API", ">=99.0", raising=False)
    config = make_node_dir(tmp_path, plugins=["listener"])
    with pytest.raises(ConfigError, match=r"'listener'.*needs plugin API >=99\.0"):
        load_settings(config)


def test_the_control_api_answers_starting_until_every_plugin_has_started(
    tmp_path: Path, toy_plugins: Path
) -> None:
    import toy_listener

    from united_core.control import ControlClient, ControlClientError
    from united_core.node import Node, load_settings

    config = make_node_dir(tmp_path, plugins=["listener"])

    async def scenario() -> None:
        gate = asyncio.Event()
        toy_listener.HOLD[:] = [gate]
        settings, pm, _ = load_settings(config)
        node = Node(settings, pm)
        task = asyncio.create_task(node.run())
        try:
            socket = settings.resolve("united.sock")
            async with asyncio.timeout(10):
                while not socket.exists():
                    await asyncio.sleep(0.02)
            client = await ControlClient.connect(socket)
            try:
                assert (await client.call("status"))["state"] == "starting"
                with pytest.raises(ControlClientError, match="starting"):
                    await client.call("peers")
                gate.set()
                async with asyncio.timeout(10):
                    while (await client.call("status"))["state"] != "running":
                        await asyncio.sleep(0.02)
                assert await client.call("peers") == []
            finally:
                await client.close()
        finally:
            toy_listener.HOLD.clear()
            gate.set()
            node.request_stop()
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_author_mistakes_are_reported_not_silent(tmp_path: Path, toy_plugins: Path) -> None:
    """An async validator refuses (instead of its verdict being lost and the message
    accepted), async stats are reported, and a misspelt hook name stops the start."""
    from united_core.acceptance import Origin, Reason
    from united_core.config import ConfigError

    config = make_node_dir(tmp_path, "a", plugins=["sloppy"])

    async def scenario() -> None:
        async with running_node(config) as node:
            wire = envelope.seal(node.identity, topic=TOPIC, payload=b"x", sequence_hint=1).wire
            judgement = node.p2p.acceptor.judge(wire, Origin.PUBLISH)
            assert judgement.reason is Reason.POLICY and "async" in judgement.detail
            stats = (await node.stats.snapshot())["plugins"]["sloppy"]
            assert "plain function" in stats["error"]
        misspelt = make_node_dir(
            tmp_path, "b", plugins=["sloppy"], extra='[sloppy]\nmode = "misspelt"\n'
        )
        with pytest.raises(ConfigError, match=r"sloppy\.hooks\.united_validate_mesage"):
            async with running_node(misspelt):
                pass

    asyncio.run(scenario())


def test_merge_toml_text_replaces_keys_in_their_own_table_only() -> None:
    from united_core.testing import merge_toml_text

    text = '[node]\nname = 1\nplugins = ["a"]\n\n[other]\nname = 2\n'
    merged = merge_toml_text(text, '[node]\nname = 5\nplugins = ["b"]\n[new]\nx = 1\n')
    import tomllib

    assert tomllib.loads(merged) == {
        "node": {"name": 5, "plugins": ["b"]},
        "other": {"name": 2},
        "new": {"x": 1},
    }
