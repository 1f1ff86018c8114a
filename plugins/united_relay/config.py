"""``[relay]``: the members-only Circuit Relay v2 hop (defaults from go-libp2p's relay)."""

from __future__ import annotations

from dataclasses import dataclass

from united_core.api import ConfigValueError, setting

MIN_CIRCUIT_DATA = 16 * 1024  # a circuit's handshakes (Noise, Yamux, identify) alone take KiBs
MIN_BANDWIDTH = 1024


@dataclass(frozen=True)
class Config:
    enabled: bool = setting(
        True,
        "Relay for members: they reserve a slot and are reached through this node "
        "(Circuit Relay v2). Non-members are refused.",
    )
    max_reservations: int = setting(
        128,
        "Members holding a reservation at once; one more is refused (RESERVATION_REFUSED).",
        min=0,
        max=1_000_000,
    )
    reservation_ttl: int = setting(
        3600, "Seconds a reservation lasts (members renew at half of it).", min=2, max=86400
    )
    max_circuits_per_peer: int = setting(
        16,
        "Circuits open at once per member, as source or destination "
        "(RESOURCE_LIMIT_EXCEEDED past it).",
        min=1,
        max=65536,
    )
    max_circuits: int = setting(
        1024,
        "Circuits open at once through this relay, all members together.",
        min=1,
        max=1_000_000,
    )
    circuit_duration: int = setting(
        0,
        "Seconds a circuit may last, 0 = unlimited. When set, every circuit is cut at that "
        "age and is announced as limited (go/js peers then run no gossipsub over it).",
        min=0,
        max=86400 * 30,
    )
    circuit_data: int = setting(
        0,
        "Bytes a circuit may carry in each direction, 0 = unlimited (when set, at least "
        "16384; the circuit is announced as limited, as with circuit_duration).",
        min=0,
        max=2**62,
    )
    circuit_bandwidth: int = setting(
        0,
        "Bytes/s each direction of a circuit may carry, 0 = no cap (traffic waits, "
        "nothing is cut).",
        min=0,
        max=2**40,
    )
    bandwidth: int = setting(
        0, "Bytes/s all circuits together may carry, 0 = no cap.", min=0, max=2**40
    )

    def validate(self) -> None:
        if self.max_circuits_per_peer > self.max_circuits:
            raise ConfigValueError(
                "max_circuits_per_peer", f"must be at most max_circuits ({self.max_circuits})"
            )
        if 0 < self.circuit_data < MIN_CIRCUIT_DATA:
            raise ConfigValueError(
                "circuit_data",
                f"must be 0 (unlimited) or at least {MIN_CIRCUIT_DATA}: a circuit's "
                "handshakes alone take several KiB",
            )
        for key in ("circuit_bandwidth", "bandwidth"):
            if 0 < getattr(self, key) < MIN_BANDWIDTH:
                raise ConfigValueError(key, f"must be 0 (no cap) or at least {MIN_BANDWIDTH}")
        if self.bandwidth and self.circuit_bandwidth > self.bandwidth:
            raise ConfigValueError(
                "circuit_bandwidth",
                f"must be at most bandwidth ({self.bandwidth}) when both are set",
            )

    @property
    def limited(self) -> bool:
        """Whether circuits carry a Limit (a duration or data cap is set)."""
        return bool(self.circuit_duration or self.circuit_data)
