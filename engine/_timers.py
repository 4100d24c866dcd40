"""One timer for all deadlines, instead of a cancel scope per wait."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import trio
from trio.lowlevel import ParkingLot

# An entry is [when, sequence number, callback]; a cancelled or fired entry
# has its callback set to None and is skipped when it reaches the top.
_Entry = list[Any]


class Timers:
    """Call callbacks at times on trio's clock, from one task (:meth:`serve`).

    Scheduling and cancelling are O(log n) and never allocate a cancel scope,
    so thousands of waiting tasks cost one heap entry each.
    """

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._sequence = itertools.count()
        self._lot = ParkingLot()
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def schedule(self, when: float, callback: Callable[..., None], *args: Any) -> _Entry:
        """Call ``callback(*args)`` once trio's clock reaches ``when``; return a handle.

        Passing arguments rather than a closure keeps each entry to one object.
        """
        entry: _Entry = [when, next(self._sequence), callback, *args]
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._lot.unpark_all()
        return entry

    def cancel(self, entry: _Entry) -> None:
        """Forget a scheduled callback (no effect if it already ran)."""
        if entry[2] is None:
            return
        entry[2] = None
        self._cancelled += 1
        if self._cancelled > 1024 and self._cancelled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    @staticmethod
    def pending(entry: _Entry | None, when: float) -> bool:
        """Tell whether ``entry`` is still scheduled, for ``when`` or earlier."""
        return entry is not None and entry[2] is not None and entry[0] <= when

    async def serve(self) -> None:
        """Run due callbacks, forever."""
        heap = self._heap
        while True:
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                entry = heapq.heappop(self._heap)
                callback, entry[2] = entry[2], None
                if callback is None:
                    self._cancelled -= 1
                else:
                    callback(*entry[3:])
            heap = self._heap
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._lot.park()
