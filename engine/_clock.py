"""Wall-clock time for schedules, on top of trio's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio

#: Longest single sleep when following the real wall clock, so that a clock
#: step (NTP, suspend) delays a scheduled run by at most this many seconds.
_MAX_REAL_SLEEP = 30.0


class Clock:
    """Map trio's clock to wall-clock time.

    With ``start_time`` given, wall time is ``start_time`` plus the trio time
    elapsed since the clock was made: under a virtual clock (pytest-trio's
    ``autojump_clock``, say) a day of schedules passes in milliseconds. Without
    it, :meth:`now` is the real time in UTC.
    """

    def __init__(
        self, start_time: datetime | None = None, *, trio_now: float | None = None
    ) -> None:
        self._virtual = start_time is not None
        base = start_time if start_time is not None else datetime.now(UTC)
        if base.tzinfo is None:
            raise ValueError(f"start_time must be timezone-aware, got {base!r}")
        self._base_wall = base.astimezone(UTC)
        self._base_epoch = self._base_wall.timestamp()
        #: trio's clock when the clock was made (``trio_now`` for a clock made outside trio)
        self._base_trio = trio.current_time() if trio_now is None else trio_now

    @property
    def virtual(self) -> bool:
        """Whether wall time is derived from trio's clock."""
        return self._virtual

    def now(self) -> datetime:
        """Return the current wall-clock time, in UTC."""
        if self._virtual:
            return self.to_wall(trio.current_time())
        return datetime.now(UTC)

    def to_wall(self, trio_time: float) -> datetime:
        """Convert a time on trio's clock to wall-clock time."""
        return self._base_wall + timedelta(seconds=trio_time - self._base_trio)

    def to_epoch(self, trio_time: float) -> float:
        """Convert a time on trio's clock to seconds since the epoch (cheaper than a datetime)."""
        return self._base_epoch + (trio_time - self._base_trio)

    def to_trio(self, moment: datetime) -> float:
        """Convert a wall-clock time to trio's clock."""
        return self._base_trio + (moment - self._base_wall).total_seconds()

    async def sleep_until(self, moment: datetime) -> None:
        """Sleep until the wall clock reaches ``moment``."""
        if self._virtual:
            await trio.sleep_until(self.to_trio(moment))
            return
        while (remaining := (moment - datetime.now(UTC)).total_seconds()) > 0:
            await trio.sleep(min(remaining, _MAX_REAL_SLEEP))
