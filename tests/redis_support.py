"""A real redis-server for the Redis store's tests: one per test, on 127.0.0.1, stopped by PID.

Outside CI a test that needs it is skipped, saying why, where ``redis-server``
is not installed; with ``CI=true`` it fails instead, so CI cannot pass
without running them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

#: How long a server may take to answer PING after it was started.
START_TIMEOUT = 20.0


def redis_server_program() -> str:
    """Return the path of ``redis-server``, or skip (fail under CI) when it is missing."""
    program = shutil.which("redis-server")
    if program is None:
        reason = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the Redis tests")
        pytest.skip(reason)
    return program


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ping(port: int, *, timeout: float = 1.0) -> bytes:
    """Send PING over a raw socket and return the server's first reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = connection.recv(256)
            if not chunk:
                break
            reply += chunk
        return reply.strip()


@attrs.define
class RedisServer:
    """One redis-server process of a test: its port, folder and options."""

    program: str
    directory: Path
    port: int
    #: ``no`` (nothing kept on disk), or ``everysec``/``always`` (an append-only file).
    appendfsync: str = "no"
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        options = ["--appendonly", "no"]
        if self.appendfsync != "no":
            options = ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        return [
            self.program,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            *options,
            *self.extra,
        ]

    def start(self, *, wait: bool = True) -> None:
        """Start the server (again, on the same port and folder) and wait until it answers."""
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)
        if wait:
            self.wait_until_ready()

    def wait_until_ready(self) -> None:
        """Wait until the server answers PONG (not LOADING)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            try:
                if ping(self.port) == b"+PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the server; for SIGKILL and SIGTERM, wait until it is gone."""
        assert self.process is not None
        os.kill(self.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server by its PID, whatever state it is in."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server without persistence, started for this test and stopped after it."""
    server = RedisServer(redis_server_program(), tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of this test's redis-server."""
    return redis_server.url
