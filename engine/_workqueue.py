"""Resoto's worker task queue: workers on ``/work/queue``, work handed to one of them.

A worker opens the WebSocket ``/work/queue`` and sends, as its first message,
the list of tasks it offers: ``[{"name": "tag", "filter": {"cloud": ["aws"]},
...}]`` (other fields are kept as they are). From then on the server sends it
tasks, ``{"task_id", "task_name", "data", "attrs"}``, and the worker answers
each with ``{"task_id", "result": "done", "data": ...}`` or ``{"task_id",
"result": "error", "error": "..."}``.

A task goes to one worker that offers its name and whose filter the task's
attributes match (every filter key's attribute is one of the listed values);
among those, one with the most filter keys, then one with the least work in
hand. A task no worker can take waits for one until its deadline. When a
worker disconnects, each task it had is given to another worker (once; a
task may then run twice, like any at-least-once delivery) or waits for one;
a task whose deadline passes fails with a time-out. Nothing is dropped
without an answer to whoever submitted it.

Routes: ``GET /work/queue`` (WebSocket), ``GET /work/list`` (the tasks given
to a worker and not yet answered, as Resoto lists them), **(phasebus)**
``GET /work/workers`` (connected workers and what they offer) and
``POST /work/{task_name}`` (submit a task and wait for its result).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import secrets
from collections.abc import Mapping
from typing import Any

import attrs
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from ._clock import Clock
from ._errors import WorkFailed as WorkFailed
from ._http import BadInput, describe, read_json
from ._json import JSONInputError, parse_json

logger = logging.getLogger(__name__)

#: Seconds a submitted task may wait for its result unless the request says otherwise.
DEFAULT_TIMEOUT = 60.0
#: Seconds a new worker has to send the list of tasks it offers.
INTRODUCTION_TIMEOUT = 30.0
#: Seconds a worker has to approve a config change that needs approval.
APPROVAL_TIMEOUT = 30.0
#: How often a task is given to another worker when the one that had it disconnects.
RETRIES = 1

_POLICY_VIOLATION = 1008
_INVALID_DATA = 1007
_TOO_BIG = 1009


@attrs.frozen
class Offer:
    """A task a worker offers: its name and the attribute filter it must match."""

    name: str
    filter: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, hash=False)
    description: Mapping[str, Any] = attrs.field(factory=dict, hash=False, eq=False)

    def accepts(self, task: WorkTask) -> bool:
        """Return whether the task's name and attributes fit this offer."""
        return task.name == self.name and all(
            task.attributes.get(key) in values for key, values in self.filter.items()
        )


@attrs.define(eq=False)
class Worker:
    """A connected worker: its id, its offers, and the tasks it has in hand."""

    id: str
    offers: tuple[Offer, ...]
    outbox: trio.MemorySendChannel[dict[str, Any]]
    tasks: set[str] = attrs.field(factory=set)


@attrs.define(eq=False)
class WorkTask:
    """A submitted task, until it is answered or its deadline passes."""

    id: str
    name: str
    attributes: Mapping[str, str]
    data: Any
    deadline: float
    retries: int = RETRIES
    worker: str | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: WorkFailed | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the task as it is sent to a worker."""
        return {
            "task_id": self.id,
            "task_name": self.name,
            "data": self.data,
            "attrs": dict(self.attributes),
        }


def parse_offers(value: Any) -> tuple[Offer, ...]:
    """Read a worker's first message: the tasks it offers.

    Raises:
        ValueError: naming what is wrong.
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of offered tasks, got {describe(value)}")
    offers = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"[{index}]: expected an object, got {describe(item)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"[{index}].name: expected a non-empty string, got {describe(name)}")
        raw = item.get("filter") or {}
        if not isinstance(raw, dict) or not all(
            isinstance(values, list) and all(isinstance(v, str) for v in values)
            for values in raw.values()
        ):
            raise ValueError(
                f"[{index}].filter: expected an object of lists of strings, got {describe(raw)}"
            )
        offers.append(Offer(name, {k: tuple(v) for k, v in raw.items()}, item))
    return tuple(offers)


class WorkQueue:
    """The tasks submitted and the workers connected; hands each task to one worker."""

    def __init__(self) -> None:
        self._workers: dict[str, Worker] = {}
        self._tasks: dict[str, WorkTask] = {}
        self._waiting: dict[str, WorkTask] = {}  # submitted, no worker has it
        self._ids = itertools.count(1)

    @property
    def workers(self) -> list[Worker]:
        """The connected workers."""
        return list(self._workers.values())

    def outstanding(self) -> list[WorkTask]:
        """Return the tasks a worker has and has not answered yet."""
        return [task for task in self._tasks.values() if task.worker is not None]

    def attach(self, worker: Worker) -> None:
        """Add a connected worker; tasks waiting for one like it go to it."""
        self._workers[worker.id] = worker
        for task in list(self._waiting.values()):
            self._assign(task)

    def detach(self, worker_id: str) -> None:
        """Remove a worker; its unanswered tasks go to another worker, or wait for one."""
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return
        for task_id in sorted(worker.tasks):
            task = self._tasks.get(task_id)
            if task is None:
                continue
            task.worker = None
            if task.retries <= 0:
                self._finish(
                    task,
                    error=WorkFailed(
                        f"worker {worker_id} disconnected before it answered task {task.name!r}",
                        timed_out=False,
                    ),
                )
                continue
            task.retries -= 1
            logger.info("task %s: worker %s left, giving it to another", task.id, worker_id)
            self._assign(task)

    async def submit(
        self, name: str, data: Any, attributes: Mapping[str, str], *, timeout: float
    ) -> Any:
        """Give a task to a worker and return its result.

        Raises:
            WorkFailed: the worker answered with an error, or no result came
                within ``timeout`` seconds (``timed_out``).
        """
        task = WorkTask(
            f"w{next(self._ids)}-{secrets.token_hex(4)}",
            name,
            dict(attributes),
            data,
            trio.current_time() + timeout,
        )
        self._tasks[task.id] = task
        self._assign(task)
        with trio.move_on_at(task.deadline):
            await task.done.wait()
        if not task.done.is_set():
            who = "no worker that offers it answered" if task.worker else "no worker offers it"
            self._finish(
                task,
                error=WorkFailed(
                    f"task {name!r} timed out after {timeout:g}s: {who}", timed_out=True
                ),
            )
        if task.error is not None:
            raise task.error
        return task.result

    def answer(self, worker_id: str, message: Mapping[str, Any]) -> None:
        """Take a worker's answer; one for a task it does not have is ignored."""
        task = self._tasks.get(str(message.get("task_id")))
        if task is None or task.worker != worker_id:
            logger.info("ignoring an answer of %s for task %s", worker_id, message.get("task_id"))
            return
        if message.get("result") == "error":
            error = message.get("error") or "the worker reported an error without a message"
            self._finish(task, error=WorkFailed(str(error), timed_out=False))
        else:
            self._finish(task, result=message.get("data"))

    def _assign(self, task: WorkTask) -> None:
        candidates = [
            (offer, worker)
            for worker in self._workers.values()
            for offer in worker.offers
            if offer.accepts(task)
        ]
        if not candidates:
            self._waiting[task.id] = task
            return
        most = max(len(offer.filter) for offer, _ in candidates)
        worker = min(
            (w for offer, w in candidates if len(offer.filter) == most),
            key=lambda w: len(w.tasks),
        )
        self._waiting.pop(task.id, None)
        task.worker = worker.id
        worker.tasks.add(task.id)
        worker.outbox.send_nowait(task.to_json())

    def _finish(
        self, task: WorkTask, *, result: Any = None, error: WorkFailed | None = None
    ) -> None:
        self._tasks.pop(task.id, None)
        self._waiting.pop(task.id, None)
        if task.worker is not None and (worker := self._workers.get(task.worker)) is not None:
            worker.tasks.discard(task.id)
        task.result = result
        task.error = error
        task.done.set()


class WorkRoutes:
    """The HTTP and WebSocket routes of a work queue.

    Args:
        queue: the work queue.
        clock: the engine's clock (for deadlines in wall-clock time).
        max_body_size: largest request body, in bytes.
        max_message_size: largest WebSocket message, in bytes.
    """

    def __init__(
        self, queue: WorkQueue, clock: Clock, *, max_body_size: int, max_message_size: int
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.max_body_size = max_body_size
        self.max_message_size = max_message_size
        self._worker_ids = itertools.count(1)

    def routes(self) -> list[BaseRoute]:
        """Return the routes, to be mounted before any catch-all."""
        return [
            WebSocketRoute("/work/queue", _Endpoint(self.handle_worker)),
            Route("/work/list", self.list_work, methods=["GET"]),
            Route("/work/workers", self.list_workers, methods=["GET"]),
            Route("/work/{task_name}", self.submit, methods=["POST"]),
        ]

    async def list_work(self, request: Request) -> Response:
        return JSONResponse(
            [
                {
                    "task": task.to_json(),
                    "worker": task.worker,
                    "retry_counter": task.retries,
                    "deadline": self.clock.to_wall(task.deadline).isoformat(),
                }
                for task in self.queue.outstanding()
            ]
        )

    async def list_workers(self, request: Request) -> Response:
        return JSONResponse(
            [
                {
                    "id": worker.id,
                    "offers": [
                        {"name": o.name, "filter": {k: list(v) for k, v in o.filter.items()}}
                        for o in worker.offers
                    ],
                    "tasks": sorted(worker.tasks),
                }
                for worker in self.queue.workers
            ]
        )

    async def submit(self, request: Request) -> Response:
        """Submit a task; body ``{"data": any, "attrs": {str: str}, "timeout": seconds}``."""
        name = request.path_params["task_name"]
        body = await read_json(request, self.max_body_size)
        if not isinstance(body, dict):
            raise BadInput(400, "invalid task", [f"body: must be an object, got {describe(body)}"])
        problems = [
            f"{key}: unknown field" for key in body if key not in ("data", "attrs", "timeout")
        ]
        attributes = body.get("attrs", {})
        if not isinstance(attributes, dict) or not all(
            isinstance(v, str) for v in attributes.values()
        ):
            problems.append(f"attrs: must be an object of strings, got {describe(attributes)}")
        timeout = body.get("timeout", DEFAULT_TIMEOUT)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 86400
        ):
            problems.append(
                f"timeout: must be a number of seconds from 0 to 86400, got {describe(timeout)}"
            )
        if problems:
            raise BadInput(400, "invalid task", problems)
        try:
            result = await self.queue.submit(
                name, body.get("data", {}), attributes, timeout=timeout
            )
        except WorkFailed as error:
            status = 504 if error.timed_out else 502
            raise BadInput(status, str(error)) from None
        return JSONResponse({"task_name": name, "result": result})

    async def approve_config(
        self, validator: str, config_id: str, config: Mapping[str, Any]
    ) -> None:
        """Ask a worker that validates ``validator`` to approve a config change.

        Raises:
            BadInput: 400 when the worker refuses it, 504 when nobody answers.
        """
        data = {"task": "validate_config", "config": dict(config), "config_id": config_id}
        try:
            await self.queue.submit(
                "validate_config", data, {"config_id": validator}, timeout=APPROVAL_TIMEOUT
            )
        except WorkFailed as error:
            status = 504 if error.timed_out else 400
            raise BadInput(status, f"config {config_id!r} was not approved", [str(error)]) from None

    # ------------------------------------------------------------ the worker's WebSocket

    async def handle_worker(self, scope: Scope, receive: Receive, send: Send) -> None:
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        worker_id = f"worker-{next(self._worker_ids)}"
        close: tuple[int, str] | None = None
        outbox, inbox = trio.open_memory_channel[dict[str, Any]](math.inf)
        try:
            with trio.move_on_after(INTRODUCTION_TIMEOUT) as scope_timer:
                first = await self._frame(receive)
            if scope_timer.cancelled_caught:
                close = (_POLICY_VIOLATION, "no list of offered tasks")
            elif first is None:
                return
            elif isinstance(first, tuple):
                close = first
            else:
                try:
                    offers = parse_offers(first)
                except ValueError as error:
                    close = (_POLICY_VIOLATION, f"invalid task list: {error}"[:120])
                else:
                    close = await self._serve(worker_id, offers, outbox, inbox, receive, send)
        finally:
            self.queue.detach(worker_id)
            outbox.close()
        if close is not None:
            with contextlib.suppress(OSError, RuntimeError):  # the client may be gone
                await send({"type": "websocket.close", "code": close[0], "reason": close[1]})

    async def _serve(
        self,
        worker_id: str,
        offers: tuple[Offer, ...],
        outbox: trio.MemorySendChannel[dict[str, Any]],
        inbox: trio.MemoryReceiveChannel[dict[str, Any]],
        receive: Receive,
        send: Send,
    ) -> tuple[int, str] | None:
        self.queue.attach(Worker(worker_id, offers, outbox))
        logger.info("worker %s offers %s", worker_id, ", ".join(o.name for o in offers))
        close: tuple[int, str] | None = None
        async with trio.open_nursery() as nursery:

            async def send_tasks() -> None:
                async for task in inbox:
                    await send({"type": "websocket.send", "text": json.dumps(task)})

            nursery.start_soon(send_tasks)
            while True:
                frame = await self._frame(receive)
                if frame is None or isinstance(frame, tuple):
                    close = frame
                    break
                if not isinstance(frame, dict):
                    close = (
                        _POLICY_VIOLATION,
                        f"expected a task result object, got {describe(frame)}",
                    )
                    break
                self.queue.answer(worker_id, frame)
            nursery.cancel_scope.cancel()
        return close

    async def _frame(self, receive: Receive) -> Any:
        """Return the next frame's JSON; None when the client left; (code, reason) when bad."""
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return None
            if message["type"] != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:
                try:
                    text = bytes(message.get("bytes") or b"").decode("utf-8")
                except UnicodeDecodeError:
                    return (_INVALID_DATA, "frame is not valid UTF-8")
            if len(text) > self.max_message_size:
                return (_TOO_BIG, f"message larger than {self.max_message_size} bytes")
            try:
                return parse_json(text)
            except JSONInputError as error:
                return (_INVALID_DATA, ("not JSON: " + "; ".join(map(str, error.problems)))[:120])


class _Endpoint:
    """A raw ASGI WebSocket endpoint."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send)
