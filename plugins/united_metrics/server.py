"""The HTTP endpoint: ``/metrics`` (Prometheus) and ``/health`` (readiness), on aiohttp.

``/metrics`` takes one stats snapshot per scrape (``node.stats.snapshot()``:
every plugin's ``united_collect_stats`` and the P2P runtime's figures, computed
on request as for ``ctl snapshot``) and hands it to the collector; the process
and Python collectors of prometheus_client add RSS, CPU, file descriptors and
GC figures. ``/health`` answers 200 with a small JSON body while the node is
running and ready, 503 otherwise. Scrapes and health checks that arrive while a
snapshot is being taken wait for it and share it: one snapshot at a time.

Every request's ``Host`` header must name ``localhost``, an IP address, the
listen host or a name of ``[metrics] allowed_hosts``; any other gets 421 (a
browser page of another site whose name an attacker rebinds to 127.0.0.1 sends
its own name, so it reads nothing). A request without ``Host`` is no browser's
and is served.

A ``listen`` that cannot be bound is one warning: the node runs on without
metrics. Warnings a request can cause (a failed snapshot, a refused ``Host``) are
logged at most once a minute each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.metadata
import ipaddress
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from united_core.api import NodeAPI, NodeState

from .collector import Scrape, UnitedCollector
from .config import Config, host_name, is_loopback, parse_listen

log = logging.getLogger(__name__)

# A scrape or health check whose snapshot takes longer says the node is stuck.
SNAPSHOT_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 0.5  # in-flight scrapes at stop (the whole stop has 2 s)
WARN_EVERY = 60.0  # seconds between two warnings of one kind that requests cause


def _version() -> str:
    try:
        return importlib.metadata.version("united")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _why(exc: OSError) -> str:
    """``address already in use``, not asyncio's sentence around it."""
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return exc.strerror or str(exc)
    return os.strerror(exc.errno).lower()


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """Whether a request's ``Host`` header may be served: none at all (no browser
    omits it), an IP address (``[v6]``), or a name of ``names``; a port or none."""
    if header is None:
        return True
    host = header.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return False
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return False
        return True
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return False
    name = name.rstrip(".")
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return bool(name) and name in names
    return True


def readiness(node: NodeAPI, snapshot: Mapping[str, Any] | None) -> tuple[bool, dict[str, str]]:
    """Whether the node is ready, and each check's finding.

    Ready: the node is running, its stats answer, libp2p listens and, where the
    directory is enabled, the directory listens.
    """
    checks = {"node": node.state.value}
    if node.state is not NodeState.RUNNING:
        return False, checks
    if snapshot is None:
        checks["stats"] = "unavailable"
        return False, checks
    ready = True
    p2p = snapshot.get("p2p") or {}
    listening = bool(p2p.get("listen_addrs"))
    checks["p2p"] = "listening" if listening else "not listening"
    ready &= listening
    if "directory" in node.plugin_names:
        directory = (snapshot.get("plugins") or {}).get("directory") or {}
        up = bool(directory.get("listening", bool(directory.get("url"))))
        checks["directory"] = "listening" if up else "not listening"
        ready &= up
    return ready, checks


class MetricsServer:
    """The endpoint's aiohttp server (a container Resource: started, then stopped)."""

    def __init__(self, config: Config, node: NodeAPI) -> None:
        self.config = config
        self.node = node
        self.host, self.port = parse_listen(config.listen)
        self.url: str | None = None
        self.scrapes = 0
        self.health_checks = 0
        self.snapshot_failures = 0
        self.collector = UnitedCollector()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.hosts_refused = 0
        self.error: str | None = None  # why it does not serve, when enabled
        self._allowed = frozenset(
            {"localhost", self.host.lower().rstrip(".")}
            | {host_name(name) for name in config.allowed_hosts}
        )
        self._version = _version()
        self._runner: web.AppRunner | None = None
        self._pending: asyncio.Task[Mapping[str, Any] | None] | None = None  # the snapshot
        self._warned: dict[str, float] = {}  # kind -> when last warned
        self._quiet: collections.Counter[str] = collections.Counter()  # not warned since

    async def start(self) -> None:
        if not self.config.enabled:
            log.info("metrics: disabled ([metrics] enabled = false)")
            return
        app = web.Application(middlewares=[self._check_host])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/", self._index)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            # Metrics are not worth a server that stays down (another program on the
            # port after an upgrade, say): one warning, and the node runs on.
            await runner.cleanup()
            self.error = f"cannot listen on {self.config.listen}: {_why(exc)}"
            log.warning(
                "metrics: cannot listen on %s ([metrics] listen): %s; "
                "the node runs on without /metrics and /health",
                self.config.listen,
                _why(exc),
            )
            return
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"
        log.info("metrics: serving %s/metrics and %s/health", self.url, self.url)
        if not is_loopback(self.host):
            log.warning(
                "metrics: %s is reachable from other machines, without authentication; "
                "firewall the port or listen on 127.0.0.1 behind a proxy",
                self.url,
            )

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        pending, self._pending = self._pending, None
        if pending is not None:  # no request waits for it any more
            pending.cancel()
            await asyncio.wait([pending])

    def stats(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "url": self.url,
            "scrapes": self.scrapes,
            "health_checks": self.health_checks,
            "snapshot_failures": self.snapshot_failures,
            "hosts_refused": self.hosts_refused,
        }
        if self.error is not None:
            figures["error"] = self.error
        return figures

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """``log.warning``, at most once per :data:`WARN_EVERY` of each ``kind`` (the
        rest at debug, counted in the next warning)."""
        now = time.monotonic()
        last = self._warned.get(kind)
        if last is not None and now - last < WARN_EVERY:
            self._quiet[kind] += 1
            log.debug(message, *args)
            return
        self._warned[kind] = now
        quiet = self._quiet.pop(kind, 0)
        if quiet:
            message += f" ({quiet} more since the last warning)"
        log.warning(message, *args)

    # ---- handlers ------------------------------------------------------------------------

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """DNS rebinding: a page of another site must not read the endpoint."""
        header = request.headers.get("Host")
        if host_allowed(header, self._allowed):
            return await handler(request)
        self.hosts_refused += 1
        self._warn(
            "host",
            "metrics: refused a request for Host %r: not localhost, an IP address or a "
            "name of [metrics] allowed_hosts",
            (header or "")[:100],
        )
        return web.Response(
            status=421,
            text="421: this Host is not served; add it to [metrics] allowed_hosts\n",
        )

    async def _snapshot(self) -> Mapping[str, Any] | None:
        """The node's stats now, or None (not running, or the snapshot failed). A
        request that comes while one is taken shares it: one snapshot at a time."""
        if self.node.state is not NodeState.RUNNING:
            return None
        pending = self._pending
        if pending is None:
            pending = self._pending = asyncio.ensure_future(self._take_snapshot())
            pending.add_done_callback(self._taken)
        # Shielded: a scraper that hangs up does not cancel the others' snapshot.
        return await asyncio.shield(pending)

    def _taken(self, task: asyncio.Task[Mapping[str, Any] | None]) -> None:
        if self._pending is task:
            self._pending = None

    async def _take_snapshot(self) -> Mapping[str, Any] | None:
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                return await self.node.stats.snapshot()
        except Exception as exc:
            self.snapshot_failures += 1
            self._warn(
                "snapshot",
                "metrics: the stats snapshot failed: %s: %s",
                type(exc).__name__,
                exc,
            )
            return None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        snapshot = await self._snapshot()
        ready, _ = readiness(self.node, snapshot)
        node = self.node
        scrape = Scrape(
            state=node.state.value,
            ready=ready,
            started_at=node.started_at,
            peer_id=node.identity.peer_id,
            plugin_set=node.settings["node"].plugin_set,
            version=self._version,
            snapshot=snapshot,
        )
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # Set and generate in one synchronous step: no other scrape runs in between.
        self.collector.scrape = scrape
        try:
            body = encoder(self.registry)
        finally:
            self.collector.scrape = None
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    async def _health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        snapshot = await self._snapshot()
        ready, checks = readiness(self.node, snapshot)
        node = self.node
        body = {
            "status": "ok" if ready else "unavailable",
            "ready": ready,
            "state": node.state.value,
            "checks": checks,
            "peer_id": node.identity.peer_id,
            "uptime_s": round(time.time() - node.started_at, 1) if node.started_at else 0.0,
        }
        return web.json_response(
            body, status=200 if ready else 503, headers={"Cache-Control": "no-store"}
        )

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            text="UNITED node\n/metrics  Prometheus metrics\n/health   readiness (JSON)\n"
        )


@contextlib.asynccontextmanager
async def metrics_server(config: Config, node: NodeAPI) -> AsyncIterator[MetricsServer]:
    server = MetricsServer(config, node)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
