"""Server archive: every message stored once with a per-channel sequence number; history."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from united_core.api import ConfigSection, NodeAPI, PluginContainer, SignedMessage, hookimpl

from .commands import history_commands
from .config import Config
from .service import ArchiveService, archive_service

if TYPE_CHECKING:
    from collections.abc import Generator, Mapping

    from united_directory.model import Channel, MemberSet
    from united_directory.protocol import FrameContext, FrameHandlerFn

    from united_core.api import ControlCommand
    from united_core.p2p.options import HostOptions
    from united_core.wire import frames_pb2 as pb


class ArchiveHooks:
    def __init__(self, archive: ArchiveService) -> None:
        self.archive = archive

    @hookimpl
    def united_node_started(self, node: NodeAPI) -> None:
        """From now on, tell the directory when a channel's history grows
        (``united_history_advanced``: it pushes the new head to the members)."""
        self.archive.node = node

    @hookimpl
    async def united_message_received(self, message: SignedMessage) -> None:
        await self.archive.ingest(message)

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    def united_channels_changed(self, channels: tuple[Channel, ...]) -> None:
        """Channel names for the operator's views (``ctl history``, stats)."""
        self.archive.channels = {c.topic: (c.channel_id, c.name) for c in channels}

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    def united_members_changed(self, members: MemberSet) -> None:
        """Senders' names for ``ctl history`` (keys they rotated from included)."""
        self.archive.names = {
            key: m.display_name for m in members.members for key in (m.public_key, *m.previous_keys)
        }

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return self.archive.snapshot()

    @hookimpl(optionalhook=True)  # API 1.3: absent from an older core
    def united_status(self) -> dict[str, Any]:
        """``ctl status``: messages held, channels, the newest message stored."""
        return self.archive.status()


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    service = providers.Resource(archive_service, config, core.data_dir, core.acceptor)
    hooks = providers.Singleton(ArchiveHooks, service)


def _archive(node: NodeAPI) -> ArchiveService:
    return node.require(ArchiveService)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [ConfigSection("archive", Config, "The server's message archive (SQLite).")]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("archive", Container)]


async def _history(node: NodeAPI, ctx: FrameContext, frame: pb.ClientFrame) -> pb.ServerFrame:
    return await _archive(node).history(node, ctx, frame)


async def _submit(node: NodeAPI, ctx: FrameContext, frame: pb.ClientFrame) -> pb.ServerFrame:
    return await _archive(node).submit(node, ctx, frame)


async def _lookup(node: NodeAPI, ctx: FrameContext, frame: pb.ClientFrame) -> pb.ServerFrame:
    return await _archive(node).lookup(node, ctx, frame)


Batches = list[list["ControlCommand"]]


@hookimpl(wrapper=True)
def united_register_commands() -> Generator[None, Batches, Batches]:
    """``history`` for the operator, named after what the other plugins left free.

    A wrapper sees every other plugin's commands: the archive's history is
    ``history`` unless another plugin (the member's cache, on a node that runs
    both) already serves that name; then it is ``archive-history``.
    """
    batches = yield
    taken = {command.name for batch in batches for command in batch}
    return [*batches, history_commands(taken)]


@hookimpl(optionalhook=True)  # a directory hook: there is none without the directory
def united_register_frame_handlers() -> list[tuple[str, FrameHandlerFn]]:
    """The frames the archive serves through the directory, as plain (kind, handler)
    tuples: the archive does not import the directory at run time."""
    return [("history", _history), ("submit", _submit), ("lookup", _lookup)]


@hookimpl
def united_p2p_configure(options: HostOptions, settings: Mapping[str, Any]) -> None:
    config: Config = settings["archive"]
    options.acceptance = dataclasses.replace(
        options.acceptance, max_submission_age=config.max_submission_age
    )
