"""The ping command: ``/ipfs/ping/1.0.0`` round trips, timed on the trio side.

Every libp2p host answers this protocol (py-libp2p registers the handler by
default), so any peer can be pinged. The RTT is measured with a monotonic clock
around the write and the echoed read, in milliseconds with microsecond
resolution (py-libp2p's own helper rounds to whole milliseconds).
"""

from __future__ import annotations

import secrets
import statistics
import time
from typing import TYPE_CHECKING, Any

from united_core.control import CommandError

if TYPE_CHECKING:
    from united_core.node import Node

PING_PROTOCOL = "/ipfs/ping/1.0.0"
# Last RTT (ms) per node, per peer: several nodes may share a process (tests).
LAST_RTT: dict[str, dict[str, float]] = {}
PING_SIZE = 32
PING_TIMEOUT_S = 10.0
MAX_COUNT = 100


async def ping_peer(node: Node, peer_id: str, count: int = 1) -> list[float]:
    """Round-trip times in ms for ``count`` pings over one stream."""
    import trio  # trio-side code of this plugin (DESIGN §3)
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    runtime = node.p2p

    async def pings() -> list[float]:
        host = runtime.host_context.host
        rtts = []
        with trio.fail_after(PING_TIMEOUT_S):
            stream = await host.new_stream(ID.from_base58(peer_id), [TProtocol(PING_PROTOCOL)])
            try:
                for _ in range(count):
                    payload = secrets.token_bytes(PING_SIZE)
                    start = time.perf_counter()
                    await stream.write(payload)
                    echoed = b""
                    while len(echoed) < PING_SIZE:
                        chunk = await stream.read(PING_SIZE - len(echoed))
                        if not chunk:
                            raise ConnectionError("the peer closed the ping stream")
                        echoed += chunk
                    rtts.append((time.perf_counter() - start) * 1000)
                    if echoed != payload:
                        raise ValueError("the peer echoed a different payload")
            finally:
                await stream.close()
        return rtts

    return await runtime.call(pings)


async def ping_command(node: Node, args: list[str]) -> dict[str, Any]:
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
        from libp2p.peer.id import ID

        ID.from_base58(peer_id)
    except Exception:
        raise CommandError(f"not a PeerId: {peer_id!r}") from None
    try:
        rtts = await ping_peer(node, peer_id, count)
    except Exception as exc:
        raise CommandError(f"ping {peer_id} failed: {type(exc).__name__}: {exc}") from None
    LAST_RTT.setdefault(node.identity.peer_id, {})[peer_id] = rtts[-1]
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
