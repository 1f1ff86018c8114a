"""``[discovery]``: the client's session with the coordination server."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.api import ConfigValueError, setting


@dataclass(frozen=True)
class Config:
    server_url: str = setting("", "The server's WebSocket URL (written by `united join`).")
    display_name: str = setting("", "Name shown to other members (set at registration).")
    reconnect_min: float = setting(0.5, "First reconnect delay, seconds.", min=0.05, max=60)
    reconnect_max: float = setting(30.0, "Longest reconnect delay, seconds.", min=0.1, max=3600)
    request_timeout: float = setting(
        10.0, "Seconds to wait for the server's reply.", min=0.5, max=300
    )
    cache_file: str = setting(
        "directory-cache.json", "Member list and channels cached on disk, in [node] data_dir."
    )

    def validate(self) -> None:
        if not self.server_url.startswith(("ws://", "wss://")):
            raise ConfigValueError(
                "server_url", "must be a ws:// or wss:// URL (see `united join`)"
            )
        if self.reconnect_max < self.reconnect_min:
            raise ConfigValueError("reconnect_max", "must be at least reconnect_min")
