"""The UNITED plugin API (version 1.0): every hook a plugin may implement.

A plugin is a module found through the ``united.plugins`` entry-point group and
enabled by name in ``[node] plugins``; the built-in plugins are registered
exactly that way. Its module implements the *declaration* hooks (what it adds:
config sections, a container, commands); its container's ``hooks`` object
implements the *runtime* hooks, with its services injected (see
``united_register_containers``). Plugins never import one another: they talk
through these hooks and the container. Everything a hook takes or returns is
in :mod:`united_core.api`.

Rules that hold for every hook (docs/hooks.md has an example for each):

- Never depend on call order between plugins: pluggy calls implementations in
  LIFO registration order, and entry-point order is arbitrary. Where one answer
  must win, the hook is ``firstresult`` and the core default is ``trylast``.
- Hooks marked *may be async* may be ``async def``; the node awaits them. The
  others are synchronous and return declarations; work that starts and stops
  belongs in a container ``Resource``. ``united_peer_allowed``,
  ``united_validate_message`` and ``united_collect_stats`` must be plain
  functions: an async one is reported as an error (and refuses, for the first
  two), never silently ignored.
- A ``hooks`` object's methods must name known hooks: a misspelt one stops the
  node at start-up, naming it (mark ``@hookimpl(optionalhook=True)`` a hook that
  another plugin may or may not add, such as the directory's).
- State-change hooks (the directory's ``united_members_changed`` and the like)
  fire only once every plugin has started: a plugin learns state in
  ``united_node_started`` at the earliest.
- Hooks marked *trio side* run on the P2P runtime's trio thread. They receive
  plain data only, never the node; they must not block, and must only read
  state prepared by asyncio-side hooks (an asyncio-side API called from there
  raises :class:`~united_core.threads.WrongThread`, naming the hook).

Called from: ``united_core/plugins.py`` (registration), ``united_core/node.py``
and ``united_core/stats.py`` (asyncio side), ``united_core/containers.py``
(the gate and the acceptance path, trio side).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping

    from .api import (
        CliCommand,
        ConfigSection,
        ControlCommand,
        InitOptions,
        NodeAPI,
        Origin,
        PanelSection,
        PluginContainer,
        Refusal,
        SignedMessage,
        Verdict,
    )
    from .p2p.options import HostOptions

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

    Each :class:`~united_core.api.ConfigSection` names a section and a frozen
    dataclass whose fields (made with :func:`~united_core.api.setting`) are
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

    The container class may declare ``config = providers.Dependency()`` (its
    section, already validated), ``core = providers.DependenciesContainer()``
    (for plugins: ``node``, ``identity``, ``settings``, ``data_dir``, ``p2p``,
    ``stats``, ``acceptor``; it also holds the core's own ``plugin_manager``,
    ``host_options`` and ``control``, not for plugins),
    ``<other plugin> = providers.DependenciesContainer()`` to use another
    plugin's services (a missing one is reported at start-up with both
    names), ``providers.Resource`` for what starts and stops (an async context
    manager: start before ``yield``, stop after), and ``hooks``: a provider of
    an object whose ``@hookimpl`` methods are the plugin's runtime hooks,
    constructed with its services (no lookups).

    Resources start one at a time, the core's first, then each plugin's in
    dependency order, each in declaration order; they stop in reverse. The
    ``hooks`` object is registered once all have started, and unregistered
    before any stops.

    :returns: a list of :class:`~united_core.api.PluginContainer`.
    """


@hookspec
def united_register_cli_commands() -> list[CliCommand]:
    """Add ``united <name>`` sub-commands (``united join``, ``united invite``, ...).

    Collected from every *installed* plugin, enabled or not, because some commands
    run before any ``united.toml`` exists (``united join`` writes one).

    :returns: a list of :class:`~united_core.api.CliCommand`.
    """


@hookspec
def united_register_init_options() -> list[InitOptions]:
    """Add options to ``united init`` (the directory's ``--public-url``, ``--self-signed``).

    Collected from every *installed* plugin, so ``united init --help`` lists them;
    each :class:`~united_core.api.InitOptions`' ``apply`` runs only when its plugin
    is enabled in the node being written, and returns settings for ``united.toml``
    (API 1.3).

    :returns: a list of :class:`~united_core.api.InitOptions`.
    """


@hookspec
def united_register_commands() -> list[ControlCommand]:
    """Add commands to the local control API (``united ctl``, the console).

    Give each a one-line ``help``, and a ``description`` of its arguments
    (``united ctl NAME --help``, the console's ``help NAME``); raise
    ``CommandError`` with a message for people (a machine code in ``detail``).

    :returns: a list of :class:`~united_core.api.ControlCommand`.
    """


@hookspec
def united_register_panel_sections() -> list[PanelSection]:
    """Add sections to the console's live panel (``united console``, F2).

    Each :class:`~united_core.api.PanelSection` renders lines from a stats
    snapshot (usually from ``snapshot["plugins"][<your plugin>]``, what your
    ``united_collect_stats`` returned). Sections are shown by ``order``, then
    title; the core's peer table comes first.

    :returns: a list of :class:`~united_core.api.PanelSection`.
    """


# -------------------------------------------------------------------------------------
# P2P runtime
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
def united_peer_allowed(peer_id: str, direction: str) -> bool | None:
    """Decide whether a peer may connect; runs inside the Noise handshake.

    *Trio side.* The remote key has been authenticated by Noise. Any plugin
    answering ``False`` refuses the peer before any muxer or protocol runs (the
    dialer sees a handshake failure); ``None`` means no opinion. An exception
    refuses the peer (fail closed). Until every plugin has started, and once
    the node is stopping, the node refuses every peer without asking. A peer a
    P2P service admits for a moment (``ServiceHost.admit_inbound``: AutoNAT's
    dial-back, inbound only) is let in without asking.

    :param peer_id: the remote PeerId (base58).
    :param direction: ``"inbound"`` or ``"outbound"``.
    :returns: ``False`` to refuse, ``True`` or ``None`` otherwise.
    """


@hookspec
def united_validate_message(
    message: SignedMessage, origin: Origin, from_peer: str
) -> Verdict | Refusal | None:
    """Judge an envelope that passed the core checks, on every way into the node.

    The node's one acceptance path (``united_core/acceptance.py``) calls this for
    gossip from a peer (*trio side*), a member's submission to the archive (a
    worker thread), this node's own publish and history pages (asyncio side),
    after it has checked size, decoding, the signature, the topic binding,
    integer bounds and freshness. Any ``REJECT`` rejects (the forwarder's score
    drops, once); otherwise any ``IGNORE`` drops it quietly (no score change);
    otherwise it is accepted. A refused own publish is an error for the sender,
    with the reason. Return a :class:`~united_core.api.Refusal` instead of a
    bare verdict to say why. Must be thread-safe and must not block; an
    exception refuses that message (and is logged with this hook's name).

    :param message: the verified envelope.
    :param origin: how it came in (:class:`~united_core.api.Origin`):
        ``GOSSIP``, ``SUBMISSION``, ``PUBLISH`` or ``HISTORY`` (the server's
        record: most policies should let history through).
    :param from_peer: the PeerId of the forwarding or submitting peer, or this
        node's own for its publishes.
    :returns: a :class:`~united_core.api.Verdict` or
        :class:`~united_core.api.Refusal`, or ``None`` for no opinion.
    """


# -------------------------------------------------------------------------------------
# Lifecycle (asyncio side)
# -------------------------------------------------------------------------------------


@hookspec
def united_node_started(node: NodeAPI) -> Awaitable[None] | None:
    """The node is up: the host listens and every container resource started.

    *May be async.* Called in no particular order across plugins.

    :param node: the running node (settings, identity, p2p runtime, container).
    """


@hookspec
def united_node_stopping(node: NodeAPI) -> Awaitable[None] | None:
    """The node is about to stop its resources (then the host).

    *May be async.* Keep it short: the whole stop has a 2 s budget.

    :param node: the running node.
    """


# -------------------------------------------------------------------------------------
# Network events (asyncio side)
# -------------------------------------------------------------------------------------


@hookspec
def united_peer_connected(
    node: NodeAPI, peer_id: str, addrs: tuple[str, ...], direction: str, relayed: bool
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
def united_peer_disconnected(node: NodeAPI, peer_id: str) -> Awaitable[None] | None:
    """A connection to a peer closed.

    *May be async.*

    :param node: the running node.
    :param peer_id: the remote PeerId.
    """


@hookspec
def united_addrs_changed(node: NodeAPI, addrs: tuple[str, ...]) -> Awaitable[None] | None:
    """What this node announces changed (``node.p2p.announce_addrs``).

    *May be async.* A P2P service added or dropped an address it makes the node
    reachable at (a relayed ``/p2p-circuit`` address after a reservation); the
    directory client re-announces.

    :param node: the running node.
    :param addrs: the addresses peers can dial now, in order of preference.
    """


@hookspec
def united_reachability_changed(
    node: NodeAPI, reachability: str, nat: str
) -> Awaitable[None] | None:
    """A reachability probe (AutoNAT, a P2P service) concluded something new.

    *May be async.* ``node.p2p.reachability`` and ``node.p2p.nat`` already say
    the same; ``ctl status`` shows them. A relay client reserves a slot when
    the node is ``private``; the directory client announces accordingly.

    :param node: the running node.
    :param reachability: ``"public"``, ``"private"`` or ``"unknown"``.
    :param nat: ``"none"``, ``"endpoint-independent"``, ``"symmetric"`` or ``"unknown"``.
    """


@hookspec
def united_message_received(
    node: NodeAPI, message: SignedMessage, from_peer: str, received_at: float
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
# Reconnection policy
# -------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def united_reconnect_delay(peer_id: str, attempt: int) -> float | None:
    """How long to wait before redialing a peer whose connection dropped.

    *firstresult*: the first answer that is not ``None`` wins. The core's default
    (``trylast``) is exponential backoff, 1 s, 2 s, 4 s, ... at most 30 s; the
    ``reconnect`` plugin puts its ``[reconnect]`` numbers in the default's place;
    any other implementation replaces both. Asked by the
    ``reconnect`` plugin, on the asyncio side, before each attempt. Must not block.

    :param peer_id: the peer to redial.
    :param attempt: 0 for the first redial after the drop, then 1, 2, ...
    :returns: seconds to wait (``0`` for now), or ``None`` for no opinion.
        A negative answer means: stop redialing this peer (until it is seen again).
    """


# -------------------------------------------------------------------------------------
# Stats
# -------------------------------------------------------------------------------------


@hookspec
def united_stats_refresh(node: NodeAPI) -> Awaitable[None] | None:
    """Refresh measurements that cost something (ping RTTs), for the live stream.

    *May be async.* Called once per live-stream tick (about every second) and only
    while at least one subscriber is attached: when nobody watches, it never runs.

    :param node: the running node.
    """


@hookspec
def united_collect_stats(node: NodeAPI) -> Mapping[str, Any] | None:
    """Contribute to a stats snapshot (computed on request, never periodically).

    Keep it cheap and synchronous: read counters you already keep. What you
    return is stored under your plugin's name (``snapshot["plugins"]["mesh"]``):
    plugins can never overwrite each other's figures.

    :param node: the running node.
    :returns: a JSON-serialisable mapping of this plugin's figures, or ``None``.
    """


@hookspec
def united_status(node: NodeAPI) -> Mapping[str, Any] | None:
    """Contribute to ``united ctl status`` what an operator checks first (API 1.3): the
    state of a connection your plugin keeps (the discovery client's session with the
    server: to which URL, logged in or not, since when, the last error).

    Keep it short, cheap and synchronous, like ``united_collect_stats`` (figures
    belong there). What you return appears under your plugin's name
    (``status["discovery"]``), after the core's fields; a plugin named like a core
    field is left out, logged. ``status`` answers while the node starts too: the
    hook is called only once every plugin has started.

    :param node: the running node.
    :returns: a small JSON-serialisable mapping (times as ISO 8601 text), or ``None``.
    """
