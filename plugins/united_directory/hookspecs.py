# mypy: disable-error-code="empty-body"
# (hookspecs are documentation-only bodies)
"""The directory's hooks: what the directory and discovery plugins add to the plugin API.

The core knows nothing of the directory protocol, so these hooks are not in
``united_core.hookspecs``: the ``directory`` (server) and ``discovery``
(client) plugins add them with ``united_addhooks`` (:func:`add_to`, harmless
when both are enabled). Where neither is enabled the hooks do not exist: a
plugin's hook object that implements them is registered all the same and never
called; a plugin *module* that implements them marks those implementations
``@hookimpl(optionalhook=True)``, or the node refuses an unknown hook.

Rules (as for the core's hooks, ``docs/directory.md`` has an example for each):

- The state-change hooks fire only once every plugin has started (from
  ``united_node_started`` on), one at a time, always with the complete current
  state rather than a difference: an implementation replaces what it knew.
- They are asyncio side and *may be async*; the firing plugin awaits them, so
  a slow one delays the next change (never reorders them).
- The objects they pass are immutable (:mod:`united_directory.model`); a plugin
  uses them as they are and imports that module only under ``TYPE_CHECKING``.

Fired by: ``united_directory/server/service.py`` (members, channels; frame
handlers collected at start) and ``united_directory/client/service.py``
(members, channels, presence); ``united_history_advanced`` is fired by the
archive (server) and implemented by the directory.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from united_core.api import NodeAPI

    from .model import Channel, MemberSet, Presence
    from .protocol import FrameHandler

hookspec = pluggy.HookspecMarker("united")

HOOKS = (
    "united_register_frame_handlers",
    "united_members_changed",
    "united_channels_changed",
    "united_presence_changed",
    "united_history_advanced",
)
"""Every hook this module specifies."""


def add_to(pluginmanager: pluggy.PluginManager) -> None:
    """Add these hookspecs to ``pluginmanager`` unless they are there already.

    Both halves of the directory call it from ``united_addhooks``; pluggy refuses
    a spec added twice, so the second call must be a no-op.
    """
    if all(
        getattr(pluginmanager.hook, name, None) is not None
        and getattr(pluginmanager.hook, name).spec is not None
        for name in HOOKS
    ):
        return
    pluginmanager.add_hookspecs(sys.modules[__name__])


# -------------------------------------------------------------------------------------
# Declaration (server)
# -------------------------------------------------------------------------------------


@hookspec
def united_register_frame_handlers() -> list[FrameHandler]:
    """Serve kinds of directory WebSocket frames (``history``, ``submit``, ...).

    Collected once, when the directory starts, on the server only. The directory
    authenticates the session and, for a logged-in member's frame of a kind it
    does not serve itself, awaits ``handler(node, ctx, frame)`` with a
    :class:`~united_directory.protocol.FrameContext` (the member, the server id,
    the member list, channel id <-> topic lookups, the largest frame a client
    reads). The reply is a ``ServerFrame``; the directory sets its request id.

    Error contract: a refusal is *returned*, as a ``ServerFrame`` whose ``error``
    is set (``ErrorCode`` and message, from ``united_core.wire.frames_pb2``);
    an exception escaping a handler is a bug, logged with the frame kind and
    answered ``ERROR_CODE_UNEXPECTED`` without details (the session stays
    open). A kind is served by one plugin: a second one, or a kind the directory
    serves itself (``auth``, ``join``, ...), is logged and ignored.

    :returns: a list of :class:`~united_directory.protocol.FrameHandler`, or of
        plain ``(kind, handler)`` tuples (no import of the directory needed).
    """


# -------------------------------------------------------------------------------------
# Membership and channels (asyncio side)
# -------------------------------------------------------------------------------------


@hookspec
def united_members_changed(node: NodeAPI, members: MemberSet) -> Awaitable[None] | None:
    """The member list changed (or is first known, from the registry or a cache).

    *May be async.* Fired by the plugin that owns the list (``directory`` on the
    server, from its registry; ``discovery`` on a client, from its on-disk cache
    at start, then from the server's pushes), with the complete list every time;
    consumed by the gate (``membership``) and the mesh.

    :param node: the running node.
    :param members: the complete current list
        (:class:`~united_directory.model.MemberSet`), plus trusted non-member
        peers (``trusted_peer_ids``: the server, on a client; itself on the server).
    """


@hookspec
def united_channels_changed(node: NodeAPI, channels: tuple[Channel, ...]) -> Awaitable[None] | None:
    """The set of channels this node takes part in changed (or is first known).

    *May be async.* The server takes part in every channel, a client in the ones
    it joined. Each :class:`~united_directory.model.Channel` has an id, a name and
    its gossipsub topic. The mesh subscribes a topic per channel from this.

    :param node: the running node.
    :param channels: the complete current set.
    """


@hookspec
def united_presence_changed(
    node: NodeAPI, channel: Channel, online: tuple[Presence, ...]
) -> Awaitable[None] | None:
    """Who is online in a channel changed (or was first learned after a login).

    *May be async.* Fired by discovery on a client, for each joined channel after
    every login and on every presence push from the directory; the mesh dials
    from it to fill each channel's mesh. Never fired on the server.

    :param node: the running node.
    :param channel: the channel (one this node joined).
    :param online: the members online in it
        (:class:`~united_directory.model.Presence`), with their announced addresses.
    """


# -------------------------------------------------------------------------------------
# History (asyncio side, server)
# -------------------------------------------------------------------------------------


@hookspec
def united_history_advanced(node: NodeAPI, topic: str, last_seq: int) -> Awaitable[None] | None:
    """A channel's history grew: ``last_seq`` is now its highest sequence number.

    *May be async*, and must return at once (it is awaited by the archive's
    writer). Fired on the server by the plugin that numbers messages (the
    ``archive``) after each committed batch that assigned new numbers, once per
    topic; implemented by the ``directory``, which pushes a ``ChannelHead`` to
    the channel's members online, coalesced (at most one per channel every
    0.5 s, always the latest head). A member whose cache is behind gap-fills at
    once, so history heals while connected, not only at login.

    :param node: the running node.
    :param topic: the channel's gossipsub topic (``united/<server-id>/<channel-id>``).
    :param last_seq: the highest sequence number assigned in it.
    """
