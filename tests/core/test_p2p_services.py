"""P2P services (API 1.2): plugin code inside the libp2p host, on the trio thread.

Two real nodes on loopback run a toy plugin whose service registers a protocol
handler, adds an announced address and answers calls from the asyncio side.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import make_node_dir, running_node

from united_core.identity import Identity
from united_core.p2p.options import HostOptions
from united_core.p2p.runtime import P2PRuntime
from united_core.testing import call, until


def test_hook_united_addrs_changed(tmp_path: Path, toy_plugins: Path) -> None:
    import toy_servicer

    toy_servicer.ADDRS_CHANGED.clear()

    async def scenario() -> None:
        configs = [make_node_dir(tmp_path, n, plugins=("ping", "servicer")) for n in "ab"]
        async with running_node(configs[0]) as a, running_node(configs[1]) as b:
            # The service's address is announced after the listen addresses...
            assert a.p2p.announce_addrs[-1] == toy_servicer.FAKE_RELAYED
            assert a.p2p.announce_addrs[0].startswith("/ip4/127.0.0.1/tcp/")
            # ...and the asyncio side heard of it through the hook.
            await until(
                lambda: any(c["node"] == a.identity.peer_id for c in toy_servicer.ADDRS_CHANGED),
                what="united_addrs_changed",
            )
            seen = next(c for c in toy_servicer.ADDRS_CHANGED if c["node"] == a.identity.peer_id)
            assert toy_servicer.FAKE_RELAYED in seen["addrs"]
            # Its protocol handler serves on a's host; b's service asks through it.
            await b.p2p.connect(f"{a.p2p.listen_addrs[0]}")
            reply = await b.p2p.call_service("servicer", "ask", a.identity.peer_id, b"hi")
            assert reply == b"hi"
            snap = await a.p2p.snapshot()
            assert snap["services"]["servicer"] == {"echoed": 1}
            assert toy_servicer.FAKE_RELAYED in snap["announce_addrs"]
            with pytest.raises(LookupError):
                await a.p2p.call_service("nope", "ask")

    asyncio.run(scenario())


def test_a_service_that_is_not_one_is_refused_at_start() -> None:
    options = HostOptions()
    options.services.append(object())
    with pytest.raises(ValueError, match="not a P2P service"):
        P2PRuntime(Identity.generate(), options)


def test_hook_united_reachability_changed(tmp_path: Path, toy_plugins: Path) -> None:
    import toy_servicer

    toy_servicer.REACHABILITY.clear()

    async def scenario() -> None:
        config = make_node_dir(tmp_path, plugins=("ping", "servicer"))
        async with running_node(config) as node:
            assert (node.p2p.reachability, node.p2p.nat) == ("unknown", "unknown")
            await node.p2p.call_service("servicer", "conclude", "private", "symmetric")
            await until(lambda: bool(toy_servicer.REACHABILITY), what="the hook")
            assert toy_servicer.REACHABILITY == [
                {"node": node.identity.peer_id, "reachability": "private", "nat": "symmetric"}
            ]
            assert (node.p2p.reachability, node.p2p.nat) == ("private", "symmetric")
            status = await call(node, "status")
            assert (status["reachability"], status["nat"]) == ("private", "symmetric")

    asyncio.run(scenario())


def test_libp2p_mismatch_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import libp2p
    from libp2p.network.connection.raw_connection import RawConnection
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage

    from united_core.p2p.services import libp2p_mismatch

    here = libp2p.__version__[: libp2p.__version__.index(".", 2) + 1]  # "0.8."
    present = libp2p_mismatch(
        "the toy",
        (here,),
        attrs={RawConnection: ("close",)},
        init_params={RawConnection: ("connection_type",)},
        proto_fields={HopMessage: ("type", "peer")},
    )
    assert present is None
    why = libp2p_mismatch(
        "the toy",
        (here,),
        attrs={RawConnection: ("close", "teleport")},
        init_params={RawConnection: ("warp",)},
        proto_fields={HopMessage: ("type", "colour")},
    )
    assert why is not None
    assert "RawConnection.teleport" in why and "RawConnection(warp=)" in why
    assert "HopMessage.colour" in why and "close" not in why
    monkeypatch.setattr(libp2p, "__version__", "0.9.0")
    assert "py-libp2p 0.9.0 is not a version the toy was" in (
        libp2p_mismatch("the toy", (here,)) or ""
    )
