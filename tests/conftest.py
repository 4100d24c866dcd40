from __future__ import annotations

from datetime import UTC, datetime

import pytest

pytest_plugins = ["pytester"]

#: Wall-clock time at the start of every engine in the tests (a Monday).
START = datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC)


@pytest.fixture
def start_time() -> datetime:
    return START


# A real redis-server per test, for the Redis store's tests (see redis_support).
from .redis_support import redis_server as redis_server  # noqa: E402
from .redis_support import redis_url as redis_url  # noqa: E402
