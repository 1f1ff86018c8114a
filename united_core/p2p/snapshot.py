"""What the host looks like: peer scores in and out, and a snapshot for stats.

Why a module of its own: these are the runtime's observations (read on the
trio thread, where the router's state lives, and returned as plain data) and
the one input scoring takes at run time (application scores, P6). They
change nothing else, so the console, stats and tests can rely on them
without touching messages or peers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from .host import HostContext
from .pubsub import PubsubCounters


class AppScores:
    """Application-specific scores (gossipsub P6) by PeerId, e.g. the server's bonus.

    :meth:`set` replaces the whole map at once (one reference swap: safe from
    any thread); the router reads it on the trio thread through :meth:`get`.
    """

    def __init__(self) -> None:
        self._scores: dict[str, float] = {}

    def set(self, scores: Mapping[str, float]) -> None:
        self._scores = dict(scores)

    def get(self, peer_id: str) -> float:
        return self._scores.get(peer_id, 0.0)


def read_scores(ctx: HostContext) -> dict[str, float]:
    """Each connected peer's gossipsub score over our subscribed topics (trio side)."""
    scorer = getattr(ctx.gossipsub, "scorer", None)
    topics = list(ctx.pubsub.topic_ids)
    peers = list(ctx.host.get_network().connections)
    if scorer is None:
        return {}
    return {p.to_base58(): round(float(scorer.score(p, topics)), 3) for p in peers}


def read_snapshot(
    ctx: HostContext,
    *,
    peer_id: str,
    listen_addrs: list[str],
    counters: PubsubCounters,
    drop_counting: bool,
) -> dict[str, Any]:
    """A consistent view of the host (trio side): topics, mesh, queues, counters."""
    mesh = {t: sorted(p.to_base58() for p in peers) for t, peers in ctx.gossipsub.mesh.items()}
    queues = {p.to_base58(): len(q) for p, q in list(ctx.pubsub.peer_queues.items())}
    return {
        "peer_id": peer_id,
        "listen_addrs": list(listen_addrs),
        "topics": sorted(ctx.pubsub.topic_ids),
        "mesh": mesh,
        "outbound_queue_lengths": queues,
        "counters": asdict(counters),
        "drop_counting": drop_counting,
    }
