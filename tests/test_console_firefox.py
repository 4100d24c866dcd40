"""The web console in Firefox (Debian's firefox-esr over WebDriver BiDi) on a real server.

Outside CI a missing Firefox skips the test with the reason; under ``CI=true``
it must run. A failure leaves a screenshot in the temporary folder it names.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from .browser_support import Subscriber, request, serve
from .firefox_support import Firefox, missing_firefox, open_firefox


@asynccontextmanager
async def firefox_or_skip(name: str) -> AsyncIterator[Firefox]:
    reason = missing_firefox()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Firefox test: {reason}")
        pytest.skip(reason)
    async with open_firefox() as firefox:
        try:
            yield firefox
        except BaseException as error:
            folder = Path(tempfile.gettempdir()) / "phasebus-console-failures"
            folder.mkdir(exist_ok=True)
            path = folder / f"{name}.png"
            await firefox.screenshot(path)
            error.add_note(f"screenshot of the page as it was: {path}")
            raise


def state(name: str) -> str:
    """JavaScript: the classes and mark of a state of the task's diagram."""
    return (
        f"(() => {{ const g = document.querySelector('#task-diagram [data-state=\"{name}\"]');"
        " return g && [g.getAttribute('class'), g.querySelector('.mark').textContent]; })()"
    )


async def test_the_console_runs_in_firefox() -> None:
    async with firefox_or_skip("test_the_console_runs_in_firefox") as firefox:
        with serve() as url:
            prober = Subscriber(url, "test.prober", ["probe_one", "probe_two"])
            try:
                await firefox.go(f"{url}/")
                await firefox.wait_for(
                    "document.querySelector('#connection').textContent === 'live'",
                    what="the live connection",
                )
                started = time.monotonic()
                task_id = request(f"{url}/workflow/console_probe/run", "POST")[1]["task_id"]
                card = f'#live-tasks [data-task="{task_id}"]'
                await firefox.wait_for(
                    f"!!document.querySelector('{card}')", timeout=1.0, what="the new run"
                )
                assert time.monotonic() - started < 1.0

                await firefox.run(f"document.querySelector('{card} h2 a').click()")
                lit = await firefox.wait_for(
                    f"{state('probe_one')}?.[0].includes('current') && {state('probe_one')}",
                    what="probe_one lit",
                )
                assert lit == ["state current", "▶ now"]
                action = await trio.to_thread.run_sync(prober.next_action)
                await trio.to_thread.run_sync(prober.answer, action)
                await firefox.wait_for(
                    f"{state('probe_two')}?.[0].includes('current')", what="probe_two lit"
                )
                assert await firefox.run(state("probe_one")) == ["state done", "✓ done"]

                # stop it from the console, through the confirmation
                await firefox.run("document.querySelector('#task-stop').click()")
                await firefox.wait_for("document.querySelector('#confirm-stop').open")
                await firefox.run(
                    "document.querySelector('#confirm-stop button[value=stop]').click()"
                )
                await firefox.wait_for(
                    f"{state('end')}?.[0].includes('stopped')", what="the end marked stopped"
                )
                assert request(f"{url}/task/{task_id}")[1]["outcome"] == "stopped"

                await firefox.go(f"{url}/ui/#history")
                rows = await firefox.wait_for(
                    f'[...document.querySelectorAll(\'#history-list [data-task="{task_id}"]'
                    " li[data-step]')].map((row) => row.dataset.step)",
                    what="the history's timeline",
                )
                assert rows == ["probe_one", "probe_two"]
            finally:
                await trio.to_thread.run_sync(prober.close)
