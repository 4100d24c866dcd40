"""Measure the engine's per-step cost and its scaling to many live tasks.

Run ``python benchmarks/engine_bench.py`` (``--quick`` for a shorter run). The
last line is machine-readable::

    RESULT us_per_step=... baseline_us_per_step=... step_ratio=... start_10k_s=...
    kib_per_task=... growth_1k_to_10k=... durable_us_per_step=... durable_ratio=...

(on one line).

* ``us_per_step``: wall time per step of ``collect_and_cleanup`` run after
  run with one in-process listener answering every action at once.
* ``baseline_us_per_step``: the same message pattern (an action out, an
  answer back, per step) on bare trio memory channels
  with no engine, measured in the same run; ``step_ratio`` is the quotient.
* ``start_10k_s``: seconds to start 10,000 concurrent tasks, each waiting on
  one listener, until every one of them has sent its first action.
* ``kib_per_task``: memory (traced allocations) per live task at 10,000.
* ``growth_1k_to_10k``: time per task to start 10,000 over time per task to
  start 1,000 (1.0 means linear).
* ``durable_us_per_step``: ``us_per_step`` with the SQLite store (a fresh
  file in a temporary directory); ``durable_ratio`` is its quotient by the
  in-memory figure of the same run.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Action, SQLiteStore, Step, Workflow, open_engine
from machines import COLLECT_AND_CLEANUP

STEP_TYPES = [step.message_type for step in COLLECT_AND_CLEANUP.steps]


async def engine_per_step(runs: int, store_path: Path | None = None) -> float:
    """Return microseconds per step for ``runs`` sequential collect_and_cleanup tasks.

    With ``store_path``, state is kept in a SQLite store there (a fresh file).
    """
    return await engine_concurrent_per_step(runs, 1, store_path)


def durable_per_step(runs: int) -> float:
    """Per-step cost with the SQLite store, in a fresh file."""
    return durable_concurrent_per_step(runs, 1)


async def baseline_per_step(runs: int) -> float:
    """The same message pattern on bare memory channels: an action out, an answer back.

    These are the messages the engine run exchanges: with nobody listening to
    ``progress`` or the lifecycle events, the engine does not build them.
    """
    return await floor_per_step(runs, 1)


async def floor_per_step(runs: int, concurrency: int) -> float:
    """The floor: ``runs`` runs, ``concurrency`` at a time, as bare trio tasks.

    Each run is a trio task that sends each step's action to one listener
    task and waits for its answer on a channel of its own, as the engine's
    tasks do; nothing else (no machine, no records, no bus).
    """
    to_listener, listener_inbox = trio.open_memory_channel[dict[str, Any]](math.inf)
    inboxes: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}

    async def listener() -> None:
        async for message in listener_inbox:
            data = message["data"]
            inboxes[data["task"]].send_nowait({"kind": "action_done", "data": data})

    async def one_run(task_id: int) -> None:
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        inboxes[task_id] = send
        for step in STEP_TYPES:
            to_listener.send_nowait(
                {"kind": "action", "message_type": step, "data": {"task": task_id, "step": step}}
            )
            answer = await receive.receive()
            assert answer["data"]["step"] == step
        del inboxes[task_id]

    async def batch(first: int) -> None:
        async with trio.open_nursery() as runs_nursery:
            for task_id in range(first, first + concurrency):
                runs_nursery.start_soon(one_run, task_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener)
        await batch(-concurrency)  # warm up
        start = time.perf_counter()
        for first in range(0, runs, concurrency):
            await batch(first)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed / (runs * len(STEP_TYPES)) * 1e6


PARALLEL = attrs.evolve(COLLECT_AND_CLEANUP, surpass="parallel")


async def engine_concurrent_per_step(
    runs: int, concurrency: int, store_path: Path | None = None
) -> float:
    """Microseconds per step for ``runs`` runs of collect_and_cleanup, ``concurrency`` at a time."""
    store = SQLiteStore(store_path) if store_path is not None else None
    async with open_engine(workflows=[PARALLEL], store=store, listener_buffer=1 << 20) as engine:
        for message_type in STEP_TYPES:
            engine.subscribe("worker", message_type)
        async with engine.open_listener(subscriber_id="worker") as listener:

            async def answer() -> None:
                async for message in listener:
                    if isinstance(message, Action):
                        listener.done(message)

            async def batch() -> None:
                ids = [engine.start_workflow(PARALLEL.id).task_id for _ in range(concurrency)]
                for task_id in ids:
                    assert task_id is not None
                    await engine.wait_task(task_id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                await batch()  # warm up
                start = time.perf_counter()
                for _ in range(0, runs, concurrency):
                    await batch()
                elapsed = time.perf_counter() - start
                nursery.cancel_scope.cancel()
    if store is not None:
        store.close()
    return elapsed / (runs * len(STEP_TYPES)) * 1e6


def durable_concurrent_per_step(runs: int, concurrency: int) -> float:
    """Per-step cost with ``concurrency`` runs at once and the SQLite store, in a fresh file."""
    with tempfile.TemporaryDirectory() as directory:
        return trio.run(
            engine_concurrent_per_step, runs, concurrency, Path(directory) / "bench.sqlite3"
        )


WAITING = Workflow(id="waiting", steps=[Step("work", timeout=3600)], surpass="parallel")


async def concurrent_start(count: int, *, trace: bool = False) -> tuple[float, float, float]:
    """Start ``count`` tasks each waiting on one listener; return (start s, steps/s, KiB/task).

    Memory is traced only with ``trace`` (tracing slows allocation, so the
    timed runs do without it and report 0 KiB).
    """
    gc.collect()
    async with open_engine(workflows=[WAITING], listener_buffer=count * 2 + 16) as engine:
        engine.subscribe("worker", "work", timeout=3600)
        async with engine.open_listener(subscriber_id="worker") as listener:
            if trace:
                tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            start = time.perf_counter()
            ids = [engine.start_workflow("waiting").task_id for _ in range(count)]
            actions = []
            while len(actions) < count:
                message = await listener.receive()
                if isinstance(message, Action):
                    actions.append(message)
            started = time.perf_counter() - start
            used = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            assert len(engine.tasks()) == count
            start = time.perf_counter()
            for action in actions:
                listener.done(action)
            for task_id in ids:
                assert task_id is not None
                await engine.wait_task(task_id)
            finished = time.perf_counter() - start
    return started, count / finished, used / count / 1024


def pairs(
    count: int, floor: Callable[[], float], engine: Callable[[], float]
) -> tuple[float, float]:
    """Measure the floor and the engine alternately, ``count`` pairs; return both medians.

    Alternating in one process makes a slower spell of this shared machine
    weigh on both alike.
    """
    floors, engines = [], []
    for _ in range(count):
        floors.append(floor())
        engines.append(engine())
    return statistics.median(floors), statistics.median(engines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (under a minute)")
    args = parser.parse_args(argv)
    runs = 100 if args.quick else 300
    repeats = 3 if args.quick else 7
    par_runs = {100: 200 if args.quick else 500, 1000: 1000 if args.quick else 2000}

    seq_floor, seq = pairs(
        repeats,
        lambda: trio.run(baseline_per_step, runs),
        lambda: trio.run(engine_per_step, runs),
    )
    durable = statistics.median(durable_per_step(runs) for _ in range(repeats))
    print(f"collect_and_cleanup ({len(STEP_TYPES)} steps), one listener answering at once,")
    print(f"floor and phasebus alternating, {repeats} pairs, medians:")
    print(f"  sequential, {runs} runs:")
    print(f"    floor    {seq_floor:8.2f} us/step (bare trio tasks and memory channels)")
    print(f"    phasebus {seq:8.2f} us/step   ratio {seq / seq_floor:5.2f}")
    print(f"    durable  {durable:8.2f} us/step with the SQLite store")
    concurrent = {}
    for concurrency, count in par_runs.items():
        floor, engine = pairs(
            repeats,
            lambda c=concurrency, n=count: trio.run(floor_per_step, n, c),  # type: ignore[misc]
            lambda c=concurrency, n=count: trio.run(engine_concurrent_per_step, n, c),  # type: ignore[misc]
        )
        concurrent[concurrency] = (floor, engine)
        print(f"  {concurrency} runs at once, {count} runs:")
        print(f"    floor    {floor:8.2f} us/step")
        print(f"    phasebus {engine:8.2f} us/step   ratio {engine / floor:5.2f}")
    durable_par = statistics.median(
        durable_concurrent_per_step(par_runs[100], 100) for _ in range(repeats)
    )
    par100 = concurrent[100][1]
    print(f"    durable  {durable_par:8.2f} us/step with 100 at once and the SQLite store")

    results = {}
    for count in (1_000, 10_000):
        timings = [trio.run(concurrent_start, count) for _ in range(repeats)]
        started = statistics.median(t[0] for t in timings)
        steps_per_s = statistics.median(t[1] for t in timings)
        kib = trio.run(functools.partial(concurrent_start, count, trace=True))[2]
        results[count] = (started, steps_per_s, kib)
        print(
            f"{count:>6} concurrent tasks: started in {started:.3f} s "
            f"({started / count * 1e6:.1f} us/task), {steps_per_s:,.0f} steps/s to finish, "
            f"{kib:.1f} KiB/task"
        )
    growth = (results[10_000][0] / 10_000) / (results[1_000][0] / 1_000)
    print(
        f"RESULT us_per_step={seq:.2f} baseline_us_per_step={seq_floor:.2f} "
        f"step_ratio={seq / seq_floor:.2f} seq_floor_ratio={seq / seq_floor:.2f} "
        f"par100_floor_ratio={par100 / concurrent[100][0]:.2f} "
        f"par1000_floor_ratio={concurrent[1000][1] / concurrent[1000][0]:.2f} "
        f"start_10k_s={results[10_000][0]:.3f} "
        f"kib_per_task={results[10_000][2]:.2f} growth_1k_to_10k={growth:.2f} "
        f"durable_us_per_step={durable:.2f} durable_ratio={durable / seq:.2f} "
        f"durable_par100_ratio={durable_par / par100:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
