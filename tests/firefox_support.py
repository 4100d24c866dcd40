"""Debian's Firefox (``firefox-esr``) driven over WebDriver BiDi, which Firefox speaks itself.

No geckodriver is needed (Debian does not package one): Firefox started with
``--remote-debugging-port=0`` prints the address of its BiDi WebSocket, and
this small client sends it commands with trio-websocket. The profile is fresh
and turns off Firefox's own background traffic (updates, remote settings,
telemetry, captive-portal checks).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
import trio_websocket

FIREFOX = "/usr/bin/firefox-esr"

_PREFERENCES = {
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.newtabpage.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "extensions.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "toolkit.telemetry.enabled": False,
}


def missing_firefox() -> str | None:
    """Return why Firefox cannot be driven here, or None when it can."""
    if not (os.path.exists(FIREFOX) or shutil.which("firefox-esr")):
        return f"{FIREFOX} is missing (apt-get install firefox-esr)"
    return None


class Firefox:
    """One browsing context of a headless Firefox, driven over BiDi."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.context = ""

    async def call(self, method: str, **params: Any) -> Any:
        """Send a command and return its result (events in between are skipped)."""
        number = next(self._ids)
        await self._ws.send_message(json.dumps({"id": number, "method": method, "params": params}))
        with trio.fail_after(30):
            while True:
                message = json.loads(await self._ws.get_message())
                if message.get("id") != number:
                    continue
                if message.get("type") == "error":
                    raise AssertionError(f"{method}: {message.get('message') or message}")
                return message["result"]

    async def go(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        await self.call("browsingContext.navigate", context=self.context, url=url, wait="complete")

    async def run(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises are awaited); return its JSON value."""
        result = await self.call(
            "script.evaluate",
            expression=f"(async () => JSON.stringify(await ({expression})))()",
            target={"context": self.context},
            awaitPromise=True,
        )
        if result.get("type") == "exception":
            raise AssertionError(f"{expression}: {result['exceptionDetails'].get('text')}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    async def wait_for(self, expression: str, *, timeout: float = 5.0, what: str = "") -> Any:
        """Evaluate ``expression`` until it is true; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.run(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                waited = what or expression
                raise AssertionError(f"timed out after {timeout} s waiting for {waited}")
            await trio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        """Save what the page shows as a PNG."""
        result = await self.call("browsingContext.captureScreenshot", context=self.context)
        path.write_bytes(base64.b64decode(result["data"]))


@contextlib.asynccontextmanager
async def open_firefox(width: int = 1280, height: int = 900) -> AsyncIterator[Firefox]:
    """Start headless Firefox in a fresh profile and yield a driven browsing context."""
    profile = Path(tempfile.mkdtemp(prefix="phasebus-firefox-"))
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in _PREFERENCES.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")
    program = FIREFOX if os.path.exists(FIREFOX) else str(shutil.which("firefox-esr"))
    process = subprocess.Popen(
        [
            program,
            "--headless",
            "--no-remote",
            "--remote-debugging-port=0",
            "--profile",
            str(profile),
            f"--width={width}",
            f"--height={height}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    found: list[str] = []
    ready = threading.Event()

    def read_errors() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            match = re.search(r"WebDriver BiDi listening on (ws://\S+)", line)
            if match and not found:
                found.append(match.group(1))
                ready.set()

    reader = threading.Thread(target=read_errors, daemon=True)
    reader.start()
    try:
        await trio.to_thread.run_sync(ready.wait, 60)
        if not found:
            raise AssertionError("firefox did not open its BiDi port")
        async with trio_websocket.open_websocket_url(found[0] + "/session") as ws:
            firefox = Firefox(ws)
            await firefox.call("session.new", capabilities={})
            tree = await firefox.call("browsingContext.getTree")
            firefox.context = tree["contexts"][0]["context"]
            try:
                yield firefox
            finally:
                with contextlib.suppress(Exception), trio.move_on_after(5):
                    await firefox.call("session.end")
    finally:
        process.terminate()
        try:
            await trio.to_thread.run_sync(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(5)
        process.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)
