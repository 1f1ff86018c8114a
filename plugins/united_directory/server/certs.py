"""The server's TLS certificate: loaded and checked at start, or made by ``united init``.

Why a module of its own: reading and checking a certificate and its key, and
making a self-signed one, is X.509 work (the ``cryptography`` package) that
nothing else in the directory needs. :func:`load_server_tls` turns
``[directory] tls_cert``/``tls_key`` into an ``ssl.SSLContext`` or one clear
:class:`~united_core.api.ConfigError`; :class:`ServedCertificate` is what the
listener serves, its certificate replaced for new handshakes when the files are
renewed; :func:`make_self_signed` writes a certificate for a server that has no
domain or CA.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from united_core.api import ConfigError

from ..tls import format_fingerprint

SELF_SIGNED_DAYS = 3650  # pinned members check the fingerprint only, never the dates


@dataclass(frozen=True)
class ServerTLS:
    """What a server serving TLS itself knows of its certificate."""

    context: ssl.SSLContext
    fingerprint: str  # sha256:<hex> of the leaf certificate
    self_signed: bool  # no CA vouches for it: invites carry the fingerprint
    not_after: datetime.datetime


def load_server_tls(cert_path: Path, key_path: Path, config_file: Path | None = None) -> ServerTLS:
    """The TLS context for ``[directory] tls_cert``/``tls_key``.

    Raises :class:`ConfigError` naming the key for a missing or unreadable file,
    a file that is not a PEM certificate or key, a key that does not belong to
    the certificate, or a key file readable by others (group-readable is
    accepted: the ``ssl-cert`` group convention of Debian and others).
    """

    def error(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=config_file, section="directory", key=key)

    # Each file is read once: the fingerprint and the context come from the same
    # bytes, whatever a renewal does to the files meanwhile.
    try:
        pem = cert_path.read_bytes()
    except OSError as exc:
        raise error("tls_cert", f"cannot read the certificate {cert_path}: {_why(exc)}") from None
    try:
        mode = key_path.stat().st_mode
        key_pem = key_path.read_bytes()
    except OSError as exc:
        raise error("tls_key", f"cannot read the key {key_path}: {_why(exc)}") from None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise error("tls_cert", f"{cert_path} is not a PEM certificate") from None
    if mode & stat.S_IRWXO:
        raise error(
            "tls_key",
            f"{key_path}: permissions {stat.S_IMODE(mode):04o} are too open; the key must "
            "not be readable by others (chmod 600, or 640 with a group such as ssl-cert)",
        )
    context = _server_context()
    try:
        with _private_file(pem) as chain, _private_file(key_pem) as key_file:
            context.load_cert_chain(chain, key_file)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise error(
                "tls_key", f"{key_path} is not the key of the certificate {cert_path}"
            ) from None
        raise error(
            "tls_key", f"cannot use {cert_path} with {key_path}: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise error("tls_key", f"cannot read the key {key_path}: {_why(exc)}") from None
    return ServerTLS(
        context=context,
        fingerprint=format_fingerprint(cert.fingerprint(hashes.SHA256())),
        self_signed=_self_signed(cert),
        not_after=cert.not_valid_after_utc,
    )


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path holding ``data`` for ``load_cert_chain`` (which reads only paths): an
    anonymous in-memory file where the system has them, else an owner-only file in
    an owner-only temporary directory; gone afterwards."""
    fd = _memory_file()
    if fd is not None:
        try:
            with open(fd, "wb", closefd=False) as handle:
                handle.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="united-tls-") as directory:
        path = os.path.join(directory, "pem")
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(data)
        yield path


def _memory_file() -> int | None:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return int(memfd_create("united-tls", os.MFD_CLOEXEC))
    except OSError:
        return None


class ServedCertificate:
    """What the listener serves: the certificate of :attr:`current`, replaced for new
    handshakes by :meth:`serve` (connections already up keep theirs).

    The listener's own context (:attr:`listener`) holds no certificate: every
    ClientHello goes through its ``sni_callback`` (OpenSSL calls it with or without
    a server name), which hands the connection the current context. Loading a
    renewed pair into the live context instead would *add* it: OpenSSL keeps one
    certificate per key type, so after an RSA to ECDSA renewal the old RSA one
    would still be served to clients that only speak RSA.
    """

    def __init__(self, current: ssl.SSLContext) -> None:
        self.current = current
        self.listener = _server_context()
        self.listener.sni_callback = self._choose

    def serve(self, context: ssl.SSLContext) -> None:
        self.current = context

    def _choose(
        self, ssl_object: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        ssl_object.context = self.current


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def make_self_signed(host: str, cert_path: Path, key_path: Path) -> str:
    """Write a self-signed certificate for ``host`` (a name or an IP address, its
    only subject alternative name) and its key (owner-only); return its fingerprint.

    ECDSA P-256, valid for ten years. Refuses to overwrite either file.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(key_path, key_pem, 0o600)
    try:
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return format_fingerprint(cert.fingerprint(hashes.SHA256()))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
