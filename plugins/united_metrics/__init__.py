"""Prometheus metrics and a health check over HTTP (/metrics, /health), on localhost.

The metrics are the node's stats (what ``united ctl snapshot`` shows, from every
plugin's ``united_collect_stats`` and the P2P runtime), read at scrape time and
exported with typed, documented names (docs/metrics.md); the process's RSS, CPU
and file descriptors come from prometheus_client's own collectors.
"""

from __future__ import annotations

from typing import Any

from dependency_injector import containers, providers

from united_core.api import ConfigSection, PluginContainer, hookimpl

from .config import Config
from .server import MetricsServer, metrics_server

UNITED_API = ">=1.0,<2"


class MetricsHooks:
    def __init__(self, server: MetricsServer) -> None:
        self.server = server

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return self.server.stats()

    @hookimpl(optionalhook=True)  # API 1.3: absent from an older core
    def united_status(self) -> dict[str, Any]:
        """``ctl status``: where the endpoint is served (or that it is off)."""
        if self.server.url is None:
            if self.server.error is not None:  # enabled, the port taken
                return {"enabled": True, "error": self.server.error}
            return {"enabled": False}
        return {"url": f"{self.server.url}/metrics", "health": f"{self.server.url}/health"}


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    server = providers.Resource(metrics_server, config, core.node)
    hooks = providers.Singleton(MetricsHooks, server)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection("metrics", Config, "Prometheus /metrics and /health over HTTP (localhost).")
    ]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("metrics", Container)]
