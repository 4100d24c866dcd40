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
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Action, SQLiteStore, Step, Workflow, open_engine
from machines import COLLECT_AND_CLEANUP

STEP_TYPES = [step.message_type for step in COLLECT_AND_CLEANUP.steps]


async def engine_per_step(runs: int, store_path: Path | None = None) -> float:
    """Return microseconds per step for ``runs`` sequential collect_and_cleanup tasks.

    With ``store_path``, state is kept in a SQLite store there (a fresh file).
    """
    store = SQLiteStore(store_path) if store_path is not None else None
    async with open_engine(workflows=[COLLECT_AND_CLEANUP], store=store) as engine:
        for message_type in STEP_TYPES:
            engine.subscribe("worker", message_type)
        async with engine.open_listener(subscriber_id="worker") as listener:

            async def answer() -> None:
                async for message in listener:
                    if isinstance(message, Action):
                        listener.done(message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                await engine.run_workflow("collect_and_cleanup")  # warm up
                start = time.perf_counter()
                for _ in range(runs):
                    await engine.run_workflow("collect_and_cleanup")
                elapsed = time.perf_counter() - start
                nursery.cancel_scope.cancel()
    if store is not None:
        store.close()
    return elapsed / (runs * len(STEP_TYPES)) * 1e6


def durable_per_step(runs: int) -> float:
    """Per-step cost with the SQLite store, in a fresh file."""
    with tempfile.TemporaryDirectory() as directory:
        return trio.run(engine_per_step, runs, Path(directory) / "bench.sqlite3")


async def baseline_per_step(runs: int) -> float:
    """The same message pattern on bare memory channels: an action out, an answer back.

    These are the messages the engine run exchanges: with nobody listening to
    ``progress`` or the lifecycle events, the engine does not build them.
    """
    to_listener, listener_inbox = trio.open_memory_channel[dict[str, object]](4096)
    to_driver, driver_inbox = trio.open_memory_channel[dict[str, object]](4096)

    async def listener() -> None:
        async for message in listener_inbox:
            to_driver.send_nowait({"kind": "action_done", "data": message["data"]})

    async def one_run(task_id: int) -> None:
        for step in STEP_TYPES:
            to_listener.send_nowait(
                {"kind": "action", "message_type": step, "data": {"task": task_id, "step": step}}
            )
            answer = await driver_inbox.receive()
            assert answer["data"]["step"] == step  # type: ignore[index]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener)
        await one_run(0)
        start = time.perf_counter()
        for run in range(runs):
            await one_run(run)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed / (runs * len(STEP_TYPES)) * 1e6


WAITING = Workflow(id="waiting", steps=[Step("work", timeout=3600)], surpass="parallel")


async def concurrent(count: int, *, trace: bool = False) -> tuple[float, float, float]:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (under 30 s)")
    args = parser.parse_args(argv)
    runs = 100 if args.quick else 300
    repeats = 5 if args.quick else 9

    # The three are measured in turn, repeat after repeat, so that a slower
    # spell of this shared machine weighs on all of them alike.
    samples: dict[str, list[float]] = {"engine": [], "baseline": [], "durable": []}
    for _ in range(repeats):
        samples["engine"].append(trio.run(engine_per_step, runs))
        samples["baseline"].append(trio.run(baseline_per_step, runs))
        samples["durable"].append(durable_per_step(runs))
    engine_us, base_us, durable_us = (statistics.median(samples[k]) for k in samples)
    print(f"collect_and_cleanup ({len(STEP_TYPES)} steps), {runs} runs x {repeats}:")
    print(f"  engine   {engine_us:8.2f} us/step")
    print(f"  baseline {base_us:8.2f} us/step (bare trio memory channels)")
    print(f"  ratio    {engine_us / base_us:8.2f}")
    print(f"  durable  {durable_us:8.2f} us/step with the SQLite store")

    results = {}
    for count in (1_000, 10_000):
        timings = [trio.run(concurrent, count) for _ in range(repeats)]
        started = statistics.median(t[0] for t in timings)
        steps_per_s = statistics.median(t[1] for t in timings)
        kib = trio.run(functools.partial(concurrent, count, trace=True))[2]
        results[count] = (started, steps_per_s, kib)
        print(
            f"{count:>6} concurrent tasks: started in {started:.3f} s "
            f"({started / count * 1e6:.1f} us/task), {steps_per_s:,.0f} steps/s to finish, "
            f"{kib:.1f} KiB/task"
        )
    growth = (results[10_000][0] / 10_000) / (results[1_000][0] / 1_000)
    print(
        f"RESULT us_per_step={engine_us:.2f} baseline_us_per_step={base_us:.2f} "
        f"step_ratio={engine_us / base_us:.2f} start_10k_s={results[10_000][0]:.3f} "
        f"kib_per_task={results[10_000][2]:.2f} growth_1k_to_10k={growth:.2f} "
        f"durable_us_per_step={durable_us:.2f} durable_ratio={durable_us / engine_us:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
