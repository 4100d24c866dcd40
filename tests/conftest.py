from __future__ import annotations

from datetime import UTC, datetime

import pytest

pytest_plugins = ["pytester"]

#: Wall-clock time at the start of every engine in the tests (a Monday).
START = datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC)


@pytest.fixture
def start_time() -> datetime:
    return START
