"""The HTTP and WebSocket API over an engine, speaking Resoto's protocol (PROTOCOL.md).

:func:`create_app` returns an ASGI application (Starlette routes behind a
small authentication and body-size layer). Serve it with
:func:`engine._server.serve_app` (phasebus's own server) or any ASGI server.

Every WebSocket connection is one bus listener (:mod:`engine._websocket`):
frames are encoded once per message however many connections send them,
and a connection that falls behind is dropped by what is pending for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, cast
from urllib.parse import parse_qsl

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from ._auth import DEFERRED_PATHS, AuthError, FirstMessageAuth, TokenVerifier
from ._bus import Subscriber as _Subscriber
from ._bus import Subscription as _Subscription
from ._console import Console
from ._convert import structure_strict, unstructure_declaration, unstructure_shape
from ._engine import Engine, StepInfo, StepResult, TaskInfo, TaskResult
from ._errors import BadInput as BadInput
from ._errors import (
    EngineClosed,
    InvalidInputError,
    ListenerError,
    StoreError,
    TaskLookupError,
    UnknownTaskError,
)
from ._http import read_json
from ._machine import Outcome
from ._metrics import CONTENT_TYPE, EngineMetrics
from ._persistence import is_async_store
from ._resoto_api import REVISION_HEADER as REVISION_HEADER
from ._resoto_api import ResotoRoutes
from ._shapes import StepInfoView, StepResultView, TaskInfoView, TaskResultView
from ._tls import Authority, CertificateRoutes
from ._web_definitions import DefinitionRoutes, not_decided, resolve_task_id, start_answer
from ._websocket import (
    DEFAULT_MAX_PENDING_AGE,
    DEFAULT_MAX_PENDING_BYTES,
    LISTENER_BUFFER,
    POLICY_VIOLATION,
    SlowConsumerPolicy,
    WebSocketSessions,
)
from ._websocket import describe as _describe
from ._workqueue import WorkQueue, WorkRoutes

logger = logging.getLogger(__name__)
#: One line per HTTP request (method, path, status, milliseconds), at info.
access_logger = logging.getLogger("engine.access")

#: Paths served without authentication, as Resoto's core serves them: the health
#: checks, the CA certificate (a client needs it before it can trust anything) and
#: the metrics (a Prometheus scraper cannot make tokens). Everything under
#: :data:`PUBLIC_PREFIXES` is public too.
PUBLIC_PATHS = frozenset({"/ca/cert", "/metrics"})
PUBLIC_PREFIXES = ("/system/",)


def is_public(path: str) -> bool:
    """Return whether ``path`` is served without a token."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


#: Largest request body accepted, in bytes, unless told otherwise.
DEFAULT_MAX_BODY = 1024 * 1024

#: Largest WebSocket message accepted, in bytes, unless told otherwise.
DEFAULT_MAX_MESSAGE = 1024 * 1024

#: Seconds a request that changed something waits for an asynchronous store to
#: keep the change before it answers 503, unless told otherwise.
DEFAULT_STORE_WAIT = 10.0

#: The HTTP methods that change nothing.
_READING = frozenset({"GET", "HEAD", "OPTIONS"})

#: The ASGI messages that answer a request, with the status they stand for.
_STATUS_EVENTS = {
    "http.response.start": 0,  # its own status
    "websocket.accept": 101,
    "websocket.http.response.start": 0,  # its own status
    "websocket.close": 403,  # before the handshake was accepted: refused
}


# ---------------------------------------------------------------- input


_TASK_QUERY = frozenset({"workflow", "outcome", "since", "has_errors", "limit"})
_OUTCOMES = tuple(outcome.value for outcome in Outcome)


# ---------------------------------------------------------------- output


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _step_view(step: StepInfo) -> StepInfoView:
    return StepInfoView(
        name=step.name,
        action=step.action,
        message_type=step.message_type,
        started_at=step.started_at,
        deadline=step.deadline,
        waiting_for=step.waiting_for,
        answered=step.answered,
        progress=step.progress,
        errors=step.errors,
        last_heard=step.last_heard,
        stalled=step.stalled,
        released=step.released,
    )


def _result_view(step: StepResult) -> StepResultView:
    return StepResultView(
        name=step.name,
        started_at=step.started_at,
        ended_at=step.ended_at,
        duration=step.duration,
        answered=step.answered,
        errors=step.errors,
        timed_out=step.timed_out,
        released=step.released,
        ended=step.ended,
    )


def task_view(task: TaskInfo | TaskResult) -> TaskInfoView | TaskResultView:
    """Return the view of a running task's info or a finished task's result."""
    if isinstance(task, TaskInfo):
        return TaskInfoView(
            id=task.id,
            workflow=task.workflow,
            workflow_name=task.workflow_name,
            state=task.state,
            started_at=task.started_at,
            step=None if task.step is None else _step_view(task.step),
            steps=[_result_view(step) for step in task.steps],
        )
    return TaskResultView(
        id=task.id,
        workflow=task.workflow,
        outcome=task.outcome,
        has_errors=task.has_errors,
        error=task.error,
        errors=task.errors,
        started_at=task.started_at,
        ended_at=task.ended_at,
        duration=task.duration,
        steps=[_result_view(step) for step in task.steps],
    )


def task_json(task: TaskInfo | TaskResult) -> dict[str, Any]:
    """Return the JSON of a running task's info or a finished task's result."""
    return cast("dict[str, Any]", unstructure_shape(task_view(task)))


def task_query(
    params: Mapping[str, str],
) -> tuple[str | None, str | None, datetime | None, bool | None, int]:
    """Return the filters of ``GET /tasks``: workflow, outcome, since, has_errors, limit.

    Query: ``workflow``, ``outcome`` (only finished tasks then), ``since``
    (ISO 8601 with a UTC offset: finished tasks that ended then or later),
    ``has_errors`` (``true`` or ``false``: only finished tasks whose steps
    met errors or were released, or only the others) and ``limit``
    (finished tasks, default 100, at most 10000).

    Raises:
        BadInput: 400 naming every parameter that is wrong.
    """
    problems = [f"{key}: unknown query parameter" for key in params if key not in _TASK_QUERY]
    workflow = params.get("workflow") or None
    outcome = params.get("outcome") or None
    if outcome is not None and outcome not in _OUTCOMES:
        problems.append(f"outcome: must be one of {', '.join(_OUTCOMES)}, got {outcome!r}")
    since = None
    if params.get("since"):
        try:
            since = datetime.fromisoformat(params["since"])
        except ValueError:
            problems.append(f"since: not an ISO 8601 time: {params['since']!r}")
        else:
            if since.tzinfo is None:
                problems.append(f"since: needs a UTC offset: {params['since']!r}")
    has_errors = None
    if params.get("has_errors"):
        text = params["has_errors"].lower()
        if text not in ("true", "false"):
            problems.append(f"has_errors: must be true or false, got {params['has_errors']!r}")
        has_errors = text == "true"
    limit = 100
    if params.get("limit"):
        text = params["limit"]
        if not (text.isascii() and text.isdigit()) or int(text) > 10_000:
            problems.append(f"limit: must be a whole number from 0 to 10000, got {text!r}")
        else:
            limit = int(text)
    if problems:
        raise BadInput(400, "bad query", problems)
    return workflow, outcome, since, has_errors, limit


# ---------------------------------------------------------------- connections


class _WebSocketEndpoint:
    """A raw ASGI WebSocket endpoint (Starlette passes scope, receive, send as they are)."""

    def __init__(self, handle: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send)


# ---------------------------------------------------------------- the application


class _OnceStored:
    """Answers to requests that change something, held back until the store keeps the
    change (an asynchronous store: Redis)."""

    def __init__(self, engine: Engine, store_wait: float) -> None:
        self._engine = engine
        self._store_wait = store_wait

    @classmethod
    def of(cls, engine: Engine, store_wait: float) -> _OnceStored | None:
        """Return the holder for ``engine``, or None when its store writes at once."""
        return cls(engine, store_wait) if is_async_store(engine.store) else None

    def send(self, scope: Scope, receive: Receive, send: Send) -> Send:
        """Return a ``send`` that holds a successful answer back until the store keeps what
        the request changed; if it cannot, the answer is a JSON 503 (the store does not
        answer: the change is written once it does) or 500 (the write failed)."""
        mark = self._engine.writes_mark()
        replaced = False

        async def send_once_stored(message: ASGIMessage) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] < 400:
                failure = await self._stored(mark)
                if failure is not None:
                    replaced = True
                    await failure(scope, receive, send)
                    return
            elif replaced:
                return  # the handler's body: its answer was replaced
            await send(message)

        return send_once_stored

    async def _stored(self, mark: int) -> Response | None:
        """Wait until the changes handed in after ``mark`` are stored; None if they are."""
        try:
            with trio.fail_after(self._store_wait):
                await self._engine.wait_written(mark)
        except trio.TooSlowError:
            body = {
                "error": "the store does not answer",
                "problems": [
                    f"the change was not stored within {self._store_wait:g} s: it is kept in"
                    " memory and written once the store answers"
                ],
            }
            return JSONResponse(body, 503, {"Retry-After": "1"})
        except StoreError as error:
            return JSONResponse(
                {"error": "the change was not stored", "problems": [str(error)]}, 500
            )
        except EngineClosed as error:
            return JSONResponse({"error": str(error), "problems": []}, 503, {"Retry-After": "1"})
        return None


class PhasebusApp:
    """The ASGI application of an engine. Make one with :func:`create_app`."""

    def __init__(
        self,
        engine: Engine,
        *,
        psk: str | None,
        max_body_size: int,
        max_message_size: int,
        slow_consumer: SlowConsumerPolicy,
        tls: Authority | None = None,
        metrics: bool = True,
        store_wait: float = DEFAULT_STORE_WAIT,
    ) -> None:
        self.engine = engine
        #: Holds answers to changes back until an asynchronous store keeps them.
        self._once_stored = _OnceStored.of(engine, store_wait)
        self._store_wait = store_wait
        self._serve_metrics = metrics
        self.metrics = EngineMetrics(engine)
        self.max_body_size = max_body_size
        self.max_message_size = max_message_size
        self._verifier = TokenVerifier(psk) if psk else None
        self.console = Console(engine, psk=psk)
        #: Resoto's config, config model and graph routes.
        models = engine.config_models
        self.resoto = ResotoRoutes(
            engine, models, max_body_size=max_body_size, store_wait=store_wait
        )
        #: Resoto's worker task queue.
        self.work = WorkRoutes(
            WorkQueue(),
            engine.clock,
            max_body_size=max_body_size,
            max_message_size=max_message_size,
        )
        self.resoto.approver = self.work.approve_config
        #: /ca/cert and /ca/sign.
        self.certificates = CertificateRoutes(tls, psk, max_body_size=max_body_size)
        self._websockets = WebSocketSessions(
            engine, max_message_size=max_message_size, policy=slow_consumer
        )
        self._router = Starlette(
            routes=DefinitionRoutes(engine, self._json_body, store_wait).routes() + self._routes(),
            exception_handlers={
                BadInput: self._bad_input,
                HTTPException: self._http_exception,
                EngineClosed: self._stopping,
            },
        )

    def close(self) -> None:
        """Stop observing the engine (the app serves nothing useful after this)."""
        self.metrics.close()

    # ------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and access_logger.isEnabledFor(logging.INFO):
            await self._logged(scope, receive, send)
        else:
            await self._serve(scope, receive, send)

    async def _logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a request and log one line for it: method, path, status, milliseconds.

        A WebSocket is logged when its handshake is answered (``WS``, status
        101 when accepted).
        """
        started = time.perf_counter()
        status = 0
        websocket = scope["type"] == "websocket"

        def log() -> None:
            access_logger.info(
                "%s %s %s %.1fms",
                "WS" if websocket else scope.get("method", "-"),
                scope.get("path", "-"),
                status or "-",
                (time.perf_counter() - started) * 1000,
            )

        async def send_logged(message: ASGIMessage) -> None:
            nonlocal status
            kind = message["type"]
            if not status and kind in _STATUS_EVENTS:
                status = message.get("status") or _STATUS_EVENTS[kind]
                if websocket:
                    log()
            await send(message)

        try:
            await self._serve(scope, receive, send_logged)
        finally:
            if not websocket or not status:
                log()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            send = Console.accepting(scope, send)
            if (
                self._verifier is not None
                and kind == "websocket"
                and scope["path"] in DEFERRED_PATHS
                and _header(scope, b"authorization") is None
                and not Console.offers_token(scope)
            ):
                deferred = FirstMessageAuth(self._verifier, receive, send)
                await self._router(scope, deferred.receive, deferred.send)
                return
            public = is_public(scope["path"]) or Console.is_public(scope)
            if self._verifier is not None and not public:
                try:
                    authorization = _header(scope, b"authorization")
                    token = Console.token(scope, authorization)
                    claims = await self._verifier.verify(token)
                    receive, send = Console.expiring(scope, receive, send, authorization, claims)
                except AuthError as error:
                    await self._deny(
                        scope,
                        receive,
                        send,
                        401,
                        {"error": "unauthorized", "problems": [str(error)]},
                        {"WWW-Authenticate": "Bearer"},
                    )
                    return
            if kind == "http":
                length = _header(scope, b"content-length")
                digits = length is not None and length.isascii() and length.isdigit()
                if length is not None and (not digits or int(length) > self.max_body_size):
                    problem = (
                        f"body: more than {self.max_body_size} bytes"
                        if digits
                        else f"content-length: not a number, got {length!r}"
                    )
                    status = 413 if digits else 400
                    what = "request body too large" if status == 413 else "bad content-length"
                    response = JSONResponse({"error": what, "problems": [problem]}, status)
                    await response(scope, receive, send)
                    return
                if self._once_stored is not None and scope.get("method") not in _READING:
                    send = self._once_stored.send(scope, receive, send)
        await self._router(scope, receive, send)

    async def _deny(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        body: dict[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer an HTTP request, or refuse a WebSocket upgrade with an HTTP status."""
        response = JSONResponse(body, status, headers=dict(headers or {}))
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": response.raw_headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": response.body})
        else:
            await send({"type": "websocket.close", "code": POLICY_VIOLATION})

    async def _bad_input(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, BadInput)
        return JSONResponse(error.body(), error.status)

    async def _stopping(self, request: Request, error: Exception) -> Response:
        # the engine froze (the server is stopping): nothing was changed
        return JSONResponse({"error": str(error), "problems": []}, 503, {"Retry-After": "1"})

    async def _http_exception(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code in (204, 304):
            return Response(status_code=error.status_code, headers=error.headers)
        return JSONResponse(
            {"error": str(error.detail), "problems": []}, error.status_code, headers=error.headers
        )

    def _routes(self) -> list[BaseRoute]:
        return [
            Route("/system/ping", self.ping, methods=["GET"]),
            Route("/system/ready", self.ready, methods=["GET"]),
            Route("/metrics", self.get_metrics, methods=["GET"]),
            Route("/subscribers", self.list_subscribers, methods=["GET"]),
            Route("/subscribers/for/{message_type}", self.subscribers_for, methods=["GET"]),
            Route("/subscriber/{id}", self.get_subscriber, methods=["GET"]),
            Route("/subscriber/{id}", self.put_subscriber, methods=["PUT"]),
            Route("/subscriber/{id}", self.delete_subscriber, methods=["DELETE"]),
            Route("/subscriber/{id}/{message_type}", self.subscribe, methods=["POST"]),
            Route("/subscriber/{id}/{message_type}", self.unsubscribe, methods=["DELETE"]),
            WebSocketRoute("/subscriber/{id}/handle", _WebSocketEndpoint(self.handle_subscriber)),
            WebSocketRoute("/events", _WebSocketEndpoint(self.handle_events)),
            *self.resoto.routes(),
            *self.work.routes(),
            *self.certificates.routes(),
            WebSocketRoute("/{path:path}", _WebSocketEndpoint(self.no_websocket)),
            *self.console.routes(),
            Route("/workflows", self.list_workflows, methods=["GET"]),
            Route("/workflow/{id}", self.get_workflow, methods=["GET"]),
            Route("/workflow/{id}/run", self.run_workflow, methods=["POST"]),
            Route("/tasks", self.list_tasks, methods=["GET"]),
            Route("/task/{id}", self.get_task, methods=["GET"]),
            Route("/task/{id}", self.stop_task, methods=["DELETE"]),
        ]

    async def _json_body(self, request: Request) -> Any:
        return await read_json(request, self.max_body_size)

    # ------------------------------------------------------------ health and metrics

    async def ping(self, request: Request) -> Response:
        return PlainTextResponse("pong")

    async def ready(self, request: Request) -> Response:
        if not await self.engine.store_ready():
            body = {"error": "the store does not answer", "problems": []}
            return JSONResponse(body, 503, {"Retry-After": "1"})
        return PlainTextResponse("ok")

    async def get_metrics(self, request: Request) -> Response:
        if not self._serve_metrics:
            raise BadInput(404, "metrics are turned off (phasebus serve --no-metrics)")
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------ subscribers

    def _subscribers_json(self, subscribers: Iterable[_Subscriber]) -> Response:
        registry = self.engine.subscribers
        parts = (registry.encoded(s.id) or b"" for s in subscribers)
        return Response(b"[%b]" % b",".join(parts), media_type="application/json")

    def _subscriber_json(self, subscriber: _Subscriber) -> Response:
        # built from each subscription's JSON as it was added: an answer costs
        # little more however many subscriptions the subscriber has
        body = self.engine.subscribers.encoded(subscriber.id) or b"null"
        return Response(body, media_type="application/json")

    async def list_subscribers(self, request: Request) -> Response:
        return self._subscribers_json(self.engine.subscribers)

    async def subscribers_for(self, request: Request) -> Response:
        message_type = request.path_params["message_type"]
        return self._subscribers_json(self.engine.subscribers.for_type(message_type))

    async def get_subscriber(self, request: Request) -> Response:
        subscriber_id = request.path_params["id"]
        subscriber = self.engine.subscribers.get(subscriber_id)
        if subscriber is None:
            raise BadInput(404, f"unknown subscriber {subscriber_id!r}")
        return self._subscriber_json(subscriber)

    async def put_subscriber(self, request: Request) -> Response:
        body = await self._json_body(request)
        if not isinstance(body, list):
            raise BadInput(
                400,
                "invalid subscriptions",
                [f"body: must be a list of subscriptions, got {_describe(body)}"],
            )
        subscriptions = []
        problems: list[str] = []
        for index, item in enumerate(body):
            try:
                subscriptions.append(structure_strict(item, _Subscription))
            except InvalidInputError as error:
                problems.extend(str(p) for p in error.with_prefix(f"[{index}]").problems)
        if problems:
            raise BadInput(400, "invalid subscriptions", problems)
        subscriber = self._checked(
            lambda: self.engine.set_subscriptions(request.path_params["id"], subscriptions)
        )
        return self._subscriber_json(subscriber)

    async def delete_subscriber(self, request: Request) -> Response:
        subscriber_id = request.path_params["id"]
        if not self.engine.remove_subscriber(subscriber_id):
            raise BadInput(404, f"unknown subscriber {subscriber_id!r}")
        return Response(status_code=204)

    async def subscribe(self, request: Request) -> Response:
        query = request.query_params
        problems: list[str] = []
        timeout: float = 60.0
        raw = query.get("timeout")
        if raw is not None:
            try:
                timeout = float(raw)
            except ValueError:
                problems.append(f"timeout: must be a number of seconds, got {raw!r}")
            else:
                if not 0 < timeout < float("inf"):
                    problems.append(f"timeout: must be > 0, got {raw!r}")
        if problems:
            raise BadInput(400, "invalid subscription", problems)
        wait = query.get("wait_for_completion", "true").lower() != "false"
        subscriber = self._checked(
            lambda: self.engine.subscribe(
                request.path_params["id"],
                request.path_params["message_type"],
                wait_for_completion=wait,
                timeout=int(timeout) if timeout.is_integer() else timeout,
            )
        )
        return self._subscriber_json(subscriber)

    async def unsubscribe(self, request: Request) -> Response:
        subscriber_id = request.path_params["id"]
        subscriber = self.engine.unsubscribe(subscriber_id, request.path_params["message_type"])
        if subscriber is None:
            raise BadInput(404, f"unknown subscriber {subscriber_id!r}")
        return self._subscriber_json(subscriber)

    @staticmethod
    def _checked(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except InvalidInputError as error:
            raise BadInput(400, "invalid input", [str(p) for p in error.problems]) from None

    # ------------------------------------------------------------ workflows and tasks

    async def list_workflows(self, request: Request) -> Response:
        engine = self.engine
        out = []
        for workflow_id, workflow in sorted(engine.workflows.items()):
            declared = unstructure_declaration(workflow)
            next_run = engine.next_run(workflow_id)
            out.append(
                {
                    "id": workflow_id,
                    "name": workflow.name,
                    "kind": "job" if engine.is_job(workflow_id) else "workflow",
                    "origin": engine.definitions.origin(workflow_id),
                    "active": engine.definitions.is_active(workflow_id),
                    "description": workflow.description,
                    "steps": [step.name for step in workflow.steps],
                    "surpass": workflow.surpass.value,
                    "triggers": declared.get("triggers", []),
                    "schedules": [
                        {"cron": t.cron, "timezone": t.timezone}
                        for t in engine.schedules(workflow_id)
                    ],
                    "next_run": _time(next_run),
                    "ledger": [
                        firing.to_json() for firing in engine.schedule_ledger(workflow_id)[-10:]
                    ],
                }
            )
        return JSONResponse(out)

    async def get_workflow(self, request: Request) -> Response:
        workflow_id = request.path_params["id"]
        workflow = self.engine.workflows.get(workflow_id)
        if workflow is None:
            raise BadInput(404, f"unknown workflow {workflow_id!r}")
        return JSONResponse(unstructure_declaration(workflow))

    async def run_workflow(self, request: Request) -> Response:
        workflow_id = request.path_params["id"]
        if workflow_id not in self.engine.workflows:
            raise BadInput(404, f"unknown workflow {workflow_id!r}")
        return await start_answer(self.engine, workflow_id, self._store_wait)

    async def list_tasks(self, request: Request) -> Response:
        """The running and queued tasks (of every server sharing the store), then finished
        ones (newest first), filtered by the query (see :func:`task_query`)."""
        workflow, outcome, since, has_errors, limit = task_query(request.query_params)
        running = (
            []
            if outcome is not None or has_errors is not None
            else [
                task_json(task)
                for task in await self.engine.fetch_tasks()
                if workflow is None or task.workflow == workflow
            ]
        )
        finished = (
            await self.engine.fetch_history(
                workflow=workflow, outcome=outcome, since=since, has_errors=has_errors, limit=limit
            )
            if limit
            else []
        )
        return JSONResponse(running + [task_json(result) for result in finished])

    async def _task_id(self, request: Request) -> str:
        try:
            return await resolve_task_id(self.engine, request.path_params["id"])
        except TaskLookupError as error:
            raise BadInput(error.status, str(error)) from None

    async def _found(self, task_id: str) -> TaskInfo | TaskResult:
        try:
            return await self.engine.fetch_task(task_id)
        except UnknownTaskError:
            raise BadInput(404, f"unknown task {task_id!r}") from None

    async def get_task(self, request: Request) -> Response:
        return JSONResponse(task_json(await self._found(await self._task_id(request))))

    async def stop_task(self, request: Request) -> Response:
        wait = self._store_wait
        task_id = request.path_params["id"]
        with trio.move_on_after(wait):
            task_id = await self._task_id(request)
            try:
                how = await self.engine.stop_task_anywhere(
                    task_id, reason="stopped through the API", wait=wait / 2
                )
            except UnknownTaskError:
                raise BadInput(404, f"unknown task {task_id!r}") from None
            if how in ("requested", "unconfirmed"):  # not ended (nor kept) in the store yet
                return JSONResponse({"task_id": task_id, "stopped": True, "pending": True}, 202)
            return JSONResponse({"task_id": task_id, "stopped": how != "ended"})
        return not_decided(
            f"the stop of task {task_id!r} was not confirmed within {wait:g} s: it reaches"
            " the server driving the task once the store answers, if it was sent"
        )

    # ------------------------------------------------------------ WebSockets

    async def handle_subscriber(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscriber_id = scope["path_params"]["id"]
        subscriber = self.engine.subscribers.get(subscriber_id)
        if subscriber is None or not subscriber.subscriptions:
            what = "unknown" if subscriber is None else "without subscriptions"
            await self._deny(
                scope,
                receive,
                send,
                404,
                {"error": f"subscriber {subscriber_id!r} is {what}", "problems": []},
            )
            return
        try:
            listener = self.engine.connect(subscriber_id=subscriber_id, buffer=LISTENER_BUFFER)
        except ListenerError:
            await self._deny(
                scope,
                receive,
                send,
                429,
                {"error": f"subscriber {subscriber_id!r} is already connected", "problems": []},
            )
            return
        await self._websockets.run(scope, receive, send, listener)

    async def no_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"error": f"no WebSocket at {scope['path']}", "problems": []}
        await self._deny(scope, receive, send, 404, body)

    async def handle_events(self, scope: Scope, receive: Receive, send: Send) -> None:
        show = None
        for key, value in _query(scope):
            if key == "show":
                show = [t.strip() for t in value.split(",") if t.strip()] or None
        listener = self.engine.connect(message_types=show, buffer=LISTENER_BUFFER)
        await self._websockets.run(scope, receive, send, listener)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _query(scope: Scope) -> list[tuple[str, str]]:
    raw = bytes(scope.get("query_string", b"")).decode("latin-1")
    return parse_qsl(raw, keep_blank_values=True)


def create_app(
    engine: Engine,
    *,
    psk: str | None = None,
    max_body_size: int = DEFAULT_MAX_BODY,
    max_message_size: int = DEFAULT_MAX_MESSAGE,
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    max_pending_age: float = DEFAULT_MAX_PENDING_AGE,
    tls: Authority | None = None,
    metrics: bool = True,
    store_wait: float = DEFAULT_STORE_WAIT,
) -> PhasebusApp:
    """Return the ASGI application serving ``engine`` (PROTOCOL.md).

    Args:
        engine: the engine to serve.
        psk: the pre-shared key; when set, every request but those to
            :func:`is_public` paths needs ``Authorization: Bearer <jwt>``.
        max_body_size: largest request body, in bytes (larger ones get 413).
        max_message_size: largest WebSocket message, in bytes (larger ones
            close the connection with 1009). Give the server the same limit.
        max_pending_bytes: bytes of messages pending for one WebSocket
            (queued or being written) before it is dropped as too slow.
        max_pending_age: seconds the oldest message pending for one
            WebSocket may wait before it is dropped as too slow.
        tls: the server's CA and certificate, served at ``/ca/cert`` (and
            used by ``/ca/sign``); None for a server without TLS.
        metrics: serve ``/metrics`` (open to all, as in Resoto's core).
        store_wait: seconds a request that changed something waits for an
            asynchronous store (Redis) to keep the change before it answers
            503; its answer waits until then, so that a change answered is kept.

    Raises:
        ValueError: a limit that is not a positive number.

    Call :meth:`PhasebusApp.close` when done, to stop its metrics.
    """
    return PhasebusApp(
        engine,
        psk=psk,
        max_body_size=max_body_size,
        max_message_size=max_message_size,
        slow_consumer=SlowConsumerPolicy(max_pending_bytes, max_pending_age),
        tls=tls,
        metrics=metrics,
        store_wait=store_wait,
    )
