"""Run-time workflows and jobs over HTTP, on a real ``phasebus serve`` with its store."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from engine._serve import serve
from machines import BUILTIN_WORKFLOWS

from .web_support import events_until


@asynccontextmanager
async def served(store: Path, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``phasebus serve`` on port 0 with the store at ``store``; yield a client."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve,
                port=0,
                store=str(store),
                announce=False,
                builtins=BUILTIN_WORKFLOWS.values(),
                **options,
            )
        )
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http
        nursery.cancel_scope.cancel()


def marker_job(marker: Path) -> dict[str, Any]:
    return {
        "command": ["sh", "-c", f"echo ran >> {marker}"],
        "triggers": [{"event": "task_end", "filter": {"workflow": "metrics"}}],
        "timeout": 30,
    }


def runs(marker: Path) -> int:
    return marker.read_text().count("ran") if marker.exists() else 0


async def run_metrics(http: httpx.AsyncClient) -> str:
    started = await http.post("/workflow/metrics/run")
    assert started.status_code == 202, started.text
    task_id: str = started.json()["task_id"]
    with trio.fail_after(10):
        while (await http.get(f"/task/{task_id}")).json()["running"]:
            await trio.sleep(0.02)
    return task_id


async def wait_runs(marker: Path, count: int) -> None:
    with trio.fail_after(10):
        while runs(marker) < count:
            await trio.sleep(0.02)


async def test_a_job_added_over_http_reacts_survives_a_restart_and_pauses(
    tmp_path: Path,
) -> None:
    store, marker = tmp_path / "store.sqlite3", tmp_path / "marker"
    async with served(store) as http:
        created = await http.put("/job/after_metrics", json=marker_job(marker))
        assert created.status_code == 201, created.text
        assert created.json()["origin"] == "api"
        assert created.json()["active"] is True
        await run_metrics(http)
        await wait_runs(marker, 1)
        listed = (await http.get("/jobs")).json()
        assert [job["id"] for job in listed] == ["after_metrics"]

    async with served(store) as http:
        shown = await http.get("/job/after_metrics")
        assert shown.status_code == 200
        assert shown.json()["command"] == marker_job(marker)["command"]
        await run_metrics(http)
        await wait_runs(marker, 2)

        paused = await http.post("/job/after_metrics/deactivate")
        assert paused.json()["active"] is False
        await run_metrics(http)
        await trio.sleep(0.5)
        assert runs(marker) == 2

        # run on demand, whatever its state
        started = await http.post("/job/after_metrics/run")
        assert started.status_code == 202
        await wait_runs(marker, 3)

        assert (await http.post("/job/after_metrics/activate")).json()["active"] is True
        await run_metrics(http)
        await wait_runs(marker, 4)

        assert (await http.delete("/job/after_metrics")).status_code == 204
        assert (await http.get("/job/after_metrics")).status_code == 404
        assert (await http.delete("/job/after_metrics")).status_code == 404


async def test_a_put_with_three_problems_lists_three_and_changes_nothing(tmp_path: Path) -> None:
    async with served(tmp_path / "s.sqlite3") as http:
        answer = await http.put(
            "/job/broken",
            json={"command": "ls", "timeout": -1, "triggers": [{"cron": "61 * * * *"}]},
        )
        assert answer.status_code == 400
        assert answer.json() == {
            "error": "invalid job",
            "problems": [
                "command: must be a list, got 'ls'",
                "triggers[0].cron: '61 * * * *' is not a valid cron expression",
                "timeout: must be > 0, got -1",
            ],
        }
        assert (await http.get("/job/broken")).status_code == 404
        bad_json = await http.put("/workflow/w", content=b"{nope")
        assert bad_json.status_code == 400
        assert bad_json.json()["error"] == "invalid JSON body"


async def test_workflows_change_at_run_time_and_built_ins_stay(tmp_path: Path) -> None:
    async with served(tmp_path / "s.sqlite3") as http:
        async with httpx_events(http) as events:
            body = {"steps": [{"name": "export", "timeout": 5}], "surpass": "skip"}
            created = await http.put("/workflow/nightly", json=body)
            assert created.status_code == 201, created.text
            got = await events_until(events, "workflow-updated")
            assert got[-1]["data"] == {"id": "nightly"}
        replaced = await http.put("/workflow/nightly", json={**body, "description": "v2"})
        assert replaced.status_code == 200
        assert (await http.get("/workflow/nightly")).json()["description"] == "v2"
        assert (await http.post("/workflow/nightly/deactivate")).json()["active"] is False
        listed = {w["id"]: w for w in (await http.get("/workflows")).json()}
        assert listed["nightly"]["active"] is False
        assert listed["nightly"]["origin"] == "api"
        assert listed["metrics"]["origin"] == "built-in"

        refused = await http.delete("/workflow/metrics")
        assert refused.status_code == 409
        assert refused.json()["error"].startswith("workflow 'metrics' is built in")
        changed = await http.put("/workflow/metrics", json={"steps": [{"name": "only"}]})
        assert changed.status_code == 200
        assert (await http.post("/workflow/collect/deactivate")).status_code == 200
        wrong = await http.put("/job/metrics", json={"command": ["true"]})
        assert wrong.status_code == 409
        assert (
            wrong.json()["error"] == "'metrics' is a workflow, not a job: use the workflow routes"
        )
        assert (await http.delete("/workflow/nightly")).status_code == 204
        assert (await http.post("/workflow/nightly/activate")).status_code == 404


async def test_declared_files_cannot_be_changed(tmp_path: Path) -> None:
    flows = tmp_path / "nightly.toml"
    flows.write_text('[[jobs]]\nid = "tidy"\ncommand = ["true"]\n')
    async with served(tmp_path / "s.sqlite3", workflows_dir=[flows]) as http:
        for answer in (
            await http.put("/job/tidy", json={"command": ["false"]}),
            await http.delete("/job/tidy"),
            await http.post("/job/tidy/deactivate"),
        ):
            assert answer.status_code == 409
            assert f"declared in {flows}" in answer.json()["error"]
        assert (await http.get("/job/tidy")).json()["origin"] == str(flows)


async def test_task_log_over_http_survives_a_restart_and_ids_may_be_prefixes(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s.sqlite3"
    async with served(store) as http:
        await http.post("/subscriber/talker/generate_metrics", params={"timeout": "5"})
        async with http_ws(http, "/subscriber/talker/handle") as ws:
            started = await http.post("/workflow/metrics/run")
            task_id = started.json()["task_id"]
            while True:
                message = json.loads(await ws.get_message())
                if message["kind"] == "action":
                    break
            data = message["data"]
            info = {"kind": "action_info", "message_type": "generate_metrics"}
            await ws.send_message(
                json.dumps({**info, "data": {**data, "level": "warn", "message": "slow region"}})
            )
            done = {"kind": "action_done", "message_type": "generate_metrics", "data": data}
            await ws.send_message(json.dumps(done))
            with trio.fail_after(10):
                while (await http.get(f"/task/{task_id}")).json()["running"]:
                    await trio.sleep(0.02)
    async with served(store) as http:
        log = await http.get(f"/task/{task_id[:8]}/log")
        assert log.status_code == 200
        assert log.json()["task_id"] == task_id
        (entry,) = log.json()["entries"]
        assert entry["kind"] == "info"
        assert entry["level"] == "warn"
        assert (entry["step"], entry["subscriber"], entry["message"]) == (
            "generate_metrics",
            "talker",
            "slow region",
        )
        assert (await http.get(f"/task/{task_id[:8]}")).json()["id"] == task_id
        missing = await http.get("/task/zzzz/log")
        assert missing.status_code == 404
        assert missing.json()["error"] == "unknown task 'zzzz'"


# ---------------------------------------------------------------- WebSockets


@asynccontextmanager
async def http_ws(http: httpx.AsyncClient, path: str) -> AsyncIterator[Any]:
    import trio_websocket

    url = str(http.base_url).rstrip("/")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with trio_websocket.open_websocket(host, int(port), path, use_ssl=False) as ws:
        yield ws


def httpx_events(http: httpx.AsyncClient) -> Any:
    return http_ws(http, "/events")


async def test_the_readme_defines_a_job_with_curl_and_with_the_command(tmp_path: Path) -> None:
    import io
    import re
    import shlex

    from machines import METRICS
    from machines.__main__ import main_async

    from .test_readme import README
    from .web_support import running_server

    section = README.split("### Defining jobs while the server runs")[1]
    curl, command = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)[:2]
    marker = tmp_path / "runs"
    curl, command = (text.replace("/tmp/metrics-runs", str(marker)) for text in (curl, command))
    path = re.search(r"curl -X PUT http://127\.0\.0\.1:8900(\S+)", curl)
    body = re.search(r"-d '(.*)'", curl)
    assert path is not None
    assert body is not None
    argv = shlex.split(command)
    assert argv[0] == "phasebus"
    async with running_server(workflows=[METRICS]) as server:
        answer = await server.http.put(
            path.group(1), content=body.group(1), headers={"content-type": "application/json"}
        )
        assert answer.status_code == 201, answer.text
        assert (answer.json()["origin"], answer.json()["active"]) == ("api", True)
        await server.engine.run_workflow("metrics")
        await wait_lines(marker, 1)
        assert (await server.http.delete(path.group(1))).status_code == 204

        separator = argv.index("--")
        argv[separator:separator] = ["--url", server.url]
        out = io.StringIO()
        assert await main_async(argv[1:], stdout=out, stderr=out) == 0, out.getvalue()
        await server.engine.run_workflow("metrics")
        await wait_lines(marker, 2)


async def wait_lines(path: Path, count: int) -> None:
    with trio.fail_after(10):
        while not path.exists() or len(path.read_text().splitlines()) < count:
            await trio.sleep(0.02)
