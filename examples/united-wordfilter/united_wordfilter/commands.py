"""``united ctl wordcount`` and the console's live-panel section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from united_core.api import CommandError, NodeAPI

from .service import WordCounts, WordFilter, stats


async def wordcount(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    """The handler: a JSON-serialisable result (``ctl wordcount --json`` prints it)."""
    if len(args) > 1:
        raise CommandError("usage: wordcount [CHANNEL]")
    counts = node.require(WordCounts)
    if not counts.enabled:
        raise CommandError("word counting is off ([wordfilter] count_words = false)")
    result = stats(node.require(WordFilter), counts)
    if args:
        result["channels"] = counts.report(args[0])
        if not result["channels"]:
            raise CommandError(f"no channel {args[0]!r} here")
    return result


def render_wordcount(result: Mapping[str, Any]) -> str:
    """The same result, for people (``ctl wordcount`` without ``--json``)."""
    lines = [
        f"#{name}: {row['messages']} message(s), {row['words']} word(s)"
        for name, row in sorted(result["channels"].items())
    ] or ["no messages counted yet"]
    refused = result["refused"]
    detail = ", ".join(f"{origin} {n}" for origin, n in sorted(refused.items()))
    lines.append(f"refused: {sum(refused.values())}" + (f" ({detail})" if detail else ""))
    return "\n".join(lines)


def render_panel(snapshot: Mapping[str, Any]) -> list[str]:
    """Lines of the "Word filter" panel section, from a stats snapshot."""
    mine = snapshot.get("plugins", {}).get("wordfilter")
    if not mine:
        return ["  (no figures yet)"]
    lines = [
        f"  #{name:<14} {row['messages']:>6} msgs {row['words']:>8} words"
        for name, row in sorted(mine["channels"].items())
    ]
    lines.append(f"  refused: {sum(mine['refused'].values())} of {mine['words']} listed word(s)")
    return lines
