"""``ctl history`` on the server: a channel's messages, read from the archive.

The member's ``history`` (the cache plugin) reads its local cache; this one reads
the server's record, with the same arguments: ``CHANNEL [--from SEQ] [--limit
N]``. Without ``--from`` it shows the newest ``N`` (50 by default), oldest
first, like ``tail``; with ``--from SEQ``, ``N`` from that number on.
``united ctl --json`` prints the rows as JSON.
"""

from __future__ import annotations

import datetime
from collections.abc import Set
from typing import Any

from united_core.api import CommandError, ControlCommand, NodeAPI, printable

from .service import ArchiveService

DEFAULT_LIMIT = 50
MAX_LIMIT = 10_000
USAGE = "CHANNEL [--from SEQ] [--limit N]"


def history_commands(taken: Set[str]) -> list[ControlCommand]:
    """The archive's history command, named ``history`` unless that is ``taken``."""
    name = "history" if "history" not in taken else "archive-history"

    async def history(node: NodeAPI, args: list[str]) -> list[dict[str, Any]]:
        return await _history(node, args, f"usage: {name} {USAGE}")

    return [
        ControlCommand(
            name,
            history,
            "Messages of a channel from the server's archive: the newest N (--limit, "
            f"default {DEFAULT_LIMIT}), or N from sequence number SEQ (--from).",
            usage=USAGE,
            render=render_history,
            description="CHANNEL: a channel's name or id (or the topic of a deleted "
            f"channel). --limit N: how many messages (default {DEFAULT_LIMIT}, at most "
            f"{MAX_LIMIT}): the newest N, oldest first; with --from SEQ, N messages "
            "from sequence number SEQ on (paging forward). As a table (SEQ, TIME, "
            "SENDER, TEXT; a multi-line message on one line), or JSON rows with --json.",
        )
    ]


async def _history(node: NodeAPI, args: list[str], usage: str) -> list[dict[str, Any]]:
    if not args or args[0].startswith("--"):
        raise CommandError(usage)
    channel, rest = args[0], args[1:]
    options: dict[str, int | None] = {"--limit": DEFAULT_LIMIT, "--from": None}
    while rest:
        if len(rest) < 2 or rest[0] not in options:
            raise CommandError(usage)
        try:
            options[rest[0]] = int(rest[1])
        except ValueError:
            raise CommandError(f"{rest[0]} takes a number, not {rest[1]!r}") from None
        rest = rest[2:]
    limit, from_seq = options["--limit"], options["--from"]
    assert limit is not None
    if not 1 <= limit <= MAX_LIMIT:
        raise CommandError(f"--limit must be between 1 and {MAX_LIMIT}")
    if from_seq is not None and from_seq < 1:
        raise CommandError("--from must be 1 or more")
    archive = node.require(ArchiveService)
    try:
        return await archive.history_rows(channel, limit=limit, from_seq=from_seq)
    except KeyError:
        known = sorted(name for _, name in archive.channels.values())
        hint = f"; channels: {', '.join(known)}" if known else ""
        raise CommandError(f"no channel {channel!r} in the archive{hint}") from None


def render_history(rows: list[dict[str, Any]]) -> str:
    """A table for people: sequence number, local time, sender, text (one line each,
    :func:`~united_core.api.printable`: members wrote them)."""
    if not rows:
        return "(no messages)"
    table = [
        (
            str(r["seq"]),
            datetime.datetime.fromtimestamp(r["timestamp"] / 1000).strftime("%Y-%m-%d %H:%M:%S"),
            printable(str(r["sender"])),
            printable(str(r["text"])),  # one line a message, no control characters
        )
        for r in rows
    ]
    header = ("SEQ", "TIME", "SENDER", "TEXT")
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(3)]
    lines = []
    for row in [header, *table]:
        seq, when, sender, text = row
        lines.append(f"{seq:>{widths[0]}}  {when:<{widths[1]}}  {sender:<{widths[2]}}  {text}")
    return "\n".join(lines)
