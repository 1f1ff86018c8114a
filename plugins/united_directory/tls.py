"""TLS for the directory's WebSocket, what both ends share: certificate fingerprints
and how a client verifies the server.

A server that terminates TLS with a certificate no CA issued (``united init
--self-signed``) puts the certificate's SHA-256 fingerprint in its invites; the
member keeps it in ``[discovery] tls_fingerprint`` and accepts exactly that
certificate, whatever its names and dates (SSH's model: the invite is the
trusted channel). Without a fingerprint a ``wss://`` server is verified as a
browser would: the system's CAs and the host name. A ``wss://`` URL is never
tried as ``ws://``.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from typing import Any

import aiohttp

PREFIX = "sha256:"
_HEX = re.compile(r"[0-9a-f]{64}")


class FingerprintError(ValueError):
    """A fingerprint that is not ``sha256:`` and 32 bytes in hex."""


def format_fingerprint(digest: bytes) -> str:
    """``sha256:`` and the digest in lowercase hex, as invites and configs carry it."""
    return PREFIX + digest.hex()


def der_fingerprint(der: bytes) -> str:
    """The fingerprint of a DER-encoded certificate."""
    return format_fingerprint(hashlib.sha256(der).digest())


def parse_fingerprint(text: str) -> bytes:
    """The SHA-256 digest a fingerprint names.

    Accepts ``sha256:`` followed by 64 hex digits, upper or lower case, with or
    without colons between bytes (what ``openssl x509 -fingerprint -sha256``
    prints, after its ``sha256 Fingerprint=``).
    """
    head, sep, body = text.strip().partition(":")
    if not sep or head.lower() != "sha256":
        raise FingerprintError(f"{text!r} is not a fingerprint: expected sha256:<64 hex digits>")
    digits = body.replace(":", "").lower()
    if not _HEX.fullmatch(digits):
        raise FingerprintError(f"{text!r} is not a fingerprint: expected sha256:<64 hex digits>")
    return bytes.fromhex(digits)


def normalize_fingerprint(text: str) -> str:
    """``text`` in the one written form (``sha256:`` and lowercase hex)."""
    return format_fingerprint(parse_fingerprint(text))


def client_ssl(url: str, fingerprint: str = "") -> Any:
    """What ``aiohttp``'s ``ssl=`` gets for ``url``.

    ``ws://``: True (aiohttp's default; no TLS is spoken). ``wss://`` with a
    fingerprint: only the certificate with that SHA-256 digest is accepted (no
    CA, no name or date check; aiohttp checks it right after the TLS handshake,
    before the HTTP request is sent). ``wss://`` without one: the default
    verification (system CAs, host name), with a context made now, so
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` set at any time are honoured.
    """
    if not url.startswith("wss://"):
        if fingerprint:
            raise FingerprintError("a certificate fingerprint needs a wss:// URL")
        return True
    if fingerprint:
        return aiohttp.Fingerprint(parse_fingerprint(fingerprint))
    return ssl.create_default_context()


def describe_tls_failure(exc: BaseException, url: str, fingerprint: str = "") -> str | None:
    """One line for a TLS failure reaching ``url``, or None if ``exc`` is none."""
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return (
            f"the server's certificate is not the one pinned for {url} (expected "
            f"{format_fingerprint(exc.expected)}, got {format_fingerprint(exc.got)}): "
            "refusing to connect; if the server changed its certificate, set "
            "[discovery] tls_fingerprint to the new one from a fresh invite"
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", "") or str(exc.certificate_error)
        hint = "" if fingerprint else "; a self-signed server's invite carries --tls-fingerprint"
        return f"the server's certificate is not trusted ({reason}){hint}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | ssl.SSLError):
        return f"the TLS handshake with {url} failed ({exc}): is it a wss:// server?"
    return None
