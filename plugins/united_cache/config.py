"""``[cache]``: the client's local message store."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.api import setting


@dataclass(frozen=True)
class Config:
    database: str = setting("cache.sqlite3", "Local message cache, inside [node] data_dir.")
    sync_interval: float = setting(
        3.0,
        "Seconds between submissions of unconfirmed messages while connected.",
        min=0.1,
        max=3600,
    )
    upload_grace: float = setting(
        30.0,
        "Seconds before a message received from another member is uploaded if the "
        "server still lacks it (it normally has it through gossip already).",
        min=0.0,
        max=86400,
    )
    own_upload_delay: float = setting(
        2.0,
        "Seconds before this node's own message is uploaded if the server still lacks "
        "it (it normally has it through gossip within milliseconds).",
        min=0.0,
        max=3600,
    )
    reconcile_jitter: float = setting(
        1.0,
        "Most seconds a random wait before reconciling after a login (members that "
        "return together then upload the same outage messages once, not each).",
        min=0.0,
        max=60,
    )
    submit_batch: int = setting(500, "Most envelopes per submission.", min=1, max=1000)
    page_size: int = setting(
        500, "History page size requested when filling gaps.", min=1, max=10_000
    )
