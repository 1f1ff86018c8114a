"""The member gate: refuse a non-member inside the Noise handshake (DESIGN §4).

py-libp2p 0.8.1 has no key-based connection gater, and closing a connection from
a notifee leaves it briefly usable. Failing the security upgrade instead refuses
the peer before any muxer or protocol runs; the dialer sees a handshake failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
