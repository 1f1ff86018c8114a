"""Cost of the asyncio <-> trio bridge, measured on real hosts in one process.

Prints, as medians of --runs runs (each run: fresh runtimes):
- the round trip of ``P2PRuntime.call`` for a no-op trio coroutine;
- publish -> delivery latency (asyncio publisher on one runtime, asyncio consumer
  on another, over loopback TCP + Noise + Yamux + gossipsub v1.1).

Usage: python bench/bridge.py [--calls 2000] [--messages 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from united_core import envelope
from united_core.identity import Identity
from united_core.p2p.events import MessageReceived
from united_core.p2p.options import HostOptions
from united_core.p2p.runtime import P2PRuntime

TOPIC = "united/bench/00000000-0000-4000-8000-000000000000"
LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)


async def one_run(calls: int, messages: int) -> tuple[float, float, float]:
    a, b = (
        P2PRuntime(Identity.generate(), HostOptions(listen_addrs=LOOPBACK)),
        P2PRuntime(Identity.generate(), HostOptions(listen_addrs=LOOPBACK)),
    )
    await a.start()
    await b.start()
    try:

        async def noop() -> None:
            return None

        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await a.call(noop)
            samples.append(time.perf_counter() - t0)
        call_us = statistics.median(samples) * 1e6

        await a.subscribe(TOPIC)
        await b.subscribe(TOPIC)
        await b.connect(a.listen_addrs[0])
        await asyncio.sleep(1.5)
        latencies = []
        for i in range(messages):
            sealed = envelope.seal(b.identity, topic=TOPIC, payload=b"x" * 200, sequence_hint=i)
            t0 = time.perf_counter()
            await b.publish(TOPIC, sealed.wire)
            while True:
                event = await a.events()
                if isinstance(event, MessageReceived) and event.message.id == sealed.id:
                    break
            latencies.append((time.perf_counter() - t0) * 1000)
            while not b._bridge.events.empty():  # drop our own echoes
                await b.events()
        latencies.sort()
        return call_us, statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
    finally:
        await a.stop()
        await b.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = [asyncio.run(one_run(args.calls, args.messages)) for _ in range(args.runs)]
    calls = statistics.median(r[0] for r in results)
    p50 = statistics.median(r[1] for r in results)
    p99 = statistics.median(r[2] for r in results)
    print(
        f"runs: {args.runs}  calls/run: {args.calls}  messages/run: {args.messages}"
        " (200-byte payload, one at a time)"
    )
    print(f"bridge call round trip, median: {calls:.1f} us")
    print(f"publish -> delivery (asyncio to asyncio, 2 hosts): p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
