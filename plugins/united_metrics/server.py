"""The HTTP endpoint: ``/metrics`` (Prometheus) and ``/health`` (readiness), on aiohttp.

``/metrics`` takes one stats snapshot per scrape (``node.stats.snapshot()``:
every plugin's ``united_collect_stats`` and the P2P runtime's figures, computed
on request as for ``ctl snapshot``) and hands it to the collector; the process
and Python collectors of prometheus_client add RSS, CPU, file descriptors and
GC figures. ``/health`` answers 200 with a small JSON body while the node is
running and ready, 503 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from united_core.api import NodeAPI, NodeState

from .collector import Scrape, UnitedCollector
from .config import Config, is_loopback, parse_listen

log = logging.getLogger(__name__)

# A scrape or health check whose snapshot takes longer says the node is stuck.
SNAPSHOT_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 0.5  # in-flight scrapes at stop (the whole stop has 2 s)


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
        self._version = _version()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if not self.config.enabled:
            log.info("metrics: disabled ([metrics] enabled = false)")
            return
        app = web.Application()
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
            await runner.cleanup()
            raise OSError(
                exc.errno,
                f"metrics: cannot listen on {self.config.listen} ([metrics] listen): {_why(exc)}",
            ) from None
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

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "scrapes": self.scrapes,
            "health_checks": self.health_checks,
            "snapshot_failures": self.snapshot_failures,
        }

    # ---- handlers ------------------------------------------------------------------------

    async def _snapshot(self) -> Mapping[str, Any] | None:
        """The node's stats now, or None (not running, or the snapshot failed)."""
        if self.node.state is not NodeState.RUNNING:
            return None
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                return await self.node.stats.snapshot()
        except Exception as exc:
            self.snapshot_failures += 1
            log.warning("metrics: the stats snapshot failed: %s: %s", type(exc).__name__, exc)
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
