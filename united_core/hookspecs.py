"""The UNITED plugin API: every hook a plugin may implement.

A plugin is a module (or object) with functions marked ``@united_core.hookimpl``
and named after the hooks below. It is found through the ``united.plugins``
entry-point group and enabled by name in ``[node] plugins``; the built-in plugins
are registered exactly that way. Plugins never import one another: they talk
through these hooks and the services of the dependency-injection container.

Rules that hold for every hook (see docs/hooks.md for examples):

- Never depend on call order between plugins: pluggy calls implementations in
  LIFO registration order, and entry-point order is arbitrary. Where one answer
  must win, the hook is ``firstresult`` and the core default is ``trylast``.
- Hooks marked *may be async* may be ``async def``; the node awaits them. All
  other hooks are synchronous and return declarations; asynchronous work that
  starts and stops belongs in a container ``Resource`` (see *Composition*).
- Hooks marked *trio side* run on the P2P runtime's trio thread: they must not
  block and must not touch asyncio objects except through
  ``loop.call_soon_threadsafe``.

Called from: ``united_core/plugins.py`` (registration), ``united_core/node.py``
(everything else) and ``united_core/p2p/runtime.py`` via the node (trio side).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping

    from .acceptance import Origin, Refusal
    from .cli import CliCommand
    from .config import ConfigSection
    from .containers import PluginContainer
    from .control import ControlCommand
    from .envelope import SignedMessage
    from .frames import FrameHandler
    from .members import Channel, MemberSet, Presence
    from .node import Node
    from .p2p.options import HostOptions, Verdict
    from .p2p.runtime import HostContext

hookspec = pluggy.HookspecMarker("united")


# -------------------------------------------------------------------------------------
# Registration (historic)
# -------------------------------------------------------------------------------------


@hookspec(historic=True)
def united_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own (``pluginmanager.add_hookspecs``).

    Historic: a plugin registered late still gets the call. Cannot be a wrapper.

    :param pluginmanager: the node's plugin manager.
    """


# -------------------------------------------------------------------------------------
# Configuration
# -------------------------------------------------------------------------------------


@hookspec
def united_register_config_sections() -> list[ConfigSection]:
    """Declare the ``united.toml`` sections this plugin owns.

    Each :class:`~united_core.config.ConfigSection` names a section and a frozen
    dataclass whose fields (made with :func:`~united_core.config.setting`) are
    the keys, their types, defaults, help and bounds. An optional ``validate()``
    method does cross-field checks and raises ``ConfigValueError(key, message)``.
    Unknown keys, wrong types and out-of-range values are rejected by the core.

    :returns: a list of sections (usually one, named after the plugin).
    """


# -------------------------------------------------------------------------------------
# Composition (dependency-injection container)
# -------------------------------------------------------------------------------------


@hookspec
def united_register_containers() -> list[PluginContainer]:
    """Declare the plugin's dependency-injector container.

    The container class declares ``config = providers.Dependency()`` (its section,
    already validated), ``core = providers.DependenciesContainer()`` (identity,
    settings, p2p, stats, plugin_manager, data_dir) and, to use another plugin's
    services, ``<other name> = providers.DependenciesContainer()``. Services that
    start and stop are ``providers.Resource`` with an async context manager:
    start before ``yield``, stop after. Resources start in dependency order and
    stop in reverse.

    :returns: a list of :class:`~united_core.containers.PluginContainer`.
    """


@hookspec
def united_register_cli_commands() -> list[CliCommand]:
    """Add ``united <name>`` sub-commands (``united join``, ``united invite``, ...).

    Collected from every *installed* plugin, enabled or not, because some commands
    run before any ``united.toml`` exists (``united join`` writes one).

    :returns: a list of :class:`~united_core.cli.CliCommand`.
    """


@hookspec
def united_register_frame_handlers() -> list[FrameHandler]:
    """Serve kinds of directory WebSocket frames (``history``, ``submit``, ...).

    The directory plugin authenticates the session and calls the handler for the
    frame kinds it does not serve itself; the reply gets the request's id.

    :returns: a list of :class:`~united_core.frames.FrameHandler`.
    """


@hookspec
def united_register_commands() -> list[ControlCommand]:
    """Add commands to the local control API (``united ctl``, the console).

    :returns: a list of :class:`~united_core.control.ControlCommand`.
    """


# -------------------------------------------------------------------------------------
# P2P runtime (trio side)
# -------------------------------------------------------------------------------------


@hookspec
def united_p2p_configure(options: HostOptions, settings: Mapping[str, Any]) -> None:
    """Adjust the host options before the libp2p host is built.

    Called once on the asyncio side, before the runtime starts; change fields of
    ``options`` in place (gossipsub parameters, queue bounds, listen addresses).

    :param options: the options the runtime will build the host from.
    :param settings: every validated config section, by name.
    """


@hookspec
def united_p2p_host_started(node: Node, context: HostContext) -> None:
    """Set up protocol handlers or trio tasks on the freshly started host.

    *Trio side.* ``context.host`` is the libp2p host, ``context.pubsub`` the
    pubsub service and ``context.nursery`` a nursery that is cancelled before
    the host closes.

    :param node: the node (its container and settings; not yet fully started).
    :param context: the host, its pubsub and gossipsub router, and a nursery.
    """


@hookspec
def united_peer_allowed(node: Node, peer_id: str, direction: str) -> bool | None:
    """Decide whether a peer may connect; runs inside the Noise handshake.

    *Trio side.* The remote key has been authenticated by Noise. Any plugin
    answering ``False`` refuses the peer before any muxer or protocol runs (the
    dialer sees a handshake failure); ``None`` means no opinion. An exception
    refuses the peer (fail closed).

    :param node: the node (read plugin state from its container).
    :param peer_id: the remote PeerId (base58).
    :param direction: ``"inbound"`` or ``"outbound"``.
    :returns: ``False`` to refuse, ``True`` or ``None`` otherwise.
    """


@hookspec
def united_validate_message(
    node: Node, message: SignedMessage, origin: Origin, from_peer: str
) -> Verdict | Refusal | None:
    """Judge an envelope that passed the core checks, on every way into the node.

    The node's one acceptance path (``united_core/acceptance.py``) calls this for
    gossip from a peer (*trio side*), a member's submission to the archive, this
    node's own publish and history pages (asyncio side), after it has checked
    size, decoding, the signature, the topic binding, integer bounds and
    freshness. Any ``REJECT`` rejects (the forwarder's score drops, once);
    otherwise any ``IGNORE`` drops it quietly (no score change); otherwise it is
    accepted. A refused own publish is an error for the sender, with the reason.
    Return a :class:`~united_core.acceptance.Refusal` instead of a bare verdict to
    say why. Must be thread-safe and must not block; an exception refuses.

    :param node: the node (read plugin state from its container).
    :param message: the verified envelope.
    :param origin: how it came in (:class:`~united_core.acceptance.Origin`):
        ``GOSSIP``, ``SUBMISSION``, ``PUBLISH`` or ``HISTORY`` (the server's
        record: most policies should let history through).
    :param from_peer: the PeerId of the forwarding, submitting or (own publish)
        this node.
    :returns: a :class:`~united_core.acceptance.Verdict` or
        :class:`~united_core.acceptance.Refusal`, or ``None`` for no opinion.
    """


# -------------------------------------------------------------------------------------
# Lifecycle (asyncio side)
# -------------------------------------------------------------------------------------


@hookspec
def united_node_started(node: Node) -> Awaitable[None] | None:
    """The node is up: the host listens and every container resource started.

    *May be async.* Called in no particular order across plugins.

    :param node: the running node (settings, identity, p2p runtime, container).
    """


@hookspec
def united_node_stopping(node: Node) -> Awaitable[None] | None:
    """The node is about to stop its resources (then the host).

    *May be async.* Keep it short: the whole stop has a 2 s budget.

    :param node: the running node.
    """


# -------------------------------------------------------------------------------------
# Network events (asyncio side)
# -------------------------------------------------------------------------------------


@hookspec
def united_peer_connected(
    node: Node, peer_id: str, addrs: tuple[str, ...], direction: str, relayed: bool
) -> Awaitable[None] | None:
    """A peer passed the gate and a connection to it is up.

    *May be async.* Events are dispatched one at a time, in arrival order.

    :param node: the running node.
    :param peer_id: the remote PeerId.
    :param addrs: the connection's remote multiaddrs.
    :param direction: ``"inbound"`` or ``"outbound"``.
    :param relayed: whether the connection goes through a relay.
    """


@hookspec
def united_peer_disconnected(node: Node, peer_id: str) -> Awaitable[None] | None:
    """A connection to a peer closed.

    *May be async.*

    :param node: the running node.
    :param peer_id: the remote PeerId.
    """


@hookspec
def united_message_received(
    node: Node, message: SignedMessage, from_peer: str, received_at: float
) -> Awaitable[None] | None:
    """An accepted message arrived on a subscribed topic (our own publishes too).

    *May be async.* Messages are dispatched one at a time; a slow implementation
    slows delivery (backpressure) rather than losing messages.

    :param node: the running node.
    :param message: the verified envelope.
    :param from_peer: the PeerId that forwarded it (our own for our publishes).
    :param received_at: arrival time, seconds since the epoch.
    """


# -------------------------------------------------------------------------------------
# Membership and channels (asyncio side)
# -------------------------------------------------------------------------------------


@hookspec
def united_members_changed(node: Node, members: MemberSet) -> Awaitable[None] | None:
    """The member list changed (or is first known, from the registry or a cache).

    *May be async.* Fired by the plugin that owns the list (``directory`` on the
    server, ``discovery`` on a client); consumed by the gate (``membership``).

    :param node: the running node.
    :param members: the complete current list, plus trusted non-member peers.
    """


@hookspec
def united_channels_changed(node: Node, channels: tuple[Channel, ...]) -> Awaitable[None] | None:
    """The set of channels this node takes part in changed (or is first known).

    *May be async.* The server takes part in every channel, a client in the ones
    it joined. The mesh subscribes a topic per channel from this.

    :param node: the running node.
    :param channels: the complete current set.
    """


@hookspec
def united_presence_changed(
    node: Node, channel: Channel, online: tuple[Presence, ...]
) -> Awaitable[None] | None:
    """Who is online in a channel changed (or was first learned after a login).

    *May be async.* Fired by discovery on a client from the directory's pushes;
    the mesh dials from it to fill each channel's mesh.

    :param node: the running node.
    :param channel: the channel.
    :param online: the members online in it, with their announced addresses.
    """


# -------------------------------------------------------------------------------------
# Stats
# -------------------------------------------------------------------------------------


@hookspec
def united_stats_refresh(node: Node) -> Awaitable[None] | None:
    """Refresh measurements that cost something (ping RTTs), for the live stream.

    *May be async.* Called once per live-stream tick (about every second) and only
    while at least one subscriber is attached: when nobody watches, it never runs.

    :param node: the running node.
    """


@hookspec
def united_collect_stats(node: Node) -> Mapping[str, Any] | None:
    """Contribute to a stats snapshot (computed on request, never periodically).

    Keep it cheap and synchronous: read counters you already keep.

    :param node: the running node.
    :returns: a mapping merged into the snapshot's ``plugins`` table, keyed by
        a name of your choosing (usually the plugin name), or ``None``.
    """
