"""The directory over TLS: real aiohttp servers with real certificates on 127.0.0.1.

A self-signed certificate is pinned by its fingerprint (from the invite); a
wrong one is refused before anything reaches the server; without a pin the
client verifies certificates as a browser does; ``wss://`` never falls back to
``ws://``; bad certificate settings stop the start with one line.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from conftest import run_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from support import registered, server, server_config
from united_directory.client.session import DirectoryClient, TLSFailure, Unreachable
from united_directory.server import certs as certs_module
from united_directory.server import service as service_module
from united_directory.server.certs import load_server_tls, make_self_signed
from united_directory.tls import der_fingerprint, normalize_fingerprint, parse_fingerprint

from united_core.api import ConfigError
from united_core.identity import Identity
from united_core.testing import running_node, until
from united_core.wire import frames_pb2 as pb


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    return cert, key, make_self_signed(host, cert, key)


def rsa_self_signed(directory: Path) -> tuple[Path, Path, str]:
    """Like make_self_signed, with an RSA key (make_self_signed makes ECDSA ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, der_fingerprint(cert.public_bytes(serialization.Encoding.DER))


async def served_fingerprint(port: int, rsa_only: bool = False) -> str | None:
    """The fingerprint of the certificate a TLS client gets from 127.0.0.1:``port``;
    None if the handshake fails. ``rsa_only``: a client that can only take an RSA
    certificate (TLS 1.2, RSA-authenticated cipher suites)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if rsa_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:AES128-GCM-SHA256")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context), 5
        )
    except (ssl.SSLError, ConnectionError):
        return None
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return der_fingerprint(der)


def tls_settings(cert: Path, key: Path) -> str:
    return f'tls_cert = "{cert}"\ntls_key = "{key}"\n'


def test_a_self_signed_server_is_pinned_through_its_invite(tmp_path: Path) -> None:
    cert, key, fingerprint = self_signed(tmp_path / "certs")

    async def scenario() -> None:
        async with server(tmp_path, tls_settings(cert, key)) as (_, service, _):
            url = service.url
            assert url == f"wss://127.0.0.1:{service.port}/ws"
            invite = await service.create_invite("alice")
            assert invite["tls_fingerprint"] == fingerprint and invite["url"] == url
            client = await DirectoryClient.connect(url, tls_fingerprint=fingerprint)
            identity = Identity.generate()
            welcome = await client.register(identity, "alice", invite["code"])
            assert welcome.you.display_name == "alice"
            await client.close()
            # The pinned member logs in again later, as its node does.
            again = await DirectoryClient.connect(url, tls_fingerprint=fingerprint)
            assert (await again.login(identity)).you.member_id == welcome.you.member_id
            # The session really is TLS.
            [session] = service.endpoint.sessions
            ssl_object = session.request.transport.get_extra_info("ssl_object")
            assert ssl_object is not None and ssl_object.version().startswith("TLSv1.")
            assert service.stats()["tls"] == fingerprint
            await again.close()

    asyncio.run(scenario())


def test_a_wrong_fingerprint_is_refused_and_the_server_hears_nothing(tmp_path: Path) -> None:
    cert, key, fingerprint = self_signed(tmp_path / "certs")
    _, _, other = self_signed(tmp_path / "other")

    async def scenario() -> None:
        async with server(tmp_path, tls_settings(cert, key)) as (_, service, _):
            sessions = 0
            opened = service.session_opened

            async def counting(session: object) -> None:
                nonlocal sessions
                sessions += 1
                await opened(session)

            service.session_opened = counting
            with pytest.raises(TLSFailure) as info:
                await DirectoryClient.connect(service.url, tls_fingerprint=other)
            message = str(info.value)
            assert "not the one pinned" in message and other in message
            assert fingerprint in message  # what the server showed instead
            # Unpinned, a self-signed certificate is not trusted (system CAs).
            with pytest.raises(TLSFailure) as info:
                await DirectoryClient.connect(service.url)
            assert "not trusted" in str(info.value) and "--tls-fingerprint" in str(info.value)
            # Nothing reached the directory: no WebSocket session, no frame, no member
            # (aiohttp checks the pin before it sends the HTTP request).
            await asyncio.sleep(0.2)
            assert sessions == 0 and service.frames_handled == 0
            assert service.member_set().members == ()
            # The right pin still gets in.
            client = await DirectoryClient.connect(service.url, tls_fingerprint=fingerprint)
            await until(lambda: sessions == 1, 5, "the pinned session")
            await client.close()

    asyncio.run(scenario())


def test_wss_never_falls_back_to_ws(tmp_path: Path) -> None:
    """A TLS server reached with ws://, and a plain server reached with wss://, fail
    with a reason; nothing is retried in the other scheme."""
    cert, key, fingerprint = self_signed(tmp_path / "certs")

    async def scenario() -> None:
        async with server(tmp_path / "tls", tls_settings(cert, key)) as (_, service, _):
            plain_url = service.url.replace("wss://", "ws://")
            with pytest.raises(Unreachable) as info:
                await DirectoryClient.connect(plain_url, connect_timeout=5)
            assert "closed the connection" in str(info.value) and "wss://" in str(info.value)
        async with server(tmp_path / "plain") as (_, plain, url):
            with pytest.raises(TLSFailure) as tls_info:
                await DirectoryClient.connect(
                    url.replace("ws://", "wss://"), tls_fingerprint=fingerprint
                )
            assert "TLS handshake" in str(tls_info.value)
            assert plain.frames_handled == 0
            # A pin with a ws:// URL is refused outright.
            with pytest.raises(Unreachable, match="wss://"):
                await DirectoryClient.connect(url, tls_fingerprint=fingerprint)

    asyncio.run(scenario())


def test_a_stalled_tls_handshake_counts_as_pending_and_is_dropped(tmp_path: Path) -> None:
    """TLS is set up after the pending-connection gate admitted the TCP connection:
    a client that never finishes its handshake holds a pending place and is
    dropped after header_timeout, like a slow HTTP request."""
    cert, key, fingerprint = self_signed(tmp_path / "certs")
    extra = tls_settings(cert, key) + "header_timeout = 1.0\n"

    async def scenario() -> None:
        async with server(tmp_path, extra) as (_, service, _):
            gate = service.endpoint.gate
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            await until(lambda: len(gate) == 1, 5, "the stalled connection to be pending")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            assert gate.timed_out == 1 and len(gate) == 0
            writer.close()
            # A member arriving meanwhile is served, and counted until it logs in.
            client, _, _, _ = await registered(service.url, service, "alice", fingerprint)
            assert len(gate) == 0
            await client.close()

    asyncio.run(scenario())


def test_fingerprints_are_read_in_the_forms_people_paste() -> None:
    digest = bytes(range(32))
    plain = "sha256:" + digest.hex()
    openssl = "SHA256:" + ":".join(f"{b:02X}" for b in digest)
    assert parse_fingerprint(plain) == parse_fingerprint(openssl) == digest
    assert normalize_fingerprint(openssl) == plain
    for bad in ("", digest.hex(), "md5:" + digest.hex(), "sha256:" + digest.hex()[:-2]):
        with pytest.raises(ValueError):
            parse_fingerprint(bad)


@pytest.mark.parametrize("problem", ["missing", "too-open", "mismatched", "not-pem"])
def test_bad_tls_files_stop_the_start_naming_the_key(tmp_path: Path, problem: str) -> None:
    cert, key, _ = self_signed(tmp_path / "certs")
    if problem == "missing":
        cert.unlink()
    elif problem == "too-open":
        key.chmod(0o644)
    elif problem == "mismatched":
        key.unlink()
        _, other_key, _ = self_signed(tmp_path / "other")
        other_key.rename(key)
    else:
        cert.write_text("not a certificate\n")
    expected = {
        "missing": "[directory] tls_cert: cannot read the certificate",
        "too-open": "[directory] tls_key: ",
        "mismatched": "is not the key of the certificate",
        "not-pem": "is not a PEM certificate",
    }[problem]
    config = server_config(tmp_path, tls_settings(cert, key))

    async def scenario() -> None:
        with pytest.raises(ConfigError) as info:
            async with running_node(config):
                pass
        assert expected in str(info.value) and str(config) in str(info.value)
        if problem == "too-open":
            assert "permissions 0644 are too open" in str(info.value)

    asyncio.run(scenario())


def test_a_group_readable_key_is_accepted(tmp_path: Path) -> None:
    """The ssl-cert group convention (0640) is fine; others may not read the key."""
    cert, key, fingerprint = self_signed(tmp_path)
    key.chmod(0o640)
    assert load_server_tls(cert, key).fingerprint == fingerprint


def test_a_bad_certificate_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cert, key, _ = self_signed(tmp_path / "certs")
    key.chmod(0o644)
    config = server_config(tmp_path, tls_settings(cert, key))
    result = run_cli("run", "-c", str(config), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("united:")]
    assert len(errors) == 1 and "[directory] tls_key" in errors[0]


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ('tls_cert = "tls.crt"\n', "tls_key"),
        ('tls_key = "tls.key"\n', "tls_cert"),
        ('tls_cert = "a"\ntls_key = "b"\npublic_url = "ws://example.org:7421/ws"\n', "public_url"),
    ],
)
def test_tls_settings_are_checked_with_the_config(tmp_path: Path, settings: str, key: str) -> None:
    config = server_config(tmp_path, settings)

    async def scenario() -> None:
        with pytest.raises(ConfigError) as info:
            async with running_node(config):
                pass
        assert f"[directory] {key}" in str(info.value)

    asyncio.run(scenario())


def test_a_renewed_certificate_is_served_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewals (certbot replaces the files) are picked up by themselves; a pair that
    cannot serve (a key written before its certificate) is logged, the old one kept."""
    monkeypatch.setattr(service_module, "TLS_CHECK_INTERVAL", 0.1)
    cert, key, old = self_signed(tmp_path / "certs")
    new_cert, new_key, new = self_signed(tmp_path / "renewed")
    _, stray_key, _ = self_signed(tmp_path / "stray")

    async def scenario() -> None:
        async with server(tmp_path, tls_settings(cert, key)) as (_, service, _):
            os.replace(stray_key, key)  # half a renewal: the key does not match
            await until(lambda: "cannot be served" in caplog.text, 5, "the refusal logged")
            client = await DirectoryClient.connect(service.url, tls_fingerprint=old)
            await client.close()
            assert service.tls_reloads == 0

            os.replace(new_key, key)
            os.replace(new_cert, cert)
            await until(lambda: service.tls_reloads == 1, 5, "the renewed certificate")
            client = await DirectoryClient.connect(service.url, tls_fingerprint=new)
            await client.close()
            with pytest.raises(TLSFailure):
                await DirectoryClient.connect(service.url, tls_fingerprint=old)
            assert service.stats()["tls"] == new
            assert "members pinned" in caplog.text  # a self-signed one changed: say so

    with caplog.at_level(logging.INFO, "united_directory"):
        asyncio.run(scenario())


def test_a_renewal_to_another_key_type_serves_only_the_new_certificate(tmp_path: Path) -> None:
    """RSA renewed as ECDSA: a client that only takes RSA gets the new certificate or
    none, never the old one (OpenSSL keeps one certificate per key type in a
    context: the renewal must not be added to the old). Sessions already up stay."""
    cert, key, old = rsa_self_signed(tmp_path / "certs")
    new_cert, new_key, new = self_signed(tmp_path / "renewed")

    async def scenario() -> None:
        async with server(tmp_path, tls_settings(cert, key)) as (_, service, _):
            port = service.port
            assert await served_fingerprint(port) == old
            assert await served_fingerprint(port, rsa_only=True) == old  # the probe works
            member, identity, _, _ = await registered(service.url, service, "alice", old)

            os.replace(new_key, key)
            os.replace(new_cert, cert)
            assert service.reload_tls()
            assert service.stats()["tls"] == new
            assert await served_fingerprint(port) == new
            assert await served_fingerprint(port, rsa_only=True) in (None, new)
            # The session opened before the renewal goes on over its handshake.
            reply = await member.request(pb.ClientFrame(list_channels=pb.ListChannels()))
            assert reply.WhichOneof("body") == "channel_list"
            await member.close()
            again = await DirectoryClient.connect(service.url, tls_fingerprint=new)
            await again.login(identity)
            await again.close()

    asyncio.run(scenario())


def test_the_reported_fingerprint_is_the_served_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files are read once per reload: a renewal landing while the server reads
    them cannot make it report one certificate and serve another."""
    cert, key, old = self_signed(tmp_path / "certs")
    second_cert, second_key, second = self_signed(tmp_path / "second")
    third_cert, third_key, third = self_signed(tmp_path / "third")
    parse = certs_module.x509.load_pem_x509_certificate
    armed = False

    def renewed_meanwhile(data: bytes) -> x509.Certificate:
        nonlocal armed
        if armed:  # the next renewal lands while this one is being read
            armed = False
            os.replace(third_key, key)
            os.replace(third_cert, cert)
        return parse(data)

    monkeypatch.setattr(certs_module.x509, "load_pem_x509_certificate", renewed_meanwhile)

    async def scenario() -> None:
        nonlocal armed
        async with server(tmp_path, tls_settings(cert, key)) as (_, service, _):
            assert await served_fingerprint(service.port) == old
            os.replace(second_key, key)
            os.replace(second_cert, cert)
            armed = True
            assert service.reload_tls()
            reported = service.stats()["tls"]
            assert reported in (second, third)
            assert await served_fingerprint(service.port) == reported
            service.reload_tls()  # the third pair, now whole in the files
            assert service.stats()["tls"] == third
            assert await served_fingerprint(service.port) == third

    asyncio.run(scenario())


@asynccontextmanager
async def redirecting_server(
    location: str, ssl_context: ssl.SSLContext | None
) -> AsyncIterator[int]:
    """A server answering every request with ``307 Location: location``; its port."""

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(location)

    app = web.Application()
    app.router.add_get("/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def test_a_redirect_is_never_followed(tmp_path: Path) -> None:
    """A server with the pinned certificate that redirects wss:// to plain http://
    would have the member speak plain text to wherever it points: refused, and the
    target hears nothing. No redirect is followed, TLS or not."""
    cert, key, fingerprint = self_signed(tmp_path / "certs")
    pinned = load_server_tls(cert, key).context

    async def scenario() -> None:
        async with server(tmp_path) as (_, plain, plain_url):
            opened = plain.session_opened
            sessions = 0

            async def counting(session: object) -> None:
                nonlocal sessions
                sessions += 1
                await opened(session)

            plain.session_opened = counting
            target = plain_url.replace("ws://", "http://")
            async with redirecting_server(target, pinned) as port:
                url = f"wss://127.0.0.1:{port}/ws"
                with pytest.raises(Unreachable) as info:
                    await DirectoryClient.connect(url, tls_fingerprint=fingerprint)
                message = str(info.value)
                assert "redirect (HTTP 307 to " + target in message
                assert "not followed" in message
            async with redirecting_server(target, None) as port:
                with pytest.raises(Unreachable, match="redirects are not followed"):
                    await DirectoryClient.connect(f"ws://127.0.0.1:{port}/ws")
            await asyncio.sleep(0.2)
            assert sessions == 0 and plain.frames_handled == 0
            # The target itself is a working directory: only the redirect was refused.
            client = await DirectoryClient.connect(plain_url)
            await client.close()
            assert sessions == 1

    asyncio.run(scenario())
