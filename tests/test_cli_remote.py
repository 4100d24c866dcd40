"""The commands that drive a server: jobs, workflows, run --url, stop, events, token."""

from __future__ import annotations

import functools
import io
import json
import socket
from pathlib import Path

import pytest
import trio
from rich.console import Console

from engine import Action, ActionInfo, Step, Workflow
from engine._auth import TokenVerifier
from engine._client import server_url
from engine._serve import serve
from machines import BUILTIN_WORKFLOWS
from machines.__main__ import main_async

from .web_support import running_server

SLOW = Workflow(id="slow", steps=[Step("work", timeout=30)])


async def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = await main_async(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


async def test_jobs_commands_define_show_pause_run_and_delete(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with running_server(workflows=[SLOW]) as server:
        url = server.url
        status, out, err = await cli(
            "jobs", "add", "tidy", "--url", url, "--event", "task_end",
            "--filter", '{"workflow": "slow"}', "--timeout", "20",
            "--", "sh", "-c", f"echo ran >> {marker}",
        )  # fmt: skip
        assert (status, err) == (0, "")
        assert out.splitlines()[0] == "added tidy  active  api"
        assert f"  run        sh -c echo ran >> {marker}  (timeout 20s)" in out
        assert '  event      task_end {"workflow": "slow"}' in out

        status, out, _ = await cli("jobs", "list", "--url", url, "--json")
        (job,) = json.loads(out)
        assert job["triggers"] == [{"event": "task_end", "filter": {"workflow": "slow"}}]

        status, out, _ = await cli("jobs", "update", "tidy", "--url", url, "--timeout", "5")
        assert status == 0
        assert "(timeout 5s)" in out
        status, out, _ = await cli("jobs", "show", "tidy", "--url", url, "--json")
        shown = json.loads(out)
        assert shown["timeout"] == 5
        assert shown["triggers"] == job["triggers"]  # kept by update

        status, out, _ = await cli("jobs", "deactivate", "tidy", "--url", url)
        assert out == "job tidy is inactive\n"
        status, out, _ = await cli("jobs", "run", "tidy", "--url", url)
        assert status == 0
        assert out.startswith("started task ")
        with trio.fail_after(10):
            while not marker.exists():
                await trio.sleep(0.02)
        status, out, _ = await cli("jobs", "delete", "tidy", "--url", url)
        assert out == "deleted job tidy\n"
        status, _, err = await cli("jobs", "show", "tidy", "--url", url)
        assert (status, err) == (1, "phasebus: error: unknown job 'tidy'\n")


async def test_bad_job_definitions_are_one_line_with_every_problem() -> None:
    async with running_server(workflows=[SLOW]) as server:
        status, _, err = await cli(
            "jobs", "add", "bad", "--url", server.url, "--schedule", "61 * * * *",
            "--timeout", "-1", "--", "true",
        )  # fmt: skip
        assert status == 1
        assert err == (
            "phasebus: error: invalid job: triggers[0].cron: '61 * * * *' is not a valid cron"
            " expression; timeout: must be > 0, got -1\n"
        )
        status, _, err = await cli("jobs", "add", "bare", "--url", server.url)
        assert status == 2
        assert "give the command after the id" in err


async def test_workflows_add_activate_and_delete_on_a_server(tmp_path: Path) -> None:
    flows = tmp_path / "nightly.toml"
    flows.write_text(
        '[[workflows]]\nid = "nightly"\n[[workflows.steps]]\nname = "export"\n'
        '[[jobs]]\nid = "ping"\ncommand = ["true"]\n'
    )
    async with running_server(workflows=[SLOW]) as server:
        status, out, err = await cli("workflows", "add", str(flows), "--url", server.url)
        assert (status, err) == (0, "")
        assert out == (
            f"workflow nightly defined on {server.url}\njob ping defined on {server.url}\n"
        )
        assert "nightly" in server.engine.workflows
        status, out, _ = await cli("workflows", "deactivate", "nightly", "--url", server.url)
        assert out == "workflow nightly is inactive\n"
        assert server.engine.definitions.is_active("nightly") is False
        status, out, _ = await cli("workflows", "activate", "nightly", "--url", server.url)
        assert out == "workflow nightly is active\n"
        status, out, _ = await cli("workflows", "delete", "nightly", "--url", server.url)
        assert out == "deleted workflow nightly\n"
        status, _, err = await cli("workflows", "delete", "slow", "--url", server.url)
        assert status == 1
        assert err.startswith("phasebus: error: workflow 'slow' is built in")


async def test_run_url_against_serve_demo_ends_0(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve,
                port=0,
                demo=True,
                announce=False,
                store="memory",
                builtins=BUILTIN_WORKFLOWS.values(),
            )
        )
        status, out, err = await cli("run", "collect_and_cleanup", "--url", url, "--json")
        assert (status, err) == (0, "")
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[-1]["message_type"] == "task_end"
        assert lines[-1]["data"]["outcome"] == "done"
        actions = [m for m in lines if m["kind"] == "action"]
        assert len(actions) == 13
        assert all("timing" in m["data"] for m in actions)

        # the live view on a terminal
        screen = io.StringIO()
        console = Console(file=screen, force_terminal=True, color_system=None, width=120)
        status = await main_async(
            ["run", "metrics", "--url", url.removeprefix("http://")],
            stdout=io.StringIO(),
            stderr=io.StringIO(),
            console=console,
        )
        assert status == 0
        text = screen.getvalue()
        assert f"Running metrics on {url}, task " in text
        assert "generate_metrics" in text
        assert "done in" in text
        nursery.cancel_scope.cancel()


async def test_run_url_exit_status_follows_the_outcome() -> None:
    failing = Workflow(id="failing", steps=[Step("work", timeout=1, on_error="stop")])  # type: ignore[arg-type]
    async with running_server(workflows=[failing]) as server:
        server.engine.subscribe("silent", "work", timeout=1)
        status, out, _ = await cli("run", "failing", "--url", server.url, "--json")
        assert status == 1
        assert json.loads(out.splitlines()[-1])["data"]["outcome"] == "failed"
        status, _, err = await cli("run", "nope", "--url", server.url)
        assert (status, err) == (2, f"phasebus: error: unknown workflow 'nope' on {server.url}\n")


async def test_stop_task_and_task_log_by_prefix() -> None:
    async with running_server(workflows=[SLOW]) as server:
        await server.subscribe("w", "work")
        async with server.engine.open_listener(subscriber_id="w") as w:
            task_id = server.engine.start_workflow("slow").task_id
            assert task_id is not None
            action = await w.receive()
            assert isinstance(action, Action)
            server.engine.publish(
                ActionInfo(
                    action.message_type,
                    action.task,
                    action.step,
                    subscriber_id="w",
                    message="line one\nline two",
                )
            )
            status, out, err = await cli("stop", task_id[:6], "--url", server.url)
            assert (status, err) == (0, "")
            assert out == f"stopping task {task_id}\n"
            await server.engine.wait_task(task_id)
        status, out, _ = await cli("stop", task_id[:6], "--url", server.url)
        assert (status, out) == (1, f"task {task_id} had already ended\n")
        status, out, _ = await cli("task", task_id[:6], "--log", "--url", server.url)
        first, second = out.splitlines()
        assert first.endswith("info (info)      work/w                           line one")
        assert second == "    line two"
        status, out, _ = await cli("task", task_id[:6], "--url", server.url)
        assert out.startswith(f"{task_id}  slow  stopped in ")


async def test_events_prints_one_line_per_message() -> None:
    async with running_server(workflows=[SLOW]) as server, trio.open_nursery() as nursery:
        out = io.StringIO()

        async def tail() -> None:
            argv = ["events", "--url", server.url, "--show", "task_started", "--limit", "1"]
            assert await main_async(argv, stdout=out, stderr=io.StringIO()) == 0

        before = len(server.engine.listeners)
        nursery.start_soon(tail)
        with trio.fail_after(10):
            while len(server.engine.listeners) == before:
                await trio.sleep(0.01)
            task_id = server.engine.start_workflow("slow").task_id
            while not out.getvalue():
                await trio.sleep(0.01)
        line = out.getvalue()
        assert " event           task_started " in line
        assert f'task_id="{task_id}"' in line
        server.engine.stop_task(task_id or "")


async def test_token_psk_missing_and_refused() -> None:
    status, out, _ = await cli("token", "--psk", "secret")
    assert status == 0
    await TokenVerifier("secret").verify(out.strip())
    status, _, err = await cli("token")
    assert (status, err) == (2, "phasebus: error: token: give --psk or set PHASEBUS_PSK\n")

    from engine._auth import make_token

    async with running_server(workflows=[SLOW], psk="secret", token=make_token("secret")) as s:
        status, _, err = await cli("jobs", "list", "--url", s.url)
        assert err.startswith(f"phasebus: error: {s.url} wants a token: give --psk or set")
        status, _, err = await cli("jobs", "list", "--url", s.url, "--psk", "wrong")
        assert err.startswith(f"phasebus: error: {s.url} refused the pre-shared key")
        status, out, _ = await cli("jobs", "list", "--url", s.url, "--psk", "secret")
        assert (status, out) == (0, "no jobs\n")
        status, _, err = await cli("events", "--url", s.url, "--psk", "wrong", "--limit", "1")
        assert err.startswith(f"phasebus: error: {s.url} refused the pre-shared key")


def test_a_url_without_a_scheme_means_http() -> None:
    assert server_url("127.0.0.1:8900") == "http://127.0.0.1:8900"
    assert server_url("https://core:8900/") == "https://core:8900"


async def test_verbose_after_the_subcommand_and_port_in_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, _, _ = await cli("serve", "-v", "--port", str(port), "--store", "memory")
    assert status == 2
    assert capsys.readouterr().err.endswith(
        f"phasebus: error: cannot listen on 127.0.0.1:{port}: the port is in use\n"
    )


async def test_logging_at_info_is_one_line_per_request_and_per_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    import re

    caplog.set_level(logging.INFO, logger="engine")
    quick = Workflow(id="slow", steps=[Step("work", timeout=0.2)])
    async with running_server(workflows=[quick]) as server:
        await server.http.get("/jobs")
        await server.http.get("/job/none")
        async with server.websocket("/events"):
            pass
        await server.rejection("/subscriber/nobody/handle")
        server.engine.subscribe("w", "work", timeout=0.2)
        task_id = (await server.http.post("/workflow/slow/run")).json()["task_id"]
        await server.engine.wait_task(task_id)
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    access = [message for name, message in lines if name == "engine.access"]
    assert re.fullmatch(r"GET /jobs 200 \d+\.\dms", access[0])
    assert re.fullmatch(r"GET /job/none 404 \d+\.\dms", access[1])
    assert re.fullmatch(r"WS /events 101 \d+\.\dms", access[2])
    assert re.fullmatch(r"WS /subscriber/nobody/handle 404 \d+\.\dms", access[3])
    assert re.fullmatch(r"POST /workflow/slow/run 202 \d+\.\dms", access[4])
    engine_lines = [message for name, message in lines if name == "engine._engine"]
    assert f"starting task {task_id} of slow (api)" in engine_lines
    (end,) = [m for m in engine_lines if m.startswith(f"task {task_id} of slow ended")]
    assert re.fullmatch(
        rf"task {task_id} of slow ended done in \d+\.\ds with 1 error\(s\): step 'work' timed"
        r" out waiting for w",
        end,
    )


def test_verbose_keeps_libraries_at_warning_unless_twice() -> None:
    import logging

    from engine._cli import _configure_logging

    engine_logger, root = logging.getLogger("engine"), logging.getLogger()
    level, root_level, handlers = engine_logger.level, root.level, root.handlers[:]
    try:
        for verbose, engine_level, library_level in (
            (0, logging.WARNING, logging.WARNING),
            (1, logging.INFO, logging.WARNING),
            (2, logging.DEBUG, logging.DEBUG),
        ):
            root.handlers.clear()  # as in a fresh process
            _configure_logging(verbose)
            assert logging.getLogger("engine.access").getEffectiveLevel() == engine_level
            assert logging.getLogger("transitions.core").getEffectiveLevel() == library_level
        # logging that is already set up is left alone
        engine_logger.setLevel(logging.ERROR)
        _configure_logging(2)
        assert engine_logger.level == logging.ERROR
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.handlers[:] = handlers
        root.setLevel(root_level)
        engine_logger.setLevel(level)


async def test_workflows_add_changes_nothing_when_the_server_refuses_one(tmp_path: Path) -> None:
    flows = tmp_path / "flows.toml"
    flows.write_text(
        '[[workflows]]\nid = "slow"\ndescription = "changed"\n[[workflows.steps]]\nname = "x"\n'
        '[[workflows]]\nid = "fresh"\n[[workflows.steps]]\nname = "y"\n'
        '[[jobs]]\nid = "calls"\ncallable = "not_registered"\n'
    )
    async with running_server(workflows=[SLOW]) as server:
        status, out, err = await cli("workflows", "add", str(flows), "--url", server.url)
        assert (status, out) == (1, "")
        assert err == (
            "phasebus: error: job calls: invalid job: callable: no command is registered"
            " as 'not_registered' (nothing was changed)\n"
        )
        assert server.engine.workflows["slow"] == SLOW
        assert "fresh" not in server.engine.workflows


async def test_jobs_add_like_resoto_schedule_time_zone_and_wait_for_event() -> None:
    async with running_server(workflows=[SLOW]) as server:
        status, out, err = await cli(
            "jobs", "add", "nightly", "--url", server.url, "--schedule", "0 5 * * *",
            "--timezone", "Europe/Berlin", "--wait-for-event", "post_collect:90",
            "--inactive", "--", "echo", "collected",
        )  # fmt: skip
        assert (status, err) == (0, "")
        assert out.splitlines()[0] == "added nightly  inactive  api"
        assert "  schedule   0 5 * * * (Europe/Berlin)" in out
        assert "  wait for   post_collect (within 90s)" in out
        job = server.engine.job("nightly")
        assert job is not None
        assert job.wait_for is not None
        assert (job.wait_for.message_type, job.wait_timeout, job.active) == (
            "post_collect",
            90,
            False,
        )
        assert server.engine.next_run("nightly") is None  # inactive: no schedule runs
        status, _, err = await cli(
            "jobs", "update", "nightly", "--url", server.url, "--wait-for-event", "x:soon"
        )
        assert (status, err) == (
            2,
            "phasebus: error: --wait-for-event: the timeout after ':' must be seconds, got"
            " 'soon'\n",
        )
