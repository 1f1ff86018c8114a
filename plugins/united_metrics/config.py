"""``[metrics]``: where the Prometheus endpoint listens."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from united_core.api import ConfigValueError, setting

DEFAULT_PORT = 9464


@dataclass(frozen=True)
class Config:
    listen: str = setting(
        f"127.0.0.1:{DEFAULT_PORT}",
        "HOST:PORT of the HTTP endpoint ([::1]:PORT for IPv6; port 0 picks a free one). "
        "Not authenticated: keep it on localhost unless a firewall guards it.",
    )
    enabled: bool = setting(
        True, "Serve /metrics and /health; false keeps the plugin loaded and serves nothing."
    )
    allowed_hosts: tuple[str, ...] = setting(
        (),
        "Host names (besides localhost, the listen host and any IP address) that a request's "
        "Host header may name, e.g. the name Prometheus scrapes this node by; others get 421 "
        "(a defence against DNS rebinding from a browser).",
    )

    def validate(self) -> None:
        parse_listen(self.listen)
        for name in self.allowed_hosts:
            host_name(name)


def host_name(value: str) -> str:
    """An ``allowed_hosts`` entry as compared: lowercase, no trailing dot, no port;
    ConfigValueError unless it is a plain host name or address."""
    name = value.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name or not all(c.isascii() and (c.isalnum() or c in "-._:") for c in name):
        raise ConfigValueError(
            "allowed_hosts", f"{value!r} is not a host name (e.g. metrics.example.org)"
        )
    if ":" in name:
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise ConfigValueError(
                "allowed_hosts", f"{value!r}: a host name, without a port"
            ) from None
    return name


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``) as ``(host, port)``; ConfigValueError otherwise."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host or not port_text:
        raise ConfigValueError("listen", f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigValueError(
                "listen", f"{value!r}: [{host}] is not an IPv6 address"
            ) from None
    elif ":" in host:
        raise ConfigValueError(
            "listen", f"{value!r}: write an IPv6 address in brackets, [::1]:PORT"
        )
    if any(c.isspace() for c in host):
        raise ConfigValueError("listen", f"{value!r}: the host contains a space")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigValueError("listen", f"{value!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
