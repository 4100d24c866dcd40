"""Run ``phasebus`` but die (SIGKILL) right after the store writes that a given step began.

Usage: python tests/crash_after_write.py STEP phasebus-arguments...

The kill lands between the durable write of the step's state and the publish
of its action: the window that write-ahead must make harmless.
"""

from __future__ import annotations

import os
import signal
import sys

from engine import _store
from engine._cli import main

step = sys.argv[1]
marker = f'"state":"{step}"'.encode()
write = _store.SQLiteStore.save_task


def save_task_then_die(
    self: _store.SQLiteStore, task_id: str, workflow: str, record: bytes
) -> None:
    write(self, task_id, workflow, record)
    if marker in record:
        os.kill(os.getpid(), signal.SIGKILL)


_store.SQLiteStore.save_task = save_task_then_die  # type: ignore[method-assign]
sys.exit(main(sys.argv[2:]))
