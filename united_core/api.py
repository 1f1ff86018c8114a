"""The plugin API, version 1: every type a hook takes or returns, in one module.

A plugin imports from here (and from the data modules it names:
``united_core.envelope``, ``united_core.acceptance``, ``united_core.identity``,
``united_core.wire``, ``united_core.sqlite``, ``united_core.defaults``), never
from the core's implementation modules; an
import-linter contract holds the built-in plugins to that, and
``docs/plugin-guide.md`` is written against this module alone.

This is the bottom layer of the core: it imports nothing of the core but those
data modules, so ``hookspecs.py``, which documents every hook, imports only this.

Stability: names exported here keep their meaning for all of API version 1.x;
additions bump the minor version. A plugin states what it needs with
``UNITED_API = ">=1.0"`` in its module (checked when it is loaded).
"""

from __future__ import annotations

import argparse
import enum
import inspect
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import pluggy

from .acceptance import Judgement, MessageRefused, Origin, Reason, Refusal, Rules, Verdict
from .envelope import SignedMessage
from .identity import Identity
from .netaddrs import describe_error, dialable_addrs, expand_wildcards, is_wildcard

if TYPE_CHECKING:
    from dependency_injector import containers

API_VERSION = (1, 3)
"""The plugin API's version: (major, minor). See :func:`check_api_requirement`."""

hookimpl = pluggy.HookimplMarker("united")
"""Marker for plugin hook implementations: ``@hookimpl def united_...``."""

T = TypeVar("T")

__all__ = [
    "API_VERSION",
    "P2PAPI",
    "ArgCompleter",
    "CLIError",
    "CliCommand",
    "CliTools",
    "CommandError",
    "ConfigError",
    "ConfigSection",
    "ConfigValueError",
    "ControlCommand",
    "DialerAPI",
    "InitContext",
    "InitOptions",
    "Judgement",
    "MessageRefused",
    "NodeAPI",
    "NodeState",
    "Origin",
    "PanelSection",
    "PluginContainer",
    "Reason",
    "Refusal",
    "RemoteRefusal",
    "Rules",
    "Settings",
    "SignedMessage",
    "StatsAPI",
    "Verdict",
    "call_async",
    "check_api_requirement",
    "describe_error",
    "dialable_addrs",
    "expand_wildcards",
    "hookimpl",
    "is_wildcard",
    "printable",
    "render_table",
    "render_value",
    "setting",
    "validate_multiaddrs",
]


# ---- configuration declarations -------------------------------------------------------


class ConfigError(Exception):
    """A configuration problem, located as precisely as it can be."""

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.section = section
        self.key = key
        super().__init__(str(self))

    def located(self, file: Path | str) -> ConfigError:
        return ConfigError(self.message, file=file, section=self.section, key=self.key)

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.section:
            where.append(f"[{self.section}]" + (f" {self.key}" if self.key else ""))
        text = (": ".join(where) + ": " if where else "") + self.message
        return " ".join(text.splitlines())  # always one line


class ConfigValueError(ValueError):
    """Raised by a section's ``validate()`` to name the offending key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


class ConfigSection(NamedTuple):
    """What ``united_register_config_sections`` returns: a section name and its schema.

    ``schema`` is a frozen dataclass whose fields are made with :func:`setting`.
    """

    name: str
    schema: type
    description: str = ""


def setting(
    default: Any,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    choices: Iterable[Any] | None = None,
) -> Any:
    """A dataclass field with a help line and bounds, for a plugin's ``Config``.

    The core checks the type (from the annotation), the bounds (numbers are
    also refused when NaN or infinite) and the choices, element by element for
    tuples; ``united init`` writes the help line and the default.
    """
    meta = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None}
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults (sections are frozen)")
    return field(default=default, metadata=meta)


def validate_multiaddrs(key: str, addrs: Iterable[str], *, dialable: bool = False) -> None:
    """Raise :class:`ConfigValueError` for ``key`` unless every entry is a TCP multiaddr.

    ``dialable`` also refuses TCP port 0 and ``0.0.0.0``/``::`` (fine to listen on,
    impossible to dial from another host).
    """
    import multiaddr

    for addr in addrs:
        try:
            ma = multiaddr.Multiaddr(addr)
        except Exception as exc:
            raise ConfigValueError(key, f"{addr!r} is not a multiaddr ({exc})") from None
        if "tcp" not in {p.name for p in ma.protocols()}:
            raise ConfigValueError(key, f"{addr!r}: only TCP addresses are supported")
        if dialable and ma.value_for_protocol("tcp") == "0":
            raise ConfigValueError(key, f"{addr!r}: port 0 cannot be dialed")
        if dialable and is_wildcard(addr):
            raise ConfigValueError(key, f"{addr!r}: a wildcard address cannot be dialed")


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one node: every enabled section, typed."""

    path: Path
    sections: Mapping[str, Any]

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, value: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def __getitem__(self, name: str) -> Any:
        return self.sections[name]


# ---- composition ---------------------------------------------------------------------


class PluginContainer(NamedTuple):
    """What ``united_register_containers`` returns: a mount name and a container class.

    The container may declare:

    - ``config = providers.Dependency(instance_of=YourConfig)``: the section;
    - ``core = providers.DependenciesContainer()``: the core's services
      (``node``, ``identity``, ``settings``, ``data_dir``, ``p2p``, ``dialer``,
      ``stats``, ``acceptor``);
    - ``<plugin> = providers.DependenciesContainer()``: another plugin's
      container, by its name (the node reports a missing one at start-up);
    - ``providers.Resource(...)`` for what starts and stops (an async context
      manager: start before ``yield``, stop after);
    - ``hooks = providers.Singleton(YourHooks, ...)``: an object whose
      ``@hookimpl`` methods are registered once every Resource has started and
      unregistered before they stop (constructor injection: no lookups).
    """

    name: str
    container: type[containers.DeclarativeContainer]


async def call_async(results: Iterable[Any]) -> None:
    """Await whatever hook implementations returned awaitables (datasette's await_me_maybe)."""
    for result in results:
        if inspect.isawaitable(result):
            await result


# ---- the node, as plugins see it --------------------------------------------------------


class NodeState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@runtime_checkable
class P2PAPI(Protocol):
    """The P2P runtime's asyncio-side API: the only way plugins touch libp2p."""

    peer_id: str
    listen_addrs: list[str]

    @property
    def running(self) -> bool: ...

    @property
    def topics(self) -> frozenset[str]: ...

    async def publish(self, topic: str, envelope_bytes: bytes) -> SignedMessage: ...

    async def subscribe(self, topic: str) -> None: ...

    async def unsubscribe(self, topic: str) -> None: ...

    async def connect(self, addr: str) -> str: ...

    async def dial(self, peer_id: str, addrs: list[str] | tuple[str, ...] = ()) -> str:
        """Dial ``peer_id`` through the node's dialer (see :class:`DialerAPI`)."""
        ...

    async def disconnect(self, peer_id: str) -> None: ...

    @property
    def announce_addrs(self) -> list[str]:
        """What peers can dial (API 1.2): listen addresses with wildcards expanded,
        then the P2P services' (relayed) addresses; see ``united_addrs_changed``."""
        ...

    @property
    def reachability(self) -> str:
        """``"public"``, ``"private"`` or ``"unknown"`` (API 1.2; see
        ``united_reachability_changed``)."""
        ...

    @property
    def nat(self) -> str:
        """The NAT kind a probe found (API 1.2): ``"none"``, ``"endpoint-independent"``,
        ``"symmetric"`` or ``"unknown"``."""
        ...

    async def call_service(self, name: str, method: str, *args: Any) -> Any:
        """Call a plugin's P2P service on the trio thread (API 1.2; ``HostOptions.services``)."""
        ...

    async def peers(self) -> list[dict[str, Any]]: ...

    async def ping(self, peer_id: str, count: int = 1) -> list[float]: ...

    async def scores(self) -> dict[str, float]: ...

    async def snapshot(self) -> dict[str, Any]: ...

    def set_app_scores(self, scores: Mapping[str, float]) -> None: ...

    async def publish_unchecked(self, topic: str, data: bytes) -> None:
        """A test action: publish without the acceptance path (plays a hostile host)."""
        ...


@runtime_checkable
class DialerAPI(Protocol):
    """The node's one dialer (``core.dialer``; API 1.1): plugins ask it, never dial.

    ``dial(peer_id, addrs)`` refuses wildcard addresses and port 0 (raising a
    ``ValueError``), shares a dial already under way to the same peer, clears
    py-libp2p's 60 s dial backoff for the peer first, and records per peer the
    last error (``Type: message <- cause``, never empty) and when. With no
    ``addrs`` it dials where the peer was last reached. ``plan(peer_id, at,
    note)`` records a policy's next retry time (epoch seconds, or ``None``),
    shown by ``ctl peers``; ``rows(connected)`` is that table.
    """

    async def dial(self, peer_id: str, addrs: Iterable[str] = ()) -> str: ...

    def remember_addrs(self, peer_id: str, addrs: Iterable[str]) -> None: ...

    def plan(self, peer_id: str, at: float | None, note: str = "") -> None: ...

    def is_connected(self, peer_id: str) -> bool: ...

    def rows(self, connected: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


@runtime_checkable
class StatsAPI(Protocol):
    async def snapshot(self) -> dict[str, Any]: ...

    def subscribe(self) -> AsyncIterator[dict[str, Any]]: ...


@runtime_checkable
class NodeAPI(Protocol):
    """What an asyncio-side hook or a control command may use of the node.

    Trio-side hooks never receive it (see hookspecs.py).
    """

    settings: Settings
    started_at: float

    @property
    def identity(self) -> Identity: ...

    @property
    def p2p(self) -> P2PAPI: ...

    @property
    def stats(self) -> StatsAPI: ...

    @property
    def state(self) -> NodeState: ...

    @property
    def running(self) -> bool: ...

    @property
    def plugin_names(self) -> list[str]: ...

    @property
    def hook(self) -> Any:
        """The plugin manager's hook relay, to fire hooks (``node.hook.united_...(...)``)."""
        ...

    def require(self, kind: type[T]) -> T:
        """The started service of type (or implementing the protocol) ``kind``."""
        ...

    def request_stop(self) -> None: ...

    def request_restart(self) -> None:
        """Stop and ask the service manager to start the node again (API 1.3):
        ``united run`` exits 75 (EX_TEMPFAIL)."""
        ...


# ---- commands --------------------------------------------------------------------------


class CommandError(Exception):
    """A control command's clean refusal: sent to the client as ``bad_request``.

    The message is for people (``united ctl`` prints it, exit 1); ``detail``
    (API 1.3) is an optional machine code from the layer below, such as the
    server's ``ERROR_CODE_UNKNOWN_CHANNEL``, shown only by ``--json``.
    """

    code = "bad_request"

    def __init__(self, message: str = "", *, detail: str | None = None) -> None:
        self.detail = detail
        super().__init__(message)


Handler = Callable[[NodeAPI, list[str]], Awaitable[Any] | AsyncIterator[Any]]
ArgCompleter = Callable[[NodeAPI, list[str]], Awaitable[list[tuple[str, str]]]]
"""``complete(node, words)``: candidates for the argument after ``words`` (the
arguments typed so far), as ``(value, description)`` pairs (API 1.3)."""


@dataclass(frozen=True)
class ControlCommand:
    """A command of the control API (``united ctl NAME``, the console).

    ``handler(node, args)`` is a coroutine returning a JSON-serialisable result,
    or an async generator whose items are streamed as events until it ends or
    the client goes away (then set ``streaming=True``). ``render`` turns a
    result (or event) into text for people; ``united ctl --json`` prints the
    JSON instead. Raise :class:`CommandError` for a clean refusal (exit 1).

    ``help`` is the one-line summary (``help``, console completion);
    ``description`` (API 1.3) says more, such as what each argument of
    ``usage`` means (``help NAME``, ``united ctl NAME --help``). ``complete``
    (API 1.3) offers the console candidates for an argument; without it, the
    arguments of ``usage`` named ``CHANNEL``, ``PEER_ID`` (or ``PEER``) and
    ``MEMBER`` are completed from the node's live data, ``--options`` and
    lower-case words of ``usage`` as they are written.
    """

    name: str
    handler: Handler
    help: str
    usage: str = ""
    render: Callable[[Any], str] | None = None
    streaming: bool = False
    description: str = ""
    complete: ArgCompleter | None = None


class CLIError(Exception):
    """An expected failure of a ``united`` sub-command: one line, exit ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        self.status = status
        super().__init__(message)


class CliTools(Protocol):
    """What the core lends a plugin's CLI command (``CliCommand.run(args, tools)``)."""

    def call_node(self, config: Path, command: str, args: list[str] | None = None) -> Any:
        """Run a control command on the node that ``config`` describes; its result."""
        ...

    def write_node_dir(
        self, directory: Path, role: str, overrides: dict[str, dict[str, Any]] | None = None
    ) -> tuple[Path, Identity]:
        """``united init`` into ``directory`` with ``overrides``; (config path, identity)."""
        ...


@dataclass(frozen=True)
class CliCommand:
    """A ``united <name>`` sub-command contributed by a plugin.

    ``add_arguments(parser)`` declares its arguments; ``run(args, tools)`` does
    the work and returns the exit status (raise :class:`CLIError` for expected
    failures: one line, never a traceback).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, CliTools], int]


@dataclass(frozen=True)
class InitContext:
    """The node ``united init`` is writing, for a plugin's :class:`InitOptions` (API 1.3)."""

    directory: Path  # where united.toml and the key go (files of the plugin's may too)
    role: str  # the preset: "server" or "client"
    # A question for the user; None unless at a terminal (and UNITED_NONINTERACTIVE unset).
    ask: Callable[[str], str] | None


@dataclass(frozen=True)
class InitOptions:
    """Options a plugin adds to ``united init`` (``united_register_init_options``; API 1.3).

    ``add_arguments(group)`` declares them; every installed plugin's are listed
    by ``united init --help``. ``apply(args, context)`` runs only when the plugin
    is enabled in the node being written, before ``united.toml`` is: it may ask
    (``context.ask``), write files of its own into ``context.directory`` (refusing
    to overwrite them) and print what it did, and returns the settings to write
    as ``{section: {key: value}}``. Given to a node without the plugin, the
    options are refused (exit 2). Raise :class:`CLIError` for expected failures.
    """

    add_arguments: Callable[[argparse._ArgumentGroup], None]
    apply: Callable[[argparse.Namespace, InitContext], dict[str, dict[str, Any]]]


class RemoteRefusal(Exception):
    """A remote service (the coordination server, a peer) refused a request.

    ``code`` is the protocol's own error code, kept for ``--json`` output.
    """

    def __init__(self, code: int | str, message: str) -> None:
        self.code = code
        super().__init__(message)


# ---- text for people ---------------------------------------------------------------------


_LINE_BREAK = " \u21b5 "  # " ↵ ": a line break inside a one-line field
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _visible(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


# Zero-width (non-)joiners are text, not control: Persian, Indic scripts and emoji
# sequences (a family emoji) need them, and they cannot move or reorder anything.
_JOINERS = frozenset("\u200c\u200d")


def printable(text: str, *, multiline: bool = False) -> str:
    """``text`` safe to print to a terminal (API 1.3): what a peer, the server or
    any other party wrote cannot retitle, clear or move the cursor of the
    reader's terminal, nor reorder what is shown.

    Control characters (C0, DEL and C1; all but TAB), format characters (Unicode
    category Cf: the bidi overrides such as U+202E, zero-width spaces; not the
    joiners U+200C/U+200D, which scripts and emoji need), line
    and paragraph separators and lone surrogates become visible escapes such as
    ``\\x1b``, ``\\u202e``. A line break (CR LF, LF or CR) becomes `` ↵ ``: a
    one-line field stays one line; with ``multiline=True`` an LF (or CR LF) is
    kept as a line break (for text that is several lines on purpose). Anything
    else, TAB included, is left as it is; the result is printable again unchanged.
    Use it for every peer-supplied string in text for people, never in ``--json``.
    """
    if text.isprintable():  # the common case, at C speed
        return text
    out: list[str] = []
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char in "\r\n":
            pair = text.startswith("\r\n", i)
            out.append("\n" if multiline and (pair or char == "\n") else _LINE_BREAK)
            i += 2 if pair else 1
            continue
        if char == "\t" or char.isprintable() or char in _JOINERS:
            out.append(char)
        elif unicodedata.category(char) in _HIDDEN_CATEGORIES:
            out.append(_visible(char))
        else:  # spaces other than " " (U+00A0...), private use, unassigned: harmless
            out.append(char)
        i += 1
    return "".join(out)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _cell(value: Any) -> str:
    """One value, as a table cell or after ``key:`` (never a Python repr), on one
    line and :func:`printable`."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, Mapping):
        return ", ".join(f"{printable(str(k))}={_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(_cell(v) for v in value) or "-"
    return printable(str(value))


def render_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Iterable[str] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    empty: str = "(none)",
) -> str:
    """Rows as an aligned text table with a header line (API 1.3).

    ``columns`` picks and orders the keys (default: every key, first seen
    first); a header is the key in capitals, ``_`` as a space, unless
    ``headers`` names it. Lists are joined with commas, ``None`` is ``-``; every
    cell is :func:`printable` (one line, no control characters).
    """
    rows = list(rows)
    if not rows:
        return empty
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = list(columns)
    names = {c: printable((headers or {}).get(c, c.replace("_", " ").upper())) for c in columns}
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(names[c]), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line([names[c] for c in columns]), *(line(r) for r in cells)])


def _flat(value: Any) -> bool:
    """A scalar, or a list of scalars: fits after ``key:`` on one line."""
    return _is_scalar(value) or (
        isinstance(value, list | tuple) and all(_is_scalar(v) for v in value)
    )


def render_value(value: Any) -> str:
    """Any JSON result as text for people (API 1.3): what ``united ctl`` and the
    console print for a command without ``render``.

    A mapping is ``key: value`` lines (nested ones indented under their key), a
    list of mappings a table, a mapping of flat mappings a table with the key
    first (``NAME``); no braces, no quotes.
    """
    return "\n".join(_value_lines(value)) or "(none)"


def _value_lines(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        if value and all(
            isinstance(v, Mapping) and v and all(_flat(x) for x in v.values())
            for v in value.values()
        ):
            rows = [{"name": key, **row} for key, row in value.items()]
            return render_table(rows).splitlines()
        lines: list[str] = []
        for key, item in value.items():
            if _flat(item) or not item:
                lines.append(f"{printable(str(key))}: {_cell(item)}")
            else:
                lines.append(f"{printable(str(key))}:")
                lines += ["  " + sub for sub in _value_lines(item)]
        return lines
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, Mapping) for v in value):
            return render_table(value).splitlines()
        lines = []
        for item in value:
            if _flat(item):
                lines.append(_cell(item))
            else:
                lines += _value_lines(item)
        return lines
    return [_cell(value)]


# ---- stats and the live panel ------------------------------------------------------------


@dataclass(frozen=True)
class PanelSection:
    """A section of the console's live panel (``united_register_panel_sections``).

    The core prints ``title``; ``render(snapshot)`` gets the whole stats
    snapshot (every plugin's stats under ``snapshot["plugins"][<plugin name>]``)
    and returns the lines to show under it.
    """

    title: str
    render: Callable[[Mapping[str, Any]], list[str]]
    order: int = 100


# ---- API version requirements ------------------------------------------------------------


def check_api_requirement(requirement: str) -> str | None:
    """``None`` if this core satisfies ``requirement`` (e.g. ``">=1.0"``, ``">=1.0,<2"``),
    else why not."""
    for clause in (c.strip() for c in requirement.split(",") if c.strip()):
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if clause.startswith(op):
                break
        else:
            return f"cannot read the API requirement {requirement!r}"
        try:
            wanted = tuple(int(p) for p in clause[len(op) :].strip().split("."))
        except ValueError:
            return f"cannot read the API requirement {requirement!r}"
        have = API_VERSION[: len(wanted)]
        ok = {
            ">=": have >= wanted,
            "<=": have <= wanted,
            "==": have == wanted,
            "!=": have != wanted,
            ">": have > wanted,
            "<": have < wanted,
        }[op]
        if not ok:
            version = ".".join(map(str, API_VERSION))
            return f"needs plugin API {requirement}, this core has {version}"
    return None
