"""Schedules: time zones, daylight-saving changes, catch-up after a gap, the ledger."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from engine import (
    CatchUp,
    CronTrigger,
    DeclarationError,
    Step,
    Surpass,
    Workflow,
    open_engine,
)
from engine._schedules import CatchUpPlan, catch_up

from .test_engine import drain, events


def scheduled(
    trigger: CronTrigger, *, surpass: Surpass = Surpass.PARALLEL, timeout: float = 10
) -> Workflow:
    return Workflow(
        id="wf", steps=[Step("work", timeout=timeout)], triggers=[trigger], surpass=surpass
    )


async def planned_times(trigger: CronTrigger, start: datetime, seconds: float) -> list[str]:
    async with open_engine(workflows=[scheduled(trigger)], start_time=start) as engine:
        await trio.sleep(seconds)
        return [f.planned.isoformat() for f in engine.schedule_ledger("wf")]


async def test_a_time_that_does_not_exist_runs_once_at_the_next_valid_instant(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Berlin springs forward on 2026-03-29 at 02:00 to 03:00: 02:30 does not exist.
    times = await planned_times(
        CronTrigger("30 2 * * *", "Europe/Berlin"), datetime(2026, 3, 27, 12, tzinfo=UTC), 3 * 86400
    )
    assert times == [
        "2026-03-28T01:30:00+00:00",  # 02:30 CET
        "2026-03-29T01:00:00+00:00",  # 03:00 CEST, the first valid instant
        "2026-03-30T00:30:00+00:00",  # 02:30 CEST
    ]


async def test_a_time_that_occurs_twice_runs_once(autojump_clock: trio.abc.Clock) -> None:
    # Berlin falls back on 2026-10-25 at 03:00 to 02:00: 02:30 occurs twice.
    times = await planned_times(
        CronTrigger("30 2 * * *", "Europe/Berlin"),
        datetime(2026, 10, 23, 12, tzinfo=UTC),
        3 * 86400,
    )
    assert times == [
        "2026-10-24T00:30:00+00:00",
        "2026-10-25T00:30:00+00:00",  # the first 02:30 (CEST), not the second
        "2026-10-26T01:30:00+00:00",
    ]


async def test_hourly_schedules_run_in_absolute_time_across_dst(
    autojump_clock: trio.abc.Clock,
) -> None:
    start = datetime(2026, 10, 24, 22, 0, 30, tzinfo=UTC)  # 00:00:30 CEST on the 25th
    times = await planned_times(CronTrigger("0 * * * *", "Europe/Berlin"), start, 25 * 3600)
    # the local day of the change has 25 hours: 25 runs, one hour apart
    assert len(times) == 25
    assert len(set(times)) == 25


@pytest.mark.parametrize(
    ("catch_up", "limit", "outcomes"),
    [
        (CatchUp.LATEST, 10, ["missed", "missed", "caught_up"]),
        (CatchUp.SKIP, 10, ["missed", "missed", "missed"]),
        (CatchUp.ALL, 2, ["missed", "caught_up", "caught_up"]),
        (CatchUp.ALL, 10, ["caught_up", "caught_up", "caught_up"]),
    ],
)
async def test_times_missed_during_a_gap_follow_the_catch_up_policy(
    catch_up: CatchUp, limit: int, outcomes: list[str], autojump_clock: trio.testing.MockClock
) -> None:
    start = datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC)
    trigger = CronTrigger("0 * * * *", catch_up=catch_up, catch_up_limit=limit)
    async with open_engine(workflows=[scheduled(trigger)], start_time=start) as engine:
        await trio.sleep(3600)  # the 01:00 run happens on time
        autojump_clock.jump(3 * 3600)  # the process is frozen for three hours
        await trio.sleep(1)
        ledger = [(f.planned.hour, f.outcome) for f in engine.schedule_ledger("wf")]
        await trio.sleep(3600)
        after = engine.schedule_ledger("wf")[-1]
    assert ledger == [(1, "started"), *zip((2, 3, 4), outcomes, strict=True)]
    assert (after.planned.hour, after.outcome) == (5, "started")
    started = {
        f.task_id for f in engine.schedule_ledger("wf") if f.outcome in ("started", "caught_up")
    }
    assert None not in started


async def test_the_ledger_records_overlaps(autojump_clock: trio.abc.Clock) -> None:
    start = datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC)
    trigger = CronTrigger("*/10 * * * *")
    workflow = scheduled(trigger, surpass=Surpass.WAIT, timeout=25 * 60)
    async with open_engine(workflows=[workflow], start_time=start) as engine:
        engine.subscribe("slow", "work", timeout=25 * 60)
        async with engine.open_listener(message_types=["schedule_fired"]) as watch:
            await trio.sleep(30 * 60)
            fired = events(drain(watch))
    assert [e.data["outcome"] for e in fired] == ["started", "queued", "skipped_overlap"]
    assert fired[0].data == {
        "workflow": "wf",
        "cron": "*/10 * * * *",
        "timezone": "UTC",
        "planned": "2026-03-02T00:10:00+00:00",
        "actual": "2026-03-02T00:10:00+00:00",
        "outcome": "started",
        "task_id": fired[0].data["task_id"],
    }
    assert fired[1].data["task_id"] is not None
    assert fired[2].data["task_id"] is None


def test_bad_catch_up_settings_are_named() -> None:
    with pytest.raises(DeclarationError) as raised:
        CronTrigger("0 * * * *", catch_up="sometimes", catch_up_limit=0)  # type: ignore[arg-type]
    assert str(raised.value).splitlines() == [
        "catch_up: must be one of 'skip', 'latest', 'all', got 'sometimes'",
        "catch_up_limit: must be an integer from 1 to 1000, got 0",
    ]


# ---------------------------------------------------------------- the catch-up rule, alone


def hours(*values: int) -> list[datetime]:
    return [datetime(2026, 3, 2, value, tzinfo=UTC) for value in values]


@pytest.mark.parametrize(
    ("policy", "limit", "run", "missed"),
    [
        (CatchUp.SKIP, 10, [], [1, 2, 3]),
        (CatchUp.LATEST, 10, [3], [1, 2]),
        (CatchUp.ALL, 10, [1, 2, 3], []),
        (CatchUp.ALL, 2, [2, 3], [1]),
    ],
)
def test_the_catch_up_policy_decides_what_a_gap_runs(
    policy: CatchUp, limit: int, run: list[int], missed: list[int]
) -> None:
    trigger = CronTrigger("0 * * * *", catch_up=policy, catch_up_limit=limit)
    plan = catch_up(trigger, hours(1, 2, 3), now=datetime(2026, 3, 2, 3, 30, tzinfo=UTC))
    assert plan == CatchUpPlan(tuple(hours(*run)), tuple(hours(*missed)), late=True)


def test_one_time_within_the_grace_is_on_time_whatever_the_policy() -> None:
    trigger = CronTrigger("0 * * * *", catch_up=CatchUp.SKIP)
    (due,) = hours(3)
    on_time = catch_up(trigger, [due], now=due.replace(second=59))
    assert on_time == CatchUpPlan((due,), (), late=False)
    late = catch_up(trigger, [due], now=due.replace(minute=1, second=1))
    assert late == CatchUpPlan((), (due,), late=True)
