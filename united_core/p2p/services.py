"""Plugin code inside the libp2p host: services the runtime runs on its trio thread.

DESIGN §3: a plugin that must act inside libp2p (a relay hop, a reservation
loop, hole punching, AutoNAT) does so through code the runtime calls on the
trio side. The plugin adds a :class:`P2PService` to ``HostOptions.services`` in
its ``united_p2p_configure``; once the host listens, the runtime runs each
service's ``run(ServiceHost)`` in the host's nursery (cancelled at shutdown,
before the host closes) and nowhere else. Such a module is the only plugin code
that may import trio or libp2p; the plugin's asyncio side talks to it through
``node.p2p.call_service(name, method, *args)`` and hears from it through events.

What a service gets (:class:`ServiceHost`), and nothing else of the runtime:

- ``host`` (py-libp2p's ``IHost``) and ``nursery``;
- ``allows(peer_id, direction)``: the node's peer gate (membership), so a relay
  admits exactly who may connect;
- ``set_addrs(addrs)``: addresses this service makes the node reachable at (a
  relayed address), announced with the listen addresses (``P2PAPI.announce_addrs``,
  hook ``united_addrs_changed``);
- ``set_circuit_dialer(fn)``: how the node's dialer opens a ``/p2p-circuit``
  address (py-libp2p's swarm refuses them);
- ``emit(event)``: an event for the asyncio side (``events.py``);
- ``admit_inbound(peer_id)``: while the ``with`` block runs, let that one peer
  through the gate, inbound only (an AutoNAT dial-back from the server's
  dialer, which is no member); its connections are transient: no
  ``PeerConnected`` / ``PeerDisconnected``, absent from ``peers()``;
- ``label_connection(conn, kind)``: how a connection came about, shown as its
  ``kind`` in ``peers()`` / ``ctl peers`` (``"hole-punched"``) while it lives.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import libp2p
import trio
from libp2p.abc import IHost, INetConn
from libp2p.connection_types import ConnectionType

from .events import P2PEvent
from .gate import Admissions, PeerGate

CircuitDialer = Callable[[str], Awaitable[INetConn]]
"""Open a connection to a ``/p2p-circuit`` multiaddr (ending in ``/p2p/<peer>``)."""


@runtime_checkable
class P2PService(Protocol):
    """A plugin's trio-side service (see the module docstring)."""

    name: str

    async def run(self, host: ServiceHost) -> None:
        """Serve until cancelled (the node stopping). Raising ends only this service."""
        ...

    def snapshot(self) -> Mapping[str, Any]:
        """Figures for stats and the panel, read on the trio thread."""
        ...


@dataclass
class ServiceHost:
    """What a :class:`P2PService` may use (trio thread only)."""

    host: IHost
    nursery: trio.Nursery
    allows: PeerGate
    emit: Callable[[P2PEvent], None]
    _on_addrs: Callable[[str, tuple[str, ...]], None]
    _on_dialer: Callable[[CircuitDialer | None], None]
    service: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    _admissions: Admissions = field(default_factory=Admissions)
    _on_label: Callable[[INetConn, str], None] = lambda conn, kind: None

    def set_addrs(self, addrs: Iterable[str]) -> None:
        """Replace the addresses this service adds to what the node announces."""
        self._on_addrs(self.service, tuple(addrs))

    def set_circuit_dialer(self, dialer: CircuitDialer | None) -> None:
        self._on_dialer(dialer)

    def label_connection(self, conn: INetConn, kind: str) -> None:
        """Say how ``conn`` came about (``"hole-punched"``); ``peers()`` shows it."""
        self._on_label(conn, kind)

    def admit_inbound(self, peer_id: str) -> contextlib.AbstractContextManager[None]:
        """``with host.admit_inbound(peer):`` that peer passes the gate inbound (only),
        and its connections stay transient (see :class:`~.gate.Admissions`)."""
        return self._admissions.admit_inbound(peer_id)


def is_relayed(conn: Any) -> bool:
    """Whether ``conn`` (a connection, or a stream's muxed connection) goes through a
    relay, read from the connection itself, never from an address string."""
    try:
        return bool(conn.get_connection_type() is ConnectionType.RELAYED)
    except Exception:
        return False


def is_circuit(addr: str) -> bool:
    return "/p2p-circuit" in addr


def libp2p_mismatch(
    what: str,
    checked: Iterable[str],
    *,
    attrs: Mapping[Any, Iterable[str]] | None = None,
    init_params: Mapping[Any, Iterable[str]] | None = None,
    proto_fields: Mapping[Any, Iterable[str]] | None = None,
) -> str | None:
    """Why the installed py-libp2p is not one a module was checked against, else None.

    A module that reaches into py-libp2p (a P2P service, a runtime adjustment)
    names itself (``what``) and what it relies on: ``checked`` version prefixes (``"0.8."``), class
    ``attrs`` (methods or annotated attributes), constructor ``init_params`` and
    protobuf ``proto_fields``. The caller refuses to run, or falls back, with the
    returned sentence instead of failing later in the middle of a connection.
    """
    versions = tuple(checked)
    missing = [
        f"{cls.__name__}.{name}"
        for cls, names in (attrs or {}).items()
        for name in names
        if not hasattr(cls, name) and name not in getattr(cls, "__annotations__", {})
    ]
    for cls, names in (init_params or {}).items():
        params = inspect.signature(cls.__init__).parameters
        missing += [f"{cls.__name__}({name}=)" for name in names if name not in params]
    missing += [
        f"{cls.__name__}.{name}"
        for cls, names in (proto_fields or {}).items()
        for name in names
        if name not in cls.DESCRIPTOR.fields_by_name
    ]
    version = libp2p.__version__
    if version.startswith(versions) and not missing:
        return None
    return (
        f"py-libp2p {version} is not a version {what} was checked against "
        f"({', '.join(v + 'x' for v in versions)})"
        + (f"; missing {', '.join(missing)}" if missing else "")
    )
