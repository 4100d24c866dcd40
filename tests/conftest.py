from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

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

#: Where a browser test's page is kept (by the ``page`` fixture) for a screenshot on failure.
BROWSER_KEY = pytest.StashKey[object]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Save a screenshot of a browser test's page when the test fails, and say where."""
    report = yield
    driver = item.stash.get(BROWSER_KEY, None)
    if driver is not None and report.failed and call.when in ("setup", "call"):
        folder = Path(tempfile.gettempdir()) / "phasebus-console-failures"
        folder.mkdir(exist_ok=True)
        path = folder / f"{item.name}.png"
        try:
            driver.save_screenshot(str(path))  # type: ignore[attr-defined]
        except Exception as error:
            report.sections.append(("screenshot", f"could not take one: {error!r}"))
        else:
            report.sections.append(("screenshot", f"the page as it was: {path}"))
    return report
