"""``[archive]``: the server's message store."""

from __future__ import annotations

from dataclasses import dataclass

from united_core import defaults
from united_core.api import setting


@dataclass(frozen=True)
class Config:
    database: str = setting("archive.sqlite3", "Message store, inside [node] data_dir.")
    batch_max: int = setting(1000, "Most messages written in one transaction.", min=1, max=100_000)
    batch_wait_ms: float = setting(
        2.0, "How long a write waits for more messages to batch with, in ms.", min=0.0, max=1000
    )
    page_max: int = setting(500, "Most messages in one history page.", min=1, max=10_000)
    max_submission_age: float = setting(
        defaults.MAX_SUBMISSION_AGE,
        "Oldest envelope (by its timestamp, seconds) a member may upload: messages "
        "written while the server was away are reconciled within this window.",
        min=60.0,
        max=10 * 365 * 86400.0,
    )
    submit_rate: float = setting(
        200.0,
        "Envelopes a second a member may have the archive check (uploads it lacks), "
        "counted before any signature is verified.",
        min=1.0,
        max=1e6,
    )
    submit_burst: int = setting(
        5000,
        "Envelopes a member may upload at once before submit_rate applies.",
        min=1000,
        max=10**7,
    )
    late_after: float = setting(
        5.0,
        "A gossip message stamped longer ago than this (seconds) was sent while this "
        "server was away: it is numbered in Lamport order with the reconciliation.",
        min=0.5,
        max=3600,
    )
    reorder_window: float = setting(
        3.0,
        "How long late gossip waits for the members' reconciliation uploads (seconds).",
        min=0.0,
        max=60,
    )
    queue_max: int = setting(
        10_000, "Messages waiting to be written before receivers are slowed.", min=1, max=1_000_000
    )
