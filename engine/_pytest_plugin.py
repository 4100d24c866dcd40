"""pytest fixtures for testing workflows with phasebus (installed as a pytest plugin).

They need pytest-trio (``pip install 'phasebus[testing]'`` brings it): use them
in trio tests (``trio_mode = true``, or ``@pytest.mark.trio``), with its
``autojump_clock`` fixture for virtual time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from ._engine import Engine
from .testing import DEFAULT_START, open_test_engine

#: What a test using the fixtures is told when pytest-trio is missing.
MISSING_PYTEST_TRIO = (
    "phasebus's fixtures need pytest-trio: pip install 'phasebus[testing]'"
    " (and set trio_mode = true under [tool.pytest.ini_options])"
)


@pytest.fixture
def _phasebus_needs_pytest_trio(request: pytest.FixtureRequest) -> None:
    """Fail with one line saying what to install when pytest-trio is not there."""
    if not request.config.pluginmanager.has_plugin("trio"):
        pytest.fail(MISSING_PYTEST_TRIO, pytrace=False)


@pytest.fixture
def phasebus_start_time() -> datetime:
    """The wall-clock time at which ``phasebus_engine`` starts; override it to choose."""
    return DEFAULT_START


@pytest.fixture
async def phasebus_engine(
    _phasebus_needs_pytest_trio: None, phasebus_start_time: datetime
) -> AsyncIterator[Engine]:
    """An engine whose wall clock starts at ``phasebus_start_time`` and follows trio's clock."""
    async with open_test_engine(start_time=phasebus_start_time) as engine:
        yield engine
