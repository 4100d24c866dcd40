"""Serve an engine over HTTP and WebSocket: ``phasebus serve``.

:func:`serve_app` (from :mod:`engine._server`) runs any ASGI application on
phasebus's own HTTP/1.1 and WebSocket server. :func:`serve` opens an engine
with the built-in workflows it is given (and those of a directory), creates the
``phasebus.core`` config and serves the API.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import ssl
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio
from starlette.types import ASGIApp

from ._catalog import load_catalog
from ._config import CORE_CONFIG
from ._definitions import Job, Workflow
from ._engine import Engine, open_engine
from ._errors import PhasebusError
from ._persistence import DEFAULT_LEASE
from ._server import ServerLimits as ServerLimits
from ._server import serve_app as serve_app
from ._store import AsyncStore, Store, open_store
from ._tls import Authority
from ._web import create_app

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8900

#: The environment variable that holds the pre-shared key when ``--psk`` is not given.
PSK_VARIABLE = "PHASEBUS_PSK"

#: The store ``phasebus serve`` uses unless told otherwise: a file in the working directory.
DEFAULT_STORE = "phasebus.sqlite3"
#: Days finished tasks are kept unless told otherwise.
DEFAULT_RETENTION_DAYS = 60
#: The longest retention: a century.
MAX_RETENTION_DAYS = 36500

#: How ``--store`` names a Redis server rather than a SQLite file.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def core_config(engine: Engine) -> dict[str, Any]:
    """Return the ``phasebus.core`` document of the schedules in force."""
    schedules: dict[str, Mapping[str, str]] = {}
    for workflow_id in sorted(engine.workflows):
        triggers = engine.schedules(workflow_id)
        if len(triggers) == 1:
            schedules[workflow_id] = {
                "schedule": triggers[0].cron,
                "timezone": triggers[0].timezone,
            }
    return {"workflows": schedules}


async def serve(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    psk: str | None = None,
    workflows_dir: Path | Sequence[Path] | None = None,
    demo: bool = False,
    store: str = "memory",
    retention_days: float = DEFAULT_RETENTION_DAYS,
    announce: bool = True,
    tls: bool = False,
    cert: Path | None = None,
    key: Path | None = None,
    metrics: bool = True,
    replica: str | None = None,
    lease_seconds: float | None = None,
    builtins: Iterable[Workflow] = (),
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an engine and serve its API until cancelled; report the base URL.

    The engine runs the built-in workflows ``builtins`` and those declared in
    ``workflows_dir``. ``store`` is the path of its SQLite store, a Redis
    URL (``redis://HOST:PORT/DB``; ``replica`` names the lease its running
    tasks are held under, by default the host's name, for ``lease_seconds``
    unless renewed), or ``memory`` to keep nothing across restarts; on
    start, interrupted tasks resume. The config ``phasebus.core`` is created
    with the schedules in force unless it exists. With ``demo``, simulated
    listeners answer every step of the built-in workflows. With
    ``announce``, the URL
    is printed on stdout once the server listens. With ``tls``, HTTPS and WSS
    are served with a certificate of the server's own CA, both kept beside the
    store (:mod:`engine._tls`); ``cert`` and ``key`` serve the user's
    certificate instead. Without ``metrics``, ``/metrics`` is not served.

    Raises:
        PhasebusError: a bad declaration file, a store file that cannot be
            used, or an address it cannot listen on (the port in use).
    """
    if not 0 < retention_days <= MAX_RETENTION_DAYS:
        raise PhasebusError(
            f"--retention: must be more than 0 and at most {MAX_RETENTION_DAYS} days,"
            f" got {retention_days!r}"
        )
    if not 0 <= port <= 65535:
        raise PhasebusError(f"--port: must be from 0 to 65535, got {port}")
    if (cert is None) != (key is None):
        raise PhasebusError("--cert and --key: give both or neither")
    on_redis = store.startswith(REDIS_SCHEMES)
    if on_redis and tls and cert is None:
        raise PhasebusError(
            "--tls: with a Redis store, give --cert and --key (the server's own CA is kept"
            " beside a SQLite store only)"
        )
    if lease_seconds is not None and not 0.3 <= lease_seconds <= 3600:
        raise PhasebusError(f"--lease: must be from 0.3 to 3600 seconds, got {lease_seconds!r}")
    if (replica is not None or lease_seconds is not None) and not on_redis:
        raise PhasebusError(
            "--replica and --lease: only for a Redis store (--store redis://...), got"
            f" --store {store!r}"
        )
    builtins = tuple(builtins)
    catalog = load_catalog(workflows_dir, builtins=builtins)
    workflows, jobs = list(catalog.workflows.values()), list(catalog.jobs.values())
    retention = timedelta(days=retention_days)
    if on_redis:
        async with _open_redis(store, retention) as redis:
            await _serve_engine(
                workflows,
                jobs,
                catalog.sources,
                redis,
                host=host,
                port=port,
                psk=psk,
                demo=builtins if demo else None,
                announce=announce,
                authority=None if cert is None or key is None else Authority.from_files(cert, key),
                metrics=metrics,
                replica=replica,
                lease=DEFAULT_LEASE if lease_seconds is None else timedelta(seconds=lease_seconds),
                task_status=task_status,
            )
        return
    durable = open_store(store, retention=retention)
    try:
        with contextlib.ExitStack() as stack:
            authority = None
            if cert is not None and key is not None:
                authority = Authority.from_files(cert, key)
            elif tls:
                if durable is None:  # nothing is kept: a CA for this run only
                    directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                else:
                    directory = Path(f"{store}.tls")
                authority = Authority.load_or_create(directory)
            await _serve_engine(
                workflows,
                jobs,
                catalog.sources,
                durable,
                host=host,
                port=port,
                psk=psk,
                demo=builtins if demo else None,
                announce=announce,
                authority=authority,
                metrics=metrics,
                task_status=task_status,
            )
    finally:
        if durable is not None:
            durable.close()


def _open_redis(url: str, retention: timedelta) -> contextlib.AbstractAsyncContextManager[Any]:
    """Return the Redis store at ``url``, to be entered (it warns when Redis keeps nothing).

    Raises:
        PhasebusError: the Redis client library is not installed, or a bad URL.
    """
    try:
        from ._redis import open_redis_store
    except ImportError as error:
        raise PhasebusError(
            f"--store {url}: the Redis store needs the coredis library ({error.name} is"
            " missing): pip install 'phasebus[redis]'"
        ) from None
    return open_redis_store(url, retention=retention)


async def _serve_engine(
    workflows: list[Workflow],
    jobs: list[Job],
    sources: Mapping[str, str],
    store: Store | AsyncStore | None,
    *,
    host: str,
    port: int,
    psk: str | None,
    demo: Sequence[Workflow] | None,
    announce: bool,
    authority: Authority | None,
    metrics: bool,
    task_status: trio.TaskStatus[str],
    replica: str | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> None:
    async with open_engine(
        workflows=workflows,
        jobs=jobs,
        store=store,
        sources=sources,
        replica=replica,
        lease=lease,
    ) as engine:
        if engine.configs.get(CORE_CONFIG) is None:
            engine.configs.put(CORE_CONFIG, core_config(engine))
        if demo is None:
            _forget_demo_subscribers(engine)
        app = create_app(engine, psk=psk, tls=authority, metrics=metrics)
        context = None if authority is None else authority.server_context()
        try:
            async with trio.open_nursery() as nursery:
                # The server and the simulated listeners are shielded from the
                # cancellation that stops the program: the engine freezes its
                # tasks first, and only then do they go away (see Engine.freeze).
                shield = trio.CancelScope(shield=True)
                url = await nursery.start(
                    functools.partial(
                        _serve_shielded,
                        shield,
                        engine,
                        app,
                        host=host,
                        port=port,
                        demo=demo,
                        ssl_context=context,
                    )
                )
                if announce:
                    auth = "PSK required" if psk else "no authentication"
                    print(f"phasebus listening on {url} ({auth})", flush=True)
                task_status.started(url)
                try:
                    await trio.sleep_forever()
                finally:
                    engine.freeze()
                    shield.cancel()
        finally:
            app.close()


async def _serve_shielded(
    shield: trio.CancelScope,
    engine: Engine,
    app: ASGIApp,
    *,
    host: str,
    port: int,
    demo: Sequence[Workflow] | None,
    ssl_context: ssl.SSLContext | None,
    task_status: trio.TaskStatus[str],
) -> None:
    """Serve the API (and, unless ``demo`` is None, listeners for its workflows)."""
    with shield:
        async with trio.open_nursery() as nursery:
            if demo is not None:
                from ._demo import serve_demo

                await nursery.start(serve_demo, engine, *demo)
            url = await nursery.start(
                functools.partial(serve_app, app, host=host, port=port, ssl_context=ssl_context)
            )
            task_status.started(url)


def _forget_demo_subscribers(engine: Engine) -> None:
    """Remove the simulated listeners' subscribers a ``--demo`` run left in the store.

    They answer only while ``--demo`` runs; kept, they would make every step wait
    for them until its deadline. Steps that still waited for them are released.
    """
    from ._demo import DEMO_SUBSCRIBERS

    left = [sid for sid in DEMO_SUBSCRIBERS if engine.subscribers.get(sid) is not None]
    if left:
        logger.info("removing the subscribers of --demo: %s", ", ".join(left))
        for subscriber_id in left:
            engine.remove_subscriber(subscriber_id)


# ---------------------------------------------------------------- command line


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``phasebus serve`` to ``parser``."""
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: loopback only)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free port and prints it)",
    )
    parser.add_argument(
        "--psk",
        default=None,
        help=f"pre-shared key: require Resoto-style JWTs (default: ${PSK_VARIABLE}, else none)",
    )
    parser.add_argument(
        "--retention",
        type=float,
        default=DEFAULT_RETENTION_DAYS,
        metavar="DAYS",
        help=f"days finished tasks are kept (default {DEFAULT_RETENTION_DAYS})",
    )
    parser.add_argument(
        "--store",
        metavar="PATH",
        default=DEFAULT_STORE,
        help=f"the SQLite file where configs, subscribers, tasks and history live (default "
        f"./{DEFAULT_STORE}), a Redis server (redis://HOST:PORT/DB), or 'memory' to keep"
        " nothing across restarts",
    )
    parser.add_argument(
        "--replica",
        metavar="NAME",
        default=None,
        help="with a Redis store: the name this server holds its running tasks under (default:"
        " the host's name); a restart under the same name resumes them, and each server"
        " sharing one Redis needs a name of its own",
    )
    parser.add_argument(
        "--lease",
        metavar="SECONDS",
        type=float,
        default=None,
        dest="lease_seconds",
        help=f"with a Redis store: how long this server's lease lasts unless renewed (default"
        f" {DEFAULT_LEASE.total_seconds():g}); another server takes its tasks over once it"
        " expired",
    )
    parser.add_argument(
        "--workflows",
        metavar="PATH",
        type=Path,
        action="append",
        default=None,
        help="also load the workflows and jobs declared in PATH: a .toml or .json file, or a"
        " directory of them (repeat for more); they cannot be changed over the API",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS and WSS with a certificate of the server's own CA, created on first"
        " start and kept beside the store (components fetch the CA from /ca/cert)",
    )
    parser.add_argument(
        "--cert",
        metavar="FILE",
        type=Path,
        default=None,
        help="serve HTTPS with this PEM certificate (chain); needs --key",
    )
    parser.add_argument(
        "--key", metavar="FILE", type=Path, default=None, help="the PEM private key of --cert"
    )
    parser.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        help="do not serve /metrics (it needs no token, as in Resoto's core)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="attach simulated listeners that answer every step of the built-in workflows",
    )


def serve_options(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Return the keyword arguments of :func:`serve` for parsed ``phasebus serve`` options.

    The PSK is ``--psk``, else the environment variable ``PHASEBUS_PSK``, else none.
    """
    environ = os.environ if environ is None else environ
    return {
        "host": args.host,
        "port": args.port,
        "psk": args.psk if args.psk is not None else environ.get(PSK_VARIABLE) or None,
        "workflows_dir": args.workflows,
        "demo": args.demo,
        "store": args.store,
        "retention_days": args.retention,
        "tls": args.tls,
        "cert": args.cert,
        "key": args.key,
        "metrics": args.metrics,
        "replica": args.replica,
        "lease_seconds": args.lease_seconds,
    }


async def serve_command(args: argparse.Namespace, *, builtins: Iterable[Workflow] = ()) -> int:
    """Carry out ``phasebus serve`` with the built-in workflows ``builtins``.

    Runs inside trio and returns the exit status. SIGTERM and SIGINT (Ctrl-C)
    stop the server: every running task is frozen where it is, in memory and in
    the store, before any listener goes away, so that a restart on the same
    store resumes it. The status is 0 after SIGTERM
    and 130 after SIGINT.
    """
    status = 0
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    nonlocal status
                    async for number in signals:
                        name = signal.Signals(number).name
                        logger.info("stopping: %s", name)
                        status = 130 if number == signal.SIGINT else 0
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                await serve(**serve_options(args), builtins=builtins)
                nursery.cancel_scope.cancel()
    except* PhasebusError as group:
        _report(group)
        status = 2
    except* OSError as group:
        _report(group)
        status = 1
    return status


def _report(group: BaseExceptionGroup[Any]) -> None:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    print(f"phasebus: error: {str(error).splitlines()[0]}", file=sys.stderr)
