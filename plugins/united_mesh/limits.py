"""Per-member volume limits: a token bucket per (sender key, channel), every origin.

A member may send ``rate`` messages a second on average and ``burst`` in a row
in each channel. Buckets are per channel so that every node that follows a
channel sees the same stream and reaches the same decisions (a client follows
only its channels; the server follows all of them).

The bucket is charged once per message id, however many times and ways the
message arrives: an id accepted stays accepted, and on gossip an id refused
stays refused, so every copy gets the same answer and the excess is not
forwarded. A *submission* is judged afresh (a refusal remembered from gossip
does not stick to it) and, over the limit, refused *transiently* without being
remembered: the client retries later, so a backlog, an honest member's after an
outage or a flood that some members accepted, drains into the archive at
``rate`` instead of being lost or retried forever.

Called from both threads (gossip on trio, submissions and own publishes on
asyncio): one lock guards the state.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class VolumeLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        remember: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._remember = remember
        self._buckets: dict[tuple[bytes, str], _Bucket] = {}
        self._decided: collections.OrderedDict[bytes, bool] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.limited: collections.Counter[bytes] = collections.Counter()  # by sender key

    def allow(
        self, sender: bytes, message_id: bytes, *, topic: str = "", submission: bool = False
    ) -> bool:
        """Charge ``sender``'s bucket for ``topic`` with ``message_id`` unless already
        decided; True if within limits. ``submission``: a remembered refusal does not
        apply and a new one is not remembered."""
        with self._lock:
            decided = self._decided.get(message_id)
            if decided is not None and (decided or not submission):
                self._decided.move_to_end(message_id)
                if not decided:
                    self.limited[sender] += 1
                return decided
            now = self._clock()
            key = (sender, topic)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = min(
                float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate
            )
            bucket.updated = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            else:
                self.limited[sender] += 1
            if allowed or not submission:
                self._decided[message_id] = allowed
                while len(self._decided) > self._remember:
                    self._decided.popitem(last=False)
            return allowed

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"limited": sum(self.limited.values()), "senders_limited": len(self.limited)}
