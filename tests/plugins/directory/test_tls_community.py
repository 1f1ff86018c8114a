"""A TLS community as a self-hoster sets it up: real `united` processes.

`united init --role server --public-url wss://... --self-signed`, `united invite
--name`, the printed `united join` run as it is (the certificate pinned through
the invite), members chatting; a member given a wrong fingerprint refuses to
connect. Then the same through nginx, with docs/operator.md's recipe.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, united_cmd
from support import free_port, init_server_dir, serving_node

from united_core.testing import on_loopback, poll

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[3]


def ctl(config: Path, *args: str) -> Any:
    result = run_cli("ctl", "-c", str(config), *args, "--json")
    if result.returncode != 0:
        return None
    return json.loads(result.stdout) if result.stdout.strip() else None


def join_as_printed(server: Path, home: Path, name: str) -> Path:
    """`united invite --name NAME`, then its last line run as printed, from ``home``."""
    invite = run_cli("invite", "-c", str(server), "--name", name)
    assert invite.returncode == 0, invite.stderr
    words = shlex.split(invite.stdout.strip().splitlines()[-1])
    assert words[:2] == ["united", "join"]
    home.mkdir(parents=True)
    joined = subprocess.run(
        united_cmd(*words[1:]), cwd=home, capture_output=True, text=True, timeout=30
    )
    assert joined.returncode == 0, joined.stderr
    config = home / "united-member" / "united.toml"
    on_loopback(config)  # the only edit: tests talk to loopback only
    return config


def chat(server: Path, alice: Path, bob: Path) -> None:
    """Both members join #general, see each other online, and alice's message reaches bob."""
    with serving_node(alice), serving_node(bob):
        for member in (alice, bob):
            assert ctl(member, "join", "general") is not None
        poll(lambda: len(ctl(alice, "who", "general") or []) == 2, timeout=30)
        text = f"hello over wss {time.time()}"
        assert run_cli("ctl", "-c", str(alice), "send", "general", text).returncode == 0

        def bob_has_it() -> bool:
            rows = ctl(bob, "history", "general") or []
            return any(text in json.dumps(row) for row in rows)

        poll(bob_has_it, timeout=30)
        status = ctl(bob, "status")
        assert "wss://" in json.dumps(status)


def test_a_member_joins_and_chats_over_wss_with_a_pinned_self_signed_cert(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"wss://127.0.0.1:{port}/ws"
    server = init_server_dir(tmp_path, "--public-url", url, "--self-signed", port=port)
    with serving_node(server):
        assert run_cli("channel", "create", "general", "-c", str(server)).returncode == 0
        alice = join_as_printed(server, tmp_path / "alice-home", "alice")
        bob = join_as_printed(server, tmp_path / "bob-home", "bob")
        pinned = tomllib.loads(alice.read_text())["discovery"]
        assert pinned["server_url"] == url and pinned["tls_fingerprint"].startswith("sha256:")

        # A member handed a wrong fingerprint refuses the server: nothing registered.
        invite = run_cli("invite", "-c", str(server), "--name", "carol").stdout.splitlines()[-1]
        words = shlex.split(invite)
        wrong = "sha256:" + "00" * 32
        words[words.index("--tls-fingerprint") + 1] = wrong
        words[words.index("--dir") + 1] = str(tmp_path / "carol")
        refused = run_cli(*words[1:])
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "not the one pinned" in refused.stderr and wrong in refused.stderr
        members = ctl(server, "members")
        assert sorted(m["name"] for m in members) == ["alice", "bob"]

        chat(server, alice, bob)

        # A member whose pin is not the server's certificate never logs in.
        bob.write_text(bob.read_text().replace(pinned["tls_fingerprint"], wrong))
        log = bob.parent / "node.log"
        log.write_text("")
        with serving_node(bob):
            poll(lambda: "not the one pinned" in log.read_text(), timeout=20)
            assert "logged in to" not in log.read_text()


# ---- behind nginx: the reverse-proxy recipe of docs/operator.md -------------------------


def recipe() -> str:
    """The nginx configuration docs/operator.md gives, as written there."""
    text = (ROOT / "docs" / "operator.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/operator.md has no ```nginx block"
    return str(blocks[0])


def certificate_authority(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA (members trust it through SSL_CERT_FILE) and a certificate it issued
    for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "UNITED test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "fullchain.pem", directory / "privkey.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


def start_nginx(directory: Path, site: str) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    (directory / "united.conf").write_text(site)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers may read tmp_path
    temp = "\n".join(
        f"  {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n  access_log {directory / 'access.log'};\n{temp}\n"
        f"  include {directory / 'united.conf'};\n}}\n"
    )
    log = (directory / "nginx.out").open("wb")
    return subprocess.Popen(
        [nginx, "-p", str(directory), "-c", str(directory / "nginx.conf"),
         "-e", str(directory / "error.log")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (apt-get install nginx; .ci/run does)",
)
def test_members_chat_through_the_nginx_recipe_of_the_operator_guide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operator.md's nginx site, with only its host, port, certificate paths and
    the directory's port replaced, in front of a real server; members verify the
    proxy's CA-issued certificate (no pin) and chat."""
    proxy_dir = tmp_path / "nginx"
    proxy_dir.mkdir()
    ca, cert, key = certificate_authority(proxy_dir)
    proxy_port, directory_port = free_port(), free_port()
    site = recipe()
    for placeholder in ("/etc/letsencrypt/live/chat.example.org/fullchain.pem",
                        "/etc/letsencrypt/live/chat.example.org/privkey.pem",
                        "listen 443 ssl;", "127.0.0.1:7421"):  # fmt: skip
        assert placeholder in site, placeholder
    site = (
        site.replace("/etc/letsencrypt/live/chat.example.org/fullchain.pem", str(cert))
        .replace("/etc/letsencrypt/live/chat.example.org/privkey.pem", str(key))
        .replace("listen 443 ssl;", f"listen 127.0.0.1:{proxy_port} ssl;")
        .replace("127.0.0.1:7421", f"127.0.0.1:{directory_port}")
    )
    public = f"wss://127.0.0.1:{proxy_port}/ws"
    # The guide's server settings: public_url at the proxy, the directory on loopback.
    server = init_server_dir(tmp_path, "--public-url", public, port=directory_port)
    written = tomllib.loads(server.read_text())["directory"]
    assert written["listen_host"] == "127.0.0.1" and written["public_url"] == public
    assert "tls_cert" not in written  # TLS ends at the proxy

    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the members' "system" CAs
    nginx = start_nginx(proxy_dir, site)
    try:
        poll(lambda: nginx.poll() is None and listening(proxy_port), timeout=20)
        with serving_node(server):
            assert run_cli("channel", "create", "general", "-c", str(server)).returncode == 0
            alice = join_as_printed(server, tmp_path / "alice-home", "alice")
            bob = join_as_printed(server, tmp_path / "bob-home", "bob")
            assert "tls_fingerprint" not in tomllib.loads(alice.read_text())["discovery"]
            chat(server, alice, bob)
        # The sessions went through nginx as WebSocket upgrades.
        access = (proxy_dir / "access.log").read_text()
        assert re.search(r'"GET /ws HTTP/1\.1" 101 ', access), access
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
