"""Refuse messages with listed words; count the words delivered in each channel."""

from __future__ import annotations

from typing import Any

from dependency_injector import containers, providers

from united_core.api import (
    ConfigSection,
    ControlCommand,
    Origin,
    PanelSection,
    PluginContainer,
    Refusal,
    SignedMessage,
    hookimpl,
)

from .commands import render_panel, render_wordcount, wordcount
from .config import Config
from .service import Channel, WordCounts, WordFilter, stats, word_counts

UNITED_API = ">=1.0,<2"
"""The plugin API this plugin needs: a node whose core does not offer it refuses to load it."""


class WordFilterHooks:
    """The runtime hooks, registered once every Resource has started.

    ``united_validate_message`` may run on the P2P runtime's trio thread: it only
    calls :meth:`WordFilter.judge`, which is thread-safe. The others run on the
    event loop.
    """

    def __init__(self, word_filter: WordFilter, counts: WordCounts) -> None:
        self.word_filter = word_filter
        self.counts = counts

    @hookimpl
    def united_validate_message(self, message: SignedMessage, origin: Origin) -> Refusal | None:
        return self.word_filter.judge(message, origin)

    @hookimpl
    def united_message_received(self, message: SignedMessage) -> None:
        self.counts.count(message)

    # Added by the directory plugin (server) and discovery (client): channel names.
    # On a node with neither, it is simply never called.
    @hookimpl(optionalhook=True)
    def united_channels_changed(self, channels: tuple[Channel, ...]) -> None:
        self.counts.name_channels(channels)

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        return stats(self.word_filter, self.counts)


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Config)
    core = providers.DependenciesContainer()
    word_filter = providers.ThreadSafeSingleton(WordFilter, config)
    counts = providers.Resource(word_counts, config, core.data_dir)
    hooks = providers.Singleton(WordFilterHooks, word_filter, counts)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [ConfigSection("wordfilter", Config, "The word filter: refused words, word counts.")]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("wordfilter", Container)]


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "wordcount",
            wordcount,
            "Messages and words delivered per channel; messages refused.",
            usage="[CHANNEL]",
            render=render_wordcount,
        )
    ]


@hookimpl
def united_register_panel_sections() -> list[PanelSection]:
    return [PanelSection("Word filter", render_panel, order=50)]
