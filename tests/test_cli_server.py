"""The commands that ask a running server: tasks, task, history, workflows --url."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import trio

from engine import Action, CronTrigger, Step, Workflow
from engine._auth import make_token
from machines.__main__ import main_async

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
    assert hourly.startswith("hourly  workflow, built-in\n")
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


async def test_odd_inputs_get_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = await cli("tasks", "--url", "http://[bad")
    assert status == 1
    assert err == "phasebus: error: --url: Invalid IPv6 URL\n"
    status, _, err = await cli("tasks", "--url", "127.0.0.1:1")  # no scheme: http://
    assert status == 1
    assert err.startswith("phasebus: error: cannot reach phasebus at http://127.0.0.1:1: ")
    status, _, err = await cli(
        "schedule", "preview", "collect_and_cleanup", "--from", "0001-01-01T00:10:00+01:00"
    )
    assert (status, err) == (
        2,
        "phasebus: error: argument --from: out of range: '0001-01-01T00:10:00+01:00'"
        " (see 'phasebus schedule preview --help')\n",
    )
    capsys.readouterr()
    status, _, _ = await cli("serve", "--port", "70000", "--store", "memory")
    err = capsys.readouterr().err  # serve reports on the process's stderr
    assert (status, err) == (2, "phasebus: error: --port: must be from 0 to 65535, got 70000\n")
    status, _, _ = await cli("serve", "--retention", "1e9", "--store", "memory")
    assert status == 2
    assert capsys.readouterr().err.startswith(
        "phasebus: error: --retention: must be more than 0 and at most 36500"
    )


async def test_the_task_list_refuses_non_ascii_digits() -> None:
    async with running_server(workflows=[SLOW]) as server:
        answer = await server.http.get("/tasks", params={"limit": "²"})
        too_big = await server.http.post("/subscriber/w/work", params={"timeout": "1e12"})
    assert answer.status_code == 400
    assert answer.json()["problems"] == ["limit: must be a whole number from 0 to 10000, got '²'"]
    assert too_big.status_code == 400


def test_declarations_load_from_a_path_given_as_text(tmp_path: Path) -> None:
    from engine import Declarations

    path = tmp_path / "flows.toml"
    path.write_text('[[workflows]]\nid = "x"\n[[workflows.steps]]\nname = "a"\n')
    assert Declarations.from_file(str(path)).workflows[0].id == "x"


async def test_history_marks_a_done_task_whose_steps_met_errors() -> None:
    rough = Workflow(id="rough", steps=[Step("slow", timeout=0.2), Step("left", timeout=30)])
    async with running_server(workflows=[SLOW, rough]) as server:
        await server.subscribe("w", "work")
        await server.subscribe("w", "slow", timeout=0.2)
        await server.subscribe("gone", "left")
        async with server.engine.open_listener(subscriber_id="w") as w:
            clean = server.engine.start_workflow("slow").task_id
            w.done(await w.receive())  # type: ignore[arg-type]
            await server.engine.wait_task(clean)  # type: ignore[arg-type]
        task_id = server.engine.start_workflow("rough").task_id
        assert task_id is not None
        with trio.fail_after(5):
            while (step := server.engine.tasks()[0].step) is None or step.name != "left":
                await trio.sleep(0.01)
        assert (await server.http.delete("/subscriber/gone")).status_code == 204
        await server.engine.wait_task(task_id)

        task = (await server.http.get(f"/task/{task_id}")).json()
        assert (task["outcome"], task["has_errors"]) == ("done", True)
        assert [(s["name"], s["ended"], s["released"]) for s in task["steps"]] == [
            ("slow", "timed_out", []),
            ("left", "released", ["gone"]),
        ]
        listed = (await server.http.get("/tasks", params={"has_errors": "true"})).json()
        assert [t["id"] for t in listed] == [task_id]
        listed = (await server.http.get("/tasks", params={"has_errors": "false"})).json()
        assert [t["id"] for t in listed] == [clean]
        bad = await server.http.get("/tasks", params={"has_errors": "maybe"})
        assert bad.status_code == 400
        assert bad.json()["problems"] == ["has_errors: must be true or false, got 'maybe'"]

        _, out, _ = await cli("history", "--url", server.url, "--has-errors")
        (line,) = out.splitlines()
        assert " done (errors) rough " in line
        assert line.endswith("[slow timed out, left released]")
        _, out, _ = await cli("history", "--url", server.url, "--no-errors")
        (line,) = out.splitlines()
        assert clean in line
        _status, out, _ = await cli("task", task_id, "--url", server.url)
        lines = out.splitlines()
        assert lines[0].startswith(f"{task_id}  rough  done (errors) in ")
        assert lines[1].endswith("TIMED OUT")
        assert "error: step 'slow' timed out waiting for w" in lines[2]
        assert lines[3].startswith("  left ")
        assert lines[3].endswith("-  RELEASED (gone went away)")
