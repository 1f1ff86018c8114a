"""``[directory]``: the coordination server's WebSocket endpoint and registry."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.config import ConfigValueError, setting, validate_multiaddrs

from ..protocol import MAX_FRAME_BYTES


@dataclass(frozen=True)
class Config:
    listen_host: str = setting("0.0.0.0", "Address the WebSocket endpoint listens on.")
    listen_port: int = setting(7421, "WebSocket port (0 picks a free one).", min=0, max=65535)
    public_url: str = setting(
        "",
        "URL members reach this server at, printed in invites (ws://HOST:PORT/ws, or"
        " wss:// with TLS here or at a reverse proxy). Unset: an address of this"
        " machine, with a warning.",
    )
    tls_cert: str = setting(
        "",
        "PEM certificate (chain) to serve TLS with; relative to this file. Set with"
        " tls_key; public_url is then wss://.",
    )
    tls_key: str = setting(
        "", "PEM private key of tls_cert; not readable by others (0600 or 0640)."
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
        100,
        "Failed logins per address per minute that name no member's key (bad invites,"
        " unknown keys); past it registrations and such logins from there are refused."
        " Never stops a member's own login.",
        min=1,
        max=100_000,
    )
    max_failed_auth_per_key_per_minute: int = setting(
        10,
        "Failed logins per address and member key per minute; past it each failure"
        " closes its session at once. A valid signature always logs in.",
        min=1,
        max=100_000,
    )
    header_timeout: float = setting(
        5.0,
        "Seconds a connection may take to send its whole HTTP request (the WebSocket"
        " upgrade); an idle keep-alive connection is closed after as long.",
        min=0.5,
        max=120,
    )
    login_timeout: float = setting(
        30.0, "Seconds a WebSocket session may stay without logging in.", min=1, max=600
    )
    max_pending_sessions: int = setting(
        256,
        "Connections that have not logged in (requests still arriving, sessions not yet"
        " authenticated); past it the network holding most (by IPv4 /24 and address,"
        " IPv6 /48, /56 and /64) gives up its oldest, sparing logins under way; if none"
        " can go, the newcomer is refused.",
        min=1,
        max=100_000,
    )
    max_pending_per_address: int = setting(
        32,
        "Share of max_pending_sessions one address (IPv6: one /64) may hold; past it"
        " its own oldest is closed.",
        min=1,
        max=100_000,
    )
    max_sessions_per_address: int = setting(
        256,
        "Logged-in sessions allowed from one address (a NAT or an office).",
        min=1,
        max=100_000,
    )
    max_sessions_per_member: int = setting(
        8, "Logged-in sessions per member; a newer login closes the oldest.", min=1, max=1000
    )
    send_timeout: float = setting(
        10.0,
        "Seconds a slow reader may hold up a frame before its session is dropped.",
        min=0.5,
        max=300,
    )
    members_create_channels: bool = setting(False, "Whether members may create channels.")
    announce_addrs: tuple[str, ...] = setting(
        (),
        "libp2p addresses given to members, never 0.0.0.0 (default: the listen addresses, "
        "0.0.0.0 expanded to each interface's address).",
    )
    database: str = setting("directory.sqlite3", "Registry database, inside [node] data_dir.")

    @property
    def tls(self) -> bool:
        """Whether this server terminates TLS itself."""
        return bool(self.tls_cert)

    def validate(self) -> None:
        if self.public_url and not self.public_url.startswith(("ws://", "wss://")):
            raise ConfigValueError("public_url", "must start with ws:// or wss://")
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            raise ConfigValueError(missing, "tls_cert and tls_key are set together")
        if self.tls and self.public_url.startswith("ws://"):
            raise ConfigValueError(
                "public_url", "must be wss:// when the server serves TLS (tls_cert is set)"
            )
        # Members dial these: each must parse, be TCP, and name a real port.
        validate_multiaddrs("announce_addrs", self.announce_addrs, dialable=True)
