"""A real ``phasebus serve`` in a subprocess, a real Chromium driven by Selenium, and a
subscriber on a WebSocket that answers when told: what the console's browser tests use.

The browser is Debian's ``chromium`` with ``chromium-driver`` (``.ci/run`` installs
them); nothing is downloaded. :func:`missing_browser` says why a browser cannot be
had, so that tests can skip (or, under ``CI=true``, fail).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio
import trio_websocket

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Flags for a headless Chromium run as root that reaches nothing but the server under test.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

#: A workflow whose steps nobody answers but the test's own subscriber.
PROBE_WORKFLOW = """
[[workflows]]
id = "console_probe"

[[workflows.steps]]
name = "probe_one"
phase = "first"
timeout = 120

[[workflows.steps]]
name = "probe_two"
phase = "second"
timeout = 120
"""


def missing_browser() -> str | None:
    """Return why no browser can be driven here, or None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[test]')"
    for program in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(program) or shutil.which(Path(program).name)):
            return f"{program} is missing (apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def serve(*options: str, workflows: str | None = PROBE_WORKFLOW) -> Iterator[str]:
    """Run ``phasebus serve --demo --store memory --port 0`` and yield its base URL."""
    with tempfile.TemporaryDirectory(prefix="phasebus-console-") as folder:
        command = [sys.executable, "-m", "machines", "serve", "--demo", "--store", "memory"]
        command += ["--port", "0", *options]
        if workflows is not None:
            Path(folder, "probe.toml").write_text(workflows)
            command += ["--workflows", folder]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PHASEBUS_PSK": ""},
        )
        assert process.stdout is not None
        try:
            line = process.stdout.readline()
            found = re.search(r"listening on (http://\S+)", line)
            if found is None:
                rest = process.stdout.read() if process.poll() is not None else ""
                raise AssertionError(f"phasebus serve did not start: {line}{rest}")
            # keep reading its output so that it never blocks on a full pipe
            threading.Thread(target=process.stdout.read, daemon=True).start()
            yield found.group(1)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()


def request(
    url: str, method: str = "GET", *, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    """Send one HTTP request; return the status and the JSON body (or None)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    call = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=10) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        error.close()
        return error.code, json.loads(raw) if raw else None


def open_chromium(window: tuple[int, int] = (1280, 900)) -> Any:
    """Start headless Chromium under chromedriver in a fresh profile; return the driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="phasebus-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    driver_path = CHROMEDRIVER if os.path.exists(CHROMEDRIVER) else shutil.which("chromedriver")
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    original_quit = driver.quit

    def quit_and_clean() -> None:
        try:
            original_quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean
    return driver


def wait_for(check: Callable[[], Any], *, timeout: float = 5.0, what: str = "the condition") -> Any:
    """Poll ``check`` until it returns something true; return it (AssertionError on time-out)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = check()
        except Exception as error:  # a stale element while the page redraws
            value, last = None, error
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from last
        time.sleep(0.05)


class Subscriber:
    """A subscriber on its own WebSocket (in a thread running trio) that answers when told.

    Args:
        url: the server's base URL.
        subscriber_id: the id to subscribe as.
        message_types: what to subscribe to.
        token: a bearer token when the server wants one.
    """

    def __init__(
        self,
        url: str,
        subscriber_id: str,
        message_types: Sequence[str],
        *,
        token: str | None = None,
    ) -> None:
        self.url = url
        self.subscriber_id = subscriber_id
        self.token = token
        for message_type in message_types:
            status, _ = request(
                f"{url}/subscriber/{subscriber_id}/{message_type}?timeout=120",
                "POST",
                token=token,
            )
            assert status == 200
        self.actions: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ready = threading.Event()
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise AssertionError(f"the subscriber could not connect: {self._error!r}")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as error:
            self._error = error
            self._ready.set()

    async def _main(self) -> None:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        headers = (
            [] if self.token is None else [(b"authorization", f"Bearer {self.token}".encode())]
        )
        self._trio_token = trio.lowlevel.current_trio_token()
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    path = f"/subscriber/{self.subscriber_id}/handle"
                    self._ws = await trio_websocket.wrap_client_stream(
                        nursery, stream, host, path, extra_headers=headers
                    )
                    self._ready.set()
                    try:
                        while True:
                            message = json.loads(await self._ws.get_message())
                            if message["kind"] == "action":
                                self.actions.put(message)
                    except trio_websocket.ConnectionClosed:
                        pass
                    finally:
                        with trio.move_on_after(1) as cleanup:
                            cleanup.shield = True
                            await self._ws.aclose()
                        nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()

    def next_action(self, timeout: float = 10) -> dict[str, Any]:
        """Return the next action sent to this subscriber."""
        return self.actions.get(timeout=timeout)

    def answer(self, action: dict[str, Any], kind: str = "action_done") -> None:
        """Answer an action (``action_done`` or ``action_error``)."""
        frame = json.dumps(
            {"kind": kind, "message_type": action["message_type"], "data": action["data"]}
        )
        assert self._ws is not None
        trio.from_thread.run(self._ws.send_message, frame, trio_token=self._trio_token)

    def close(self) -> None:
        """Disconnect and remove the subscriber."""
        if self._scope is not None and self._trio_token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._trio_token)
        self._thread.join(10)
        with contextlib.suppress(OSError):
            request(f"{self.url}/subscriber/{self.subscriber_id}", "DELETE", token=self.token)
