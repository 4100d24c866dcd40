"""Resoto 3.9.0's own client library, worker and metrics exporter against a real phasebus.

These run the real programs (see tests/resoto_support.py): resotolib's config
client, CoreEvents, CoreActions and CoreFeedback; resotoworker with the
example collector; resotometrics. Each run checks that no request the Resoto
program made was answered 404.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from engine import Outcome

from .resoto_support import (
    ResotoServer,
    free_port,
    resoto_process,
    resoto_server,
    resoto_venv,
    wait_until,
)

PSK = "phasebus-resoto-psk"
HERE = Path(__file__).resolve().parent
GRAPH_REFUSAL = "the inventory graph API is not part of phasebus"


@pytest.fixture
def venv() -> Path:
    """The Resoto 3.9.0 environment (skipped with the reason, or failed under CI, without it)."""
    return resoto_venv()


def no_404(server: ResotoServer, *, config_absent: str | None = None) -> None:
    """Check that nothing was answered 404, but the read of a config not stored yet
    (``config_absent``): Resoto's core answers 404 there too, and resotolib takes it
    to mean "start from the defaults"."""
    missing = [
        entry
        for entry in server.recorder.seen
        if entry[2] == 404 and entry[:2] != ("GET", f"/config/{config_absent}")
    ]
    assert missing == [], f"requests answered 404: {missing}"


async def run_clients(
    venv: Path, server: ResotoServer, psk: str | None, mode: str, log: Path
) -> dict[str, Any]:
    argv = [str(venv / "bin" / "python"), str(HERE / "resoto_clients.py")]
    argv += ["--resotocore-uri", server.url, "--mode", mode]
    if psk:
        argv += ["--psk", psk]
    with trio.fail_after(90):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    log.write_bytes(done.stdout + done.stderr)
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0, log.read_text()[-4000:]
    assert lines, log.read_text()[-4000:]
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


@pytest.mark.parametrize(
    ("tls", "psk"),
    [(False, None), (False, PSK), (True, None), (True, PSK)],
    ids=["http", "http-psk", "https", "https-psk"],
)
async def test_resotolib_clients_work_unchanged_and_the_config_survives_a_restart(
    tmp_path: Path, venv: Path, tls: bool, psk: str | None
) -> None:
    async with resoto_server(tmp_path, tls=tls, psk=psk) as server:
        assert server.url.startswith("https://" if tls else "http://")
        result = await run_clients(venv, server, psk, "run", tmp_path / "clients.log")
        stored = result["stored"]
        config = {"phasebus_test": {"regions": ["eu-west-1"], "interval": 60}}
        assert stored["answer"] == {"config": config, "overrides": None, "raw_config": config}
        assert stored["read"] == stored["revision"]
        events = result["events"]
        updates = [e["data"] for e in events if e["message_type"] == "config-updated"]
        assert {"id": "phasebus.test", "revision": result["new_revision"]} in updates
        errors = [e["data"] for e in events if e["message_type"] == "error"]
        assert [(e["message"], e["subscriber_id"]) for e in errors] == [
            ("[example:account-1] Access Denied", "phasebus.test-collector")
        ]
        (end,) = [e["data"] for e in events if e["message_type"] == "task_end"]
        assert end["outcome"] == "done"
        task = server.engine.task(result["task_id"])
        (collect,) = [step for step in task.steps if step.name == "collect"]
        assert collect.answered == {"phasebus.test-collector": "done"}
        if tls:
            assert server.recorder.statuses("GET", "/ca/cert") == [200]
        no_404(server)
    # the stored config reads back after a restart, with its revision
    async with resoto_server(tmp_path, tls=tls, psk=psk) as server:
        again = await run_clients(venv, server, psk, "read", tmp_path / "read.log")
        changed = {"phasebus_test": {"regions": ["eu-west-1", "us-east-1"], "interval": 30}}
        assert again == {
            "answer": {"config": changed, "overrides": None, "raw_config": changed},
            "revision": result["new_revision"],
        }
        no_404(server)


async def run_worker_once(
    venv: Path,
    server: ResotoServer,
    tmp_path: Path,
    psk: str | None,
    log: Path,
    *,
    config_absent: str | None = None,
    while_running: Callable[[], Awaitable[None]] | None = None,
) -> None:
    argv = [
        str(venv / "bin" / "resotoworker"),
        "--resotocore-uri",
        server.url,
        "--override",
        "resotoworker.collector=example",
        f"resotoworker.web_port={free_port()}",
        "resotoworker.web_host=127.0.0.1",
    ]
    if psk:
        argv += ["--psk", psk]
    engine = server.engine
    async with resoto_process(argv, log, env={"HOME": str(tmp_path)}):
        await wait_until(
            lambda: any(lst.id == "resoto.worker-collector" for lst in engine.listeners),
            "resotoworker to connect to its subscriber WebSocket",
            timeout=120,
            log=log,
        )
        await wait_until(
            lambda: bool(server.app.work.queue.workers),
            "resotoworker to join the work queue",
            timeout=30,
            log=log,
        )
        if while_running is not None:
            await while_running()
        with trio.fail_after(180):
            result = await engine.run_workflow("collect_and_cleanup")
    context = f"requests: {server.recorder.seen}\nworker log: {log.read_text()[-3000:]}"
    assert result.outcome is Outcome.DONE, context
    steps = {step.name: step for step in result.steps}
    # collect reaches the worker and is answered: with an error, since the
    # inventory graph it would send its resources to is not part of phasebus
    assert steps["collect"].answered == {"resoto.worker-collector": "error"}, context
    assert GRAPH_REFUSAL in steps["collect"].errors[0], context
    assert steps["cleanup"].answered == {"resoto.worker-collector": "done"}, context
    seen = server.recorder
    assert seen.statuses("PATCH", "/configs/model")[-1] == 200
    assert seen.statuses("PUT", "/config/resoto.worker")[-1] == 200
    assert 101 in seen.statuses("WS", "/work/queue")
    no_404(server, config_absent=config_absent)


async def test_resotoworker_collects_and_cleans_up_on_an_empty_store_and_with_its_config_stored(
    tmp_path: Path, venv: Path
) -> None:
    # an empty store, plain HTTP, no PSK: the worker stores its model and default config
    async with resoto_server(tmp_path) as server:

        async def tag_through_the_work_queue() -> None:
            # the worker offers "tag" for its collector's cloud; the task reaches it and
            # its answer comes back (an error: this node is nothing the plugin knows)
            (worker,) = server.app.work.queue.workers
            assert {(o.name, tuple(o.filter.get("cloud", ()))) for o in worker.offers} >= {
                ("tag", ("example",))
            }
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                answer = await http.post(
                    "/work/tag",
                    json={
                        "attrs": {"cloud": "example"},
                        "data": {"node": {"id": "n1", "reported": {"kind": "nothing"}}},
                        "timeout": 30,
                    },
                )
            assert answer.status_code == 502, answer.text
            assert "Do not know how to handle" in answer.json()["error"]

        await run_worker_once(
            venv,
            server,
            tmp_path,
            None,
            tmp_path / "worker-1.log",
            config_absent="resoto.worker",
            while_running=tag_through_the_work_queue,
        )
        assert server.recorder.statuses("GET", "/config/resoto.worker")[0] == 404
        stored = server.engine.configs.get("resoto.worker")
        assert stored is not None
        assert "resotoworker" in stored.data
    # a restart: its config is stored now; HTTPS with the server's own CA and a PSK
    async with resoto_server(tmp_path, tls=True, psk=PSK) as server:
        assert server.engine.configs.get("resoto.worker") is not None
        await run_worker_once(venv, server, tmp_path, PSK, tmp_path / "worker-2.log")
        seen = server.recorder
        assert seen.statuses("GET", "/ca/cert")[0] == 200
        assert seen.statuses("POST", "/ca/sign") == [200]
        reads = seen.statuses("GET", "/config/resoto.worker")
        assert reads
        assert all(status == 200 for status in reads)


async def test_resotometrics_answers_generate_metrics(tmp_path: Path, venv: Path) -> None:
    async with resoto_server(tmp_path, tls=True, psk=PSK) as server:
        log = tmp_path / "metrics.log"
        argv = [
            str(venv / "bin" / "resotometrics"),
            "--resotocore-uri",
            server.url,
            "--psk",
            PSK,
            "--override",
            f"resotometrics.web_port={free_port()}",
            "resotometrics.web_host=127.0.0.1",
        ]
        engine = server.engine
        async with resoto_process(argv, log, env={"HOME": str(tmp_path)}):
            await wait_until(
                lambda: any(lst.id == "resoto.metrics" for lst in engine.listeners),
                "resotometrics to connect",
                timeout=120,
                log=log,
            )
            with trio.fail_after(120):
                result = await engine.run_workflow("metrics")
        steps = {step.name: step for step in result.steps}
        assert steps["generate_metrics"].answered == {"resoto.metrics": "done"}
        assert server.recorder.statuses("PUT", "/config/resoto.metrics")[-1] == 200
        no_404(server, config_absent="resoto.metrics")
