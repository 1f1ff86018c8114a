"""The metrics plugin: /metrics scraped over real HTTP from real nodes and parsed with
prometheus_client's own parser; /health; its settings; the Grafana dashboard."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from conftest import make_node_dir, run_cli, running_node
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from united_metrics import server as metrics_server
from united_metrics.collector import CATALOG, Scrape, families
from united_metrics.config import Config, parse_listen
from united_metrics.server import MetricsServer, host_allowed, readiness

from united_core.api import ConfigSection, ConfigValueError, NodeState
from united_core.config import ConfigError, build_section
from united_core.testing import free_port, running_community, until

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "contrib" / "grafana" / "united-dashboard.json"
# What prometheus_client's process, platform and GC collectors export.
LIBRARY_FAMILIES = {
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_cpu_seconds": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_start_time_seconds": "gauge",
    "python_info": "gauge",
    "python_gc_objects_collected": "counter",
    "python_gc_objects_uncollectable": "counter",
    "python_gc_collections": "counter",
}


class Parsed:
    """One scrape, parsed: family types and help, and sample values by (name, labels)."""

    def __init__(self, text: str, *, openmetrics: bool = False) -> None:
        self.types: dict[str, str] = {}
        self.help: dict[str, str] = {}
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        parse = openmetrics_families if openmetrics else text_string_to_metric_families
        for family in parse(text):
            self.types[family.name] = family.type
            self.help[family.name] = family.documentation
            for sample in family.samples:
                self.values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.values[(name, tuple(sorted(labels.items())))]


async def scrape(url: str, accept: str = "") -> tuple[str, Parsed]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics", headers=headers) as response:
            assert response.status == 200
            text = await response.text()
            content_type = response.headers["Content-Type"]
            openmetrics = content_type.startswith("application/openmetrics-text")
            return content_type, Parsed(text, openmetrics=openmetrics)


async def health(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/health") as response:
            return response.status, await response.json()


def catalog_name(family: str, kind: str) -> str:
    """The parser names a counter family without ``_total`` and an info one without
    ``_info``; the catalog has the exposed names."""
    return {"counter": f"{family}_total", "info": f"{family}_info"}.get(kind, family)


def test_a_server_scraped_over_http_exports_typed_documented_moving_metrics(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_community(tmp_path, ("alice",)) as c:
            url = c.server.require(MetricsServer).url
            assert url is not None and url.startswith("http://127.0.0.1:")
            content_type, before = await scrape(url)
            assert content_type.startswith("text/plain; version=0.0.4")
            # Every family of ours is in the catalog, typed and documented as declared.
            ours = {n: t for n, t in before.types.items() if n.startswith("united_")}
            assert len(ours) >= 40, sorted(ours)
            for name, kind in ours.items():
                declared = CATALOG[catalog_name(name, kind)]
                # The text format shows an info family as a gauge; the parser calls
                # untyped "unknown".
                wire = {"info": "gauge", "untyped": "unknown"}.get(declared.kind, declared.kind)
                assert kind == wire, name
                assert before.help[name] == declared.help and len(declared.help) > 10
            for name, kind in LIBRARY_FAMILIES.items():
                assert before.types[name] == kind, name
            assert before("process_resident_memory_bytes") > 10_000_000
            assert before("process_cpu_seconds_total") > 0
            # The member is connected, directly; it is online in the directory.
            assert before("united_peers_connected", kind="direct") == 1
            assert before("united_peers_connected", kind="relayed") == 0
            assert before("united_directory_members_online") == 1
            assert before("united_node_ready") == 1
            assert before("united_node_state", state="running") == 1
            assert before("united_reachability", reachability="unknown") == 1
            assert before.types["united_gossip_messages_received"] == "counter"
            assert before.types["united_archive_messages"] == "gauge"
            assert before.types["united_relay_bytes_relayed"] == "counter"
            info = next(k for k in before.values if k[0] == "united_node_info")
            assert ("peer_id", c.server.identity.peer_id) in info[1]

            for i in range(3):
                await c.call("alice", "send", "general", f"m{i}")

            async def archived() -> bool:
                _, now = await scrape(url)
                return now("united_archive_messages") >= 3

            await until(archived, 20, "three messages in the archive")
            _, after = await scrape(url)
            delivered = ("united_gossip_messages_received_total", {"outcome": "delivered"})
            assert after(delivered[0], **delivered[1]) >= before(delivered[0], **delivered[1]) + 3
            assert after("united_archive_messages_stored_total") >= 3
            assert after("united_archive_ingested_total") >= 3
            assert after("united_archive_last_seq", channel="general") == 3
            assert after("united_archive_channels") == 1
            assert after("united_channel_messages_received_total", channel="general") >= 3
            assert after("united_gossip_mesh_peers", channel="general") == 1
            assert after("process_cpu_seconds_total") >= before("process_cpu_seconds_total")

            # OpenMetrics for a scraper that asks for it; the same figures.
            accept = "application/openmetrics-text; version=1.0.0"
            content_type, om = await scrape(url, accept)
            assert content_type.startswith("application/openmetrics-text")
            assert om("united_archive_messages") >= 3

            status, body = await health(url)
            assert status == 200 and body["ready"] is True and body["status"] == "ok"
            assert body["checks"] == {
                "node": "running",
                "p2p": "listening",
                "directory": "listening",
            }
            assert body["peer_id"] == c.server.identity.peer_id
            status = (await c.call("server", "status"))["metrics"]
            assert status == {"url": f"{url}/metrics", "health": f"{url}/health"}
            stats = (await c.stats("server"))["metrics"]
            assert stats["url"] == url and stats["scrapes"] >= 5 and stats["health_checks"] == 1

    asyncio.run(scenario())


def test_health_and_metrics_of_a_node_without_the_directory(tmp_path: Path) -> None:
    """A node with the plugin alone: ready once running; a third-party plugin's figures
    come out generically; ``enabled = false`` serves nothing."""
    port = free_port()
    extra = f'[metrics]\nlisten = "127.0.0.1:{port}"\nallowed_hosts = ["united.example.org"]\n'
    config = make_node_dir(tmp_path, "n", plugins=("ping", "metrics"), extra=extra)

    async def scenario() -> None:
        async with running_node(config) as node:
            url = f"http://127.0.0.1:{port}"
            assert node.require(MetricsServer).url == url
            status, body = await health(url)
            assert status == 200 and body["checks"] == {"node": "running", "p2p": "listening"}
            _, parsed = await scrape(url)
            assert parsed("united_peers_connected", kind="direct") == 0
            assert "united_directory_members" not in parsed.types  # no directory, no family
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/") as response:
                    assert "/metrics" in await response.text()
            # The Host a scraper names this node by: the setting's, not any other.
            assert (await _get(port, "/health", "united.example.org"))[0] == 200
            assert (await _get(port, "/health", "other.example.org"))[0] == 421
        with pytest.raises(aiohttp.ClientConnectionError):  # stopped with the node
            await health(f"http://127.0.0.1:{port}")

    asyncio.run(scenario())
    off = make_node_dir(tmp_path, "off", plugins=("metrics",), extra="[metrics]\nenabled = false\n")

    async def disabled() -> None:
        async with running_node(off) as node:
            assert node.require(MetricsServer).url is None

    asyncio.run(disabled())


class _Node:
    """Just what ``readiness`` reads of a node."""

    def __init__(self, state: NodeState, plugins: list[str]) -> None:
        self.state = state
        self.plugin_names = plugins


def test_readiness_is_refused_until_everything_listens() -> None:
    listening = {"p2p": {"listen_addrs": ["/ip4/127.0.0.1/tcp/1"]}}
    with_directory = {**listening, "plugins": {"directory": {"url": "ws://127.0.0.1:2/ws"}}}
    cases: list[tuple[NodeState, list[str], dict[str, Any] | None, bool]] = [
        (NodeState.STARTING, ["directory"], None, False),
        (NodeState.STOPPING, [], listening, False),
        (NodeState.RUNNING, [], None, False),  # the stats did not answer
        (NodeState.RUNNING, [], {"p2p": {"listen_addrs": []}}, False),
        (NodeState.RUNNING, ["directory"], listening, False),  # the directory is silent
        (NodeState.RUNNING, ["directory"], with_directory, True),
        (NodeState.RUNNING, [], listening, True),
    ]
    for state, plugins, snapshot, ready in cases:
        got, checks = readiness(_Node(state, plugins), snapshot)  # type: ignore[arg-type]
        assert got is ready, (state, plugins, snapshot, checks)
        assert checks["node"] == state.value


def test_unknown_plugins_numbers_are_exported_generically() -> None:
    snapshot = {
        "peers": [{"kind": "hole-punched"}, {"relayed": True}, {}],
        "p2p": {"reachability": {"reachability": "private", "nat": "symmetric"}},
        "plugins": {
            "wordfilter": {"refused": 3, "on": True, "name": "x", "by_word": {"a": 1}},
            "ping": {"peer_rtt_ms": {"p": 1.0}},
        },
    }
    scrape = Scrape("running", True, 1.0, "12D3", "server", "0.1.0", snapshot)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families(scrape)
        for s in f.samples
    }
    figure = "united_plugin_figure"
    assert samples[(figure, (("figure", "refused"), ("plugin", "wordfilter")))] == 3
    assert samples[(figure, (("figure", "on"), ("plugin", "wordfilter")))] == 1
    assert not [
        k for k in samples if k[0] == figure and dict(k[1])["figure"] in ("name", "by_word")
    ]
    assert not [k for k in samples if k[0] == figure and dict(k[1])["plugin"] == "ping"]
    peers = {dict(k[1])["kind"]: v for k, v in samples.items() if k[0] == "united_peers_connected"}
    assert peers == {"direct": 1, "relayed": 1, "hole-punched": 1}
    assert samples[("united_reachability", (("reachability", "private"),))] == 1
    assert samples[("united_nat", (("nat", "symmetric"),))] == 1


@pytest.mark.parametrize(
    "value",
    ["9464", "localhost", "127.0.0.1:", ":9464", "127.0.0.1:http", "127.0.0.1:70000",
     "::1:9464", "[nothost]:9464", "bad host:1"],
)  # fmt: skip
def test_bad_listen_values_are_refused(value: str) -> None:
    with pytest.raises(ConfigValueError) as refused:
        parse_listen(value)
    assert refused.value.key == "listen"


def test_listen_values() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:80") == ("localhost", 80)


def test_a_bad_listen_setting_is_a_one_line_config_error(tmp_path: Path) -> None:
    extra = '[metrics]\nlisten = "localhost"\n'
    config = make_node_dir(tmp_path, plugins=("metrics",), extra=extra)
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[metrics] listen" in lines[0] and "HOST:PORT" in lines[0], lines


def test_a_taken_port_is_one_warning_and_the_node_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another program on the port (an upgraded server whose 9464 is used): metrics are
    not worth a server that stays down."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        extra = f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        config = make_node_dir(tmp_path, plugins=("ping", "metrics"), extra=extra)

        async def scenario() -> None:
            async with running_node(config) as node:
                assert node.state is NodeState.RUNNING
                server = node.require(MetricsServer)
                assert server.url is None
                error = f"cannot listen on 127.0.0.1:{port}: address already in use"
                assert server.stats()["error"] == error
                assert node.p2p.listen_addrs  # the rest of the node serves

        with caplog.at_level(logging.WARNING):
            asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.name.startswith("united_metrics")]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert f"metrics: cannot listen on 127.0.0.1:{port} ([metrics] listen)" in line, line
    assert "\n" not in line and "runs on without" in line, line


# ---- one endpoint on a stand-in node: Host checks, shared snapshots, quiet warnings ----


def _stub_node(snapshot: Callable[[], Awaitable[Mapping[str, Any]]]) -> Any:
    """Just what the endpoint reads of a node; its stats are ``snapshot``."""
    return SimpleNamespace(
        state=NodeState.RUNNING,
        started_at=time.time(),
        identity=SimpleNamespace(peer_id="12D3KooWStub"),
        settings={"node": SimpleNamespace(plugin_set="server")},
        plugin_names=[],
        stats=SimpleNamespace(snapshot=snapshot),
    )


async def _listening() -> Mapping[str, Any]:
    return {"p2p": {"listen_addrs": ["/ip4/127.0.0.1/tcp/1"]}}


async def _get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    """A raw HTTP/1.1 GET to 127.0.0.1:``port`` with this ``Host`` header (None: an
    HTTP/1.0 one with none); ``(status, body)``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"GET {path} HTTP/1.0\r\n" if host is None else f"GET {path} HTTP/1.1\r\n"
        head += f"Host: {host}\r\n" if host is not None else ""
        writer.write(f"{head}Connection: close\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_only_requests_for_this_host_are_served() -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends
    ``Host: evil.example``: refused (421), as is every name but localhost and
    ``allowed_hosts``; an IP address, with or without a port, is served."""
    config = Config(listen="127.0.0.1:0", allowed_hosts=("Metrics.Example.org.",))

    async def scenario() -> None:
        server = MetricsServer(config, _stub_node(_listening))
        await server.start()
        try:
            port = server.port
            served = [
                f"127.0.0.1:{port}",
                "127.0.0.1",
                "localhost",
                f"LocalHost:{port}",
                f"[::1]:{port}",
                "[::1]",
                "192.0.2.7:9464",  # an address: no DNS name to rebind
                f"metrics.example.org:{port}",
                "metrics.example.org.",
                None,  # HTTP/1.0 without a Host: no browser
            ]
            for host in served:
                for path in ("/health", "/metrics"):
                    status, _ = await _get(port, path, host)
                    assert status == 200, (host, path, status)
            refused = [
                f"evil.example:{port}",
                "evil.example",
                "localhost.evil.example",
                f"127.0.0.1.nip.io:{port}",
                "127.0.0.1:http",
                "[::1",
                "[evil.example]:80",
                "",
            ]
            for host in refused:
                for path in ("/health", "/metrics", "/"):
                    status, body = await _get(port, path, host)
                    assert status == 421, (host, path, status)
                    assert b"allowed_hosts" in body and b"united_" not in body, body
            assert server.stats()["hosts_refused"] == 3 * len(refused)
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_host_header_rules_and_the_allowed_hosts_setting() -> None:
    names = frozenset({"localhost", "a.example"})
    assert host_allowed("A.Example:80", names) and host_allowed("10.0.0.1:1", names)
    assert not host_allowed("b.example", names) and not host_allowed("[::1]x", names)
    section = ConfigSection("metrics", Config, "")
    assert build_section(section, {"allowed_hosts": ["m.example.org"]}).allowed_hosts == (
        "m.example.org",
    )
    assert Config().allowed_hosts == ()
    for bad in (["m.example.org:9464"], ["https://m.example.org"], [""], ["a b"]):
        with pytest.raises(ConfigError, match="allowed_hosts"):
            build_section(section, {"allowed_hosts": bad})


def test_concurrent_scrapes_share_one_snapshot() -> None:
    """Scrapes and health checks that come while a snapshot is taken wait for it; the
    next one after it takes a new one."""
    taken = 0

    async def slow() -> Mapping[str, Any]:
        nonlocal taken
        taken += 1
        await asyncio.sleep(0.3)
        return await _listening()

    async def scenario() -> None:
        server = MetricsServer(Config(listen="127.0.0.1:0"), _stub_node(slow))
        await server.start()
        try:
            port = server.port
            paths = ["/metrics"] * 6 + ["/health"] * 2
            replies = await asyncio.gather(*(_get(port, p, "localhost") for p in paths))
            assert [status for status, _ in replies] == [200] * len(paths)
            assert b"united_node_ready 1.0" in replies[0][1]
            assert taken == 1, taken
            await _get(port, "/metrics", "localhost")
            assert taken == 2, taken
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_a_failing_snapshot_warns_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing() -> Mapping[str, Any]:
        raise RuntimeError("stuck")

    async def scenario() -> None:
        server = MetricsServer(Config(listen="127.0.0.1:0"), _stub_node(failing))
        await server.start()
        try:
            for _ in range(3):
                status, body = await _get(server.port, "/health", "localhost")
                assert status == 503 and b'"stats": "unavailable"' in body, body
            assert server.stats()["snapshot_failures"] == 3
            monkeypatch.setattr(metrics_server, "WARN_EVERY", 0.2)  # "a minute" later
            await asyncio.sleep(0.3)
            assert (await _get(server.port, "/metrics", "localhost"))[0] == 200
        finally:
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="united_metrics"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("united_metrics")]
    assert warnings == [
        "metrics: the stats snapshot failed: RuntimeError: stuck",
        "metrics: the stats snapshot failed: RuntimeError: stuck (2 more since the last warning)",
    ], warnings


def _exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in _exprs(value)]
    if isinstance(node, list):
        return [e for value in node for e in _exprs(value)]
    return []


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"]
    exprs = _exprs(dashboard)
    assert len(exprs) >= 8
    exported = set(CATALOG) | {catalog_name(name, kind) for name, kind in LIBRARY_FAMILIES.items()}
    used = {name for expr in exprs for name in re.findall(r"\b(?:united|process|python)_\w+", expr)}
    assert used and used <= exported, sorted(used - exported)
    # Each panel has a title and a datasource variable, so it imports anywhere.
    for panel in dashboard["panels"]:
        assert panel.get("title"), panel


def test_the_docs_list_every_metric_with_its_type_and_help() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    for family in CATALOG.values():
        row = next((line for line in text.splitlines() if f"| `{family.name}` |" in line), None)
        assert row is not None, f"docs/metrics.md does not list {family.name}"
        assert f"| {family.kind} |" in row and family.help.replace("|", "/") in row, row
