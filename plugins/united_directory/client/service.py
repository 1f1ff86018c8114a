"""The client's standing session with the coordination server.

- At start, the on-disk cache (member list, joined channels, server addresses)
  is announced to the other plugins, so the gate and the mesh work while the
  server is down.
- A background task keeps a session: connect, log in, apply the welcome, announce
  our libp2p addresses, dial the server's host; when the session ends, reconnect
  with exponential backoff (jittered, reset after a successful login).
- Pushes (member list, presence) update the cache and fire the hooks; channel
  heads go to the head listeners (the cache gap-fills when behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from united_core.api import (
    P2PAPI,
    NodeAPI,
    call_async,
    describe_error,
    dialable_addrs,
)
from united_core.identity import Identity, load_key_file
from united_core.wire import frames_pb2 as pb

from .. import protocol
from ..model import Channel, Member, MemberSet, Presence
from . import keyfiles
from .config import Config
from .session import DirectoryClient, DirectoryError, TLSFailure, Unreachable

log = logging.getLogger(__name__)


class NotConnected(Exception):
    """The server is unreachable right now (the session is reconnecting)."""


def nat_label(reachability: str, nat: str) -> str:
    """Short form for the panel: ``public``, ``private``, ``private eim``/``sym``, ``unknown``."""
    short = {"endpoint-independent": "eim", "symmetric": "sym"}.get(nat)
    return f"{reachability} {short}" if short and reachability != "public" else reachability


def member_from_pb(m: pb.Member) -> Member:
    previous = tuple(bytes(k) for k in m.previous_keys if len(k) == 32)
    return Member(m.member_id, m.display_name, bytes(m.public_key), m.peer_id, previous)


def concrete_addrs(addrs: list[str], server_url: str) -> list[str]:
    """The server's addresses to dial, in order: never a wildcard (issue 11).

    A server announces concrete addresses; those on the host of its URL (the one
    this member already reaches) come first. Only an older server's wildcard is
    rewritten to that host, as a fallback.
    """
    host = urlparse(server_url).hostname or "127.0.0.1"
    try:
        ip = str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
    except OSError:
        ip = host
    rewritten = [a.replace("/ip4/0.0.0.0/", f"/ip4/{ip}/") for a in addrs]
    return dialable_addrs(rewritten, prefer_host=ip)


class DirectoryCache:
    """What the client knows of the server, persisted (owner-only, atomic writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server_id = ""
        self.server_peer_id = ""
        self.server_addrs: list[str] = []
        self.you = ""
        self.members: list[Member] = []
        self.joined: list[Channel] = []

    def load(self) -> bool:
        try:
            data = json.loads(self.path.read_text())
            self.server_id = data["server_id"]
            self.server_peer_id = data["server_peer_id"]
            self.server_addrs = list(data["server_addrs"])
            self.you = data.get("you", "")
            self.members = [
                Member(
                    m["member_id"],
                    m["display_name"],
                    bytes.fromhex(m["public_key"]),
                    m["peer_id"],
                    tuple(bytes.fromhex(k) for k in m.get("previous_keys", ())),
                )
                for m in data["members"]
            ]
            self.joined = [Channel(c["channel_id"], c["name"], c["topic"]) for c in data["joined"]]
        except FileNotFoundError:
            return False
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable directory cache %s: %s", self.path, exc)
            return False
        return True

    def save(self) -> None:
        data = {
            "server_id": self.server_id,
            "server_peer_id": self.server_peer_id,
            "server_addrs": self.server_addrs,
            "you": self.you,
            "members": [
                {
                    "member_id": m.member_id,
                    "display_name": m.display_name,
                    "public_key": m.public_key.hex(),
                    "peer_id": m.peer_id,
                    "previous_keys": [k.hex() for k in m.previous_keys],
                }
                for m in self.members
            ],
            "joined": [
                {"channel_id": c.channel_id, "name": c.name, "topic": c.topic} for c in self.joined
            ],
            "saved_at": time.time(),
        }
        # Owner-only: `united join` creates the data directory here, before any start.
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a stale .tmp left looser keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def apply_welcome(self, welcome: pb.Welcome, server_url: str) -> None:
        self.server_id = welcome.server_id
        self.server_peer_id = welcome.server_peer_id
        self.server_addrs = concrete_addrs(list(welcome.server_addrs), server_url)
        self.you = welcome.you.member_id
        self.members = [member_from_pb(m) for m in welcome.members]
        self.joined = [Channel(c.channel_id, c.name, c.topic) for c in welcome.joined]

    def member_set(self) -> MemberSet:
        trusted = [self.server_peer_id] if self.server_peer_id else []
        return MemberSet.of(self.members, trusted=trusted)


class DiscoveryService:
    def __init__(
        self, config: Config, node: NodeAPI, identity: Identity, p2p: P2PAPI, data_dir: Path
    ) -> None:
        self.config = config
        self.node = node
        self.identity = identity
        self.p2p = p2p
        self.cache = DirectoryCache(data_dir / config.cache_file)
        self.client: DirectoryClient | None = None
        self.connected = asyncio.Event()
        self.sessions = 0
        self.rotating = False  # a `rotate-key` is under way (its pending key is live)
        self.peer_nat: dict[str, str] = {}  # peer id -> its announced reachability (panel)
        self._retry_now = asyncio.Event()  # set when the server is seen again (libp2p)
        self.last_error = ""
        self.last_error_at: float | None = None  # `ctl status`
        self.session_since = time.time()  # when `connected` last changed (`ctl status`)
        self._task: asyncio.Task[None] | None = None
        self._pushes: set[asyncio.Task[None]] = set()
        self._login_listeners: list[Callable[[], Awaitable[None]]] = []
        self._head_listeners: list[Callable[[str, int], Awaitable[None]]] = []
        self._cached = False

    def add_login_listener(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call ``listener()`` after every successful login (other plugins' sync)."""
        self._login_listeners.append(listener)

    def add_head_listener(self, listener: Callable[[str, int], Awaitable[None]]) -> None:
        """Call ``listener(channel_id, last_seq)`` on every ``ChannelHead`` push (the
        server's archive numbered messages up to ``last_seq``): the cache gap-fills."""
        self._head_listeners.append(listener)

    async def start(self) -> None:
        self._cached = self.cache.load()
        if self._cached:
            log.info(
                "directory cache: %d members, %d channels",
                len(self.cache.members),
                len(self.cache.joined),
            )

    async def begin(self) -> None:
        """Once every plugin has started: announce what the cache knows, then keep a
        session with the server (state-change hooks never reach a plugin still starting)."""
        if self._cached:
            await self._announce_to_plugins()
        self._task = asyncio.create_task(self._keep_session(), name="united-discovery")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._pushes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Any) -> None:
        """Handle a push in its own task, kept so stop() can cancel it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._pushes.add(task)
        task.add_done_callback(self._push_done)

    def _push_done(self, task: asyncio.Task[None]) -> None:
        self._pushes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("handling a push from the server failed: %r", task.exception())

    async def _announce_to_plugins(self) -> None:
        hook = self.node.hook
        await call_async(
            hook.united_members_changed(node=self.node, members=self.cache.member_set())
        )
        await call_async(
            hook.united_channels_changed(node=self.node, channels=tuple(self.cache.joined))
        )

    # ---- the session loop ------------------------------------------------------------

    async def _keep_session(self) -> None:
        delay = self.config.reconnect_min
        while True:
            self._retry_now.clear()
            try:
                await self._one_session()
                delay = self.config.reconnect_min  # it logged in: start backing off afresh
            except asyncio.CancelledError:
                raise
            except DirectoryError as exc:
                self.last_error = str(exc)
                log.warning("directory session: %s", exc)
            except TLSFailure as exc:  # a certificate refused: worth the operator's eye
                self.last_error = str(exc)
                log.warning("directory: %s; retrying in %.1f s", exc, delay)
            except Unreachable as exc:
                self.last_error = str(exc)
                log.info("directory unreachable: %s; retrying in %.1f s", exc, delay)
            except TimeoutError:
                self.last_error = (
                    f"the server did not answer within {self.config.request_timeout:g} s"
                )
                log.info("directory: %s; retrying in %.1f s", self.last_error, delay)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.info("directory unreachable (%s); retrying in %.1f s", self.last_error, delay)
            if self.last_error:
                self.last_error_at = time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_now.wait(), delay * random.uniform(0.8, 1.2))
            if self._retry_now.is_set():  # the server was just seen: it is coming back
                delay = self.config.reconnect_min  # (its WebSocket may follow its libp2p)
            else:
                delay = min(delay * 2, self.config.reconnect_max)

    def peer_reachable(self, peer_id: str) -> None:
        """A libp2p connection to ``peer_id`` is up: if it is the server's and we
        have no session, the next login attempt is now."""
        if peer_id == self.cache.server_peer_id and not self.connected.is_set():
            self._retry_now.set()

    async def _one_session(self) -> None:
        client = await DirectoryClient.connect(
            self.config.server_url,
            on_push=self._on_push,
            request_timeout=self.config.request_timeout,
            tls_fingerprint=self.config.tls_fingerprint,
        )
        try:
            try:
                welcome = await client.login(self.identity)
            except DirectoryError as exc:
                if exc.code == pb.ERROR_CODE_NOT_A_MEMBER and await self._finish_rotation():
                    return
                raise
            self._drop_stale_rotation()
            self.cache.apply_welcome(welcome, self.config.server_url)
            self.cache.save()
            self.client = client
            self.sessions += 1
            self.last_error = ""
            self.connected.set()
            self.session_since = time.time()
            log.info("logged in to %s as %s", self.config.server_url, welcome.you.display_name)
            await self._announce_to_plugins()
            await self.announce_addrs()
            await self._dial_server()
            for listener in self._login_listeners:
                self._spawn(listener())
            for channel in self.cache.joined:  # who is online now: fill the meshes
                reply = await client.request(
                    pb.ClientFrame(directory_query=pb.DirectoryQuery(channel_id=channel.channel_id))
                )
                answer = reply.directory_answer
                await self._announce_presence(
                    pb.Presence(channel_id=answer.channel_id, online=answer.online)
                )
            await client.closed.wait()
        finally:
            if self.connected.is_set():
                self.session_since = time.time()
            self.connected.clear()
            self.client = None
            await client.close()

    async def announce_addrs(self) -> None:
        """Tell the server what others can dial: the listen addresses, wildcards
        expanded, then relayed ones (``p2p.announce_addrs``). Again when they change."""
        client = self.client
        if client is None:
            return
        own = list(self.p2p.announce_addrs)
        announce = pb.AnnounceAddrs(addrs=own, reachability=self.p2p.reachability, nat=self.p2p.nat)
        await client.request(pb.ClientFrame(announce=announce))

    def _key_path(self) -> Path:
        settings = self.node.settings
        return settings.resolve(settings["node"].identity_key)

    async def _finish_rotation(self) -> bool:
        """The server refused our key: if a rotation was interrupted after the
        server moved us to the new key, swap the key files and stop (to come back
        under the new PeerId). True when it did."""
        key_path = self._key_path()
        pending = keyfiles.pending_key_path(key_path)
        if not pending.exists():
            return False
        try:
            new = load_key_file(pending)
        except Exception as exc:
            log.warning("ignoring unreadable pending key %s: %s", pending, exc)
            return False
        probe = await DirectoryClient.connect(
            self.config.server_url,
            request_timeout=self.config.request_timeout,
            tls_fingerprint=self.config.tls_fingerprint,
        )
        try:
            await probe.login(new)  # refused (DirectoryError) if not ours either
        finally:
            await probe.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = keyfiles.swap_key_files(key_path, pending, stamp)
        log.warning(
            "completed an interrupted key rotation: now %s (old key kept in %s); "
            "stopping to come back under the new peer id",
            new.peer_id,
            backup,
        )
        self.node.request_stop()
        return True

    def _drop_stale_rotation(self) -> None:
        """Our key was welcomed: a pending key is from a rotation that never
        reached the server."""
        pending = keyfiles.pending_key_path(self._key_path())
        if not self.rotating and pending.exists():
            log.info("removing %s: its rotation never reached the server", pending)
            pending.unlink(missing_ok=True)

    async def _dial_server(self) -> None:
        for addr in self.cache.server_addrs:
            try:
                await self.p2p.connect(addr)
                return
            except Exception as exc:
                log.info("could not dial the server at %s: %s", addr, describe_error(exc))

    def _on_push(self, frame: pb.ServerFrame) -> None:
        kind = frame.WhichOneof("body")
        if kind == "member_list":
            self.cache.members = [member_from_pb(m) for m in frame.member_list.members]
            self.cache.save()
            self._spawn(self._announce_members())
        elif kind == "presence":
            self._spawn(self._announce_presence(frame.presence))
        elif kind == "channel_head":
            head = frame.channel_head
            for head_listener in self._head_listeners:
                self._spawn(head_listener(head.channel_id, int(head.last_seq)))
        elif kind == "error":
            log.warning("the server says: %s", frame.error.message)

    async def _announce_presence(self, presence: pb.Presence) -> None:
        channel = next((c for c in self.cache.joined if c.channel_id == presence.channel_id), None)
        if channel is None:
            return
        online = tuple(
            Presence(
                p.member_id,
                p.peer_id,
                tuple(p.addrs),
                *protocol.clean_reachability(p.reachability, p.nat),
            )
            for p in presence.online
        )
        for p in online:  # what each member says of its reachability: the panel's NAT column
            self.peer_nat[p.peer_id] = nat_label(p.reachability, p.nat)
        await call_async(
            self.node.hook.united_presence_changed(node=self.node, channel=channel, online=online)
        )

    async def _announce_members(self) -> None:
        await call_async(
            self.node.hook.united_members_changed(node=self.node, members=self.cache.member_set())
        )

    # ---- requests (control commands) -------------------------------------------------

    async def request(self, frame: pb.ClientFrame) -> pb.ServerFrame:
        client = self.client
        if client is None:
            raise NotConnected(
                f"not connected to {self.config.server_url} ({self.last_error or 'connecting'})"
            )
        return await client.request(frame)

    async def join(self, channel: str) -> list[Channel]:
        reply = await self.request(pb.ClientFrame(join=pb.JoinChannel(channel=channel)))
        return await self._set_joined(reply)

    async def leave(self, channel: str) -> list[Channel]:
        ref = self.resolve(channel)
        reply = await self.request(pb.ClientFrame(leave=pb.LeaveChannel(channel=ref or channel)))
        return await self._set_joined(reply)

    async def _set_joined(self, reply: pb.ServerFrame) -> list[Channel]:
        self.cache.joined = [
            Channel(c.channel_id, c.name, c.topic) for c in reply.channel_list.channels
        ]
        self.cache.save()
        await call_async(
            self.node.hook.united_channels_changed(
                node=self.node, channels=tuple(self.cache.joined)
            )
        )
        return self.cache.joined

    def resolve(self, channel: str) -> str | None:
        for c in self.cache.joined:
            if channel in (c.channel_id, c.name):
                return c.channel_id
        return None

    async def who(self, channel: str) -> list[dict[str, Any]]:
        channel_id = self.resolve(channel) or channel
        reply = await self.request(
            pb.ClientFrame(directory_query=pb.DirectoryQuery(channel_id=channel_id))
        )
        names = {m.member_id: m.display_name for m in self.cache.members}
        return [
            {
                "name": names.get(p.member_id, "?"),
                "member_id": p.member_id,
                "peer_id": p.peer_id,
                "addrs": list(p.addrs),
            }
            for p in reply.directory_answer.online
        ]

    def status(self) -> dict[str, Any]:
        """The session with the server, for `ctl status` (``united_status``)."""
        return {
            "server_url": self.config.server_url,
            "logged_in": self.connected.is_set(),
            "since": _iso(self.session_since),
            "last_error": self.last_error or None,
            "last_error_at": _iso(self.last_error_at) if self.last_error else None,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "server_url": self.config.server_url,
            "connected": self.connected.is_set(),
            "sessions": self.sessions,
            "last_error": self.last_error,
            "members": len(self.cache.members),
            "joined": [c.name for c in self.cache.joined],
            "peer_nat": dict(self.peer_nat),
        }


@contextlib.asynccontextmanager
async def discovery_service(
    config: Config, node: NodeAPI, identity: Identity, p2p: P2PAPI, data_dir: Path
) -> AsyncIterator[DiscoveryService]:
    service = DiscoveryService(config, node, identity, p2p, data_dir)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def _iso(ts: float | None) -> str | None:
    """A Unix time as local ISO 8601 text, to the second."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
