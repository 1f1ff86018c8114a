"""The ping command and live RTTs: libp2p ping round trips through the runtime's API."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from united_core.api import CommandError, NodeAPI

MAX_COUNT = 100


class PingService:
    """The last round-trip time (ms) to each peer, refreshed only while watched."""

    def __init__(self, node: NodeAPI) -> None:
        self.node = node
        self.last_rtt: dict[str, float] = {}

    async def ping(self, peer_id: str, count: int = 1) -> list[float]:
        rtts = await self.node.p2p.ping(peer_id, count)
        self.last_rtt[peer_id] = rtts[-1]
        return rtts

    async def refresh(self) -> None:
        """Ping every connected peer once, at most 2 s each, all at once."""
        peers = {p["peer_id"] for p in await self.node.p2p.peers()}

        async def one(peer_id: str) -> None:
            try:
                async with asyncio.timeout(2):
                    await self.ping(peer_id, 1)
            except Exception:
                self.last_rtt.pop(peer_id, None)

        await asyncio.gather(*(one(p) for p in peers))
        for gone in set(self.last_rtt) - peers:
            del self.last_rtt[gone]

    def stats(self) -> dict[str, Any]:
        # ``peer_rtt_ms``: the table the console's Peers section reads.
        return {"peer_rtt_ms": {peer: round(rtt, 3) for peer, rtt in self.last_rtt.items()}}


async def ping_command(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    if not 1 <= len(args) <= 2:
        raise CommandError("usage: ping PEER_ID [COUNT]")
    peer_id = args[0]
    try:
        count = int(args[1]) if len(args) == 2 else 1
    except ValueError:
        raise CommandError(f"COUNT must be a number, not {args[1]!r}") from None
    if not 1 <= count <= MAX_COUNT:
        raise CommandError(f"COUNT must be between 1 and {MAX_COUNT}")
    try:
        rtts = await node.require(PingService).ping(peer_id, count)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    except Exception as exc:
        raise CommandError(f"ping {peer_id} failed: {type(exc).__name__}: {exc}") from None
    return {
        "peer_id": peer_id,
        "count": count,
        "rtt_ms": [round(r, 3) for r in rtts],
        "median_ms": round(statistics.median(rtts), 3),
    }


def render_ping(result: dict[str, Any]) -> str:
    each = ", ".join(f"{r:.3f}" for r in result["rtt_ms"])
    return (
        f"{result['peer_id']}: {result['count']} ping(s), "
        f"median RTT {result['median_ms']:.3f} ms ({each})"
    )
