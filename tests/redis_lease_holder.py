"""Hold a lease on a Redis store and write one task under it, again and again.

Usage: python tests/redis_lease_holder.py URL LEASE TTL_MS

Prints ``token N`` once it holds the lease, then ``wrote N`` after each
commit. It renews the lease between commits but ignores whether that
worked, so that only the commit's fencing can stop a holder that was paused
past its lease: it exits 3 printing ``refused: ...`` when a commit is refused.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import orjson
import trio

from engine._errors import LeaseLost
from engine._redis import RedisStore
from engine._store import SaveTask


async def hold(url: str, lease: str, ttl: timedelta) -> int:
    async with RedisStore(url) as store:
        token = await store.acquire_lease(lease, ttl)
        if token is None:
            print("held by another", flush=True)
            return 2
        print(f"token {token}", flush=True)
        for n in range(1_000_000):
            state = {"id": "t1", "workflow": "wf", "created_at": 0.0, "state": f"step-{n}"}
            try:
                await store.commit(
                    [SaveTask("t1", "wf", orjson.dumps(state))], owner=lease, fence=token
                )
            except LeaseLost as error:
                print(f"refused: {error}", flush=True)
                return 3
            print(f"wrote {n}", flush=True)
            await trio.sleep(0.02)
            await store.renew_lease(lease, token, ttl)
    return 0


if __name__ == "__main__":
    url, lease, ttl_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.exit(trio.run(hold, url, lease, timedelta(milliseconds=ttl_ms)))
