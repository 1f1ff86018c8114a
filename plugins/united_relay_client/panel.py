"""The relay client's section of the console's live panel."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any


def client_figures(snapshot: Mapping[str, Any]) -> Mapping[str, Any]:
    """Fresh from the host (``p2p.services``), with the plugin's own (mode) merged in."""
    fresh = snapshot.get("p2p", {}).get("services", {}).get("relay-client") or {}
    stats = snapshot.get("plugins", {}).get("relay-client") or {}
    return {**stats, **fresh}


def _clock(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "-"


def render_panel(snapshot: Mapping[str, Any]) -> list[str]:
    mine = client_figures(snapshot)
    if not mine:
        return ["  (no figures yet)"]
    if mine.get("error"):
        return [f"  off: {mine['error']}"]
    mode = mine.get("mode", "?")
    if mine.get("reserved"):
        state = (
            f"reserved on {str(mine.get('relay'))[-12:]} until {_clock(mine.get('expires_at'))}"
            + (" (limited)" if mine.get("limited") else "")
        )
    elif mine.get("wanted"):
        state = "not reserved" + (f": {mine['last_error']}" if mine.get("last_error") else "")
    else:
        state = "no reservation wanted"
    lines = [
        f"  mode {mode}: {state}",
        f"  relayed connections: {mine.get('relayed_in', 0)} in, "
        f"{mine.get('relayed_out', 0)} out, {mine.get('refused_in', 0)} refused",
    ]
    if mine.get("hole_punch") is False:
        return [*lines, f"  {mine.get('punch_error') or 'hole punching off'}"]
    if "punch_attempts" in mine:
        punched = mine.get("punched_peers") or []
        line = (
            f"  hole punching: {mine['punch_attempts']} tried, "
            f"{mine.get('punch_successes', 0)} direct, "
            f"{mine.get('punch_failures', 0)} stayed relayed; "
            f"answered {mine.get('punch_answered', 0)} ({mine.get('punch_answered_ok', 0)} direct)"
        )
        lines.append(line)
        if punched:
            lines.append(f"  hole-punched: {', '.join(p[-12:] for p in punched)}")
        if mine.get("punch_failures") and mine.get("punch_last_error"):
            lines.append(f"  last failure: {mine['punch_last_error']}")
    return lines
