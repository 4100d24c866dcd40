"""Configs on servers sharing one Redis: ``If-Match`` holds across them, and the
revisions they mint never collide."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from engine import Engine

from .test_redis_serve import api_on
from .test_resoto_api import WORKER_MODEL

pytestmark = pytest.mark.redis


async def until(condition: Callable[[], object]) -> None:
    """Wait until ``condition()`` holds (a change travelling between servers)."""
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.01)


def _at(engine: Engine, revision: str) -> bool:
    config = engine.configs.get("app")
    return config is not None and config.revision == revision


async def _both(
    first: tuple[httpx.AsyncClient, str, dict[str, Any] | None],
    second: tuple[httpx.AsyncClient, str, dict[str, Any] | None],
    revision: str,
) -> list[httpx.Response]:
    """Send two config changes with the same If-Match at the same moment."""
    answers: list[httpx.Response] = []

    async def send(http: httpx.AsyncClient, method: str, body: dict[str, Any] | None) -> None:
        answers.append(
            await http.request(method, "/config/app", json=body, headers={"If-Match": revision})
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, *first)
        nursery.start_soon(send, *second)
    return answers


async def test_two_servers_putting_with_the_same_if_match_one_wins(redis_url: str) -> None:
    async with api_on(redis_url, replica="a") as a, api_on(redis_url, replica="b") as b:
        created = await a.http.put("/config/app", json={"level": 1})
        assert created.status_code == 200, created.text
        base = created.headers["Resoto-Config-Revision"]
        await until(lambda: (c := b.engine.configs.get("app")) is not None and c.revision == base)
        for round_ in range(3):
            answers = await _both(
                (a.http, "PUT", {"level": 2, "by": "a", "round": round_}),
                (b.http, "PUT", {"level": 2, "by": "b", "round": round_}),
                base,
            )
            statuses = sorted(answer.status_code for answer in answers)
            assert statuses == [200, 409], [answer.text for answer in answers]
            won = next(answer for answer in answers if answer.status_code == 200)
            lost = next(answer for answer in answers if answer.status_code == 409)
            revision = won.headers["Resoto-Config-Revision"]
            # the refusal names the revision the store holds: the winner's
            assert lost.json()["revision"] == revision
            assert "app" in lost.json()["error"]
            stored = {c.id: c for c in (await a.store.load()).configs}
            assert stored["app"].revision == revision
            assert stored["app"].data == won.json()
            # both servers hold the winner's document, none the loser's
            for server in (a, b):
                await until(functools.partial(_at, server.engine, revision))
                answer = await server.http.get("/config/app")
                assert answer.json() == won.json()
            base = revision


async def test_a_delete_and_a_put_with_the_same_if_match_on_two_servers(redis_url: str) -> None:
    async with api_on(redis_url, replica="a") as a, api_on(redis_url, replica="b") as b:
        created = await a.http.put("/config/app", json={"level": 1})
        base = created.headers["Resoto-Config-Revision"]
        await until(lambda: b.engine.configs.get("app") is not None)
        answers = await _both((a.http, "DELETE", None), (b.http, "PUT", {"level": 2}), base)
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses in ([200, 409], [204, 409]), [answer.text for answer in answers]
        stored = {c.id: c for c in (await a.store.load()).configs}
        if 204 in statuses:
            assert "app" not in stored
            await until(lambda: b.engine.configs.get("app") is None)
        else:
            assert stored["app"].data == {"level": 2}
            await until(
                lambda: (c := a.engine.configs.get("app")) is not None and c.data == {"level": 2}
            )
        # a stale If-Match is refused with the current revision, and changes nothing
        stale = await b.http.put("/config/app", json={"level": 9}, headers={"If-Match": base})
        assert stale.status_code == 409
        assert {c.id: c.data for c in (await a.store.load()).configs}.get("app") != {"level": 9}


async def test_two_servers_never_mint_the_same_revision(redis_url: str) -> None:
    async with api_on(redis_url, replica="a") as a, api_on(redis_url, replica="b") as b:
        # both counters stand at the same number: the revisions differ by their writer
        first = a.engine.configs.put("x", {"n": 1})
        second = b.engine.configs.put("y", {"n": 1})
        assert first.revision.split("-")[0] == second.revision.split("-")[0]
        assert first.revision.split("-")[1] != second.revision.split("-")[1]
        tokens = {str(server.engine._persistence.lease.token) for server in (a, b)}  # type: ignore[union-attr]
        assert {first.revision.split("-")[1], second.revision.split("-")[1]} == tokens


async def test_config_models_changed_on_one_server_reach_the_others_at_once(
    redis_url: str,
) -> None:
    async with api_on(redis_url, replica="a") as a, api_on(redis_url, replica="b") as b:
        assert (await b.http.get("/configs/model")).json() == []  # b knows none yet
        model = await a.http.patch("/configs/model", json=WORKER_MODEL)
        assert model.status_code == 200, model.text

        async def b_model() -> Any:
            return (await b.http.get("/configs/model")).json()

        with trio.fail_after(5):
            while await b_model() != model.json():
                await trio.sleep(0.01)
        # b checks configs against the model a registered
        bad = await b.http.put("/config/resoto.worker", json={"worker": {"timeout": "soon"}})
        assert bad.status_code == 400, bad.text
        assert any("worker.timeout" in problem for problem in bad.json()["problems"])
        # a validation setting set on b holds on a, and is forgotten there with its config
        put = await b.http.put(
            "/config/resoto.worker/validation", json={"external_validation": True}
        )
        assert put.status_code == 200, put.text
        await until(lambda: a.engine.config_models.validation("resoto.worker") is not None)
        shown = await a.http.get("/config_validation/resoto.worker")
        assert shown.json() == {"id": "resoto.worker", "external_validation": True}
        # a now asks a worker to approve a change of that config
        assert a.engine.config_models.validator_for("resoto.worker") == "resoto.worker"
        await b.http.put("/config/resoto.worker/validation", json={"external_validation": False})
        await until(
            lambda: (
                a.engine.config_models.validator_for("resoto.worker") is None
                and a.engine.config_models.validation("resoto.worker") is not None
            )
        )
        created = await a.http.put("/config/resoto.worker", json={"other": 1})
        assert created.status_code == 200, created.text
        await until(lambda: b.engine.configs.get("resoto.worker") is not None)
        assert (await b.http.delete("/config/resoto.worker")).status_code == 204
        await until(lambda: a.engine.config_models.validation("resoto.worker") is None)
        assert (await a.http.get("/configs/validation")).json() == []
