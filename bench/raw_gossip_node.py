"""A bare py-libp2p gossipsub node: the reference for bench/mesh_latency.py.

Configured like UNITED's host (TCP, Noise, Yamux, gossipsub v1.1 then v1.0, D=4
(or argv[1]), D_lo D-1, D_hi D+2, heartbeat 1 s, strict signing, spam/eclipse protection and
adaptive gossip off, one connection per peer) but with no envelope, no
validator, no membership and no asyncio bridge.

Protocol on stdin/stdout, one line each:
  out: ``ready <multiaddr>`` once listening
  in:  ``dial <multiaddr>``            connect to a peer
  in:  ``pub <hex payload>``           publish on the topic
  out: ``recv <first 16 hex of payload> <time.time()>`` per delivered message
  in:  ``quit``

Load mode (bench/mesh_latency.py --mode load), where nothing is printed per message:
  in:  ``load <count> <inflight> <size>``  publish ``count`` messages of ``size`` bytes
       as fast as the library allows, at most ``inflight`` publishes outstanding; the
       payload carries this node's random tag, an index and the ``time.time()`` of the
       publish, so receivers measure latency themselves; a publish first waits while
       a peer's outbound queue holds 24 RPCs or more, as UNITED's runtime does
  out: ``loaded <sent> <first publish time> <last publish done time>`` when all are out
  in:  ``count``                        out: ``count <delivered>``
  in:  ``stats``                        out: ``stats <delivered> <last delivery time>
       <latency ms>,<latency ms>,...`` (every delivery of another node's load message)
Own messages are not counted. Counting is a list append per delivery, the cheapest
honest record; it replaces the per-delivery stdout line of the paced mode.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as Noise
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

TOPIC = "bench/raw"
LOAD_MAGIC = b"LOAD"
HIGH_WATER = 24  # united_core.defaults.OUTBOUND_HIGH_WATER, of the 32-slot queue


class WatchedQueue(pubsub_module.RpcQueue):  # type: ignore[misc]
    """py-libp2p's per-peer RPC queue with a "drained" event, for publish backpressure
    (as UNITED's CountingRpcQueue, united_core/p2p/pubsub.py); load mode only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drained = trio.Event()

    async def pop(self) -> Any:
        item = await super().pop()
        self._drained.set()
        self._drained = trio.Event()
        return item

    async def wait_for_room(self) -> None:
        while len(self) >= HIGH_WATER and not self.closed:
            await self._drained.wait()


async def main() -> None:
    if len(sys.argv) > 2 and sys.argv[2] == "load":
        pubsub_module.RpcQueue = WatchedQueue
    kp = create_new_key_pair()
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = new_host(
        key_pair=kp,
        sec_opt={NOISE_ID: Noise(kp, noise_privkey=x25519().private_key)},
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
        connection_config=ConnectionConfig(
            max_connections_per_peer=1, min_connections=0, low_watermark=0
        ),
        listen_addrs=listen,
    )
    gossipsub = GossipSub(
        [PROTOCOL_ID_V11, PROTOCOL_ID],
        4,
        3,
        6,
        heartbeat_interval=1,  # type: ignore[arg-type]
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
        adaptive_gossip_enabled=False,
    )
    pubsub = Pubsub(host, gossipsub, strict_signing=True)
    async with (
        host.run(listen),
        background_trio_service(pubsub),
        background_trio_service(gossipsub),
    ):
        await pubsub.wait_until_ready()
        sub = await pubsub.subscribe(TOPIC)
        print(f"ready {host.get_addrs()[0]}", flush=True)
        tag = os.urandom(4)
        latencies: list[float] = []
        last_delivery = 0.0

        async def deliver() -> None:
            nonlocal last_delivery
            while True:
                msg = await sub.get()
                data = msg.data
                if data[:4] == LOAD_MAGIC:
                    if data[4:8] != tag:  # not our own publish, delivered to us too
                        now = time.time()
                        latencies.append((now - struct.unpack_from("!d", data, 16)[0]) * 1000)
                        last_delivery = now
                    continue
                print(f"recv {data[:8].hex()} {time.time()}", flush=True)

        async def load(count: int, inflight: int, size: int) -> None:
            limit = trio.Semaphore(inflight)
            first = time.time()

            async def one(index: int) -> None:
                try:
                    # UNITED's publish backpressure (united_core/p2p/messages.py): wait
                    # while a peer's outbound queue is at the high-water mark. Without
                    # it py-libp2p only enqueues, and a full queue drops the RPC.
                    for queue in list(pubsub.peer_queues.values()):
                        if isinstance(queue, WatchedQueue):
                            await queue.wait_for_room()
                    head = LOAD_MAGIC + tag + struct.pack("!Qd", index, time.time())
                    await pubsub.publish(TOPIC, head + b"x" * max(0, size - len(head)))
                finally:
                    limit.release()

            async with trio.open_nursery() as publishes:
                for index in range(count):
                    await limit.acquire()
                    publishes.start_soon(one, index)
            print(f"loaded {count} {first} {time.time()}", flush=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver)
            stdin = trio.wrap_file(sys.stdin)
            async for line in stdin:
                command, _, arg = line.strip().partition(" ")
                if command == "dial":
                    try:
                        await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(arg)))
                    except Exception as exc:
                        print(f"dial-failed {exc}", flush=True)
                elif command == "pub":
                    await pubsub.publish(TOPIC, bytes.fromhex(arg))
                elif command == "load":
                    count, inflight, size = (int(x) for x in arg.split())
                    nursery.start_soon(load, count, inflight, size)
                elif command == "count":
                    print(f"count {len(latencies)}", flush=True)
                elif command == "stats":
                    values = ",".join(f"{x:.3f}" for x in latencies)
                    print(f"stats {len(latencies)} {last_delivery} {values}", flush=True)
                elif command == "quit":
                    break
            nursery.cancel_scope.cancel()
        await host.close()
    pubsub.seen_messages.stop()


if __name__ == "__main__":
    trio.run(main)
