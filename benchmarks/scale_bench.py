"""Measure replicas sharing one Redis: throughput, Redis's share of the work, takeover.

Run ``python benchmarks/scale_bench.py`` (``--quick`` for a shorter run); it
starts its own ``redis-server`` on 127.0.0.1 (append-only file,
``appendfsync everysec``, in a temporary folder) and stops it at the end.
Each replica is a process of its own (this script with ``--worker``), with an
engine on the Redis store and an in-process listener answering every action
of its own workflow at once; all replicas run in the same time window, each
with ``CONCURRENCY`` runs of a three-step workflow at once. The last line is
machine-readable::

    RESULT steps_per_s_1=... steps_per_s_2=... steps_per_s_3=... round_trips_per_step=...
    replica_cpu_us_per_step=... redis_cpu_us_per_step=... replicas_per_redis=...
    sqlite_steps_per_s=... redis_vs_sqlite=... lease_s=... takeover_s=... takeover_max_s=...
    takeover_vs_lease=...

(on one line).

* ``steps_per_s_N``: steps per second of N replicas together on one Redis
  (one replica: the median of its windows, see ``redis_vs_sqlite``).
* ``round_trips_per_step``: Redis round trips of the driving replica per
  step (every call its store makes: commits, lease renewals, streams), one
  replica alone.
* ``replica_cpu_us_per_step``: CPU time (user + system) of a replica's
  process per step it drove; ``redis_cpu_us_per_step``: Redis's time in
  commands per step (the ``usec`` of ``INFO commandstats``), both with one
  replica.
* ``replicas_per_redis``: the quotient of the two: how many replicas, each
  using a full core, one Redis (single-threaded) carries before it is the
  limit.
* ``sqlite_steps_per_s``: one engine on the SQLite store (a fresh file), the
  same workflow and concurrency, in windows that alternate with one
  replica's on Redis (three pairs, one with ``--quick``), so that both meet
  the same load of a shared machine; ``redis_vs_sqlite``: the median of each
  pair's quotient, one replica on Redis over SQLite (target at least 0.5).
  The figures of one replica (CPU, round trips) are the medians of its
  windows.
* ``takeover_s``: from the SIGKILL of a replica driving a task (at a random
  moment of its lease's renewal period) until another replica, already
  running, has sent the task's owed action again; median of the trials
  (``takeover_max_s``: the longest). ``takeover_vs_lease``: over ``lease_s`` (target at most 2).

Five runs on this project's shared 2-core machine, under other work, printed
``steps_per_s_1`` 5,490-9,500, ``redis_vs_sqlite`` 0.61-0.76 (SQLite 6,550-12,670
steps/s), ``round_trips_per_step`` 0.11-0.12, ``replica_cpu_us_per_step`` 93-144,
``redis_cpu_us_per_step`` 15.3-30.0, ``replicas_per_redis`` 4.7-6.1 and
``takeover_vs_lease`` 0.98-1.04; runs alternating with three of them on the engine before
replicas sent each other only the events some replica wants printed
``redis_vs_sqlite`` 0.28-0.38 (see the README's "Performance").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Action, SQLiteStore, Step, Workflow, open_engine
from engine._redis import RedisStore, open_redis_store

#: Runs of each replica at once.
CONCURRENCY = 100
#: The lease of the replicas measuring throughput (long: no takeover in the window).
THROUGHPUT_LEASE = timedelta(seconds=10)
VICTIM = Workflow(id="victim", steps=[Step("first", timeout=600), Step("owed", timeout=600)])


def workflow_of(replica: str) -> Workflow:
    """A three-step workflow whose message types only ``replica`` subscribes to."""
    return Workflow(
        id=f"bench-{replica}",
        steps=[Step(f"{replica}-{name}", timeout=600) for name in ("a", "b", "c")],
        surpass="parallel",
    )


# ---------------------------------------------------------------- redis-server


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    program = shutil.which("redis-server")
    if program is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            *(program, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
            *("--logfile", str(folder / "redis.log")),
        ]
    )
    for _ in range(500):
        try:
            if command(port, "PING").startswith("PONG"):
                return process, port
        except OSError:
            pass
        time.sleep(0.02)
    process.kill()
    sys.exit("redis-server did not answer")


def command(port: int, *words: str) -> str:
    """Send one command to Redis over a socket of its own; return its reply as text."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(" ".join(words).encode() + b"\r\n")
        reply = b""
        while b"\r\n" not in reply:
            reply += connection.recv(65536)
        head, _, rest = reply.partition(b"\r\n")
        if not head.startswith(b"$"):
            return head[1:].decode()
        length = int(head[1:])
        while len(rest) < length:
            rest += connection.recv(65536)
        return rest[:length].decode()


def redis_command_usec(port: int) -> int:
    """Return the microseconds Redis spent in commands since its stats were reset."""
    total = 0
    for line in command(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            fields = dict(item.split("=") for item in line.split(":", 1)[1].split(","))
            total += int(fields["usec"])
    return total


# ---------------------------------------------------------------- one replica (--worker)


async def drive(name: str, store_at: str, start_at: float, seconds: float) -> dict[str, Any]:
    """Run ``CONCURRENCY`` runs at a time from ``start_at`` for ``seconds``; return counts."""
    workflow = workflow_of(name)
    if store_at.startswith("redis://"):
        async with open_redis_store(store_at) as redis:
            return await _drive(name, workflow, redis, start_at, seconds)
    sqlite = SQLiteStore(Path(store_at))
    try:
        return await _drive(name, workflow, sqlite, start_at, seconds)
    finally:
        sqlite.close()


async def _drive(
    name: str, workflow: Workflow, store: Any, start_at: float, seconds: float
) -> dict[str, Any]:
    on_redis = isinstance(store, RedisStore)
    async with open_engine(
        workflows=[workflow],
        store=store,
        listener_buffer=1 << 20,
        replica=name if on_redis else None,
        lease=THROUGHPUT_LEASE,
    ) as engine:
        for step in workflow.steps:
            engine.subscribe(f"worker-{name}", step.message_type, timeout=600)
        async with engine.open_listener(subscriber_id=f"worker-{name}") as listener:

            async def answer() -> None:
                async for message in listener:
                    if isinstance(message, Action):
                        listener.done(message)

            async def batch() -> int:
                ids = [engine.start_workflow(workflow.id).task_id for _ in range(CONCURRENCY)]
                for task_id in ids:
                    assert task_id is not None
                    await engine.wait_task(task_id)
                return CONCURRENCY * len(workflow.steps)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                await batch()  # warm up
                await trio.sleep(max(0.0, start_at - time.time()))
                trips = store.round_trips if on_redis else 0
                cpu, began = time.process_time(), time.perf_counter()
                steps = 0
                while time.perf_counter() - began < seconds:
                    steps += await batch()
                elapsed = time.perf_counter() - began
                cpu = time.process_time() - cpu
                trips = (store.round_trips if on_redis else 0) - trips
                nursery.cancel_scope.cancel()
    return {"steps": steps, "elapsed": elapsed, "cpu": cpu, "round_trips": trips}


def run_replicas(store_at: str, count: int, seconds: float, port: int | None) -> dict[str, Any]:
    """Run ``count`` replica processes in one window; return their figures and Redis's."""
    start_at = time.time() + 4.0  # every replica started and warmed up by then
    processes = [
        subprocess.Popen(
            [
                *(sys.executable, __file__, "--worker", f"r{index}", "--store", store_at),
                *("--start-at", str(start_at), "--seconds", str(seconds)),
            ],
            stdout=subprocess.PIPE,
        )
        for index in range(count)
    ]
    try:
        if port is not None:
            time.sleep(max(0.0, start_at - time.time() - 0.5))
            command(port, "CONFIG", "RESETSTAT")
        outputs = [process.communicate(timeout=120 + seconds)[0] for process in processes]
        redis_usec = redis_command_usec(port) if port is not None else 0
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
    figures = [json.loads(output.decode().strip().splitlines()[-1]) for output in outputs]
    if any(process.returncode for process in processes):
        sys.exit(f"a replica failed: {[p.returncode for p in processes]}")
    steps = sum(f["steps"] for f in figures)
    return {
        "steps_per_s": sum(f["steps"] / f["elapsed"] for f in figures),
        "round_trips_per_step": sum(f["round_trips"] for f in figures) / steps,
        "replica_cpu_us_per_step": statistics.mean(f["cpu"] / f["steps"] * 1e6 for f in figures),
        "redis_cpu_us_per_step": redis_usec / steps,
    }


def print_figures(count: int, figures: dict[str, Any]) -> None:
    print(
        f"{count} replica(s): {figures['steps_per_s']:8.0f} steps/s,"
        f" {figures['round_trips_per_step']:.2f} round trips per step,"
        f" {figures['replica_cpu_us_per_step']:.0f} us CPU per step per replica,"
        f" Redis {figures['redis_cpu_us_per_step']:.1f} us per step",
        flush=True,
    )


# ---------------------------------------------------------------- takeover (--victim)


async def victim(url: str, lease: float) -> None:
    """Drive one task to its second step, unanswered, print ``owed TASK``, then wait to die."""
    async with (
        open_redis_store(url) as store,
        open_engine(
            workflows=[VICTIM], store=store, replica="victim", lease=timedelta(seconds=lease)
        ) as engine,
    ):
        for step in VICTIM.steps:
            engine.subscribe("w", step.message_type, timeout=600)
        async with engine.open_listener(subscriber_id="w") as listener:
            task_id = (await engine.start_run(VICTIM.id)).task_id
            while True:
                message = await listener.receive()
                if isinstance(message, Action):
                    if message.step == "first":
                        listener.done(message)
                    else:
                        print(f"owed {task_id}", flush=True)
                        await trio.sleep_forever()


async def takeover_once(url: str, lease: float) -> float:
    """Kill a replica owing an action; return how long until a running replica sent it again."""
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--victim", url, "--lease", str(lease)],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(1)
        task_id = line.decode().split()[1]
        async with (
            open_redis_store(url) as store,
            open_engine(
                workflows=[VICTIM], store=store, replica="taker", lease=timedelta(seconds=lease)
            ) as engine,
            engine.open_listener(subscriber_id="w") as listener,
        ):
            # the taker is settled (its start is not counted); the kill lands anywhere in the
            # victim's renewal period (a third of the lease), as a crash would
            await trio.sleep(lease / 2 + random.uniform(0, lease / 3))
            killed = time.perf_counter()
            os.kill(process.pid, signal.SIGKILL)
            with trio.fail_after(10 * lease + 10):
                while True:
                    message = await listener.receive()
                    if isinstance(message, Action) and message.task == task_id:
                        took = time.perf_counter() - killed
                        listener.done(message)
                        break
            await engine.wait_task(task_id)
            return took
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
        await process.wait()


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, one takeover")
    parser.add_argument("--worker", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--victim", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--lease", type=float, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        figures = trio.run(drive, options.worker, options.store, options.start_at, options.seconds)
        print(json.dumps(figures), flush=True)
        return
    if options.victim:
        trio.run(victim, options.victim, options.lease)
        return
    seconds = 2.0 if options.quick else 8.0
    lease = 1.0 if options.quick else 2.0
    trials = 1 if options.quick else 5
    pairs = 1 if options.quick else 3
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        process, port = start_redis(Path(folder))
        try:
            url = f"redis://127.0.0.1:{port}/0"
            # one replica alternates with one engine on SQLite, window after window, so
            # that both meet the same load of a shared machine; the medians count
            ones, sqlites, ratios = [], [], []
            for index in range(pairs):
                command(port, "FLUSHALL")
                ones.append(run_replicas(url, 1, seconds, port))
                print_figures(1, ones[-1])
                sqlites.append(
                    run_replicas(str(Path(folder) / f"state-{index}.sqlite3"), 1, seconds, None)
                )
                ratios.append(ones[-1]["steps_per_s"] / sqlites[-1]["steps_per_s"])
                print(
                    f"SQLite store, one engine: {sqlites[-1]['steps_per_s']:8.0f} steps/s"
                    f" (one replica on Redis: {ratios[-1]:.2f}x)",
                    flush=True,
                )
            one = {key: statistics.median(f[key] for f in ones) for key in ones[0]}
            results["steps_per_s_1"] = one["steps_per_s"]
            for count in (2, 3):
                command(port, "FLUSHALL")
                figures = run_replicas(url, count, seconds, port)
                results[f"steps_per_s_{count}"] = figures["steps_per_s"]
                print_figures(count, figures)
            results["round_trips_per_step"] = one["round_trips_per_step"]
            results["replica_cpu_us_per_step"] = one["replica_cpu_us_per_step"]
            results["redis_cpu_us_per_step"] = one["redis_cpu_us_per_step"]
            results["replicas_per_redis"] = (
                one["replica_cpu_us_per_step"] / one["redis_cpu_us_per_step"]
            )
            command(port, "FLUSHALL")
            taken = [trio.run(takeover_once, url, lease) for _ in range(trials)]
        finally:
            process.terminate()
            process.wait()
    results["sqlite_steps_per_s"] = statistics.median(f["steps_per_s"] for f in sqlites)
    results["redis_vs_sqlite"] = statistics.median(ratios)
    results["lease_s"] = lease
    results["takeover_s"] = statistics.median(taken)
    results["takeover_max_s"] = max(taken)
    results["takeover_vs_lease"] = results["takeover_s"] / lease
    print(
        f"one replica on Redis over one engine on SQLite: {results['redis_vs_sqlite']:.2f}x"
        f" (median of {pairs} pair(s))"
    )
    print(
        f"projection: one Redis carries {results['replicas_per_redis']:.1f} replicas"
        " (replica CPU per step over Redis CPU per step)"
    )
    print(
        f"takeover after SIGKILL: {', '.join(f'{t:.2f}' for t in taken)} s with a {lease:g} s"
        f" lease ({results['takeover_vs_lease']:.2f}x the lease, median)"
    )
    print(
        "RESULT "
        + " ".join(
            f"{key}={value:.2f}" if value < 100 else f"{key}={value:.0f}"
            for key, value in results.items()
        )
    )


if __name__ == "__main__":
    main()
