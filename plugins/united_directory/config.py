"""``[directory]``: the coordination server's WebSocket endpoint and registry."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.config import ConfigValueError, setting
from united_core.frames import MAX_FRAME_BYTES


@dataclass(frozen=True)
class Config:
    listen_host: str = setting("0.0.0.0", "Address the WebSocket endpoint listens on.")
    listen_port: int = setting(7421, "WebSocket port (0 picks a free one).", min=0, max=65535)
    public_url: str = setting(
        "", "URL members use, printed in join commands (default: ws://<host>:<port>/ws)."
    )
    registration: str = setting(
        "invite", "How members register: by single-use invite, or open.", choices=("invite", "open")
    )
    invite_ttl: float = setting(86400.0, "Seconds an invite stays valid.", min=60, max=30 * 86400)
    nonce_ttl: float = setting(30.0, "Seconds a login challenge stays valid.", min=1, max=600)
    max_frame_bytes: int = setting(
        MAX_FRAME_BYTES, "Largest WebSocket frame accepted.", min=4096, max=16 * 1024 * 1024
    )
    max_failed_auth_per_session: int = setting(
        3, "Failed logins before a session is closed.", min=1, max=100
    )
    max_failed_auth_per_minute: int = setting(
        20, "Failed logins per remote address per minute.", min=1, max=100_000
    )
    login_timeout: float = setting(
        30.0, "Seconds a connection may stay without logging in.", min=1, max=600
    )
    max_sessions_per_address: int = setting(
        64, "Open WebSocket sessions allowed from one remote address.", min=1, max=100_000
    )
    send_timeout: float = setting(
        10.0,
        "Seconds a slow reader may hold up a frame before its session is dropped.",
        min=0.5,
        max=300,
    )
    members_create_channels: bool = setting(False, "Whether members may create channels.")
    announce_addrs: tuple[str, ...] = setting(
        (), "libp2p addresses given to members (default: the host's, 0.0.0.0 made concrete)."
    )
    database: str = setting("directory.sqlite3", "Registry database, inside [node] data_dir.")

    def validate(self) -> None:
        if self.public_url and not self.public_url.startswith(("ws://", "wss://")):
            raise ConfigValueError("public_url", "must start with ws:// or wss://")
