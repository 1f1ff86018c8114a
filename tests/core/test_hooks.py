"""Every hook, exercised by real nodes on loopback with the toy plugins.

One scenario runs once for the module (three nodes, a connection, messages, a
refused peer, control commands, stats, shutdown); each ``test_hook_<name>``
checks what that hook saw. tests/test_hookspecs.py requires one such test per hook.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TOY_PLUGINS, make_node_dir, running_node

from united_core import envelope
from united_core.control import ControlClient

TOPIC = "united/test/0b8f4a5e-33c4-4d9b-a0f4-9f2b8d1f7c11"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    sys.path.insert(0, str(TOY_PLUGINS))
    try:
        import toy_reader
        import toy_recorder
        import toy_store

        toy_recorder.CALLS.clear()
        toy_store.EVENTS.clear()
        toy_reader.EVENTS.clear()
        return asyncio.run(
            _run(tmp_path_factory.mktemp("hooks"), toy_recorder, toy_store, toy_reader)
        )
    finally:
        sys.path.remove(str(TOY_PLUGINS))


async def _run(base: Path, recorder: Any, store: Any, reader: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    config_c = make_node_dir(base, "c", plugins=[])
    from united_core.identity import load_key_file

    denied = load_key_file(config_c.parent / "identity.key").peer_id
    config_a = make_node_dir(
        base,
        "a",
        plugins=["recorder", "gatekeeper", "store", "reader", "ping"],
        extra=f'[recorder]\nlabel = "node-a"\nheartbeat = 0.5\n[gatekeeper]\ndeny = ["{denied}"]\n',
    )
    config_b = make_node_dir(base, "b", plugins=["recorder", "ping"])
    async with running_node(config_a) as a, running_node(config_b) as b:
        out["a"], out["b"] = a.identity.peer_id, b.identity.peer_id
        out["a_heartbeat"] = a.p2p.options.gossip.heartbeat_interval
        out["extra_hook"] = hasattr(a.pm.hook, "toy_extra_hook")
        out["recorder_settings"] = a.settings["recorder"]
        await a.p2p.subscribe(TOPIC)
        await b.p2p.subscribe(TOPIC)
        await b.p2p.connect(a.p2p.listen_addrs[0])
        await asyncio.sleep(1.5)
        for i, payload in enumerate((b"reject-me", b"ignore-me", b"hello")):
            sealed = envelope.seal(b.identity, topic=TOPIC, payload=payload, sequence_hint=i)
            await b.p2p.publish(TOPIC, sealed.wire)
        async with asyncio.timeout(5):
            while not any(
                n == "message_received" and k["payload"] == b"hello" and k["node"] == out["a"]
                for n, k in recorder.CALLS
            ):
                await asyncio.sleep(0.05)
        out["a_counters"] = dict(vars(a.p2p.counters))

        async with running_node(config_c) as c:
            try:
                await c.p2p.connect(a.p2p.listen_addrs[0])
                out["denied_connect"] = "connected"
            except Exception as exc:
                out["denied_connect"] = type(exc).__name__

        client = await ControlClient.connect(a.settings.resolve("united.sock"))
        try:
            out["echo"] = await client.call("echo", ["x", "y"])
            out["count"] = [e async for e in client.stream("count", ["4"])]
            out["ping"] = await client.call("ping", [out["b"], "3"])
        finally:
            await client.close()
        out["stats"] = await a.stats.snapshot()
        from united_core.console import panel_sections, render_panel

        out["panel"] = render_panel(out["stats"], panel_sections(a.pm))
        await b.p2p.disconnect(out["a"])
        async with asyncio.timeout(5):
            while not any(n == "peer_disconnected" for n, _ in recorder.CALLS):
                await asyncio.sleep(0.05)
    out["calls"] = list(recorder.CALLS)
    out["store_events"] = list(store.EVENTS)
    out["reader_events"] = list(reader.EVENTS)
    return out


def calls(scenario: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [kwargs for n, kwargs in scenario["calls"] if n == name]


def test_hook_united_addhooks(scenario: dict[str, Any]) -> None:
    assert scenario["extra_hook"] is True


def test_hook_united_register_config_sections(scenario: dict[str, Any]) -> None:
    assert scenario["recorder_settings"].label == "node-a"
    assert scenario["recorder_settings"].heartbeat == 0.5


def test_hook_united_register_containers(scenario: dict[str, Any]) -> None:
    # The reader depends on the store: it starts after it and stops before it.
    assert scenario["store_events"] == ["store start", "store stop"]
    assert scenario["reader_events"] == ["reader start (store has 0 items)", "reader stop"]
    starts = calls(scenario, "service_start")
    assert {c["peer_id"] for c in starts} == {scenario["a"], scenario["b"]}
    assert {c["label"] for c in starts} == {"node-a", "toy"}
    assert len(calls(scenario, "service_stop")) == 2


def test_hook_united_register_commands(scenario: dict[str, Any]) -> None:
    assert scenario["echo"] == {"echo": ["x", "y"]}
    assert scenario["count"] == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
    ping = scenario["ping"]
    assert ping["peer_id"] == scenario["b"] and len(ping["rtt_ms"]) == 3
    assert 0 < ping["median_ms"] < 1000


def test_hook_united_p2p_configure(scenario: dict[str, Any]) -> None:
    # The core's tryfirst implementation ran before the recorder saw the options.
    assert {c["heartbeat"] for c in calls(scenario, "p2p_configure")} == {1.0}
    assert scenario["a_heartbeat"] == 0.5


def test_hook_united_register_panel_sections(scenario: dict[str, Any]) -> None:
    panel = scenario["panel"]
    assert "Recorder" in panel and "calls: " in panel
    # The core's sections come first, then the plugins' by order and title.
    assert panel.index("Peers") < panel.index("Recorder")


def test_hook_united_peer_allowed(scenario: dict[str, Any]) -> None:
    allowed = calls(scenario, "peer_allowed")
    assert {(c["peer_id"], c["direction"]) for c in allowed} >= {
        (scenario["b"], "inbound"),
        (scenario["a"], "outbound"),
    }
    assert all(c["thread"].startswith("united-p2p-") for c in allowed)
    # The gatekeeper refused node C inside the handshake; the dialer saw the failure.
    assert scenario["denied_connect"] != "connected"


def test_hook_united_validate_message(scenario: dict[str, Any]) -> None:
    seen = calls(scenario, "validate_message")
    payloads = {c["payload"] for c in seen}
    assert {b"reject-me", b"ignore-me", b"hello"} <= payloads
    # Gossip is judged on the trio thread; a node's own publishes on asyncio's.
    gossip = [c for c in seen if c["origin"].value == "gossip"]
    assert gossip and all(c["thread"].startswith("united-p2p-") for c in gossip)
    assert any(c["origin"].value == "publish" and c["thread"] == "MainThread" for c in seen)
    counters = scenario["a_counters"]
    assert counters["rejected"] == 1 and counters["ignored"] == 1


def test_hook_united_node_started(scenario: dict[str, Any]) -> None:
    assert {c["peer_id"] for c in calls(scenario, "node_started")} == {scenario["a"], scenario["b"]}


def test_hook_united_node_stopping(scenario: dict[str, Any]) -> None:
    assert len(calls(scenario, "node_stopping")) == 2
    names = [n for n, _ in scenario["calls"]]
    assert names.index("node_stopping") < names.index("service_stop")


def test_hook_united_peer_connected(scenario: dict[str, Any]) -> None:
    connected = calls(scenario, "peer_connected")
    assert any(c["peer_id"] == scenario["b"] and c["direction"] == "inbound" for c in connected)
    assert any(c["peer_id"] == scenario["a"] and c["direction"] == "outbound" for c in connected)
    assert all(c["relayed"] is False for c in connected)
    assert all(c["thread"] == "MainThread" for c in connected)  # asyncio side


def test_hook_united_peer_disconnected(scenario: dict[str, Any]) -> None:
    gone = {c["peer_id"] for c in calls(scenario, "peer_disconnected")}
    assert scenario["a"] in gone or scenario["b"] in gone


def test_hook_united_message_received(scenario: dict[str, Any]) -> None:
    received = calls(scenario, "message_received")
    on_a = [c["payload"] for c in received if c["node"] == scenario["a"]]
    assert b"hello" in on_a
    assert b"reject-me" not in on_a and b"ignore-me" not in on_a
    assert all(c["thread"] == "MainThread" for c in received)


def test_hook_united_collect_stats(scenario: dict[str, Any]) -> None:
    stats = scenario["stats"]
    assert stats["plugins"]["recorder"]["calls"] > 0
    assert stats["peer_id"] == scenario["a"]
    assert TOPIC in stats["p2p"]["topics"]
