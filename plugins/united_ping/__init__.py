"""Ping a connected peer with the libp2p ping protocol and report the round-trip time."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from united_core import hookimpl
from united_core.control import ControlCommand

from .service import LAST_RTT, ping_command, ping_peer, render_ping

if TYPE_CHECKING:
    from united_core.node import Node


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "ping",
            ping_command,
            "Ping a peer (libp2p ping) and report RTT in ms.",
            usage="PEER_ID [COUNT]",
            render=render_ping,
        )
    ]


@hookimpl
async def united_stats_refresh(node: Node) -> None:
    """Ping every connected peer once (only while someone watches the live stats)."""
    peers = {p["peer_id"] for p in await node.p2p.peers()}

    async def one(peer_id: str) -> None:
        try:
            async with asyncio.timeout(2):
                rtts = await ping_peer(node, peer_id, 1)
            LAST_RTT.setdefault(node.identity.peer_id, {})[peer_id] = rtts[0]
        except Exception:
            LAST_RTT.setdefault(node.identity.peer_id, {}).pop(peer_id, None)

    await asyncio.gather(*(one(p) for p in peers))


@hookimpl
def united_collect_stats(node: Node) -> dict[str, Any]:
    rtts = LAST_RTT.get(node.identity.peer_id, {})
    return {"ping": {peer: round(rtt, 3) for peer, rtt in rtts.items()}}
