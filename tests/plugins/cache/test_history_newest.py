"""`history --limit N` without `--from`: the newest N, oldest first (confirmed in server
order, then the unconfirmed), and `--from SEQ` still pages forward."""

from __future__ import annotations

import asyncio
from pathlib import Path

from united_cache.store import CacheStore

from united_core import envelope
from united_core.identity import Identity

ALICE = Identity.generate()


def test_the_newest_n_oldest_first_unconfirmed_last(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await CacheStore.open(tmp_path / "c.sqlite3")
        msgs = [
            envelope.seal(ALICE, topic="t", payload=f"m{h}".encode(), sequence_hint=h)
            for h in range(1, 7)
        ]
        await store.add(msgs)
        await store.confirm([(m.id, seq) for seq, m in enumerate(msgs[:4], start=1)])

        async def hints(from_seq: int | None, limit: int) -> list[int]:
            return [r.sequence_hint for r in await store.history("t", from_seq, limit)]

        assert await hints(None, 3) == [4, 5, 6]  # #4, then the two unconfirmed
        assert await hints(None, 1) == [6]
        assert await hints(None, 5) == [2, 3, 4, 5, 6]
        assert await hints(None, 100) == [1, 2, 3, 4, 5, 6]
        assert await hints(1, 3) == [1, 2, 3]  # --from pages forward, as before
        assert await hints(3, 3) == [3, 4, 5]
        await store.close()

    asyncio.run(scenario())
