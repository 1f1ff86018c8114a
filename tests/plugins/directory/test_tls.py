"""The directory over TLS: real aiohttp servers with real certificates on 127.0.0.1.

A self-signed certificate is pinned by its fingerprint (from the invite); a
wrong one is refused before anything reaches the server; without a pin the
client verifies certificates as a browser does; ``wss://`` never falls back to
``ws://``; bad certificate settings stop the start with one line.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from conftest import run_cli
from support import registered, server, server_config
from united_directory.client.session import DirectoryClient, TLSFailure, Unreachable
from united_directory.server import service as service_module
from united_directory.server.certs import load_server_tls, make_self_signed
from united_directory.tls import normalize_fingerprint, parse_fingerprint

from united_core.api import ConfigError
from united_core.identity import Identity
from united_core.testing import running_node, until


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    return cert, key, make_self_signed(host, cert, key)


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
