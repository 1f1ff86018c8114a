"""``[discovery]``: the client's session with the coordination server."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.api import ConfigValueError, setting

from ..tls import FingerprintError, parse_fingerprint


@dataclass(frozen=True)
class Config:
    server_url: str = setting("", "The server's WebSocket URL (written by `united join`).")
    display_name: str = setting("", "Name shown to other members (set at registration).")
    tls_fingerprint: str = setting(
        "",
        "sha256:<hex> of the server's certificate, from the invite: only that certificate"
        " is accepted (no CA). Unset: wss:// is verified with the system's CAs.",
    )
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
        if self.tls_fingerprint:
            if not self.server_url.startswith("wss://"):
                raise ConfigValueError(
                    "tls_fingerprint", "pins a certificate: server_url must be wss://"
                )
            try:
                parse_fingerprint(self.tls_fingerprint)
            except FingerprintError as exc:
                raise ConfigValueError("tls_fingerprint", str(exc)) from None
        if self.reconnect_max < self.reconnect_min:
            raise ConfigValueError("reconnect_max", "must be at least reconnect_min")
