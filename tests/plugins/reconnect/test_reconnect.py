"""Issue 11, deliverables 1 and 5 (member side): the dialer, the reconnect policy,
and what `ctl peers` / `ctl reconnect` / `ctl send` show. Real nodes on loopback."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from united_mesh.commands import render_send
from united_reconnect.config import Config
from united_reconnect.service import Reconnector, backoff

from united_core.api import hookimpl
from united_core.builtin import _render_peers, _render_reconnect
from united_core.p2p.dialer import Dialer, DialRefused
from united_core.plugins import get_plugin_manager
from united_core.testing import _on_loopback, call, join, running_community, running_node, until

# ---- the policy -----------------------------------------------------------------------


def test_the_backoff_doubles_from_one_second_up_to_thirty() -> None:
    assert [backoff(a, 1.0, 30.0) for a in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff(10_000, 1.0, 30.0) == 30.0  # no overflow on a peer gone for days


def _reconnector(pm: Any, config: Config | None = None) -> Reconnector:
    node = SimpleNamespace(identity=SimpleNamespace(peer_id="12D3KooWself"), hook=pm.hook)
    return Reconnector(config or Config(), node, Dialer(_never_dials, "12D3KooWself"))


async def _never_dials(peer_id: str, addrs: list[str]) -> str:
    raise AssertionError("no dial expected")


def test_hook_united_reconnect_delay() -> None:
    # The core default alone (trylast): 1 s, 2 s, 4 s ... 30 s.
    pm = get_plugin_manager([])
    assert [pm.hook.united_reconnect_delay(peer_id="p", attempt=a) for a in (0, 1, 2, 9)] == [
        1.0,
        2.0,
        4.0,
        30.0,
    ]
    # With the reconnect plugin: its [reconnect] numbers replace the core's default.
    pm = get_plugin_manager(["reconnect"])
    service = _reconnector(pm, Config(base=0.5, max=3.0))
    assert [service.delay("p", a) for a in (0, 1, 2, 3)] == [0.5, 1.0, 2.0, 3.0]

    # A third party's ordinary implementation replaces both (firstresult).
    class EveryFiveSeconds:
        @hookimpl
        def united_reconnect_delay(self, peer_id: str, attempt: int) -> float | None:
            return None if peer_id == "no-opinion" else 5.0

    pm.register(EveryFiveSeconds(), name="third-party")
    assert service.delay("p", 0) == 5.0
    assert service.delay("no-opinion", 2) == 2.0  # None falls through to [reconnect]


# ---- the dialer -----------------------------------------------------------------------


def test_the_dialer_refuses_wildcards_records_reasons_and_shares_concurrent_dials() -> None:
    calls: list[tuple[str, list[str]]] = []

    async def dial_fn(peer_id: str, addrs: list[str]) -> str:
        calls.append((peer_id, addrs))
        await asyncio.sleep(0.05)
        if peer_id == "bad":
            raise TimeoutError()  # py-libp2p style: no message at all
        return peer_id

    async def scenario() -> None:
        dialer = Dialer(dial_fn, "me")
        with pytest.raises(DialRefused, match="no dialable address"):
            await dialer.dial("p1", ["/ip4/0.0.0.0/tcp/7420", "/ip6/::/tcp/7420"])
        assert "0.0.0.0" in (dialer.known("p1").last_error or "")  # type: ignore[union-attr]
        assert calls == []  # nothing was sent
        a = "/ip4/127.0.0.1/tcp/4001"
        results = await asyncio.gather(*(dialer.dial("p2", [a + "/p2p/p2"]) for _ in range(5)))
        assert results == ["p2"] * 5 and calls == [("p2", [a])]  # one dial, shared
        assert dialer.is_connected("p2")
        with pytest.raises(TimeoutError):
            await dialer.dial("bad", [a])
        rec = dialer.known("bad")
        assert rec is not None and rec.last_error == "TimeoutError" and rec.last_error_at
        dialer.plan("bad", time.time() + 4)
        rows = dialer.rows([{"peer_id": "p2", "addrs": [a], "direction": "outbound"}])
        assert [(r["peer_id"], r["connected"]) for r in rows] == [
            ("p2", True),
            ("bad", False),
            ("p1", False),
        ]
        text = _render_peers(rows)
        assert "connected since" in text and "last error" in text and "next retry" in text

    asyncio.run(scenario())


def test_a_dial_to_new_addresses_is_not_swallowed_by_a_running_dial_to_old_ones() -> None:
    """A member came back on another port while a dial to its old one was running
    (a rotation, a restart): sharing that dial would fail and dial nothing else."""
    old, new = "/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4002"
    calls: list[list[str]] = []

    async def dial_fn(peer_id: str, addrs: list[str]) -> str:
        calls.append(addrs)
        await asyncio.sleep(0.05)
        if old in addrs:
            raise OSError("handshake failed")
        return peer_id

    async def scenario() -> None:
        dialer = Dialer(dial_fn, "me")
        stale = asyncio.create_task(dialer.dial("p", [old]))
        await asyncio.sleep(0)
        same, fresh = await asyncio.gather(
            dialer.dial("p", [old]), dialer.dial("p", [new]), return_exceptions=True
        )
        assert isinstance(same, OSError)  # same addresses: shared the running dial
        assert fresh == "p" and calls == [[old], [new]]
        with pytest.raises(OSError):
            await stale
        assert dialer.is_connected("p")

    asyncio.run(scenario())


def test_a_shared_dial_whose_starter_is_cancelled_is_not_a_cancellation_for_the_others() -> None:
    """The reconnect plugin cancels its redial when the peer connects; a caller that
    shared that dial (the directory client's login, the mesh) must not receive the
    CancelledError as if it were cancelled itself: it dials on its own."""
    addr = "/ip4/127.0.0.1/tcp/4001"
    calls: list[str] = []

    async def dial_fn(peer_id: str, addrs: list[str]) -> str:
        calls.append(peer_id)
        await asyncio.sleep(0.2 if len(calls) == 1 else 0.01)
        return peer_id

    async def scenario() -> None:
        dialer = Dialer(dial_fn, "me")
        starter = asyncio.create_task(dialer.dial("p", [addr]))
        await asyncio.sleep(0.01)
        sharer = asyncio.create_task(dialer.dial("p", [addr]))
        await asyncio.sleep(0.01)
        starter.cancel()
        assert await sharer == "p" and calls == ["p", "p"]
        with pytest.raises(asyncio.CancelledError):
            await starter
        # ... and a sharer that is itself cancelled still gets its cancellation.
        first = asyncio.create_task(dialer.dial("q", [addr]))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(dialer.dial("q", [addr]))
        await asyncio.sleep(0.01)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert await first == "q"

    asyncio.run(scenario())


def test_send_and_reconnect_render_their_warnings() -> None:
    sent = {"id": "ab", "topic": "t", "sequence_hint": 1, "warning": "no connected peer at all"}
    assert "warning: no connected peer at all" in render_send(sent)
    done = {"tried": 1, "redialed": [], "failed": {"p": "OSError: refused"}, "connected": []}
    assert "failed: p: OSError: refused" in _render_reconnect(done)


# ---- real nodes ------------------------------------------------------------------------


async def _connected(node: Any, peer_id: str) -> bool:
    return peer_id in {p["peer_id"] for p in await node.p2p.peers()}


def test_a_restarted_member_is_redialed_and_a_failing_peer_shows_why(tmp_path: Path) -> None:
    """carol stops: alice's `ctl peers` shows the reason and the next retry; carol
    restarts on a new port: alice and bob are connected to her again within 10 s."""

    async def scenario() -> None:
        async with running_community(tmp_path, ("alice", "bob")) as c:
            invite = await call(c.server, "invite")
            carol_config = await join(invite["url"], invite["code"], tmp_path / "carol", "carol")
            carol_config.write_text(_on_loopback(carol_config.read_text()))
            async with running_node(carol_config) as carol:
                await until(lambda: _joined(carol), 20, "carol to join general")
                carol_id = carol.identity.peer_id
                for name in ("alice", "bob"):
                    await until(
                        functools.partial(_connected, c.node(name), carol_id), 20, f"{name}-carol"
                    )

            # carol is down: alice redials with backoff and shows why it fails.
            async def failing() -> Any:
                rows = await c.call("alice", "peers")
                row = next((r for r in rows if r["peer_id"] == carol_id), None)
                return row if row and not row["connected"] and row["last_error"] else None

            try:
                row = await until(failing, 20, "alice to record a failed redial of carol")
            except TimeoutError as exc:  # say what alice did know of carol
                rows = await c.call("alice", "peers")
                known = [r for r in rows if r["peer_id"] == carol_id]
                stats = (await c.stats("alice")).get("reconnect")
                raise AssertionError(f"{exc}; alice's row: {known}; reconnect: {stats}") from exc
            assert row["next_retry_at"] and row["next_retry_at"] > row["last_error_at"]
            text = (await c.ctl("alice", "peers")).stdout
            assert carol_id in text and "last error" in text and "next retry" in text
            stats = await c.stats("alice")
            assert carol_id in stats["reconnect"]["redialing"]
            # ctl reconnect redials now and says what happened.
            result = await c.call("alice", "reconnect")
            assert result["tried"] >= 1 and carol_id in result["failed"]
            assert result["failed"][carol_id]
            # carol restarts (same key, a new port): found again through presence.
            async with running_node(carol_config) as carol:
                started = time.monotonic()
                await until(lambda: _joined(carol), 20, "carol to log in again")
                for name in ("alice", "bob"):
                    await until(
                        functools.partial(_connected, c.node(name), carol_id),
                        10,
                        f"{name} redials carol",
                    )
                healed = time.monotonic() - started
                print(f"restarted member redialed by both others in {healed:.1f} s")
                assert healed < 10
                # One connection per pair (both may have dialed: the duplicate is closed).
                for name in ("alice", "bob"):

                    async def one(n: str = name) -> bool:
                        peers = await c.node(n).p2p.peers()
                        return [p["peer_id"] for p in peers].count(carol_id) == 1

                    await until(one, 3, f"{name} to keep one connection to carol")
                    await asyncio.sleep(1.0)
                    assert await one(), f"{name} lost or doubled its connection to carol"

    asyncio.run(scenario())


async def _joined(node: Any) -> bool:
    try:
        await call(node, "join", "general")
    except Exception:
        return False
    return True


def test_a_peer_lost_for_replacement_after_is_replaced_by_another_online_member(
    tmp_path: Path,
) -> None:
    """alice's one member peer, bob, goes away for good: after `replacement_after` of
    failed redials she dials carol, who is online in the channel bob was in, and
    keeps redialing bob at the longest delay. (Members dial nobody on their own
    here, `dial_per_channel = 0`, so the replacement is the only way to carol.)"""
    settings = (
        "[mesh]\ndial_per_channel = 0\n"
        "[reconnect]\nbase = 0.1\nmax = 0.5\nreplacement_after = 1.5\n"
    )

    async def scenario() -> None:
        async with running_community(
            tmp_path, ("alice", "bob", "carol"), member_extra=settings
        ) as c:
            alice, bob, carol = c.node("alice"), c.node("bob"), c.node("carol")
            carol_id, bob_id = carol.identity.peer_id, bob.identity.peer_id
            assert not await _connected(alice, carol_id)
            await alice.p2p.dial(bob_id, bob.p2p.listen_addrs)
            await until(functools.partial(_connected, alice, bob_id), 10, "alice-bob")
            bob.request_stop()
            lost_at = time.monotonic()
            await until(
                functools.partial(_connected, alice, carol_id), 15, "alice dials a replacement"
            )
            took = time.monotonic() - lost_at
            print(f"replacement dialed {took:.1f} s after the loss (replacement_after 1.5 s)")
            assert took >= 1.5
            stats = (await c.stats("alice"))["reconnect"]
            assert stats["replacements"] == [carol_id]
            assert bob_id in stats["redialing"]  # bob is still being redialed

    asyncio.run(scenario())
