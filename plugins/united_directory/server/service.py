"""The directory service: members, invites, channels and presence; what frames mean.

One job: the directory's state (members, channels, who is online where, kept
in memory so queries never touch the database; the registry is the record)
and the protocol on top of it. It answers each session's frames (log in
first, then member requests and the frame kinds other plugins serve), pushes
member-list and presence changes to sessions, tells the other plugins through
the directory's hooks, and offers the admin operations the control API uses.

Bad input never takes the server down: every frame is decoded inside bounds,
each refusal is an error frame with a code, and the offending session is
closed where continuing makes no sense (malformed or oversized frames, too many
failed logins, anything but authentication before login). Connections and
sessions are handled by :mod:`.session`; floods are bounded by :mod:`.limits`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import ipaddress
import logging
import os
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from united_core.api import (
    P2PAPI,
    ConfigError,
    NodeAPI,
    call_async,
    expand_wildcards,
    is_wildcard,
)
from united_core.wire import frames_pb2 as pb

from .. import protocol
from ..model import Channel, Member, MemberSet
from .certs import ServedCertificate, ServerTLS, load_server_tls
from .config import Config
from .limits import LoginLimits
from .registry import ChannelRecord, Registry, RegistryError
from .session import Endpoint, Session, SessionClosed

log = logging.getLogger(__name__)
E = pb.ErrorCode
HEAD_PUSH_INTERVAL = 0.5  # seconds between two ChannelHead pushes of one channel, at least
TLS_CHECK_INTERVAL = 60.0  # seconds between two looks at the certificate files (renewals)


class DirectoryService:
    """The directory: its state, its protocol, its admin operations (a Resource)."""

    def __init__(self, config: Config, node: NodeAPI, p2p: P2PAPI, data_dir: Path) -> None:
        self.config = config
        self.node = node
        self.p2p = p2p
        self.db_path = data_dir / config.database
        self.registry: Registry | None = None
        self.tls: ServerTLS | None = None
        self._served: ServedCertificate | None = None  # the listener's, renewals swapped in
        self.server_id = ""
        self.endpoint = Endpoint(config, self)
        self.limits = LoginLimits(config)
        self._online: dict[str, list[Session]] = collections.defaultdict(list)
        self._channels: dict[str, ChannelRecord] = {}
        self._channel_members: dict[str, set[str]] = collections.defaultdict(set)
        self._members: dict[str, Member] = {}
        self._member_keys: dict[bytes, str] = {}
        self._plugin_handlers: dict[str, protocol.FrameHandlerFn] = {}
        self.frames_handled = 0
        self.errors_sent = 0
        # Channel heads (united_history_advanced): the latest per channel, pushed
        # to its members at most every head_push_interval seconds.
        self.head_push_interval = HEAD_PUSH_INTERVAL
        self._heads: dict[str, int] = {}
        self._head_pushed_at: dict[str, float] = {}
        self._head_tasks: dict[str, asyncio.Task[None]] = {}
        self.heads_pushed = 0
        self.tls_reloads = 0
        self._tls_task: asyncio.Task[None] | None = None
        self._tls_stamp: tuple[tuple[int, int, int] | None, ...] = ()

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self.tls = self._load_tls()  # before anything opens: a bad certificate stops the start
        self.registry = await Registry.open(self.db_path)
        self.server_id = await self.registry.server_id()
        for channel in await self.registry.channels():
            self._channels[channel.channel_id] = channel
        for member in await self.registry.members():
            self._set_member(member)
            for channel in await self.registry.joined_channels(member.member_id):
                self._channel_members[channel.channel_id].add(member.member_id)
        self._plugin_handlers = self._collect_frame_handlers()
        if self.tls is not None:
            self._served = ServedCertificate(self.tls.context)
        await self.endpoint.start(self._served.listener if self._served is not None else None)
        log.info("directory listening on %s (server id %s)", self.url, self.server_id)
        if self.tls is not None:
            self._describe_tls("TLS:")
            self._tls_stamp = self._tls_files_stamp()
            self._tls_task = asyncio.get_running_loop().create_task(
                self._watch_tls(TLS_CHECK_INTERVAL), name="united-directory-tls"
            )
        problem = self.public_address_problem()
        if problem:
            log.warning("%s", problem)

    def _load_tls(self) -> ServerTLS | None:
        """The certificate and key of ``[directory] tls_cert``/``tls_key``, checked
        (a ConfigError, exit 2, when they cannot serve)."""
        if not self.config.tls:
            return None
        settings = self.node.settings
        return load_server_tls(
            settings.resolve(self.config.tls_cert),
            settings.resolve(self.config.tls_key),
            settings.path,
        )

    def _describe_tls(self, what: str) -> None:
        assert self.tls is not None
        log.info(
            "%s %s certificate %s, valid until %s",
            what,
            "self-signed" if self.tls.self_signed else "CA-issued",
            self.tls.fingerprint,
            f"{self.tls.not_after:%Y-%m-%d}",
        )
        left = self.tls.not_after - datetime.datetime.now(datetime.UTC)
        if not self.tls.self_signed and left < datetime.timedelta(days=14):
            log.warning(
                "the TLS certificate %s expires in %d days: renew it (the server picks "
                "the renewed files up by itself)",
                self.config.tls_cert,
                left.days,
            )

    def _tls_files_stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        """What changes when the certificate or key files are replaced (a renewal;
        certbot swaps symlinks, which ``stat`` follows)."""
        settings = self.node.settings
        stamps: list[tuple[int, int, int] | None] = []
        for name in (self.config.tls_cert, self.config.tls_key):
            try:
                st = os.stat(settings.resolve(name))
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    async def _watch_tls(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            stamp = self._tls_files_stamp()
            if stamp != self._tls_stamp:
                self._tls_stamp = stamp
                self.reload_tls()

    def reload_tls(self) -> bool:
        """Serve the certificate now in the files (new handshakes; sessions keep
        theirs). A pair that cannot serve is logged and the current one kept."""
        current = self.tls
        assert current is not None and self._served is not None
        try:
            # A context of its own, from one read of the files: the fingerprint is
            # the certificate it serves, and nothing of the old pair stays in it.
            fresh = self._load_tls()
            assert fresh is not None
        except (ConfigError, OSError, ssl.SSLError) as exc:
            log.error(
                "TLS: the changed certificate files cannot be served (%s); still serving %s",
                exc.message if isinstance(exc, ConfigError) else exc,
                current.fingerprint,
            )
            return False
        if fresh.fingerprint == current.fingerprint:
            return False
        self._served.serve(fresh.context)
        self.tls = fresh
        self.tls_reloads += 1
        self._describe_tls("TLS: now serving the new")
        if current.self_signed:
            log.warning(
                "TLS: the self-signed certificate changed: members pinned %s and refuse the "
                "new one until their [discovery] tls_fingerprint is %s",
                current.fingerprint,
                self.tls.fingerprint,
            )
        return True

    def _collect_frame_handlers(self) -> dict[str, protocol.FrameHandlerFn]:
        """Every plugin's frame handlers, by kind (``united_register_frame_handlers``)."""
        handlers: dict[str, protocol.FrameHandlerFn] = {}
        for batch in self.node.hook.united_register_frame_handlers():
            for kind, handler in batch:  # a FrameHandler, or a plain (kind, handler) tuple
                if kind in self._handlers or kind in ("hello", "auth", "register"):
                    log.warning("a plugin's handler for %r frames is ignored: served here", kind)
                elif kind in handlers:
                    log.warning("two plugins serve %r frames; ignoring one", kind)
                else:
                    handlers[kind] = handler
        return handlers

    @property
    def port(self) -> int:
        return self.endpoint.port

    async def announce_state(self) -> None:
        """Tell the other plugins the member list and the channels (at start)."""
        await self._members_changed()
        await self._channels_changed()

    async def stop(self) -> None:
        for task in list(self._head_tasks.values()):
            task.cancel()
        self._head_tasks.clear()
        if self._tls_task is not None:
            self._tls_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tls_task
        await self.endpoint.stop()
        if self.registry is not None:
            await self.registry.close()

    @property
    def url(self) -> str:
        """The URL invites name: ``public_url``; unset, one this machine serves
        (the listen address, a wildcard replaced by an interface's address, never
        the host name, which other machines rarely resolve)."""
        if self.config.public_url:
            return self.config.public_url
        scheme = "wss" if self.config.tls else "ws"
        host = self.config.listen_host
        if _is_wildcard_host(host):
            host = _interface_address(host)
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}/ws"

    def public_address_problem(self) -> str | None:
        """Why members on other machines may not reach :attr:`url` (one line), or None."""
        public = self.config.public_url
        hint = "set [directory] public_url to the address members reach this server at"
        if not public:
            return f"[directory] public_url is not set: invites name {self.url}; {hint}"
        host = urlparse(public).hostname or ""
        if _is_wildcard_host(host):
            return f"[directory] public_url {public} names no reachable host; {hint}"
        if _is_loopback(host) and not _is_loopback(self.config.listen_host):
            return (
                f"[directory] public_url {public} is a loopback address: only this machine "
                f"can use its invites, while the server listens on "
                f"{self.config.listen_host or '0.0.0.0'}; {hint}"
            )
        return None

    @property
    def invite_fingerprint(self) -> str:
        """The certificate fingerprint invites carry: a self-signed certificate this
        server serves itself (a CA-issued one is verified normally, and renewed)."""
        if self.tls is not None and self.tls.self_signed:
            return self.tls.fingerprint
        return ""

    # ---- views ---------------------------------------------------------------------

    def member_set(self) -> MemberSet:
        return MemberSet.of(self._members.values(), trusted=[self.p2p.peer_id])

    def channels(self) -> list[Channel]:
        return [
            Channel(c.channel_id, c.name, protocol.topic_for(self.server_id, c.channel_id))
            for c in self._channels.values()
        ]

    def server_addrs(self, observed: str | None = None) -> list[str]:
        """What members dial: never a wildcard (issue 11).

        ``[directory] announce_addrs`` if set; else the listen addresses with
        ``0.0.0.0`` expanded to this host's interface addresses; else (no
        interface up) the address the member reached us at (``observed``).
        """
        suffix = f"/p2p/{self.p2p.peer_id}"
        addrs = list(self.config.announce_addrs)
        if not addrs:
            listen = [a.split("/p2p/")[0] for a in self.p2p.listen_addrs]
            addrs = expand_wildcards(listen)
            if not addrs and observed:
                addrs = [a.replace("/ip4/0.0.0.0/", f"/ip4/{observed}/", 1) for a in listen]
            addrs = [a for a in addrs if not is_wildcard(a)]
        return [a if a.endswith(suffix) else a + suffix for a in addrs]

    def online(self, channel_id: str) -> list[pb.PeerPresence]:
        out = []
        for member_id in sorted(self._channel_members.get(channel_id, ())):
            sessions = self._online.get(member_id)
            member = self._members.get(member_id)
            if not sessions or member is None:
                continue
            latest = next((s for s in reversed(sessions) if s.addrs), sessions[-1])
            reachability, nat = latest.reachability
            out.append(
                pb.PeerPresence(
                    member_id=member_id,
                    peer_id=member.peer_id,
                    addrs=latest.addrs,
                    reachability=reachability,
                    nat=nat,
                )
            )
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "url": self.url,
            "tls": self.tls.fingerprint if self.tls is not None else "",
            "members": len(self._members),
            "online": len(self._online),
            "sessions": len(self.endpoint.sessions),
            "pending": len(self.endpoint.gate),
            "pending_evicted": self.endpoint.gate.evicted,
            "pending_refused": self.endpoint.gate.refused,
            "pending_timed_out": self.endpoint.gate.timed_out,
            "channels": len(self._channels),
            "frames_handled": self.frames_handled,
            "errors_sent": self.errors_sent,
            "heads_pushed": self.heads_pushed,
        }

    # ---- admin operations (control API) --------------------------------------------

    async def create_invite(self, name: str | None = None) -> dict[str, Any]:
        """A single-use invite: its code, expiry, the URL, the certificate fingerprint
        to pin (if any), and ``warning`` when the URL may not reach this server.

        ``name`` (optional) is the display name the invite's command line proposes;
        a name another member holds is refused (RegistryError ``name_taken``)."""
        assert self.registry is not None
        if name is not None:
            try:
                name = protocol.clean_display_name(name)
            except protocol.FrameError as exc:
                raise RegistryError("name", str(exc)) from None
            holder = await self.registry.name_holder(name)
            if holder is not None:
                raise RegistryError(
                    "name_taken", f"the display name {name!r} is taken ({holder!r})"
                )
        code, expires = await self.registry.create_invite(self.config.invite_ttl)
        invite: dict[str, Any] = {"code": code, "expires_at": expires, "url": self.url}
        if name is not None:
            invite["name"] = name
        if self.invite_fingerprint:
            invite["tls_fingerprint"] = self.invite_fingerprint
        problem = self.public_address_problem()
        if problem:
            invite["warning"] = problem
        return invite

    async def create_channel(self, name: str) -> Channel:
        assert self.registry is not None
        name = " ".join(name.split())
        if not 1 <= len(name) <= protocol.MAX_CHANNEL_NAME:
            raise RegistryError(
                "name", f"a channel name is 1 to {protocol.MAX_CHANNEL_NAME} characters"
            )
        record = await self.registry.create_channel(name)
        self._channels[record.channel_id] = record
        await self._channels_changed()
        return Channel(
            record.channel_id, name, protocol.topic_for(self.server_id, record.channel_id)
        )

    async def remove_member(self, ref: str) -> Member:
        assert self.registry is not None
        member = await self.registry.find_member(ref)
        if member is None:
            raise RegistryError("unknown", f"no member {ref!r}")
        await self.registry.remove_member(member.member_id)
        self._drop_member(member.member_id)
        for members in self._channel_members.values():
            members.discard(member.member_id)
        for session in self._online.pop(member.member_id, []):
            await session.send(
                protocol.error_frame(0, E.ERROR_CODE_NOT_A_MEMBER, "you were removed")
            )
            await session.ws.close(code=4003, message=b"removed")
        await self._member_list_changed()
        return member

    # ---- sessions (the endpoint's SessionHandler) ----------------------------------

    async def session_opened(self, session: Session) -> None:
        await self._challenge(session)

    async def frame_received(self, session: Session, data: bytes) -> None:
        await self._on_frame(session, data)

    async def error(self, session: Session, request_id: int, code: int, message: str) -> None:
        await self._error(session, request_id, code, message)

    async def session_closed(self, session: Session) -> None:
        await self._went_offline(session)

    async def _challenge(self, session: Session) -> None:
        session.nonce = secrets.token_bytes(protocol.NONCE_BYTES)
        session.nonce_expires = time.time() + self.config.nonce_ttl
        await session.send(
            pb.ServerFrame(
                challenge=pb.Challenge(
                    nonce=session.nonce,
                    server_id=self.server_id,
                    expires_at=int(session.nonce_expires * 1000),
                )
            )
        )

    async def _error(self, session: Session, request_id: int, code: int, message: str) -> None:
        self.errors_sent += 1
        await session.send(protocol.error_frame(request_id, code, message))

    async def _on_frame(self, session: Session, data: bytes) -> None:
        self.frames_handled += 1
        try:
            frame = protocol.decode_client_frame(data, self.config.max_frame_bytes)
        except protocol.FrameError as exc:
            await self._error(session, 0, exc.code, str(exc))
            raise SessionClosed from None
        kind = frame.WhichOneof("body")
        rid = frame.request_id
        try:
            if session.member is None:
                if kind == "hello":
                    await self._on_hello(session, frame)
                elif kind in ("auth", "register"):
                    try:
                        await self._on_login(session, frame, kind)
                    finally:
                        if session.member is None:
                            self.endpoint.answering(session, False)
                else:
                    await self._error(session, rid, E.ERROR_CODE_UNEXPECTED, "log in first")
                    raise SessionClosed
                return
            handler = self._handlers.get(kind or "")
            if handler is not None:
                await handler(self, session, frame)
                return
            plugin_handler = self._plugin_handlers.get(kind or "")
            if plugin_handler is None:
                await self._error(
                    session, rid, E.ERROR_CODE_UNEXPECTED, f"{kind} is not served here"
                )
                return
            await self._on_plugin_frame(session, frame, kind or "", plugin_handler)
        except protocol.FrameError as exc:
            await self._error(session, rid, exc.code, str(exc))
        except RegistryError as exc:
            await self._error(session, rid, registry_code(exc), str(exc))

    async def _on_plugin_frame(
        self,
        session: Session,
        frame: pb.ClientFrame,
        kind: str,
        handler: protocol.FrameHandlerFn,
    ) -> None:
        """A frame another plugin serves: its reply, or its refusal (an error frame
        it returned), goes back with the request's id; a handler that raises is a
        bug, answered without details (the contract: directory hookspecs)."""
        try:
            reply = await handler(self.node, self._context(session), frame)
        except Exception:
            log.exception("the handler of %r frames failed", kind)
            await self._error(
                session, frame.request_id, E.ERROR_CODE_UNEXPECTED, f"the {kind} request failed"
            )
            return
        reply.request_id = frame.request_id
        if reply.WhichOneof("body") == "error":
            self.errors_sent += 1
        await session.send(reply)

    def _context(self, session: Session) -> protocol.FrameContext:
        assert session.member is not None
        by_topic = {protocol.topic_for(self.server_id, c): c for c in self._channels}

        def topic_of(channel_id: str) -> str | None:
            return (
                protocol.topic_for(self.server_id, channel_id)
                if channel_id in self._channels
                else None
            )

        return protocol.FrameContext(
            member=session.member,
            server_id=self.server_id,
            members=self.member_set(),
            topic_of=topic_of,
            channel_of=by_topic.get,
        )

    async def _on_hello(self, session: Session, frame: pb.ClientFrame) -> None:
        if frame.hello.protocol_version != protocol.PROTOCOL_VERSION:
            await self._error(
                session,
                frame.request_id,
                E.ERROR_CODE_UNSUPPORTED_VERSION,
                f"this server speaks protocol {protocol.PROTOCOL_VERSION}",
            )
            raise SessionClosed
        await session.send(pb.ServerFrame(request_id=frame.request_id, ok=pb.Ok()))

    # ---- login -----------------------------------------------------------------------

    # Failed logins are counted where they cannot hurt anyone else (LoginLimits).

    def _set_member(self, member: Member) -> None:
        old = self._members.get(member.member_id)
        if old is not None:
            self._member_keys.pop(old.public_key, None)
        self._members[member.member_id] = member
        self._member_keys[member.public_key] = member.member_id

    def _drop_member(self, member_id: str) -> None:
        old = self._members.pop(member_id, None)
        if old is not None:
            self._member_keys.pop(old.public_key, None)

    async def _login_failed(
        self, session: Session, rid: int, code: int, message: str, member_key: bytes | None
    ) -> None:
        session.failures += 1
        member_id = self._member_keys.get(member_key, "?") if member_key is not None else "?"
        spent = self.limits.failed(session.address, member_key, member_id)
        await self._error(session, rid, code, message)
        if session.failures >= self.config.max_failed_auth_per_session or spent:
            raise SessionClosed
        await self._challenge(session)

    async def _on_login(self, session: Session, frame: pb.ClientFrame, kind: str) -> None:
        assert self.registry is not None
        rid = frame.request_id
        body = frame.auth if kind == "auth" else frame.register
        key = bytes(body.public_key)
        member_key = key if kind == "auth" and key in self._member_keys else None

        async def fail(code: int, message: str) -> None:
            await self._login_failed(session, rid, code, message, member_key)

        refusal = self.limits.refusal(session.address, member_key)
        if refusal is not None:
            await self._error(session, rid, E.ERROR_CODE_RATE_LIMITED, refusal)
            raise SessionClosed
        nonce, session.nonce = session.nonce, None  # single use, whatever happens next
        if nonce is None or body.nonce != nonce or time.time() > session.nonce_expires:
            await fail(E.ERROR_CODE_NONCE_INVALID, "unknown, used or expired nonce")
            return
        self.endpoint.answering(session)  # it answered: not pushed out meanwhile
        if kind == "auth":
            signed = protocol.auth_bytes(self.server_id, nonce, key)
            if not protocol.verify(key, signed, frame.auth.signature):
                await fail(E.ERROR_CODE_BAD_SIGNATURE, "signature does not verify")
                return
            member = await self.registry.member_by_key(key) if member_key else None
            if member is None:
                await fail(E.ERROR_CODE_NOT_A_MEMBER, "not a member")
                return
        else:
            try:
                name = protocol.clean_display_name(frame.register.display_name)
            except protocol.FrameError as exc:
                await fail(exc.code, str(exc))
                return
            signed = protocol.register_bytes(self.server_id, nonce, key, name)
            if not protocol.verify(key, signed, frame.register.signature):
                await fail(E.ERROR_CODE_BAD_SIGNATURE, "signature does not verify")
                return
            code = frame.register.invite_code or None
            if self.config.registration == "invite" and code is None:
                await fail(E.ERROR_CODE_INVITE_INVALID, "an invite is required")
                return
            try:
                member = await self.registry.register(key, name, code)
            except RegistryError as exc:
                await fail(registry_code(exc), str(exc))
                return
            self._set_member(member)
            log.info("registered member %s (%s)", member.display_name, member.peer_id)
        self._logged_in(session, member)
        await session.send(await self._welcome(rid, member, observed=local_ip(session)))
        if kind == "register":
            await self._member_list_changed()

    def _logged_in(self, session: Session, member: Member) -> None:
        """Count the session as a member's, no longer as pending; the member's
        oldest sessions beyond max_sessions_per_member are closed."""
        session.member = member
        self.limits.logged_in(session.address)
        self.endpoint.logged_in(session)
        sessions = self._online[member.member_id]
        sessions.append(session)
        for old in sessions[: -self.config.max_sessions_per_member]:
            self.endpoint.close_later(old, 4009, b"replaced by a newer session")

    async def _welcome(
        self, rid: int, member: Member, observed: str | None = None
    ) -> pb.ServerFrame:
        assert self.registry is not None
        joined = [
            self._channel_pb(c) for c in await self.registry.joined_channels(member.member_id)
        ]
        return pb.ServerFrame(
            request_id=rid,
            welcome=pb.Welcome(
                server_id=self.server_id,
                you=self._member_pb(self._members.get(member.member_id, member)),
                members=[self._member_pb(m) for m in self._members.values()],
                joined=joined,
                server_addrs=self.server_addrs(observed),
                server_peer_id=self.p2p.peer_id,
            ),
        )

    # ---- authenticated requests ------------------------------------------------------

    async def _on_rotate(self, session: Session, frame: pb.ClientFrame) -> None:
        assert self.registry is not None and session.member is not None
        member, body = session.member, frame.rotate_key
        new_key = bytes(body.new_public_key)
        signed = protocol.rotation_bytes(
            self.server_id, member.member_id, member.public_key, new_key
        )
        if len(new_key) != 32 or not (
            protocol.verify(member.public_key, signed, body.signature_by_old)
            and protocol.verify(new_key, signed, body.signature_by_new)
        ):
            await self._error(
                session,
                frame.request_id,
                E.ERROR_CODE_BAD_SIGNATURE,
                "rotation signatures do not verify",
            )
            return
        rotated = await self.registry.rotate_key(
            self._members.get(member.member_id, member), new_key
        )
        self._set_member(rotated)
        for s in self._online.get(member.member_id, []):
            s.member = rotated
            # Its addresses are served by the old key: under the new PeerId they fail
            # every handshake until the node comes back under it and announces anew.
            s.addrs, s.old_key = [], True
        log.info("member %s rotated to %s", member.display_name, rotated.peer_id)
        await session.send(pb.ServerFrame(request_id=frame.request_id, ok=pb.Ok()))
        await self._member_list_changed()

    async def _on_join_leave(self, session: Session, frame: pb.ClientFrame) -> None:
        assert self.registry is not None and session.member is not None
        kind = frame.WhichOneof("body")
        ref = frame.join.channel if kind == "join" else frame.leave.channel
        channel = await self.registry.find_channel(ref)
        if channel is None:
            await self._error(
                session, frame.request_id, E.ERROR_CODE_UNKNOWN_CHANNEL, f"no channel {ref!r}"
            )
            return
        member_id = session.member.member_id
        if kind == "join":
            await self.registry.join(member_id, channel.channel_id)
            self._channel_members[channel.channel_id].add(member_id)
        else:
            await self.registry.leave(member_id, channel.channel_id)
            self._channel_members[channel.channel_id].discard(member_id)
        joined = await self.registry.joined_channels(member_id)
        await session.send(
            pb.ServerFrame(
                request_id=frame.request_id,
                channel_list=pb.ChannelList(channels=[self._channel_pb(c) for c in joined]),
            )
        )
        await self._push_presence(channel.channel_id)

    async def _on_create_channel(self, session: Session, frame: pb.ClientFrame) -> None:
        if not self.config.members_create_channels:
            await self._error(
                session,
                frame.request_id,
                E.ERROR_CODE_UNEXPECTED,
                "channels are created by the server admin",
            )
            return
        channel = await self.create_channel(frame.create_channel.name)
        await session.send(
            pb.ServerFrame(
                request_id=frame.request_id,
                channel_list=pb.ChannelList(
                    channels=[
                        pb.Channel(
                            channel_id=channel.channel_id, name=channel.name, topic=channel.topic
                        )
                    ]
                ),
            )
        )

    async def _on_list_channels(self, session: Session, frame: pb.ClientFrame) -> None:
        channels = [self._channel_pb(c) for c in self._channels.values()]
        await session.send(
            pb.ServerFrame(
                request_id=frame.request_id, channel_list=pb.ChannelList(channels=channels)
            )
        )

    async def _on_announce(self, session: Session, frame: pb.ClientFrame) -> None:
        assert session.member is not None
        addrs = protocol.clean_addrs(list(frame.announce.addrs))
        # Members announce concrete addresses; an older one's wildcard is reachable at
        # the address the session came from. A wildcard is never passed on.
        addrs = [a.replace("/ip4/0.0.0.0/", f"/ip4/{session.remote}/") for a in addrs]
        if not session.old_key:  # see _on_rotate
            session.addrs = [a for a in addrs if not is_wildcard(a)]
        session.reachability = protocol.clean_reachability(
            frame.announce.reachability, frame.announce.nat
        )
        await session.send(pb.ServerFrame(request_id=frame.request_id, ok=pb.Ok()))
        for channel_id, members in self._channel_members.items():
            if session.member.member_id in members:
                await self._push_presence(channel_id)

    async def _on_directory_query(self, session: Session, frame: pb.ClientFrame) -> None:
        channel_id = frame.directory_query.channel_id
        if channel_id not in self._channels:
            await self._error(
                session,
                frame.request_id,
                E.ERROR_CODE_UNKNOWN_CHANNEL,
                f"no channel {channel_id!r}",
            )
            return
        await session.send(
            pb.ServerFrame(
                request_id=frame.request_id,
                directory_answer=pb.DirectoryAnswer(
                    channel_id=channel_id, online=self.online(channel_id)
                ),
            )
        )

    _handlers = {
        "rotate_key": _on_rotate,
        "join": _on_join_leave,
        "leave": _on_join_leave,
        "create_channel": _on_create_channel,
        "list_channels": _on_list_channels,
        "announce": _on_announce,
        "directory_query": _on_directory_query,
    }

    # ---- pushes ----------------------------------------------------------------------

    async def _went_offline(self, session: Session) -> None:
        if session.member is None:
            return
        self.limits.logged_out(session.address)
        sessions = self._online.get(session.member.member_id, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self._online.pop(session.member.member_id, None)
        for channel_id, members in self._channel_members.items():
            if session.member.member_id in members:
                await self._push_presence(channel_id)

    async def _push_presence(self, channel_id: str) -> None:
        frame = pb.ServerFrame(
            presence=pb.Presence(channel_id=channel_id, online=self.online(channel_id))
        )
        for member_id in list(self._channel_members.get(channel_id, ())):
            for session in list(self._online.get(member_id, [])):
                await session.send(frame)

    def history_advanced(self, topic: str, last_seq: int) -> None:
        """The archive numbered messages up to ``last_seq`` in ``topic``: push the head
        to the channel's members, at once if none was pushed in the last interval,
        else once it ends (only the latest head goes out)."""
        prefix = f"united/{self.server_id}/"
        channel_id = topic.removeprefix(prefix)
        if not topic.startswith(prefix) or channel_id not in self._channels:
            return
        if last_seq <= self._heads.get(channel_id, 0):
            return
        self._heads[channel_id] = last_seq
        if channel_id in self._head_tasks:
            return  # a push is due: it sends the latest head
        wait = self._head_pushed_at.get(channel_id, 0.0) + self.head_push_interval
        task = asyncio.get_running_loop().create_task(
            self._push_head(channel_id, max(0.0, wait - time.monotonic())),
            name="united-directory-head",
        )
        self._head_tasks[channel_id] = task

    async def _push_head(self, channel_id: str, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            self._head_tasks.pop(channel_id, None)
        self._head_pushed_at[channel_id] = time.monotonic()
        frame = pb.ServerFrame(
            channel_head=pb.ChannelHead(channel_id=channel_id, last_seq=self._heads[channel_id])
        )
        self.heads_pushed += 1
        for member_id in list(self._channel_members.get(channel_id, ())):
            for session in list(self._online.get(member_id, [])):
                with contextlib.suppress(Exception):
                    await session.send(frame)

    async def _member_list_changed(self) -> None:
        frame = pb.ServerFrame(
            member_list=pb.MemberList(members=[self._member_pb(m) for m in self._members.values()])
        )
        for sessions in list(self._online.values()):
            for session in list(sessions):
                await session.send(frame)
        await self._members_changed()

    async def _members_changed(self) -> None:
        await call_async(
            self.node.hook.united_members_changed(node=self.node, members=self.member_set())
        )

    async def _channels_changed(self) -> None:
        await call_async(
            self.node.hook.united_channels_changed(node=self.node, channels=tuple(self.channels()))
        )

    # ---- protobuf views --------------------------------------------------------------

    def _channel_pb(self, channel: ChannelRecord) -> pb.Channel:
        return pb.Channel(
            channel_id=channel.channel_id,
            name=channel.name,
            topic=protocol.topic_for(self.server_id, channel.channel_id),
        )

    @staticmethod
    def _member_pb(member: Member) -> pb.Member:
        return pb.Member(
            member_id=member.member_id,
            display_name=member.display_name,
            public_key=member.public_key,
            peer_id=member.peer_id,
            previous_keys=list(member.previous_keys),
        )


@contextlib.asynccontextmanager
async def directory_service(
    config: Config, node: NodeAPI, p2p: P2PAPI, data_dir: Path
) -> AsyncIterator[DirectoryService]:
    service = DirectoryService(config, node, p2p, data_dir)
    try:
        await service.start()  # the other plugins hear of the state in united_node_started
        yield service
    finally:
        await service.stop()


def _is_wildcard_host(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _interface_address(wildcard: str) -> str:
    """An address of this machine's for a wildcard listener: a non-loopback
    interface's if there is one (netaddrs' order), else loopback."""
    family = "ip6" if ":" in wildcard else "ip4"
    probe = f"/{family}/{'::' if family == 'ip6' else '0.0.0.0'}/tcp/1"
    for addr in expand_wildcards([probe]):
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] == family:
            return parts[2]
    return "::1" if family == "ip6" else "127.0.0.1"


def registry_code(exc: RegistryError) -> int:
    """The error code a refused registry operation is answered with."""
    return {
        "invite": E.ERROR_CODE_INVITE_INVALID,
        "name_taken": E.ERROR_CODE_NAME_TAKEN,
    }.get(exc.reason, E.ERROR_CODE_UNEXPECTED)


def local_ip(session: Session) -> str | None:
    """The address of ours the member's WebSocket reached (what it can dial)."""
    transport = session.request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return str(sockname[0]) if sockname else None
