"""``[autonat_client]``: when a member asks the server whether it is publicly reachable."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.api import setting


@dataclass(frozen=True)
class Config:
    interval: float = setting(
        900.0,
        "Seconds between two probes while the addresses stay the same (a probe also runs "
        "once connected to the server, and when the announced addresses change).",
        min=5,
        max=86400,
    )
    retry: float = setting(
        60.0,
        "Seconds before asking again after a probe failed or the server refused it "
        "(a rate-limited refusal waits as long as the server says, if longer).",
        min=1,
        max=86400,
    )
    timeout: float = setting(
        30.0,
        "Seconds a probe may take from request to verdict (the server dials up to "
        "[autonat] max_addrs addresses, each up to its dial_timeout).",
        min=1,
        max=600,
    )
