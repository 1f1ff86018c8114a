"""The member gate: refuse a non-member inside the Noise handshake (DESIGN §4).

py-libp2p 0.8.1 has no key-based connection gater, and closing a connection from
a notifee leaves it briefly usable. Failing the security upgrade instead refuses
the peer before any muxer or protocol runs; the dialer sees a handshake failure.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator

from libp2p.abc import IRawConnection, ISecureConn
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import Transport as NoiseTransport

log = logging.getLogger(__name__)

# (peer_id base58, "inbound" | "outbound") -> allowed?
PeerGate = Callable[[str, str], bool]


class NotAMember(HandshakeFailure):
    """The remote key is not allowed by the gate."""


class GatedNoiseTransport(NoiseTransport):
    """Noise XX whose handshake also fails when the gate refuses the remote key.

    Noise has authenticated the remote identity key by the time the gate runs, so
    the PeerId it sees cannot be claimed by someone else.
    """

    def __init__(self, *args: object, gate: PeerGate, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._gate = gate

    def _check(self, conn: ISecureConn, direction: str) -> None:
        peer = conn.get_remote_peer()
        try:
            allowed = self._gate(peer.to_base58(), direction)
        except Exception:  # a broken policy fails closed
            log.exception("member gate raised; refusing %s", peer)
            allowed = False
        if not allowed:
            log.info("refused %s connection from non-member %s", direction, peer)
            raise NotAMember(f"peer {peer} is not a member")

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        secure = await super().secure_inbound(conn)
        try:
            self._check(secure, "inbound")
        except NotAMember:
            await secure.close()
            raise
        return secure

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        secure = await super().secure_outbound(conn, peer_id)
        try:
            self._check(secure, "outbound")
        except NotAMember:
            await secure.close()
            raise
        return secure


class Admissions:
    """Peers a P2P service lets through the gate for a moment (trio thread only).

    An AutoNAT dial-back comes from the server's dialer, a fresh identity that is
    no member: the service expecting it admits exactly that PeerId, inbound only,
    while its probe runs (``ServiceHost.admit_inbound``). Such a peer's
    connections are *transient*: the runtime posts no ``PeerConnected`` /
    ``PeerDisconnected`` for them and ``peers()`` leaves them out, so no plugin
    (reconnect, mesh, membership) ever sees, redials or counts them.
    """

    def __init__(self) -> None:
        self._admitted: Counter[str] = Counter()
        self._transient: set[str] = set()  # admitted peers with a connection still open

    @contextlib.contextmanager
    def admit_inbound(self, peer_id: str) -> Iterator[None]:
        self._admitted[peer_id] += 1
        try:
            yield
        finally:
            self._admitted[peer_id] -= 1
            if self._admitted[peer_id] <= 0:
                del self._admitted[peer_id]

    def admits(self, peer_id: str, direction: str) -> bool:
        return direction == "inbound" and peer_id in self._admitted

    def gate(self, inner: PeerGate) -> PeerGate:
        """``inner`` (the node's gate: membership), with the admitted peers let in."""

        def allowed(peer_id: str, direction: str) -> bool:
            return self.admits(peer_id, direction) or inner(peer_id, direction)

        return allowed

    def opened(self, peer_id: str, first: bool) -> bool:
        """A connection to ``peer_id`` opened (``first``: its only one): True if it is
        transient (say nothing). A peer already connected otherwise never becomes so."""
        if peer_id in self._admitted and first:
            self._transient.add(peer_id)
        return peer_id in self._transient

    def closed(self, peer_id: str, last: bool) -> bool:
        """A connection to ``peer_id`` closed (``last``: none is left): True if transient."""
        transient = peer_id in self._transient
        if transient and last:
            self._transient.discard(peer_id)
        return transient

    def is_transient(self, peer_id: str) -> bool:
        """Admitted now, or still connected from when it was: nobody else's business."""
        return peer_id in self._transient or peer_id in self._admitted
