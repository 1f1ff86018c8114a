"""The relay's section of the console's live panel and its figures as stats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def relay_figures(snapshot: Mapping[str, Any]) -> Mapping[str, Any]:
    """The relay's figures in a stats snapshot: read fresh from the host
    (``p2p.services.relay``), else as the plugin's stats reported them."""
    fresh = snapshot.get("p2p", {}).get("services", {}).get("relay")
    return fresh or snapshot.get("plugins", {}).get("relay") or {}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def render_panel(snapshot: Mapping[str, Any]) -> list[str]:
    mine = relay_figures(snapshot)
    if not mine:
        return ["  (relay off)"]
    if mine.get("error"):
        return [f"  off: {mine['error']}"]
    refused = {
        f"{kind} {status.lower()}": n
        for kind, by_status in (mine.get("refused") or {}).items()
        for status, n in by_status.items()
    }
    ended = mine.get("ended") or {}
    limits = mine.get("limits") or {}
    lines = [
        f"  reservations {mine.get('reservations', 0)}/{mine.get('max_reservations', 0)}"
        f"   circuits {mine.get('circuits', 0)}/{mine.get('max_circuits', 0)}"
        f" (total {mine.get('circuits_total', 0)})"
        f"   relayed {_human(mine.get('bytes_relayed', 0))}",
        "  circuits: " + ("limited" if limits.get("limited") else "unlimited (members)"),
    ]
    if ended:
        lines.append("  ended: " + ", ".join(f"{k} {v}" for k, v in sorted(ended.items())))
    if refused:
        lines.append("  refused: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    return lines
