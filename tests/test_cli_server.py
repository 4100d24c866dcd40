"""The commands that ask a running server: tasks, task, history, workflows --url."""

from __future__ import annotations

import io
import json

import pytest

from engine import Action, CronTrigger, Step, Workflow
from engine._auth import make_token
from engine._cli import main_async

from .web_support import running_server

SLOW = Workflow(id="slow", steps=[Step("work", timeout=30)])
HOURLY = Workflow(id="hourly", steps=[Step("tick")], triggers=[CronTrigger("0 * * * *")])


async def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = await main_async(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


async def test_tasks_task_and_history_follow_a_run() -> None:
    async with running_server(workflows=[SLOW, HOURLY]) as server:
        await server.subscribe("w", "work")
        async with server.engine.open_listener(subscriber_id="w") as w:
            task_id = server.engine.start_workflow("slow").task_id
            action = await w.receive()
            assert isinstance(action, Action)

            status, out, err = await cli("tasks", "--url", server.url)
            assert (status, err) == (0, "")
            lines = out.splitlines()
            assert lines[0].startswith(f"{task_id}  slow  started ")
            assert lines[1].startswith("  step         work (perform_action), deadline ")
            assert lines[2] == "  waiting for  w (last heard never)"

            status, out, _ = await cli("tasks", "--url", server.url, "--json")
            (shown,) = json.loads(out)
            assert shown["step"]["waiting_for"] == ["w"]
            assert shown["step"]["stalled"] is False

            w.done(action)
            result = await server.engine.wait_task(task_id)  # type: ignore[arg-type]

        status, out, _ = await cli("tasks", "--url", server.url)
        assert out == "no running tasks\n"

        status, out, _ = await cli("history", "--url", server.url)
        assert status == 0
        (line,) = out.splitlines()
        assert line.startswith(f"{result.ended_at.isoformat()}  done     slow")
        assert task_id in line

        status, out, _ = await cli("history", "--url", server.url, "--outcome", "failed")
        assert out == "no finished tasks\n"
        status, out, _ = await cli("history", "--url", server.url, "--workflow", "slow", "--json")
        assert [t["id"] for t in json.loads(out)] == [task_id]

        status, out, _ = await cli("task", task_id, "--url", server.url)  # type: ignore[arg-type]
        lines = out.splitlines()
        assert lines[0].startswith(f"{task_id}  slow  done in ")
        assert lines[1].startswith("  work ")
        assert lines[1].endswith("w (done)")


async def test_workflows_from_the_server_show_schedules_and_ledger() -> None:
    async with running_server(workflows=[SLOW, HOURLY]) as server:
        status, out, _ = await cli("workflows", "--url", server.url)
    assert status == 0
    blocks = out.split("\n\n")
    hourly = next(block for block in blocks if block.startswith("hourly"))
    assert "  schedules  0 * * * * (UTC)" in hourly
    assert "  next run   " in hourly


async def test_a_server_that_wants_a_token_gets_one_from_the_psk() -> None:
    async with running_server(workflows=[SLOW], psk="secret", token=make_token("secret")) as server:
        status, out, err = await cli("tasks", "--url", server.url)
        assert status == 1
        assert err.startswith(f"phasebus: error: {server.url} wants a token: give --psk or set")
        status, out, err = await cli("tasks", "--url", server.url, "--psk", "secret")
        assert (status, out, err) == (0, "no running tasks\n", "")


async def test_server_errors_are_one_line() -> None:
    async with running_server(workflows=[SLOW]) as server:
        status, _, err = await cli("task", "nope", "--url", server.url)
        assert (status, err) == (1, "phasebus: error: unknown task 'nope'\n")
        url = server.url
    status, _, err = await cli("tasks", "--url", url)
    assert status == 1
    assert err.startswith(f"phasebus: error: cannot reach phasebus at {url}: ")
    assert err.endswith("(is 'phasebus serve' running?)\n")


async def test_the_task_list_checks_its_query() -> None:
    async with running_server(workflows=[SLOW]) as server:
        answer = await server.http.get(
            "/tasks", params={"outcome": "meh", "since": "yesterday", "limit": "-1", "x": "1"}
        )
    assert answer.status_code == 400
    assert answer.json()["problems"] == [
        "x: unknown query parameter",
        "outcome: must be one of done, failed, stopped, replaced, got 'meh'",
        "since: not an ISO 8601 time: 'yesterday'",
        "limit: must be a whole number from 0 to 10000, got '-1'",
    ]


@pytest.mark.parametrize("argv", [["history", "--limit", "0"], ["history", "--since", "today"]])
async def test_bad_history_options(argv: list[str]) -> None:
    status, _, err = await cli(*argv)
    assert status == 2
    assert len(err.splitlines()) == 1
