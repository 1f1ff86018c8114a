"""The core's own plugin: the ``[node]``, ``[p2p]`` and ``[control]`` sections and the
core control commands (``status``, ``stop``, ``peers``, ``connect``, ``reconnect``) and
the core default of ``united_reconnect_delay``.

Registered first and always (like pytest's essential plugins), through the same
hooks every other plugin uses.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import multiaddr

from . import defaults
from .api import (
    CommandError,
    ConfigSection,
    ConfigValueError,
    ControlCommand,
    NodeAPI,
    hookimpl,
    setting,
)
from .netaddrs import describe_error, expand_wildcards
from .p2p.dialer import Dialer
from .p2p.options import KNOWN_GOSSIPSUB_PROTOCOLS, HostOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    plugin_set: str = setting("custom", "Name of this plugin set, shown by `united ctl status`.")
    plugins: tuple[str, ...] = setting((), "Plugins to load, by name (see `united plugins`).")
    data_dir: str = setting("data", "Where plugins keep their data (relative to this file).")
    identity_key: str = setting("identity.key", "The node's Ed25519 key file (owner-only).")
    log_level: str = setting(
        "info", "Log verbosity.", choices=("debug", "info", "warning", "error")
    )


@dataclass(frozen=True)
class P2PConfig:
    # Defaults: united_core/defaults.py, shared with the runtime's HostOptions.
    listen: tuple[str, ...] = setting(
        defaults.LISTEN_ADDRS,
        "libp2p listen multiaddrs (TCP); port 0 picks a free port (0.0.0.0 is not announced).",
    )
    dial_timeout: float = setting(
        defaults.DIAL_TIMEOUT, "Seconds before a dial gives up.", min=0.1, max=300
    )
    keep_port: bool = setting(
        True,
        "A port-0 listen address reuses last run's port when free (peers redial the "
        "address they knew, even while the server is down).",
    )
    gossipsub_protocols: tuple[str, ...] = setting(
        defaults.GOSSIPSUB_PROTOCOLS,
        "Gossipsub versions offered, preferred first (v1.2 doubles CPU; see docs).",
        choices=KNOWN_GOSSIPSUB_PROTOCOLS,
    )
    speedups: tuple[str, ...] = setting(
        defaults.SPEEDUPS,
        "py-libp2p hot-path speed-ups switched on (all by default; wire unchanged; "
        "see docs/mesh.md).",
        choices=defaults.SPEEDUPS,
    )
    publish_timeout: float = setting(
        defaults.PUBLISH_TIMEOUT,
        "Longest a publish waits for a slow peer's queue to drain.",
        min=0.0,
        max=120,
    )
    max_inflight_publishes: int = setting(
        defaults.MAX_INFLIGHT_PUBLISHES, "Publishes in flight at once.", min=1, max=4096
    )
    inbound_queue_size: int = setting(
        defaults.INBOUND_QUEUE_SIZE,
        "Received messages buffered for the application.",
        min=16,
        max=1_000_000,
    )

    def validate(self) -> None:
        if not self.listen:
            raise ConfigValueError("listen", "needs at least one address")
        for addr in self.listen:
            try:
                ma = multiaddr.Multiaddr(addr)
            except Exception as exc:
                raise ConfigValueError("listen", f"{addr!r} is not a multiaddr ({exc})") from None
            if "tcp" not in {p.name for p in ma.protocols()}:
                raise ConfigValueError("listen", f"{addr!r}: only TCP addresses are supported")
        if not self.gossipsub_protocols:
            raise ConfigValueError("gossipsub_protocols", "needs at least one protocol")


@dataclass(frozen=True)
class ControlConfig:
    socket: str = setting(
        "united.sock", "Control API Unix socket (owner-only), relative to this file."
    )


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection("node", NodeConfig, "The node: which plugins it runs, where it keeps data."),
        ConfigSection("p2p", P2PConfig, "The libp2p host (TCP, Noise, Yamux, gossipsub)."),
        ConfigSection("control", ControlConfig, "The local control API."),
    ]


@hookimpl(tryfirst=True)
def united_p2p_configure(options: HostOptions, settings: Mapping[str, Any]) -> None:
    p2p: P2PConfig = settings["p2p"]
    options.listen_addrs = p2p.listen
    options.dial_timeout = p2p.dial_timeout
    options.publish_timeout = p2p.publish_timeout
    options.max_inflight_publishes = p2p.max_inflight_publishes
    options.inbound_queue_size = p2p.inbound_queue_size
    options.gossip.protocols = p2p.gossipsub_protocols
    options.speedups = p2p.speedups


# ---- core control commands ------------------------------------------------------------


async def _status(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    status = {
        "state": node.state.value,
        "plugin_set": node.settings["node"].plugin_set,
        "peer_id": node.identity.peer_id,
        "listen_addrs": list(node.p2p.listen_addrs),
        # What peers can dial: wildcards expanded to this host's interfaces.
        "dialable_addrs": expand_wildcards(node.p2p.listen_addrs),
        "announce_addrs": list(node.p2p.announce_addrs),
        "reachability": node.p2p.reachability,
        "nat": node.p2p.nat,
        "plugins": list(node.plugin_names),
        "uptime_s": round(time.time() - node.started_at, 1),
        "config": str(node.settings.path),
    }
    status.update(plugin_status(node, reserved=set(status)))
    return status


def plugin_status(node: NodeAPI, reserved: set[str]) -> dict[str, Any]:
    """Every plugin's ``united_status``, under the plugin's name (a plugin's module
    and its hooks object count as one), once every plugin has started."""
    found: dict[str, Any] = {}
    if not node.running:
        return found
    for impl in node.hook.united_status.get_hookimpls():
        name = impl.plugin_name.removesuffix(".hooks")
        kwargs = {arg: node for arg in impl.argnames if arg == "node"}
        try:
            contribution = impl.function(**kwargs)
            if inspect.isawaitable(contribution):
                if inspect.iscoroutine(contribution):
                    contribution.close()
                raise TypeError("united_status must be a plain function")
            json.dumps(contribution)
        except Exception as exc:
            log.error("the status of plugin %s failed: %s", name, exc)
            contribution = {"error": f"{type(exc).__name__}: {exc}"}
        if not contribution:
            continue
        if name in reserved:
            log.error("plugin %s is named like a field of `status`; its status is left out", name)
            continue
        found[name] = {**found.get(name, {}), **dict(contribution)}
    return found


async def _stop(node: NodeAPI, args: list[str]) -> str:
    node.request_stop()
    return "stopping"


def reconnect_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff: ``base``, 2 ``base``, 4 ``base``, ... at most ``cap``."""
    return float(min(cap, base * 2 ** min(max(attempt, 0), 62)))


@hookimpl(trylast=True)
def united_reconnect_delay(peer_id: str, attempt: int) -> float | None:
    """The core's default policy: 1 s, 2 s, 4 s, ... at most 30 s (defaults.py)."""
    return reconnect_delay(attempt, defaults.RECONNECT_BASE, defaults.RECONNECT_MAX)


def _dialer(node: NodeAPI) -> Dialer:
    return node.require(Dialer)


async def _peers(node: NodeAPI, args: list[str]) -> list[dict[str, Any]]:
    """Connected peers (with ``connected_since``), then remembered ones that are not:
    their last dial error and the next retry the policy planned."""
    return _dialer(node).rows(await node.p2p.peers())


async def _reconnect(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    """Redial now every remembered peer that is not connected (or the one named)."""
    dialer = _dialer(node)
    rows = dialer.rows(await node.p2p.peers())
    wanted = [r for r in rows if not r["connected"] and (not args or r["peer_id"] in args)]
    redialed: list[str] = []
    failed: dict[str, str] = {}
    for row in wanted:
        try:
            await dialer.dial(row["peer_id"])
            redialed.append(row["peer_id"])
        except Exception as exc:
            known = next((r for r in dialer.rows([]) if r["peer_id"] == row["peer_id"]), None)
            failed[row["peer_id"]] = (known or {}).get("last_error") or f"{type(exc).__name__}"
    connected = sorted(p["peer_id"] for p in await node.p2p.peers())
    return {
        "connected": connected,
        "redialed": sorted(redialed),
        "failed": failed,
        "tried": len(wanted),
    }


def _render_reconnect(result: Any) -> str:
    lines = [f"tried: {result['tried']} / redialed: {' '.join(result['redialed']) or '-'}"]
    lines += [f"failed: {peer}: {why}" for peer, why in sorted(result["failed"].items())]
    lines.append(f"connected now: {len(result['connected'])}")
    return "\n".join(lines)


async def _connect(node: NodeAPI, args: list[str]) -> dict[str, str]:
    if len(args) != 1:
        raise CommandError("usage: connect MULTIADDR (with /p2p/<peer id>)")
    try:
        peer = await node.p2p.connect(args[0])
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    except Exception as exc:  # a dial that fails: an answer for people, not a logged bug
        raise CommandError(f"cannot connect to {args[0]}: {describe_error(exc)}") from None
    return {"connected": peer}


def _commands(node: NodeAPI) -> Mapping[str, ControlCommand]:
    from .control import ControlServer

    return node.require(ControlServer).commands


def command_help(command: ControlCommand) -> dict[str, Any]:
    """What ``help`` tells of one command (``help NAME``, ``ctl NAME --help``)."""
    return {
        "name": command.name,
        "usage": command.usage,
        "help": command.help,
        "description": command.description,
        "streaming": command.streaming,
    }


async def _help(node: NodeAPI, args: list[str]) -> Any:
    commands = _commands(node)
    if len(args) > 1:
        raise CommandError("usage: help [COMMAND]")
    if args:
        if args[0] not in commands:
            raise CommandError(f"no command {args[0]!r} (`help` lists them)")
        return command_help(commands[args[0]])
    return [command_help(c) for c in sorted(commands.values(), key=lambda c: c.name)]


def render_command_help(row: Mapping[str, Any], prefix: str = "", suffix: str = "") -> str:
    """One command's help: usage line, summary, then its description."""
    usage = " ".join(w for w in (prefix, row["name"], row.get("usage", ""), suffix) if w)
    lines = [f"usage: {usage}", "", row.get("help") or "(no description)"]
    if row.get("description"):
        lines += ["", row["description"]]
    if row.get("streaming"):
        lines += ["", "Streams until interrupted (Ctrl-C)."]
    return "\n".join(lines)


def render_help(result: Any) -> str:
    if isinstance(result, Mapping):
        return render_command_help(result)
    return "\n".join(f"{(r['name'] + ' ' + r['usage']).strip():<34} {r['help']}" for r in result)


async def _snapshot(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    return await node.stats.snapshot()


async def _subscribe(node: NodeAPI, args: list[str]) -> AsyncIterator[dict[str, Any]]:
    async for snapshot in node.stats.subscribe():
        yield snapshot


# ---- completion (the console's Tab) ----------------------------------------------------

_TOKENS = re.compile(r"\[|\]|\.\.\.|[^\s\[\].]+(?:\.\.\.)?")


@dataclass(frozen=True)
class _Slot:
    word: str  # a placeholder (CHANNEL), a literal (probe) or an option (--limit)
    value: str = ""  # an option's value placeholder (N), if it takes one
    repeats: bool = False
    after: int = 0  # options: how many positionals come before it in the usage


def usage_slots(usage: str) -> tuple[list[_Slot], dict[str, _Slot]]:
    """The positional slots and the options of a usage line such as
    ``CHANNEL [--from SEQ] [--limit N]`` or ``[probe [ADDR ...]]``."""
    tokens = _TOKENS.findall(usage)
    positionals: list[_Slot] = []
    options: dict[str, _Slot] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token in ("[", "]"):
            continue
        if token == "...":
            if positionals:
                positionals[-1] = _Slot(positionals[-1].word, repeats=True)
            continue
        if token.startswith("-"):
            value = ""
            if i < len(tokens) and tokens[i].isupper():
                value, i = tokens[i], i + 1
            options[token] = _Slot(token, value, after=len(positionals))
            continue
        repeats = token.endswith("...")
        positionals.append(_Slot(token.removesuffix("..."), repeats=repeats))
    return positionals, options


async def _live_names(node: NodeAPI) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """Peer names by PeerId, channel names by topic (the stats conventions), and the
    P2P snapshot, for completion."""
    snapshot = await node.stats.snapshot()
    names: dict[str, str] = {}
    channels: dict[str, str] = {}
    for stats in snapshot.get("plugins", {}).values():
        if isinstance(stats, Mapping):
            names.update(stats.get("peer_names") or {})
            channels.update(stats.get("topic_names") or {})
    return names, channels, snapshot.get("p2p", {})


async def default_candidates(node: NodeAPI, placeholder: str) -> list[tuple[str, str]]:
    """Values for a usage placeholder, from the node's live data."""
    if placeholder == "CHANNEL":
        _, channels, p2p = await _live_names(node)
        mesh = p2p.get("mesh", {})
        return sorted(
            (name, f"channel, {len(mesh.get(topic, []))} mesh peers")
            for topic, name in channels.items()
        )
    if placeholder in ("PEER_ID", "PEER"):
        names, _, _ = await _live_names(node)
        out = []
        for row in _dialer(node).rows(await node.p2p.peers()):
            state = (row.get("kind") or "direct") if row["connected"] else "not connected"
            who = names.get(row["peer_id"])
            out.append((row["peer_id"], f"{who}, {state}" if who else state))
        return out
    if placeholder == "MEMBER":
        names, _, _ = await _live_names(node)
        return sorted((name, f"member {pid}") for pid, name in names.items())
    return []


async def _complete(node: NodeAPI, args: list[str]) -> list[dict[str, str]]:
    """Candidates for the next argument of ``COMMAND WORDS...`` (the console's Tab)."""
    if not args:
        raise CommandError("usage: complete COMMAND [WORDS...]")
    command = _commands(node).get(args[0])
    if command is None:
        return []
    words = args[1:]
    positionals, options = usage_slots(command.usage)
    index, i = 0, 0
    while i < len(words):
        option = options.get(words[i])
        if option is not None:
            if option.value:
                if i + 1 == len(words):
                    return []  # the option's value comes next: nothing to offer
                i += 1
        elif index < len(positionals) and not positionals[index].repeats:
            index += 1
        i += 1
    pairs: list[tuple[str, str]] = []
    if command.complete is not None:
        pairs = list(await command.complete(node, words))
    elif index < len(positionals):
        slot = positionals[index]
        if slot.word.islower():
            pairs = [(slot.word, "")]
        else:
            pairs = await default_candidates(node, slot.word)
    pairs += [
        (name, f"{name} {option.value}".strip())
        for name, option in options.items()
        if option.after <= index and name not in words
    ]
    return [{"value": value, "meta": meta} for value, meta in pairs]


def _when(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def _render_peers(result: Any) -> str:
    if not result:
        return "no peers connected"
    lines = []
    now = time.time()
    for p in result:
        if p.get("connected", True):
            since = p.get("connected_since")
            lines.append(
                f"{p['peer_id']}  {p['direction']:<8} {p.get('kind', 'direct'):<12} "
                f"{' '.join(p['addrs'])}" + (f"  connected since {_when(since)}" if since else "")
            )
            continue
        retry = p.get("next_retry_at")
        if retry:
            next_retry = f"next retry {_when(retry)} (in {max(0.0, retry - now):.0f} s)"
        else:
            next_retry = f"next retry: {p.get('retry_note') or 'none planned'}"
        error = p.get("last_error")
        lines.append(
            f"{p['peer_id']}  not connected  "
            + (f"last error at {_when(p.get('last_error_at'))}: {error}; " if error else "")
            + next_retry
        )
    return "\n".join(lines)


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "status",
            _status,
            "Plugin set, PeerId, listen addresses, plugins, uptime, the server session.",
            description="Answered while the node starts and stops too (`state`). Once it "
            "runs, plugins add their own (united_status): discovery, the session with the "
            "server (URL, logged in, since when, last error).",
        ),
        ControlCommand(
            "stop", _stop, "Stop the node (exit status 0).", description="`united run` exits 0."
        ),
        ControlCommand(
            "peers",
            _peers,
            "Connected peers (since when); remembered ones: last dial error, next retry.",
            render=_render_peers,
        ),
        ControlCommand(
            "reconnect",
            _reconnect,
            "Redial now every remembered peer that is not connected.",
            usage="[PEER_ID...]",
            render=_render_reconnect,
            description="PEER_ID: redial only these (default: every remembered peer "
            "that is not connected); says which failed and why.",
        ),
        ControlCommand(
            "connect",
            _connect,
            "Dial a peer.",
            usage="MULTIADDR",
            description="MULTIADDR: the peer's address ending in /p2p/<PeerId>, such as "
            "/ip4/127.0.0.1/tcp/7420/p2p/12D3KooW...",
        ),
        ControlCommand(
            "help",
            _help,
            "List the commands; `help NAME` describes one.",
            usage="[COMMAND]",
            render=render_help,
            description="COMMAND: show its usage, what it does and what its arguments mean.",
        ),
        ControlCommand(
            "snapshot",
            _snapshot,
            "One stats snapshot (peers, topics, plugins).",
            description="Everything the live panel shows, as one snapshot; "
            "`--json` for the full structure.",
        ),
        ControlCommand(
            "subscribe",
            _subscribe,
            "Stats snapshots about every second, while attached.",
            streaming=True,
            description="What the console's live panel (F2) reads; "
            "the node builds no snapshot while nobody is attached.",
        ),
        ControlCommand(
            "complete",
            _complete,
            "Candidates for a command's next argument (the console's Tab).",
            usage="COMMAND [WORDS...]",
            description="COMMAND: the command being typed; WORDS: its arguments so far. "
            "Each candidate has a value and a one-line description (meta).",
        ),
    ]
