"""Every default of the core and the P2P runtime, stated once (go-libp2p's ``defaults.go``).

Why this module exists: the same setting used to have its default written in
several places (the ``[p2p]`` section, the runtime's ``HostOptions``, the
``[mesh]`` section, the acceptance ``Rules``), and they drifted apart (a listen
address of ``127.0.0.1`` in one, ``0.0.0.0`` in another). Now each default has
one name here, and everything that needs it reads it:

- the runtime's options (``united_core.p2p.options``: ``HostOptions``,
  ``GossipOptions``, ``ScoreSettings``) and the acceptance ``Rules``, so a
  runtime built without any configuration behaves like a node with an empty
  ``united.toml``;
- the config sections that set those options: ``[p2p]`` (``builtin.py``),
  ``[mesh]`` and ``[archive]`` (their plugins' ``Config``).

A setting that only one plugin knows (``[cache] sync_interval``) keeps its
default in that plugin's ``Config``: it is stated once there. Presets
(``config/*.toml``) only list plugins and the values that differ on purpose for
their role. ``tests/test_defaults.py`` fails when a default is stated twice with
different values.

Plain constants, no imports: any layer, either thread and any plugin may read it.
"""

from __future__ import annotations

# ---- the libp2p host ([p2p]) -----------------------------------------------------------

# Every interface, a free port: a node must be reachable from other machines.
# Listening on the wildcard is fine; it is never announced as such (the directory
# and discovery replace 0.0.0.0 with an address peers can dial).
LISTEN_ADDRS: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
DIAL_TIMEOUT = 10.0  # seconds
# Redialing a dropped peer ([reconnect]; the core's united_reconnect_delay default):
# 1 s, 2 s, 4 s, ... at most 30 s; after 2 minutes of failures, a replacement is dialed.
RECONNECT_BASE = 1.0  # seconds
RECONNECT_MAX = 30.0  # seconds
RECONNECT_REPLACEMENT_AFTER = 120.0  # seconds
# No pruning below this many connections (there is no hard global cap by design).
MAX_CONNECTIONS = 100_000
# Bounded waits and queues (backpressure instead of silent drops).
PUBLISH_TIMEOUT = 5.0  # seconds a publish waits for a slow peer's queue
MAX_INFLIGHT_PUBLISHES = 64
OUTBOUND_HIGH_WATER = 24  # of py-libp2p's 32-slot per-peer RPC queue
INBOUND_QUEUE_SIZE = 1024  # received messages buffered for the application
# py-libp2p hot-path speed-ups switched on ([p2p] speedups; united_core/p2p/speedups.py).
SPEEDUPS: tuple[str, ...] = (
    "sender-record",
    "yamux-window",
    "batched-writes",
    "inline-receive",
    "buffered-reads",
    "lean-checks",
    "buffered-tcp",
)

# ---- gossipsub ([p2p] protocols, [mesh] the rest) --------------------------------------

# v1.2's IDONTWANT doubles CPU at our message sizes (PERF-NOTES #2).
GOSSIPSUB_PROTOCOLS: tuple[str, ...] = ("/meshsub/1.1.0", "/meshsub/1.0.0")
DEGREE = 4  # D
DEGREE_LOW = 3  # D_lo
DEGREE_HIGH = 6  # D_hi
DEGREE_LAZY = 6  # D_lazy: peers gossiped to (IHAVE) per heartbeat; py-libp2p's fixed value
HEARTBEAT_INTERVAL = 1.0  # seconds; py-libp2p's 120 s leaves a newcomer out of the mesh
GOSSIP_WINDOW = 3  # heartbeats of history gossiped about
GOSSIP_HISTORY = 5  # heartbeats of messages kept for IWANT
TIME_TO_LIVE = 60  # seconds a fanout (publish-only) peer set is kept
SEEN_TTL = 600  # seconds a message id is remembered (py-libp2p's own default is 120)
# Off: a predictable degree; spam protection would throttle the super-seeder;
# eclipse protection wants 3 distinct IPs, which loopback, a LAN or a relay lacks.
ADAPTIVE_GOSSIP = False
SPAM_PROTECTION = False
ECLIPSE_PROTECTION = False

# ---- peer scoring, gossipsub v1.1 ([mesh] score_*) --------------------------------------

FIRST_DELIVERY_WEIGHT = 0.5  # P2, per first delivery, capped
FIRST_DELIVERY_CAP = 20.0
FIRST_DELIVERY_DECAY = 0.9
INVALID_WEIGHT = 10.0  # P4, subtracted per invalid message
INVALID_DECAY = 0.99
APP_WEIGHT = 1.0  # P6: the application score
GOSSIP_THRESHOLD = -10.0
PUBLISH_THRESHOLD = -50.0
GRAYLIST_THRESHOLD = -80.0

# ---- the acceptance path's freshness windows ([mesh], [archive]) ------------------------

MAX_MESSAGE_AGE = 300.0  # seconds; gossip and own publishes (must stay below SEEN_TTL)
MAX_FUTURE_SKEW = 120.0  # seconds
MAX_SUBMISSION_AGE = 30 * 86400.0  # seconds; uploads to the archive (offline reconciliation)
