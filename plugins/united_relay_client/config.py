"""``[relay_client]``: when a member reserves a slot on the server's relay."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.api import ConfigValueError, setting


@dataclass(frozen=True)
class Config:
    mode: str = setting(
        "auto",
        "When to reserve a slot on the server's relay: auto (when none of this node's "
        "addresses is public), always, never. Relayed connections are accepted and "
        "dialed in every mode.",
        choices=("auto", "always", "never"),
    )
    hole_punch: bool = setting(
        True,
        "Upgrade a relayed connection between two members to a direct one by hole "
        "punching (DCUtR), once per relayed connection; on failure it stays relayed.",
    )
    retry_min: float = setting(
        5.0,
        "Seconds before retrying a failed reservation; doubles after each failure.",
        min=0.5,
        max=3600,
    )
    retry_max: float = setting(
        300.0, "Longest wait between two reservation attempts, seconds.", min=0.5, max=86400
    )

    def validate(self) -> None:
        if self.retry_max < self.retry_min:
            raise ConfigValueError("retry_max", f"must be at least retry_min ({self.retry_min:g})")
