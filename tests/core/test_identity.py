from __future__ import annotations

import stat
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from united_core.identity import (
    Identity,
    IdentityError,
    load_key_file,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify_signature,
    write_key_file,
)


def test_peer_id_equals_libp2p_derivation() -> None:
    for _ in range(20):
        identity = Identity.generate()
        libp2p_id = ID.from_pubkey(create_new_key_pair(identity.seed).public_key)
        assert identity.peer_id == libp2p_id.to_base58()
        assert public_key_from_peer_id(identity.peer_id) == identity.public_key


def test_public_key_from_peer_id_rejects_other_ids() -> None:
    with pytest.raises(ValueError):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    with pytest.raises(ValueError):
        peer_id_from_public_key(b"short")


def test_key_file_is_owner_only_and_round_trips(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "k" / "identity.key"
    write_key_file(path, identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path).peer_id == identity.peer_id


def test_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    first = Identity.generate()
    write_key_file(path, first)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        write_key_file(path, Identity.generate())
    assert load_key_file(path).peer_id == first.peer_id


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    write_key_file(path, Identity.generate())
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="too open"):
        load_key_file(path)


@pytest.mark.parametrize(
    "content", ["", "garbage", "united-ed25519-seed-v1:!!!", "united-ed25519-seed-v1:AAAA"]
)
def test_malformed_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "identity.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="not a UNITED key file"):
        load_key_file(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no key file"):
        load_key_file(tmp_path / "nope.key")


def test_repr_never_shows_the_seed() -> None:
    identity = Identity.generate()
    assert identity.seed.hex() not in repr(identity)
    assert identity.peer_id in repr(identity)


def test_verify_signature_is_false_for_malformed_input() -> None:
    identity = Identity.generate()
    sig = identity.sign(b"data")
    assert verify_signature(identity.public_key, b"data", sig)
    assert not verify_signature(identity.public_key, b"datA", sig)
    assert not verify_signature(identity.public_key[:31], b"data", sig)
    assert not verify_signature(identity.public_key, b"data", sig[:63])
    assert not verify_signature(b"\x00" * 32, b"data", sig)
