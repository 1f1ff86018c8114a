"""``united rotate-key -c CONFIG``: a member replaces its key (issue 11, deliverable 6).

What it does, in an order that never leaves the member without a usable key:

1. the running node makes a new key and writes it next to the current one as
   ``identity.key.new`` (owner-only, fsynced) before anything else;
2. it performs the signed rotation with the server (``RotateKey``, signed by the
   old and the new key); if the server refuses, the new file is deleted and
   nothing has changed;
3. it swaps the files: the current key is kept as ``identity.key.old-<UTC time>``
   (a hard link: same owner-only file), then the new one replaces
   ``identity.key`` atomically (``rename``);
   A node that crashes between 2 and 3 completes the swap at its next login
   (the server refuses the old key, welcomes the pending one), or deletes the
   pending key if the rotation never reached the server (``keyfiles``).
4. it stops, so that it comes back under its new PeerId. A node has one libp2p
   identity per process (the host is built with it), so the honest way to move
   the running node is a restart: a service manager (systemd ``Restart=always``,
   the container's restart policy) starts it again at once; without one, run
   ``united run -c CONFIG``.

The server pushes the new member list: every peer maps the new PeerId to the
same member (the member id does not change) and drops connections to the old
one. Messages signed with the old key stay valid in every history: the archive
keeps them, and history pages are not judged by current membership.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from united_core.api import CliTools, CommandError, NodeAPI
from united_core.identity import Identity, write_key_file

from .keyfiles import fsync_path, pending_key_path, swap_key_files
from .service import DiscoveryService
from .session import DirectoryError

STOP_DELAY = 0.5  # seconds: the reply reaches the caller before the node stops


async def rotate_key(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    """The ``rotate-key`` control command (see the module's docstring)."""
    restart = "--no-restart" not in args
    discovery = node.require(DiscoveryService)
    client = discovery.client
    if client is None:
        raise CommandError("not connected to the server: the rotation needs it; try again later")
    settings = node.settings
    key_path = settings.resolve(settings["node"].identity_key)
    old = node.identity
    new = Identity.generate()
    pending = pending_key_path(key_path)
    discovery.rotating = True  # a login meanwhile leaves the pending key alone
    try:
        pending.unlink(missing_ok=True)
        write_key_file(pending, new)
        fsync_path(pending)
        try:
            await client.rotate_key(old, new, discovery.cache.you)
        except DirectoryError as exc:
            pending.unlink(missing_ok=True)
            raise CommandError(
                f"the server refused the rotation: {exc.message}", detail=exc.code_name
            ) from None
        except Exception as exc:
            pending.unlink(missing_ok=True)
            raise CommandError(f"the server refused the rotation: {exc}") from None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = swap_key_files(key_path, pending, stamp)
    finally:
        discovery.rotating = False
    if restart:
        asyncio.get_running_loop().call_later(STOP_DELAY, node.request_restart)
    return {
        "member_id": discovery.cache.you,
        "old_peer_id": old.peer_id,
        "new_peer_id": new.peer_id,
        "key_file": str(key_path),
        "old_key_file": str(backup),
        "restarting": restart,
    }


def render_rotation(result: dict[str, Any]) -> str:
    lines = [
        f"rotated member {result['member_id']}",
        f"  old peer id: {result['old_peer_id']} (key kept in {result['old_key_file']})",
        f"  new peer id: {result['new_peer_id']} ({result['key_file']})",
    ]
    if result["restarting"]:
        lines.append(
            "the node is stopping to come back under its new peer id (exit status 75): "
            "a service manager restarts it; otherwise run `united run -c CONFIG`"
        )
    else:
        lines.append("restart the node to use the new peer id")
    return "\n".join(lines)


def add_rotate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="the member's united.toml")
    parser.add_argument(
        "--no-restart", action="store_true", help="swap the key but leave the node running"
    )
    parser.add_argument("--json", action="store_true")


def run_rotate(args: argparse.Namespace, tools: CliTools) -> int:
    result = tools.call_node(
        Path(args.config), "rotate-key", ["--no-restart"] if args.no_restart else []
    )
    print(json.dumps(result) if args.json else render_rotation(result))
    return 0
