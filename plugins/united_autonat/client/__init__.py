"""AutoNAT client: learn from the server whether this member is publicly reachable."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from dependency_injector import containers, providers

from united_core.api import (
    CommandError,
    ConfigSection,
    ControlCommand,
    NodeAPI,
    PanelSection,
    PluginContainer,
    hookimpl,
    validate_multiaddrs,
)

from .config import Config
from .prober import SERVICE, Prober, prober

if TYPE_CHECKING:
    from united_core.p2p.options import HostOptions

    class MemberSetLike(Protocol):
        trusted_peer_ids: frozenset[str]


UNITED_API = ">=1.2,<2"


class Figures(Protocol):
    def snapshot(self) -> Mapping[str, Any]: ...


def find_service(options: HostOptions) -> Figures | None:
    for service in options.services:
        if getattr(service, "name", None) == SERVICE:
            found: Figures = service
            return found
    return None


class AutonatClientHooks:
    def __init__(self, prober: Prober, service: Figures | None) -> None:
        self.prober = prober
        self.service = service

    @hookimpl
    def united_node_started(self) -> None:
        self.prober.wake()

    @hookimpl(optionalhook=True)  # a directory hook: absent without it
    def united_members_changed(self, members: MemberSetLike) -> None:
        self.prober.set_trusted(frozenset(members.trusted_peer_ids))

    @hookimpl
    def united_peer_connected(self, peer_id: str, relayed: bool) -> None:
        self.prober.connected(peer_id, relayed)

    @hookimpl
    def united_addrs_changed(self, addrs: tuple[str, ...]) -> None:
        self.prober.addrs_changed(addrs)

    @hookimpl
    def united_collect_stats(self) -> dict[str, Any]:
        figures = dict(self.service.snapshot()) if self.service else {}
        figures["next_probe_in_s"] = self.prober.next_probe_in()
        figures["server"] = sorted(self.prober.trusted)
        return figures


def section(settings: Any) -> Config:
    """``[autonat_client]`` (the core passes a container its section only when the
    two share a name; this plugin is ``autonat-client``, like its P2P service)."""
    config: Config = settings["autonat_client"]
    return config


class Container(containers.DeclarativeContainer):
    core = providers.DependenciesContainer()
    config = providers.Callable(section, core.settings)
    service = providers.Singleton(find_service, core.host_options)
    prober = providers.Resource(prober, config, core.node)
    hooks = providers.Singleton(AutonatClientHooks, prober, service)


@hookimpl
def united_register_config_sections() -> list[ConfigSection]:
    return [ConfigSection("autonat_client", Config, "Reachability probes by the server (AutoNAT).")]


@hookimpl
def united_register_containers() -> list[PluginContainer]:
    return [PluginContainer("autonat-client", Container)]


@hookimpl
def united_p2p_configure(options: HostOptions, settings: Mapping[str, Any]) -> None:
    from .service import AutonatClient  # trio and libp2p load only when a node runs

    options.services.append(AutonatClient(settings["autonat_client"]))


# ---- ctl reachability -----------------------------------------------------------------


async def reachability(node: NodeAPI, args: list[str]) -> dict[str, Any]:
    prober = node.require(Prober)
    if args and args[0] == "probe":
        addrs = args[1:] or None
        if addrs:
            try:
                validate_multiaddrs("ADDR", addrs)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        outcome = await prober.probe(addrs)
        return {
            "reachability": node.p2p.reachability,
            "nat": node.p2p.nat,
            "probe": outcome,
        }
    if args:
        raise CommandError("usage: reachability [probe [ADDR ...]]")
    snapshot = await node.p2p.snapshot()
    mine = snapshot.get("services", {}).get(SERVICE, {})
    return {
        "reachability": node.p2p.reachability,
        "nat": node.p2p.nat,
        "probe": mine.get("last"),
        "next_probe_in_s": prober.next_probe_in(),
    }


def _outcome_lines(outcome: Mapping[str, Any] | None, indent: str = "  ") -> list[str]:
    if not outcome:
        return [f"{indent}no probe yet"]
    when = time.strftime("%H:%M:%S", time.localtime(float(outcome.get("at") or 0)))
    server = str(outcome.get("server", ""))
    head = f"{indent}probed at {when} by …{server[-8:]}"
    if outcome.get("observed"):
        head += f", seen from {outcome['observed']}"
    if outcome.get("verdict"):
        head += f": {outcome['verdict']} (nat {outcome.get('nat', 'unknown')})"
    lines = [head]
    if outcome.get("error"):
        lines.append(f"{indent}  no verdict: {outcome['error']}")
    for row in outcome.get("results") or []:
        mark = " (nonce back)" if row.get("verified") else ""
        why = f" {row.get('code') or ''} {row.get('reason') or ''}".rstrip()
        lines.append(f"{indent}  {row.get('addr')}: {row.get('status')}{mark}{why}")
    observation = outcome.get("observation") or {}
    if observation.get("kind"):
        seen = " and ".join(str(s) for s in observation.get("seen") or [])
        lines.append(
            f"{indent}  NAT {observation['kind']}: {observation.get('local')} seen as {seen}"
        )
    elif observation.get("error"):
        lines.append(f"{indent}  NAT kind not observed: {observation['error']}")
    return lines


def render_reachability(result: Any) -> str:
    lines = [f"reachability: {result.get('reachability')} (nat {result.get('nat')})"]
    lines += _outcome_lines(result.get("probe"))
    if result.get("next_probe_in_s") is not None:
        lines.append(f"  next probe in {result['next_probe_in_s']:g} s")
    return "\n".join(lines)


@hookimpl
def united_register_commands() -> list[ControlCommand]:
    return [
        ControlCommand(
            "reachability",
            reachability,
            "Whether the server can reach this node (AutoNAT); `probe` asks now, "
            "for the announced addresses or those given.",
            usage="[probe [ADDR ...]]",
            render=render_reachability,
        )
    ]


def render_panel(snapshot: Mapping[str, Any]) -> list[str]:
    mine = snapshot.get("plugins", {}).get("autonat-client") or {}
    if not mine:
        return ["  (no figures yet)"]
    lines = [
        f"  {mine.get('reachability', 'unknown')} (nat {mine.get('nat', 'unknown')})"
        f"  probes {mine.get('probes', 0)}, without a verdict {mine.get('no_verdict', 0)}"
    ]
    return lines + _outcome_lines(mine.get("last"))


@hookimpl
def united_register_panel_sections() -> list[PanelSection]:
    return [PanelSection("Reachability", render_panel, order=36)]
