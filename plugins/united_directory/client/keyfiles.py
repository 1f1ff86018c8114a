"""The member's key files during a rotation: the pending new key and the swap.

``identity.key.new`` exists only between "a new key was made" and "the files were
swapped" (plugins/united_directory/client/rotation.py). Finding one at login
means a rotation was interrupted: :func:`pending_key_path` names it, and the
discovery plugin either completes the swap (the server already moved the member
to the new key) or deletes it (the rotation never reached the server).
"""

from __future__ import annotations

import os
from pathlib import Path


def pending_key_path(key_path: Path) -> Path:
    """Where a rotation keeps the new key until the swap."""
    return key_path.with_name(key_path.name + ".new")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_key_files(key_path: Path, pending: Path, stamp: str) -> Path:
    """Keep the current key as ``<key>.old-<stamp>`` and move ``pending`` into place
    atomically; return the backup's path."""
    backup = key_path.with_name(f"{key_path.name}.old-{stamp}")
    os.link(key_path, backup)  # the same inode: owner-only, as the key was
    os.chmod(backup, 0o600)
    os.replace(pending, key_path)
    fsync_path(key_path.parent)
    return backup
