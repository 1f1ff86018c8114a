"""The directory over a real aiohttp server, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from conftest import TOY_PLUGINS, run_cli, running_node
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    raw_session,
    registered,
    replies_until_close,
    server,
    server_config,
)
from united_directory import protocol
from united_directory.client.session import DirectoryClient, DirectoryError

from united_core import node as node_module
from united_core.api import hookimpl
from united_core.identity import Identity
from united_core.wire import frames_pb2 as pb

E = pb.ErrorCode


def test_register_with_invite_once_and_log_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path) as (node, service, url):
            invite = await service.create_invite()
            alice = Identity.generate()
            client = await DirectoryClient.connect(url)
            welcome = await client.register(alice, "alice", invite["code"])
            assert welcome.you.display_name == "alice" and welcome.you.peer_id == alice.peer_id
            assert welcome.server_peer_id == node.identity.peer_id
            assert any(a.endswith(f"/p2p/{node.identity.peer_id}") for a in welcome.server_addrs)
            await client.close()

            # The same invite a second time: refused, whoever uses it.
            other = await DirectoryClient.connect(url)
            with pytest.raises(DirectoryError) as info:
                await other.register(Identity.generate(), "mallory", invite["code"])
            assert info.value.code == E.ERROR_CODE_INVITE_INVALID
            with pytest.raises(DirectoryError) as info:
                await other.register(Identity.generate(), "mallory", "made-up-code")
            assert info.value.code == E.ERROR_CODE_INVITE_INVALID
            await other.close()

            # Alice logs in with her key on a new session.
            again = await DirectoryClient.connect(url)
            welcome = await again.login(alice)
            assert welcome.you.member_id and welcome.you.display_name == "alice"
            await again.close()
            assert [m.display_name for m in service.member_set().members] == ["alice"]

    asyncio.run(scenario())


def test_login_failures_are_refused_with_codes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path) as (_, service, url):
            member, identity, _, _ = await registered(url, service, "alice")
            await member.close()
            client = await DirectoryClient.connect(url)
            # A key that is not registered.
            with pytest.raises(DirectoryError) as info:
                await client.login(Identity.generate())
            assert info.value.code == E.ERROR_CODE_NOT_A_MEMBER
            # Alice's public key, signed by someone else.
            challenge = await client._next_challenge()
            forger = Identity.generate()
            signed = protocol.auth_bytes(challenge.server_id, challenge.nonce, identity.public_key)
            frame = pb.ClientFrame(
                auth=pb.AuthResponse(
                    public_key=identity.public_key,
                    signature=forger.sign(signed),
                    nonce=challenge.nonce,
                )
            )
            with pytest.raises(DirectoryError) as info:
                await client.request(frame)
            assert info.value.code == E.ERROR_CODE_BAD_SIGNATURE
            # A replayed (already used) nonce, correctly signed.
            signed = protocol.auth_bytes(challenge.server_id, challenge.nonce, identity.public_key)
            frame = pb.ClientFrame(
                auth=pb.AuthResponse(
                    public_key=identity.public_key,
                    signature=identity.sign(signed),
                    nonce=challenge.nonce,
                )
            )
            with pytest.raises(DirectoryError) as info:
                await client.request(frame)
            assert info.value.code == E.ERROR_CODE_NONCE_INVALID
            # Three failures: the session is closed.
            await asyncio.wait_for(client.closed.wait(), 5)
            await client.close()

    asyncio.run(scenario())


def test_failed_logins_are_rate_limited_per_address(tmp_path: Path) -> None:
    async def scenario() -> None:
        extra = "max_failed_auth_per_minute = 4\n"
        async with server(tmp_path, extra) as (_, service, url):
            for _ in range(2):
                client = await DirectoryClient.connect(url)
                for _ in range(2):
                    with pytest.raises(DirectoryError):
                        await client.login(Identity.generate())
                await client.close()
            member = Identity.generate()
            code = (await service.create_invite())["code"]
            client = await DirectoryClient.connect(url)
            with pytest.raises(DirectoryError) as info:
                await client.register(member, "late", code)
            assert info.value.code == E.ERROR_CODE_RATE_LIMITED
            await client.close()

    asyncio.run(scenario())


def test_channels_presence_and_directory_query(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path) as (_, service, url):
            general = await service.create_channel("general")
            alice, _, _, alice_pushes = await registered(url, service, "alice")
            bob, bob_id, _, _ = await registered(url, service, "bob")
            for client in (alice, bob):
                reply = await client.request(pb.ClientFrame(join=pb.JoinChannel(channel="general")))
                assert [c.name for c in reply.channel_list.channels] == ["general"]
                assert (
                    reply.channel_list.channels[0].topic
                    == f"united/{service.server_id}/{general.channel_id}"
                )
            await bob.request(
                pb.ClientFrame(announce=pb.AnnounceAddrs(addrs=["/ip4/127.0.0.1/tcp/4242"]))
            )
            answer = await alice.request(
                pb.ClientFrame(directory_query=pb.DirectoryQuery(channel_id=general.channel_id))
            )
            online = {p.peer_id: list(p.addrs) for p in answer.directory_answer.online}
            assert online[bob_id.peer_id] == ["/ip4/127.0.0.1/tcp/4242"]
            assert len(online) == 2
            # A presence push reached alice when bob announced, and when bob leaves.
            await alice_pushes.wait_for(
                lambda f: (
                    f.WhichOneof("body") == "presence" and any(p.addrs for p in f.presence.online)
                )
            )
            await bob.close()
            await alice_pushes.wait_for(
                lambda f: f.WhichOneof("body") == "presence" and len(f.presence.online) == 1
            )
            # Unknown channels are refused with a code.
            for frame in (
                pb.ClientFrame(join=pb.JoinChannel(channel="nope")),
                pb.ClientFrame(directory_query=pb.DirectoryQuery(channel_id="nope")),
            ):
                with pytest.raises(DirectoryError) as info:
                    await alice.request(frame)
                assert info.value.code == E.ERROR_CODE_UNKNOWN_CHANNEL
            # Members may not create channels unless the server allows it.
            with pytest.raises(DirectoryError) as info:
                await alice.request(pb.ClientFrame(create_channel=pb.CreateChannel(name="x")))
            assert info.value.code == E.ERROR_CODE_UNEXPECTED
            await alice.close()

    asyncio.run(scenario())


def test_member_list_is_pushed_after_registration_and_rotation(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path) as (_, service, url):
            alice, alice_id, alice_welcome, alice_pushes = await registered(url, service, "alice")
            bob, _, _, bob_pushes = await registered(url, service, "bob")

            def lists(names: set[str]) -> Any:
                return lambda f: (
                    f.WhichOneof("body") == "member_list"
                    and {m.display_name for m in f.member_list.members} == names
                )

            await alice_pushes.wait_for(lists({"alice", "bob"}))
            # Alice rotates her key: signed by the old key and the new one.
            new_key = Identity.generate()
            await alice.rotate_key(alice_id, new_key, alice_welcome.you.member_id)
            for pushes in (alice_pushes, bob_pushes):
                await pushes.wait_for(
                    lambda f: (
                        f.WhichOneof("body") == "member_list"
                        and any(m.peer_id == new_key.peer_id for m in f.member_list.members)
                    )
                )
            assert service.member_set().allows_peer(new_key.peer_id)
            assert not service.member_set().allows_peer(alice_id.peer_id)
            # The old key can no longer log in; the new one can, as the same member.
            for identity, ok in ((alice_id, False), (new_key, True)):
                client = await DirectoryClient.connect(url)
                if ok:
                    welcome = await client.login(identity)
                    assert welcome.you.member_id == alice_welcome.you.member_id
                    assert alice_id.public_key in welcome.you.previous_keys
                else:
                    with pytest.raises(DirectoryError):
                        await client.login(identity)
                await client.close()
            # A rotation signed only by the old key is refused.
            third = Identity.generate()
            signed = protocol.rotation_bytes(
                service.server_id, alice_welcome.you.member_id, new_key.public_key, third.public_key
            )
            with pytest.raises(DirectoryError) as info:
                await alice.request(
                    pb.ClientFrame(
                        rotate_key=pb.RotateKey(
                            new_public_key=third.public_key,
                            signature_by_old=new_key.sign(signed),
                            signature_by_new=new_key.sign(signed),
                        )
                    )
                )
            assert info.value.code == E.ERROR_CODE_BAD_SIGNATURE
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_bad_frames_get_error_codes_and_the_server_keeps_serving(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path) as (_, service, url):
            cases: list[tuple[Any, int]] = [
                (b"\x0a\xff\xff", E.ERROR_CODE_MALFORMED),  # truncated protobuf
                (b"", E.ERROR_CODE_MALFORMED),  # no body
                (b"x" * (protocol.MAX_FRAME_BYTES + 1), E.ERROR_CODE_TOO_LARGE),
                ("a text frame", E.ERROR_CODE_MALFORMED),
                (
                    pb.ClientFrame(list_channels=pb.ListChannels()).SerializeToString(),
                    E.ERROR_CODE_UNEXPECTED,
                ),
                (
                    pb.ClientFrame(hello=pb.Hello(protocol_version=99)).SerializeToString(),
                    E.ERROR_CODE_UNSUPPORTED_VERSION,
                ),
            ]
            for payload, code in cases:
                http, ws, challenge = await raw_session(url)
                assert challenge.WhichOneof("body") == "challenge"
                if isinstance(payload, str):
                    await ws.send_str(payload)
                else:
                    await ws.send_bytes(payload)
                replies = await replies_until_close(ws)
                await http.close()
                assert [r.error.code for r in replies if r.WhichOneof("body") == "error"] == [
                    code
                ], payload[:20]
            # An expired nonce.
            fast = await DirectoryClient.connect(url)
            challenge = await fast._next_challenge()
            service.config = type(service.config)(**{**vars(service.config), "nonce_ttl": 1.0})
            await asyncio.sleep(0)
            fast_session = next(iter(service.endpoint.sessions))
            fast_session.nonce_expires = 0
            identity = Identity.generate()
            signed = protocol.auth_bytes(challenge.server_id, challenge.nonce, identity.public_key)
            with pytest.raises(DirectoryError) as info:
                await fast.request(
                    pb.ClientFrame(
                        auth=pb.AuthResponse(
                            public_key=identity.public_key,
                            signature=identity.sign(signed),
                            nonce=challenge.nonce,
                        )
                    )
                )
            assert info.value.code == E.ERROR_CODE_NONCE_INVALID
            await fast.close()
            # After all that, a member still registers and lists channels.
            client, _, _, _ = await registered(url, service, "carol")
            reply = await client.request(pb.ClientFrame(list_channels=pb.ListChannels()))
            assert reply.WhichOneof("body") == "channel_list"
            await client.close()

    asyncio.run(scenario())


def _valid_frames() -> list[bytes]:
    return [
        pb.ClientFrame(request_id=1, hello=pb.Hello(protocol_version=1)).SerializeToString(),
        pb.ClientFrame(
            request_id=2,
            auth=pb.AuthResponse(public_key=b"k" * 32, signature=b"s" * 64, nonce=b"n" * 32),
        ).SerializeToString(),
        pb.ClientFrame(
            request_id=3,
            register=pb.Register(invite_code="abc", display_name="x", public_key=b"k" * 32),
        ).SerializeToString(),
        pb.ClientFrame(request_id=4, join=pb.JoinChannel(channel="general")).SerializeToString(),
        pb.ClientFrame(
            request_id=5, announce=pb.AnnounceAddrs(addrs=["/ip4/1.2.3.4/tcp/1"] * 3)
        ).SerializeToString(),
    ]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    blobs=st.lists(
        st.one_of(
            st.binary(max_size=512),
            st.tuples(
                st.sampled_from(_valid_frames()), st.integers(0, 200), st.integers(1, 255)
            ).map(
                lambda t: bytes(
                    b ^ t[2] if i == t[1] % len(t[0]) else b for i, b in enumerate(t[0])
                )
            ),
            st.sampled_from(_valid_frames()),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fuzzed_frames_never_break_the_server(
    fuzz_server: dict[str, Any], blobs: list[bytes]
) -> None:
    """Random and mutated frames: every session ends cleanly; a good client is still served."""
    loop, url, service = fuzz_server["loop"], fuzz_server["url"], fuzz_server["service"]

    async def attack_then_check() -> None:
        http, ws, _ = await raw_session(url)
        try:
            for blob in blobs:
                if ws.closed:
                    break
                await ws.send_bytes(blob)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    async for _ in ws:
                        pass
        finally:
            await http.close()
        client = await DirectoryClient.connect(url)
        try:
            code = (await service.create_invite())["code"]
            # Display names are unique: one per example.
            name = f"fuzz-check-{secrets.token_hex(4)}"
            welcome = await client.register(Identity.generate(), name, code)
            assert welcome.you.member_id
            reply = await client.request(pb.ClientFrame(list_channels=pb.ListChannels()))
            assert reply.WhichOneof("body") == "channel_list"
        finally:
            await client.close()

    asyncio.run_coroutine_threadsafe(attack_then_check(), loop).result(timeout=30)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server for every fuzz example, on its own event loop thread."""
    import threading

    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    stop = asyncio.Event()
    started = threading.Event()
    # Many registrations from one address: lift the per-address failure limit.
    config = server_config(tmp_path_factory.mktemp("fuzz"), "max_failed_auth_per_minute = 100000\n")

    async def main() -> None:
        async with running_node(config) as node:
            service = node.service("directory")
            ready.update(loop=loop, url=f"ws://127.0.0.1:{service.port}/ws", service=service)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="fuzz-server")
    thread.start()
    assert started.wait(30)
    yield ready
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    loop.close()


def test_open_registration_needs_no_invite(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path, 'registration = "open"\n') as (_, _, url):
            client = await DirectoryClient.connect(url)
            welcome = await client.register(Identity.generate(), "walk-in", "")
            assert welcome.you.display_name == "walk-in"
            await client.close()

    asyncio.run(scenario())


def test_invite_required_by_default(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path) as (_, _, url):
            client = await DirectoryClient.connect(url)
            with pytest.raises(DirectoryError) as info:
                await client.register(Identity.generate(), "walk-in", "")
            assert info.value.code == E.ERROR_CODE_INVITE_INVALID
            await client.close()

    asyncio.run(scenario())


# ---- hooks fired by the directory --------------------------------------------------


def test_hook_united_members_changed(tmp_path: Path, toy_plugins: Path) -> None:
    import toy_recorder

    async def scenario() -> None:
        config = server_config(tmp_path, plugins=("recorder",))
        async with running_node(config) as node:
            service = node.service("directory")
            url = f"ws://127.0.0.1:{service.port}/ws"
            client, _, _, _ = await registered(url, service, "alice")
            await client.close()
        counts = [c["count"] for n, c in toy_recorder.CALLS if n == "members_changed"]
        assert counts[0] == 0 and counts[-1] == 1  # at start, then after the registration

    asyncio.run(scenario())


def test_hook_united_channels_changed(tmp_path: Path, toy_plugins: Path) -> None:
    import toy_recorder

    async def scenario() -> None:
        config = server_config(tmp_path, plugins=("recorder",))
        async with running_node(config) as node:
            await node.service("directory").create_channel("general")
            await node.service("directory").create_channel("random")
        names = [c["names"] for n, c in toy_recorder.CALLS if n == "channels_changed"]
        assert names == [[], ["general"], ["general", "random"]]

    asyncio.run(scenario())


class FramePlugin:
    """Serves ``lookup`` frames three ways: a reply, a returned refusal, a bug."""

    def __init__(self) -> None:
        self.contexts: list[Any] = []

    @hookimpl
    def united_register_frame_handlers(self) -> list[tuple[str, Any]]:
        return [("lookup", self.lookup)]  # a plain tuple: no import of the directory

    async def lookup(self, node: Any, ctx: Any, frame: pb.ClientFrame) -> pb.ServerFrame:
        self.contexts.append(ctx)
        ids = len(frame.lookup.message_ids)
        if ids == 0:
            return pb.ServerFrame(lookup_result=pb.LookupResult())
        if ids == 1:
            return pb.ServerFrame(error=pb.Error(code=E.ERROR_CODE_TOO_LARGE, message="one"))
        raise RuntimeError("a bug with a secret in it")


def test_frame_handlers_refuse_by_returning_and_a_bug_never_closes_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract of united_register_frame_handlers (united_directory/hookspecs.py)."""
    plugin = FramePlugin()
    original = node_module.load_settings

    def with_plugin(config: Path) -> Any:
        settings, pm, warnings = original(config)
        pm.register(plugin, name="frames")
        return settings, pm, warnings

    monkeypatch.setattr(node_module, "load_settings", with_plugin)

    async def scenario() -> None:
        async with server(tmp_path) as (_, service, url):
            client, _, welcome, _ = await registered(url, service, "alice")
            reply = await client.request(pb.ClientFrame(lookup=pb.LookupMessages()))
            assert reply.WhichOneof("body") == "lookup_result" and reply.request_id
            with pytest.raises(DirectoryError) as refused:
                await client.request(pb.ClientFrame(lookup=pb.LookupMessages(message_ids=[b"a"])))
            assert refused.value.code == E.ERROR_CODE_TOO_LARGE and "one" in str(refused.value)
            errors = service.stats()["errors_sent"]
            with pytest.raises(DirectoryError) as bug:
                await client.request(
                    pb.ClientFrame(lookup=pb.LookupMessages(message_ids=[b"a", b"b"]))
                )
            assert bug.value.code == E.ERROR_CODE_UNEXPECTED and "secret" not in str(bug.value)
            assert service.stats()["errors_sent"] == errors + 1
            # The session is still open and served.
            again = await client.request(pb.ClientFrame(lookup=pb.LookupMessages()))
            assert again.WhichOneof("body") == "lookup_result"
            ctx = plugin.contexts[0]
            assert ctx.member.member_id == welcome.you.member_id
            assert ctx.server_id == welcome.server_id
            assert ctx.max_frame_bytes == protocol.MAX_FRAME_BYTES
            await client.close()

    asyncio.run(scenario())


def test_hook_united_register_cli_commands(tmp_path: Path) -> None:
    """The plugins' commands are `united` sub-commands, usable before any node exists:
    collected from every installed plugin, enabled or not (no united.toml here)."""
    help_ = run_cli("--help")
    assert help_.returncode == 0
    assert {"join", "invite", "channel"} <= _subcommands(help_.stdout)  # discovery, directory
    result = run_cli("join", "http://nope", "code", "--dir", str(tmp_path / "x"))
    assert result.returncode == 2 and "ws://" in result.stderr
    # More plugins installed, one of them failing to import (toy_broken): the
    # commands are the same (the toys add none), and the broken one breaks nothing.
    with_toys = run_cli("--help", env={"PYTHONPATH": str(TOY_PLUGINS)})
    assert with_toys.returncode == 0, with_toys.stderr
    assert _subcommands(with_toys.stdout) == _subcommands(help_.stdout)


def _subcommands(help_text: str) -> set[str]:
    """The sub-command names `united --help` lists (indented under COMMAND)."""
    names = set(re.findall(r"^ {4}([a-z][a-z_-]*)(?: {2,}\S.*)?$", help_text, re.M))
    assert names, help_text
    return names


def test_silent_sessions_are_closed_and_pending_capped_per_address(tmp_path: Path) -> None:
    async def scenario() -> None:
        extra = "login_timeout = 1.0\nmax_pending_per_address = 3\n"
        async with server(tmp_path, extra) as (_, service, url):
            http, ws, _ = await raw_session(url)
            started = asyncio.get_running_loop().time()
            await replies_until_close(ws)  # nothing sent: closed by the login timeout
            assert asyncio.get_running_loop().time() - started < 4
            await http.close()
            held = [await raw_session(url) for _ in range(3)]
            # A fourth from the same address is served; the oldest makes room.
            http4, _, first = await raw_session(url)
            assert first.WhichOneof("body") == "challenge"
            await replies_until_close(held[0][1])
            assert held[0][1].closed and not any(ws.closed for _, ws, _ in held[1:])
            assert service.stats()["pending"] == 3
            # A member connecting takes the place of the oldest again (held[1]) and,
            # once logged in, holds none: two pending remain.
            client, _, _, _ = await registered(url, service, "after")
            assert service.stats()["pending"] == 2
            await replies_until_close(held[1][1])
            assert not held[2][1].closed
            await client.close()
            for h, _, _ in [*held, (http4, None, None)]:
                await h.close()
            await asyncio.sleep(0.2)
            assert service.stats()["pending"] == 0

    asyncio.run(scenario())


def test_concurrent_registrations_cannot_reuse_an_invite(tmp_path: Path) -> None:
    """Writes are serialised: a failed registration's rollback cannot undo another's."""

    async def scenario() -> None:
        async with server(tmp_path) as (_, service, url):
            code = (await service.create_invite())["code"]
            clients = [await DirectoryClient.connect(url) for _ in range(6)]

            async def attempt(client: DirectoryClient, i: int) -> bool:
                try:
                    await client.register(
                        Identity.generate(), f"racer{i}", code if i % 2 else "bogus"
                    )
                    return True
                except DirectoryError:
                    return False

            results = await asyncio.gather(*(attempt(c, i) for i, c in enumerate(clients)))
            assert sum(results) == 1
            for client in clients:
                await client.close()
        # After a restart, the registry agrees: one member, the invite used.
        async with server(tmp_path) as (_, service, url):
            assert len(service.member_set().members) == 1
            client = await DirectoryClient.connect(url)
            with pytest.raises(DirectoryError):
                await client.register(Identity.generate(), "late", code)
            await client.close()

    asyncio.run(scenario())
