"""Measure the Redis store's commit: its round trip, and commits per second pipelined.

Run ``python benchmarks/redis_commit_bench.py`` (``--quick`` for a shorter
run); it starts its own ``redis-server`` on 127.0.0.1 (append-only file,
``appendfsync everysec``, in a temporary folder) and stops it at the end.
The last line is machine-readable::

    RESULT ping_p50_us=... w1_p50_us=... w1_p99_us=... w100_p50_us=... w100_p99_us=...
    w1_commits_per_s=... w100_commits_per_s=... sqlite_w1_us=... sqlite_w100_us=...

(on one line).

* ``ping_p50_us``: a bare PING's round trip through the same client: the
  floor a commit cannot go below, measured in the same run.
* ``wN_p50_us`` / ``wN_p99_us``: one commit of N running tasks' states (each
  a record of about 1 KiB), waited for before the next.
* ``wN_commits_per_s``: commits per second with 64 trio tasks committing at
  once through one store (coredis pipelines their requests on its connections).
* ``sqlite_wN_us``: the SQLite store's time for the same N writes (each
  ``save_task`` its own transaction), for comparison.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine._redis import RedisStore
from engine._store import SaveTask, SQLiteStore

CONCURRENCY = 64


def record(task_id: str) -> bytes:
    """Return a running task's state of about 1 KiB, shaped like the engine's."""
    step = {
        "name": "collect",
        "index": 1,
        "entered_at": 1772409630.5,
        "answers": {f"worker-{n}": "done" for n in range(8)},
        "errors": [],
        "timed_out": False,
        "ended_at": None,
        "began": True,
        "deadline": 1772413230.5,
        "waiting_for": [f"worker-{n}" for n in range(8, 16)],
        "owed_at_start": [f"worker-{n}" for n in range(16)],
        "finished": False,
    }
    return orjson.dumps(
        {
            "id": task_id,
            "workflow": "collect_and_cleanup",
            "created_at": 1772409600.0,
            "state": "collect",
            "steps": [step, step],
        }
    )


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    program = shutil.which("redis-server")
    if program is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            *(program, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
            *("--logfile", str(folder / "redis.log")),
        ]
    )
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(64).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        time.sleep(0.02)
    process.kill()
    sys.exit("redis-server did not answer")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(url: str, rounds: int) -> dict[str, float]:
    results: dict[str, float] = {}
    async with RedisStore(url) as store:
        token = await store.acquire_lease("bench", timedelta(hours=1))
        assert token is not None
        pings = []
        for _ in range(rounds):
            began = time.perf_counter()
            await store.check()
            pings.append(time.perf_counter() - began)
        results["ping_p50_us"] = statistics.median(pings) * 1e6
        for size in (1, 100):
            writes = [SaveTask(f"t{size}-{n}", "wf", record(f"t{size}-{n}")) for n in range(size)]
            await store.commit(writes, owner="bench", fence=token)  # the script is loaded
            samples = []
            for _ in range(rounds if size == 1 else max(rounds // 5, 50)):
                began = time.perf_counter()
                await store.commit(writes, owner="bench", fence=token)
                samples.append(time.perf_counter() - began)
            results[f"w{size}_p50_us"] = statistics.median(samples) * 1e6
            results[f"w{size}_p99_us"] = percentile(samples, 0.99) * 1e6

            total = rounds * 4 if size == 1 else rounds // 2
            per_task = total // CONCURRENCY

            async def commit_many(index: int, size: int = size, per_task: int = per_task) -> None:
                mine = [
                    SaveTask(f"p{size}-{index}-{n}", "wf", record(f"p{index}-{n}"))
                    for n in range(size)
                ]
                for _ in range(per_task):
                    await store.commit(mine, owner="bench", fence=token)

            began = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for index in range(CONCURRENCY):
                    nursery.start_soon(commit_many, index)
            elapsed = time.perf_counter() - began
            results[f"w{size}_commits_per_s"] = per_task * CONCURRENCY / elapsed
    return results


def sqlite_writes(folder: Path, rounds: int) -> dict[str, float]:
    store = SQLiteStore(folder / "state.sqlite3")
    results = {}
    try:
        for size in (1, 100):
            writes = [(f"t{size}-{n}", record(f"t{size}-{n}")) for n in range(size)]
            samples = []
            for _ in range(rounds if size == 1 else max(rounds // 5, 50)):
                began = time.perf_counter()
                for task_id, data in writes:
                    store.save_task(task_id, "wf", data)
                samples.append(time.perf_counter() - began)
            results[f"sqlite_w{size}_us"] = statistics.median(samples) * 1e6
    finally:
        store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    options = parser.parse_args()
    rounds = 500 if options.quick else 5000
    with tempfile.TemporaryDirectory() as folder:
        process, url = start_redis(Path(folder))
        try:
            results = trio.run(measure, url, rounds)
        finally:
            process.terminate()
            process.wait()
        results.update(sqlite_writes(Path(folder), rounds))
    print(f"redis-server {url}, appendonly yes, appendfsync everysec; {rounds} rounds")
    print(f"PING round trip p50            {results['ping_p50_us']:9.0f} us")
    for size in (1, 100):
        print(
            f"commit of {size:3d} task writes p50  {results[f'w{size}_p50_us']:9.0f} us"
            f"   p99 {results[f'w{size}_p99_us']:9.0f} us"
            f"   {results[f'w{size}_commits_per_s']:8.0f} commits/s with {CONCURRENCY} at once"
            f"   (SQLite, same writes: {results[f'sqlite_w{size}_us']:7.0f} us)"
        )
    print("RESULT " + " ".join(f"{key}={value:.0f}" for key, value in results.items()))


if __name__ == "__main__":
    main()
