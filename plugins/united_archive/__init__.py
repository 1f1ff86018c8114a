"""Server archive: every message stored once with a per-channel sequence number; history."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core import hookimpl
from united_core.config import ConfigSection
from united_core.containers import PluginContainer
from united_core.frames import FrameContext, FrameHandler

from .config import Config
from .service import ArchiveService, archive_service

if TYPE_CHECKING:
    from collections.abc import Mapping

    from united_core.envelope import SignedMessage
    from united_core.node import Node
    from united_core.p2p.options import HostOptions
    from united_core.wire import frames_pb2 as pb


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Resource(archive_service, config, core.data_dir, core.acceptor)


def _archive(node: Node) -> ArchiveService:
    return node.service("archive")  # type: ignore[no-any-return]


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [ConfigSection("archive", Config, "The server's message archive (SQLite).")]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("archive", Container)]


async def _history(node: Node, ctx: FrameContext, frame: pb.ClientFrame) -> pb.ServerFrame:
    return await _archive(node).history(node, ctx, frame)


async def _submit(node: Node, ctx: FrameContext, frame: pb.ClientFrame) -> pb.ServerFrame:
    return await _archive(node).submit(node, ctx, frame)


async def _lookup(node: Node, ctx: FrameContext, frame: pb.ClientFrame) -> pb.ServerFrame:
    return await _archive(node).lookup(node, ctx, frame)


@hookimpl
def united_register_frame_handlers() -> list[FrameHandler]:
    return [
        FrameHandler("history", _history),
        FrameHandler("submit", _submit),
        FrameHandler("lookup", _lookup),
    ]


@hookimpl
def united_p2p_configure(options: HostOptions, settings: Mapping[str, Any]) -> None:
    config: Config = settings["archive"]
    options.acceptance = dataclasses.replace(
        options.acceptance, max_submission_age=config.max_submission_age
    )


@hookimpl
async def united_message_received(
    node: Node, message: SignedMessage, from_peer: str, received_at: float
) -> None:
    await _archive(node).ingest(message)


@hookimpl
def united_collect_stats(node: Node) -> dict[str, Any]:
    return {"archive": _archive(node).snapshot()}
