"""Archive ingest: messages validated and persisted with sequence numbers, per second.

Pre-signs --messages envelopes over --channels channels (signing is the
senders' cost, not the server's), then measures, in one process with a real
SQLite file (WAL, synchronous=NORMAL), the server's path for each message:
envelope decode and Ed25519 verification, then the archive's batched write
(``ArchiveService``, the plugin's own code) until every message is committed.
Prints the median rate over --runs runs and the batch policy used.

The second figure the issue asks for, gap-filling 100,000 messages into a fresh
client, needs the client cache (not built yet); this script says so.

Usage: python bench/archive.py [--messages 50000] [--channels 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from united_archive.config import Config
from united_archive.service import ArchiveService

from united_core import envelope
from united_core.identity import Identity


def make_envelopes(count: int, channels: int) -> list[bytes]:
    senders = [Identity.generate() for _ in range(8)]
    return [
        envelope.seal(
            senders[i % len(senders)],
            topic=f"united/bench/{i % channels:04d}",
            payload=b"x" * 200,
            sequence_hint=i,
        ).wire
        for i in range(count)
    ]


async def one_run(wires: list[bytes], config: Config) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        service = ArchiveService(config, Path(tmp))
        await service.start()
        try:
            started = time.perf_counter()
            for wire in wires:
                await service.ingest(envelope.open_envelope(wire))
            await service._queue.join()
            elapsed = time.perf_counter() - started
            assert service.stats.stored == len(wires)
        finally:
            await service.stop()
    return len(wires) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-max", type=int, default=Config().batch_max)
    args = parser.parse_args()
    config = Config(batch_max=args.batch_max)
    wires = make_envelopes(args.messages, args.channels)
    rates = [asyncio.run(one_run(wires, config)) for _ in range(args.runs)]
    print(
        f"archive ingest: {args.messages} messages, {args.channels} channels, 200-byte payloads, "
        f"batch_max={config.batch_max}, batch_wait_ms={config.batch_wait_ms:g}, "
        "WAL synchronous=NORMAL"
    )
    print(
        f"  validated + persisted: median {statistics.median(rates):,.0f} msg/s "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )
    print(
        "  gap-fill of 100,000 messages into a fresh client: not measured "
        "(client cache not built yet)"
    )


if __name__ == "__main__":
    main()
