"""Per-member volume limits: a token bucket per sender key, shared by every origin.

A member may send ``rate`` messages a second on average and ``burst`` in a row.
The bucket is charged once per message id, however many times and ways the
message arrives (gossip from several forwarders, a later submission to the
archive): an id this limiter accepted stays accepted, and an id it refused on
gossip stays refused, so every copy of a message gets the same answer and the
excess is neither forwarded nor archived.

A submission over the limit is refused *transiently* and not remembered: it is
a member reconciling after an outage, and the client retries later, so its
backlog drains at ``rate`` instead of being lost.

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
        self._buckets: dict[bytes, _Bucket] = {}
        self._decided: collections.OrderedDict[bytes, bool] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.limited: collections.Counter[bytes] = collections.Counter()  # by sender key

    def allow(self, sender: bytes, message_id: bytes, *, remember_refusal: bool = True) -> bool:
        """Charge ``sender`` for ``message_id`` unless already decided; True if within limits."""
        with self._lock:
            decided = self._decided.get(message_id)
            if decided is not None:
                self._decided.move_to_end(message_id)
                if not decided:
                    self.limited[sender] += 1
                return decided
            now = self._clock()
            bucket = self._buckets.get(sender)
            if bucket is None:
                bucket = self._buckets[sender] = _Bucket(float(self.burst), now)
            bucket.tokens = min(
                float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate
            )
            bucket.updated = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            else:
                self.limited[sender] += 1
            if allowed or remember_refusal:
                self._decided[message_id] = allowed
                while len(self._decided) > self._remember:
                    self._decided.popitem(last=False)
            return allowed

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"limited": sum(self.limited.values()), "senders_limited": len(self.limited)}
