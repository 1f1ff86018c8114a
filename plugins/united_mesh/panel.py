"""The mesh's section of the console's live panel: each channel's mesh and traffic."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any


def _clock(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "-"


def render_gossipsub(snapshot: Mapping[str, Any]) -> list[str]:
    mesh = snapshot.get("plugins", {}).get("mesh", {})
    p2p = snapshot.get("p2p", {})
    topic_mesh: dict[str, list[str]] = p2p.get("mesh", {})
    counters = p2p.get("counters", {})
    lines = [
        f"  {'CHANNEL':<14} {'MESH':>4} {'MSGS':>6} {'LAST':>9} {'P50 ms':>8} {'P95 ms':>8}",
    ]
    for name, info in sorted(mesh.get("topics", {}).items()):
        p50, p95 = info.get("latency_p50_ms"), info.get("latency_p95_ms")
        lines.append(
            f"  {name[:14]:<14} {len(topic_mesh.get(info['topic'], [])):>4} {info['messages']:>6} "
            f"{_clock(info.get('last_received')):>9} {(p50 if p50 is not None else '-'):>8} "
            f"{(p95 if p95 is not None else '-'):>8}"
        )
    lines.append(
        f"  publish drops: {counters.get('outbound_drops', 0)}   inbound drops: "
        f"{counters.get('inbound_drops', 0)}   rejected: {counters.get('rejected', 0)}   "
        f"ignored: {counters.get('ignored', 0)}"
    )
    return lines
