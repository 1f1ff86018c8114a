"""Finding and loading plugins: the ``united.plugins`` entry-point group.

Built-in plugins are entry points of this distribution, so they are found and
loaded exactly like a third-party plugin. A plugin module may state the plugin
API it needs (``UNITED_API = ">=1.0,<2"``); one this core does not satisfy is a
configuration error naming the plugin, not a failure at run time. A node
registers the core's essential plugin, then exactly the plugins named in
``[node] plugins``, in that order.
``UNITED_TRACE_HOOKS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from . import builtin, hookspecs
from .api import check_api_requirement
from .config import ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "united.plugins"
ESSENTIAL_PLUGINS: tuple[tuple[str, ModuleType], ...] = (("core", builtin),)


@dataclass(frozen=True)
class AvailablePlugin:
    """An installed plugin: its entry point, and what it says of itself once loaded."""

    name: str
    entry_point: EntryPoint

    @property
    def distribution(self) -> str:
        dist = self.entry_point.dist
        return f"{dist.name} {dist.version}" if dist is not None else "?"

    def load(self) -> ModuleType:
        try:
            module = self.entry_point.load()
        except Exception as exc:
            raise ConfigError(
                f"plugin {self.name!r} ({self.entry_point.value}) failed to import: {exc}",
                section="node",
                key="plugins",
            ) from exc
        requirement = getattr(module, "UNITED_API", None)
        if requirement is not None:
            problem = check_api_requirement(str(requirement))
            if problem is not None:
                raise ConfigError(
                    f"plugin {self.name!r} ({self.distribution}) {problem}",
                    section="node",
                    key="plugins",
                )
        return module  # type: ignore[no-any-return]

    def description(self) -> str:
        """The first line of the plugin module's docstring."""
        try:
            doc = self.load().__doc__ or ""
        except ConfigError as exc:
            return f"(broken: {exc.message})"
        return doc.strip().splitlines()[0] if doc.strip() else ""


def available_plugins() -> dict[str, AvailablePlugin]:
    """Every plugin installed in this environment, by entry-point name."""
    found: dict[str, AvailablePlugin] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            log.warning("two installed plugins are named %r; using %s", ep.name, ep.value)
        found[ep.name] = AvailablePlugin(ep.name, ep)
    return found


def get_plugin_manager(
    enabled: Sequence[str], available: Mapping[str, AvailablePlugin] | None = None
) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the core plugin and the ``enabled`` plugins."""
    available = available_plugins() if available is None else available
    pm = pluggy.PluginManager("united")
    pm.add_hookspecs(hookspecs)
    if os.environ.get("UNITED_TRACE_HOOKS") == "1":
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    for name, module in ESSENTIAL_PLUGINS:
        pm.register(module, name=name)
    seen = set()
    for name in enabled:
        if name in seen:
            raise ConfigError(f"plugin {name!r} is listed twice", section="node", key="plugins")
        seen.add(name)
        if name not in available:
            names = ", ".join(sorted(available)) or "(none installed)"
            raise ConfigError(
                f"unknown plugin {name!r}; available plugins: {names}",
                section="node",
                key="plugins",
            )
        pm.register(available[name].load(), name=name)
    pm.hook.united_addhooks.call_historic(kwargs={"pluginmanager": pm})
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"a plugin implements an unknown hook: {exc}", section="node") from exc
    return pm
