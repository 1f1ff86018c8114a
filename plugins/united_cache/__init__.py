"""Client cache: the joined channels' messages in local SQLite, gap-filled in server order."""

from __future__ import annotations

import datetime
from typing import Any

from dependency_injector import containers, providers

from united_core.api import (
    CommandError,
    ConfigSection,
    ControlCommand,
    NodeAPI,
    PluginContainer,
    SignedMessage,
    hookimpl,
    printable,
)

from .config import Config
from .service import CacheService, cache_service


class CacheHooks:
    def __init__(self, cache: CacheService) -> None:
        self.cache = cache

    @hookimpl
    async def united_message_received(self, message: SignedMessage) -> None:
        await self.cache.received(message)

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return self.cache.stats()


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    # The session to the server: the discovery plugin's service (DirectorySession).
    discovery = providers.DependenciesContainer()
    service = providers.Resource(
        cache_service, config, core.node, core.data_dir, discovery.service, core.acceptor
    )
    hooks = providers.Singleton(CacheHooks, service)


def _cache(node: NodeAPI) -> CacheService:
    return node.require(CacheService)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [ConfigSection("cache", Config, "The client's local message cache (SQLite).")]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("cache", Container)]


async def _history(node: NodeAPI, args: list[str]) -> list[dict[str, Any]]:
    usage = "usage: history CHANNEL [--from SEQ] [--limit N]"
    if not args:
        raise CommandError(usage)
    channel, rest = args[0], args[1:]
    options: dict[str, int | None] = {"--from": None, "--limit": 50}
    while rest:
        if len(rest) < 2 or rest[0] not in options:
            raise CommandError(usage)
        try:
            options[rest[0]] = int(rest[1])
        except ValueError:
            raise CommandError(f"{rest[0]} takes a number") from None
        rest = rest[2:]
    limit = options["--limit"]
    assert limit is not None
    if not 1 <= limit <= 10_000:
        raise CommandError("--limit must be between 1 and 10000")
    try:
        return await _cache(node).history(channel, options["--from"], limit)
    except KeyError:
        raise CommandError(f"not in channel {channel!r}") from None


def _render(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        when = datetime.datetime.fromtimestamp(r["timestamp"] / 1000).strftime("%H:%M:%S")
        mark = f"#{r['seq']}" if r["confirmed"] else "(unconfirmed)"
        sender, text = printable(str(r["sender"])), printable(str(r["text"]))
        lines.append(f"{mark:>14} {when} <{sender}> {text}")
    return "\n".join(lines) or "(no messages)"


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "history",
            _history,
            "Messages of a channel from the local cache (unconfirmed marked).",
            usage="CHANNEL [--from SEQ] [--limit N]",
            render=_render,
            description="CHANNEL: a joined channel. --limit N: how many messages "
            "(default 50, at most 10000): the newest N, oldest first; with --from SEQ, "
            "N messages from server number SEQ on (paging forward). Unconfirmed "
            "messages (not yet numbered by the server) come last.",
        )
    ]
