"""``united init`` options of the directory: the public address, and TLS.

``united init --role server`` writes ``[directory] public_url`` from
``--public-url URL`` or ``--public-host HOST`` (asked for at a terminal when
neither is given), and TLS settings from ``--self-signed`` (a certificate made
here for that host, whose fingerprint invites then carry) or ``--tls-cert`` and
``--tls-key`` (a certificate of the operator's, checked now).
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from united_core.api import CLIError, ConfigError, InitContext, InitOptions

from .certs import load_server_tls, make_self_signed
from .config import Config

EXIT_USAGE = 2
CERT_FILE, KEY_FILE = "tls.crt", "tls.key"


def add_arguments(group: argparse._ArgumentGroup) -> None:
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL members reach this server at, written to [directory] public_url "
        "and printed in invites (wss://chat.example.org/ws behind a TLS proxy)",
    )
    where.add_argument(
        "--public-host",
        metavar="HOST",
        help="the DNS name or IP address members reach this server at: public_url "
        f"becomes ws://HOST:{Config.listen_port}/ws (wss:// with TLS)",
    )
    tls = group.add_mutually_exclusive_group()
    tls.add_argument(
        "--self-signed",
        action="store_true",
        help=f"serve TLS with a new self-signed certificate for the public host "
        f"({CERT_FILE}, {KEY_FILE}); invites carry its fingerprint, members pin it",
    )
    tls.add_argument(
        "--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate (chain)"
    )
    group.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert")


def apply(args: argparse.Namespace, context: InitContext) -> dict[str, dict[str, Any]]:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CLIError("--tls-cert and --tls-key go together", EXIT_USAGE)
    own_cert = bool(args.tls_cert)
    url = _public_url(args, context, tls=args.self_signed or own_cert)
    self_signed = args.self_signed
    if (
        context.ask is not None
        and url is not None
        and url.startswith("ws://")
        and not own_cert
        and _yes(
            context.ask(
                f"Serve TLS with a self-signed certificate for {urlparse(url).hostname} "
                "(members pin it through their invite)? [Y/n] "
            )
        )
    ):
        self_signed = True
        url = "wss://" + url.removeprefix("ws://")
    settings: dict[str, Any] = {}
    if self_signed:
        if url is None:
            raise CLIError(
                "--self-signed needs the public address the certificate is for "
                "(--public-host HOST or --public-url wss://HOST:PORT/ws)",
                EXIT_USAGE,
            )
        host = urlparse(url).hostname or ""
        cert, key = context.directory / CERT_FILE, context.directory / KEY_FILE
        for path in (cert, key):
            if path.exists():
                raise CLIError(f"{path} already exists; refusing to overwrite it")
        context.directory.mkdir(parents=True, exist_ok=True)
        fingerprint = make_self_signed(host, cert, key)
        print(f"wrote {cert} and {key} (owner-only): a self-signed certificate for {host}")
        print(f"certificate fingerprint: {fingerprint} (invites carry it; members pin it)")
        settings.update(tls_cert=CERT_FILE, tls_key=KEY_FILE)
    elif own_cert:
        cert, key = Path(args.tls_cert).resolve(), Path(args.tls_key).resolve()
        try:
            tls = load_server_tls(cert, key)
        except ConfigError as exc:
            raise CLIError(exc.message, EXIT_USAGE) from None
        kind = "self-signed: invites carry its fingerprint" if tls.self_signed else "CA-issued"
        print(f"TLS with {cert} ({kind}; valid until {tls.not_after:%Y-%m-%d})")
        settings.update(tls_cert=str(cert), tls_key=str(key))
    if url is not None:
        settings["public_url"] = url
    else:
        print(
            "note: no public address given (--public-url or --public-host): invites will "
            "name an address of this machine until [directory] public_url is set"
        )
    return {"directory": settings} if settings else {}


def _public_url(args: argparse.Namespace, context: InitContext, *, tls: bool) -> str | None:
    scheme = "wss" if tls else "ws"
    if args.public_url:
        url = str(args.public_url)
        if not url.startswith(("ws://", "wss://")):
            raise CLIError("--public-url must start with ws:// or wss://", EXIT_USAGE)
        if tls and url.startswith("ws://"):
            raise CLIError("this server serves TLS: --public-url must be wss://", EXIT_USAGE)
        _check_host(urlparse(url).hostname or "", "--public-url")
        return url
    host = args.public_host
    if host is None and context.ask is not None:
        answer = context.ask(
            "Public address of this server: the DNS name or IP address members reach it at"
            " (or a ws:// or wss:// URL; Enter to set it later): "
        )
        if answer.startswith(("ws://", "wss://")):
            args.public_url = answer
            return _public_url(args, context, tls=tls)
        host = answer or None
    if host is None:
        return None
    host = str(host).strip().strip("[]")
    _check_host(host, "--public-host")
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{Config.listen_port}/ws"


def _check_host(host: str, option: str) -> None:
    if not host or any(c in host for c in " /?#@"):
        raise CLIError(f"{option}: {host!r} is not a host name or IP address", EXIT_USAGE)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return
    if ip.is_unspecified:
        raise CLIError(
            f"{option}: {host} is a wildcard, not an address members can reach", EXIT_USAGE
        )


def _yes(answer: str) -> bool:
    return answer.strip().lower() in ("", "y", "yes")


def init_options() -> list[InitOptions]:
    return [InitOptions(add_arguments, apply)]
