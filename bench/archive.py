"""Archive ingest: messages validated and persisted with sequence numbers, per second.

Pre-signs --messages envelopes over --channels channels (signing is the
senders' cost, not the server's) and encodes them as members' ``SubmitMessages``
frames of 1,000 envelopes, then measures, in one process with a real SQLite file
(WAL, synchronous=NORMAL), the path on which the archive itself validates what it
stores (``ArchiveService.submit``, the plugin's own code): frame and envelope
decode, Ed25519 verification and the rest of the acceptance checks (origin
SUBMISSION, through the archive's judge pool on every CPU), then the batched
write, until every message is committed (a submission is answered once its
write has committed). Prints the median rate over --runs runs and the batch
policy used.

Then it gap-fills --fill messages (default 100,000) into a fresh client cache:
a real server node (directory + archive) in this process, a real WebSocket
session, and the cache plugin's own fill code (history pages, signature checks,
SQLite inserts), timed from the first request to the last insert.

Usage: python bench/archive.py [--messages 50000] [--channels 4] [--runs 3] [--fill 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from united_archive.config import Config
from united_archive.service import MAX_SUBMIT, ArchiveService
from united_cache.config import Config as CacheConfig

from united_core import envelope
from united_core.acceptance import verify_workers
from united_core.identity import Identity
from united_core.wire import envelope_pb2
from united_core.wire import frames_pb2 as pb


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


def submission_frames(wires: list[bytes], per_frame: int = MAX_SUBMIT) -> list[bytes]:
    """``wires`` as encoded ``SubmitMessages`` frames, as members upload them."""
    return [
        pb.ClientFrame(
            submit=pb.SubmitMessages(
                envelopes=[
                    envelope_pb2.Envelope.FromString(w) for w in wires[start : start + per_frame]
                ]
            )
        ).SerializeToString()
        for start in range(0, len(wires), per_frame)
    ]


def frame_context(channels: int) -> Any:
    """What the directory tells a frame handler: the bench's channels and one member."""
    topics = {f"ch{i}": f"united/bench/{i:04d}" for i in range(channels)}
    ids = {topic: cid for cid, topic in topics.items()}
    member = types.SimpleNamespace(member_id="bench", peer_id="bench", public_key=b"\0" * 32)
    return types.SimpleNamespace(
        member=member, topic_of=topics.get, channel_of=ids.get, max_frame_bytes=256 * 1024
    )


async def one_run(frames: list[bytes], count: int, channels: int, config: Config) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        service = ArchiveService(config, Path(tmp))
        await service.start()
        ctx = frame_context(channels)
        try:
            started = time.perf_counter()
            for data in frames:
                reply = await service.submit(None, ctx, pb.ClientFrame.FromString(data))  # type: ignore[arg-type]
                assert not reply.submit_result.refused, reply.submit_result.refused[0]
            await service._queue.join()
            elapsed = time.perf_counter() - started
            assert service.stats.stored == count, service.stats.stored
        finally:
            await service.stop()
    return count / elapsed


async def gap_fill(count: int) -> float:
    """Seconds to fill ``count`` archived messages into an empty client cache."""
    from united_cache.service import CacheService
    from united_directory.client.session import DirectoryClient

    from united_core.cli import write_node_dir
    from united_core.node import Node, load_settings

    with tempfile.TemporaryDirectory() as tmp:
        config, _ = write_node_dir(Path(tmp) / "server", "server")
        text = config.read_text().replace('"/ip4/0.0.0.0/tcp/7420"', '"/ip4/127.0.0.1/tcp/0"')
        text = text.replace(
            'plugins = ["ping", "membership", "directory", "mesh", "archive"]',
            'plugins = ["membership", "directory", "archive"]',
        )
        config.write_text(
            text.replace(
                "[directory]\n", '[directory]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n', 1
            )
        )
        settings, pm, _ = load_settings(config)
        node = Node(settings, pm)
        ready = asyncio.Event()
        task = asyncio.create_task(node.run(ready))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            directory, archive = node.service("directory"), node.service("archive")
            channel = await directory.create_channel("bench")
            member = Identity.generate()
            url = f"ws://127.0.0.1:{directory.port}/ws"
            client = await DirectoryClient.connect(url)
            await client.register(member, "bench", (await directory.create_invite())["code"])
            batch = 5000
            for start in range(0, count, batch):
                await archive.write(
                    [
                        envelope.seal(
                            member, topic=channel.topic, payload=b"x" * 200, sequence_hint=i
                        )
                        for i in range(start, min(count, start + batch))
                    ]
                )
            discovery = types.SimpleNamespace(
                request=client.request,
                cache=types.SimpleNamespace(joined=[channel], members=[]),
                add_login_listener=lambda listener: None,
                connected=asyncio.Event(),
            )
            cache = CacheService(CacheConfig(), node, Path(tmp), discovery)
            await cache.start()
            try:
                started = time.perf_counter()
                filled = await cache.fill_gaps()
                seconds = time.perf_counter() - started
                assert filled == count, filled
            finally:
                await cache.stop()
                await client.close()
        finally:
            node.request_stop()
            await task
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-max", type=int, default=Config().batch_max)
    parser.add_argument("--fill", type=int, default=100_000, help="messages to gap-fill (0: skip)")
    args = parser.parse_args()
    # One member uploads everything: its budget must not be what is measured.
    config = Config(batch_max=args.batch_max, submit_rate=1e6, submit_burst=10**7)
    frames = submission_frames(make_envelopes(args.messages, args.channels))
    rates = [
        asyncio.run(one_run(frames, args.messages, args.channels, config)) for _ in range(args.runs)
    ]
    print(
        f"archive ingest: {args.messages} messages, {args.channels} channels, 200-byte payloads, "
        f"submissions of {MAX_SUBMIT}, batch_max={config.batch_max}, "
        f"batch_wait_ms={config.batch_wait_ms:g}, WAL synchronous=NORMAL, "
        f"{verify_workers()} verifying threads"
    )
    print(
        f"  validated + persisted: median {statistics.median(rates):,.0f} msg/s "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )
    if args.fill:
        seconds = asyncio.run(gap_fill(args.fill))
        print(
            f"  gap-fill {args.fill:,} messages into a fresh client: {seconds:.2f} s "
            f"({args.fill / seconds:,.0f} msg/s, pages of {CacheConfig().page_size})"
        )


if __name__ == "__main__":
    main()
