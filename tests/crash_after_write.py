"""Run ``phasebus`` but die (SIGKILL) right after the store commits that a given step began.

Usage: python tests/crash_after_write.py STEP phasebus-arguments...

The kill lands between the durable write of the step's state and the publish
of its action: the window that write-ahead must make harmless.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from engine import _store
from machines.__main__ import main

step = sys.argv[1]
marker = f'"state":"{step}"'.encode()
commit = _store.SQLiteStore.commit


def commit_then_die(self: _store.SQLiteStore, writes: Sequence[_store.TaskWrite]) -> None:
    commit(self, writes)
    if any(marker in write.record for write in writes):
        os.kill(os.getpid(), signal.SIGKILL)


_store.SQLiteStore.commit = commit_then_die  # type: ignore[method-assign]
sys.exit(main(sys.argv[2:]))
