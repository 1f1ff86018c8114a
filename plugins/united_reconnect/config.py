"""``[reconnect]``: how a dropped connection is redialed (defaults in united_core.defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from united_core import defaults
from united_core.api import ConfigValueError, setting


@dataclass(frozen=True)
class Config:
    base: float = setting(
        defaults.RECONNECT_BASE,
        "First redial delay, seconds; it doubles after each failure (1 s, 2 s, 4 s, ...).",
        min=0.05,
        max=600,
    )
    max: float = setting(
        defaults.RECONNECT_MAX, "Longest delay between two redials, seconds.", min=0.05, max=3600
    )
    replacement_after: float = setting(
        defaults.RECONNECT_REPLACEMENT_AFTER,
        "After this many seconds of failed redials, dial another online member instead.",
        min=1,
        max=86400,
    )
    tie_break_delay: float = setting(
        2.0,
        "Extra wait of the side with the larger PeerId, so both ends of a broken pair "
        "do not dial each other at once (one connection per peer).",
        min=0,
        max=60,
    )

    def validate(self) -> None:
        if self.max < self.base:
            raise ConfigValueError("max", f"must be at least base ({self.base:g})")
