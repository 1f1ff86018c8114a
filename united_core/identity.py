"""A node's identity: one Ed25519 key (pynacl) and the libp2p PeerId derived from it.

The PeerId is computed here without libp2p (only the P2P runtime imports it): the
protobuf-encoded public key wrapped in an identity multihash, base58btc-encoded.
A test checks it against libp2p's own derivation.
"""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
import nacl.exceptions
import nacl.signing

KEY_FILE_HEADER = "united-ed25519-seed-v1"

# libp2p crypto.pb PublicKey { Type = Ed25519 (1), Data = 32 bytes }.
_ED25519_PUBKEY_PROTO_PREFIX = b"\x08\x01\x12\x20"
# Multihash "identity" (0x00) of the 36-byte protobuf key.
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"


class IdentityError(Exception):
    """A key file that is missing, unreadable, malformed or too open."""


def peer_id_from_public_key(public_key: bytes) -> str:
    """Return the libp2p PeerId (base58btc string) of an Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return base58.b58encode(
        _IDENTITY_MULTIHASH_PREFIX + _ED25519_PUBKEY_PROTO_PREFIX + public_key
    ).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Invert :func:`peer_id_from_public_key`; raise ValueError for other PeerIds."""
    raw = base58.b58decode(peer_id)
    prefix = _IDENTITY_MULTIHASH_PREFIX + _ED25519_PUBKEY_PROTO_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise ValueError(f"not an Ed25519 identity PeerId: {peer_id!r}")
    return raw[len(prefix) :]


@dataclass(frozen=True, repr=False)
class Identity:
    """A signing key with its public key and PeerId. ``repr`` never shows the seed."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self.signing_key)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature of ``data``."""
        return self.signing_key.sign(data).signature

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id})"


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Check a detached Ed25519 signature; any malformed input is simply False."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True


def write_key_file(path: Path, identity: Identity) -> None:
    """Create ``path`` with owner-only permissions; refuse to replace an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"{KEY_FILE_HEADER}:{base64.b64encode(identity.seed).decode('ascii')}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(
            f"{path}: a key file already exists; refusing to overwrite it"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # in case the umask was stricter than needed for O_CREAT


def load_key_file(path: Path) -> Identity:
    """Read a key file written by :func:`write_key_file`.

    Like ssh, a key readable by the group or others is refused: the seed is the
    member's whole identity.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise IdentityError(f"{path}: no key file (create one with `united init`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"{path}: cannot read key file: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path}: permissions {stat.S_IMODE(mode):04o} are too open; "
            "the key must be readable by its owner only (chmod 600)"
        )
    header, _, body = text.strip().partition(":")
    try:
        if header != KEY_FILE_HEADER:
            raise ValueError("unknown header")
        seed = base64.b64decode(body, validate=True)
        if len(seed) != 32:
            raise ValueError("the seed is not 32 bytes")
    except ValueError as exc:
        raise IdentityError(f"{path}: not a UNITED key file ({exc})") from None
    return Identity.from_seed(seed)
