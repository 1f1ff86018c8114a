"""A node's identity: one Ed25519 key (pynacl) and the libp2p PeerId derived from it.

The PeerId is computed here without libp2p (only the P2P runtime imports it): the
protobuf-encoded public key wrapped in an identity multihash, base58btc-encoded.
A test checks it against libp2p's own derivation.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
import nacl.exceptions
import nacl.signing

log = logging.getLogger(__name__)

KEY_FILE_HEADER = "united-ed25519-seed-v1"
PRIVATE_DIR_MODE = 0o700  # a node's data directory
PRIVATE_FILE_MODE = 0o600  # the key and every file in the data directory

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


# ---- owner-only files ----------------------------------------------------------------
# A node's data (member list, message cache, archive) is for its user alone: its data
# directory is 0700 and its files 0600, created that way and tightened at start-up
# when found looser (an older version, a copy, a restore from backup).


def _tighten(path: str | Path, allowed: int) -> int | None:
    """Clear the permission bits outside ``allowed``; return the old mode if it changed.

    Symbolic links are left alone; FileNotFoundError propagates.
    """
    st = os.lstat(path)
    old = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or not old & ~allowed:
        return None
    os.chmod(path, old & allowed)
    return old


def _report(changed: list[str], where: Path) -> None:
    if changed:
        log.info("tightened permissions in %s to owner-only (were: %s)", where, ", ".join(changed))


def tighten_private_files(*paths: Path) -> None:
    """Make each existing file of ``paths`` owner-only (0600) if it is looser."""
    changed = []
    for path in paths:
        try:
            old = _tighten(path, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot make %s owner-only: %s", path, exc.strerror)
            continue
        if old is not None:
            changed.append(f"{path.name} {old:04o}")
    if paths:
        _report(changed, paths[0].parent)


def tighten_private_dir(path: Path) -> None:
    """If ``path`` exists, make it 0700 and the entries directly in it 0600 (0700 for
    directories), logging one line when anything was looser. Not recursive."""
    changed = []
    try:
        old = _tighten(path, PRIVATE_DIR_MODE)
        if old is not None:
            changed.append(f"the directory {old:04o}")
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot make %s owner-only: %s", path, exc.strerror)
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                old = _tighten(entry.path, PRIVATE_DIR_MODE)
            elif entry.is_file(follow_symlinks=False):
                old = _tighten(entry.path, PRIVATE_FILE_MODE)
            else:  # a symlink, a socket: not ours to change
                continue
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot make %s owner-only: %s", entry.path, exc.strerror)
            continue
        if old is not None:
            changed.append(f"{entry.name} {old:04o}")
    _report(changed, path)


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with the data directory's 0700, or tighten
    it and its files if it exists looser; return it."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    tighten_private_dir(path)
    return path


def create_private_file(path: Path, *companions: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists; tighten it, and the existing
    ``companions`` (a database's ``-wal``, ...), where they are looser."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    os.close(fd)
    tighten_private_files(path, *companions)
