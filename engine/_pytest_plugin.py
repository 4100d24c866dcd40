"""pytest fixtures for testing workflows with phasebus (installed as a pytest plugin).

They need pytest-trio: use them in trio tests (``trio_mode = true``, or
``@pytest.mark.trio``), with its ``autojump_clock`` fixture for virtual time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from ._engine import Engine
from .testing import DEFAULT_START, open_test_engine


@pytest.fixture
def phasebus_start_time() -> datetime:
    """The wall-clock time at which ``phasebus_engine`` starts; override it to choose."""
    return DEFAULT_START


@pytest.fixture
async def phasebus_engine(phasebus_start_time: datetime) -> AsyncIterator[Engine]:
    """An engine whose wall clock starts at ``phasebus_start_time`` and follows trio's clock."""
    async with open_test_engine(start_time=phasebus_start_time) as engine:
        yield engine
