"""Run ``phasebus`` with its schedules' wall clock set to a given time at a given moment.

Usage: python tests/shifted_clock.py WALL EPOCH phasebus-arguments...

The engine's clock reads WALL (ISO 8601 with an offset) at the real moment
EPOCH (seconds since the epoch) and runs at the real pace from there: servers
started with the same two values agree on the time, so a schedule's next
firing can be made to come a few seconds after they are all up, not up to a
minute later. Everything else (leases, Redis, sockets) keeps real time.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from engine import _engine
from engine._clock import Clock
from machines.__main__ import main

shift = timedelta(seconds=datetime.fromisoformat(sys.argv[1]).timestamp() - float(sys.argv[2]))


class ShiftedClock(Clock):
    """A clock reading the real time moved by ``shift``."""

    def __init__(self, start_time: datetime | None = None) -> None:
        super().__init__(start_time if start_time is not None else datetime.now(UTC) + shift)


_engine.Clock = ShiftedClock  # type: ignore[attr-defined]
sys.exit(main(sys.argv[3:]))
