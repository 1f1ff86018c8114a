"""Idle memory of a node (issue 14): RSS of a real ``united run`` server and member.

Each run starts a server and one member with :class:`united_core.testing.Community`
in a temporary directory (the default plugin sets of ``united init --role server``
and of ``united join``, on loopback), one channel the member has joined, waits
``--idle`` seconds with nothing sent, and reads ``/proc/PID/status`` (VmRSS,
RssAnon, RssFile), ``/proc/PID/smaps_rollup`` (Pss) and the thread count of each
process. Prints each run and the median over ``--runs`` runs (MB = 2**20 bytes).

Usage (Linux): python bench/memory.py [--runs 3] [--idle 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from united_core.testing import Community, NodeProcess

FIELDS = ("VmRSS", "RssAnon", "RssFile", "Pss", "Threads")


def _kib(text: str, key: str) -> float:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise KeyError(key)


def sample(node: NodeProcess) -> dict[str, float]:
    """The figures of FIELDS for ``node``'s process: MB, except Threads (a count)."""
    assert node.proc is not None
    proc = Path(f"/proc/{node.proc.pid}")
    status = (proc / "status").read_text()
    rollup = (proc / "smaps_rollup").read_text()
    figures = {key: _kib(status, key) / 1024 for key in ("VmRSS", "RssAnon", "RssFile")}
    figures["Pss"] = _kib(rollup, "Pss") / 1024
    figures["Threads"] = _kib(status, "Threads")
    return figures


def one_run(idle: float) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="united-memory-") as tmp:
        community = Community(Path(tmp))
        try:
            server = community.start_server()
            community.create_channel("general")
            member = community.add_member("alice")
            member.ctl("join", "general")
            time.sleep(idle)
            return {"server": sample(server), "member": sample(member)}
        finally:
            community.stop()


def line(name: str, figures: dict[str, float]) -> str:
    mb = "  ".join(f"{key} {figures[key]:6.1f}" for key in FIELDS[:-1])
    return f"{name:<7} {mb}  Threads {figures['Threads']:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle before sampling")
    args = parser.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        print("cannot run: needs Linux /proc/PID/smaps_rollup", file=sys.stderr)
        return 2
    runs: list[dict[str, dict[str, float]]] = []
    for i in range(args.runs):
        result = one_run(args.idle)
        runs.append(result)
        for name, figures in result.items():
            print(f"run {i + 1}: " + line(name, figures), flush=True)
    print(f"median of {args.runs} runs, {args.idle:g} s idle (MB):")
    for name in ("server", "member"):
        median = {key: statistics.median(r[name][key] for r in runs) for key in FIELDS}
        print("  " + line(name, median))
    return 0


if __name__ == "__main__":
    sys.exit(main())
