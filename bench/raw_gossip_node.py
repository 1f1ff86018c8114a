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
"""

from __future__ import annotations

import sys
import time

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as Noise
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

TOPIC = "bench/raw"


async def main() -> None:
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

        async def deliver() -> None:
            while True:
                msg = await sub.get()
                print(f"recv {msg.data[:8].hex()} {time.time()}", flush=True)

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
                elif command == "quit":
                    break
            nursery.cancel_scope.cancel()
        await host.close()
    pubsub.seen_messages.stop()


if __name__ == "__main__":
    trio.run(main)
