"""Resoto's config routes: answer shapes, YAML, models, validation, and /graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engine._store import SQLiteStore

from .web_support import running_server

#: A config model in Resoto's kind format, as a worker registers it.
WORKER_MODEL: list[dict[str, Any]] = [
    {
        "fqn": "worker",
        "bases": [],
        "aggregate_root": True,
        "allow_unknown_props": False,
        "properties": [
            {"name": "collector", "kind": "string[]", "required": True},
            {"name": "timeout", "kind": "int64", "required": True},
            {"name": "fork_process", "kind": "boolean", "required": True},
            {"name": "merge_kind", "kind": "merge_kind", "required": False},
            {"name": "files", "kind": "dictionary[string, string]", "required": False},
            {"name": "home", "kind": "home_file[]", "required": False},
        ],
    },
    {"fqn": "merge_kind", "runtime_kind": "string", "enum": ["cloud", "account"]},
    {
        "fqn": "home_file",
        "bases": [],
        "aggregate_root": False,
        "properties": [
            {"name": "path", "kind": "string", "required": True},
            {"name": "content", "kind": "string", "required": True},
        ],
    },
]

GOOD = {
    "worker": {"collector": ["example"], "timeout": 10800, "fork_process": True},
    "other": {"free": "form"},
}


async def test_a_stored_config_reads_back_in_every_shape_resoto_asks_for() -> None:
    async with running_server() as server:
        http = server.http
        stored = {"worker": {"collector": ["example"], "secret": "$(PB_TEST_SECRET)"}}
        put = await http.put("/config/resoto.worker", json=stored)
        assert put.status_code == 200
        revision = put.headers["resoto-config-revision"]
        server.app.resoto.environ = {"PB_TEST_SECRET": "s3cret"}

        # what resotolib asks for at start
        answer = await http.get(
            "/config/resoto.worker",
            params={
                "separate_overrides": "true",
                "apply_overrides": "true",
                "resolve_env_vars": "true",
                "include_raw_config": "true",
            },
        )
        assert answer.status_code == 200
        assert answer.headers["resoto-config-revision"] == revision
        assert answer.json() == {
            "config": {"worker": {"collector": ["example"], "secret": "s3cret"}},
            "overrides": None,
            "raw_config": stored,
        }
        # separate, defaults: nothing resolved, no raw config
        answer = await http.get("/config/resoto.worker", params={"separate_overrides": "true"})
        assert answer.json() == {"config": stored, "overrides": None}
        # a single document: resolved by default, or not when asked
        assert (await http.get("/config/resoto.worker")).json()["worker"]["secret"] == "s3cret"
        plain = await http.get("/config/resoto.worker", params={"resolve_env_vars": "false"})
        assert plain.json() == stored
        # YAML: the stored document
        as_yaml = await http.get("/config/resoto.worker", headers={"accept": "application/yaml"})
        assert as_yaml.headers["content-type"].startswith("application/yaml")
        assert yaml.safe_load(as_yaml.text) == stored
        # bad queries name the parameter
        bad = await http.get("/config/resoto.worker", params={"apply_overrides": "maybe"})
        assert bad.status_code == 400
        assert bad.json()["problems"] == ["apply_overrides: must be true or false, got 'maybe'"]
        missing = await http.get("/config/nope", params={"separate_overrides": "true"})
        assert missing.status_code == 404


async def test_configs_are_validated_against_their_model_with_every_problem_named() -> None:
    async with running_server() as server:
        http = server.http
        model = await http.patch("/configs/model", json=WORKER_MODEL)
        assert model.status_code == 200
        assert [kind["fqn"] for kind in model.json()] == ["home_file", "merge_kind", "worker"]
        assert (await http.get("/configs/model")).json() == model.json()

        bad = {
            "worker": {
                "collector": "example",  # one value: coerced to a list, fine
                "timeout": "soon",
                "merge_kind": "region",
                "home": [{"path": "a"}],
                "surprise": 1,
            }
        }
        answer = await http.put("/config/w", json=bad)
        assert answer.status_code == 400
        assert answer.json() == {
            "error": "invalid config",
            "problems": [
                "worker.timeout: int64: expected a whole number, got 'soon'",
                "worker.merge_kind: merge_kind: must be one of cloud, account, got 'region'",
                "worker.home[0].content: required property missing",
                "worker.surprise: not a property of worker",
                "worker.fork_process: required property missing",
            ],
        }
        assert "w" not in (await http.get("/configs")).json()

        # coerced as Resoto coerces: strings to numbers and booleans, one value to a list
        loose = {"worker": {"collector": "example", "timeout": "10800", "fork_process": "yes"}}
        put = await http.put("/config/w", json=loose)
        assert put.status_code == 200, put.text
        assert put.json()["worker"] == GOOD["worker"]
        # validate=false stores what it is given
        unchecked = await http.put("/config/w", params={"validate": "false"}, json=bad)
        assert unchecked.status_code == 200
        assert (await http.get("/config/w", params={"resolve_env_vars": "false"})).json() == bad


async def test_dry_run_and_unchanged_writes_store_and_announce_nothing() -> None:
    async with running_server() as server:
        http = server.http
        first = await http.put("/config/app", json=GOOD)
        revision = first.headers["resoto-config-revision"]
        updates: list[str] = []
        server.engine.add_observer(
            lambda m: updates.append(m.message_type), message_types=("config-updated",)
        )
        dry = await http.put("/config/app", params={"dry_run": "true"}, json={"a": 1})
        assert dry.status_code == 200
        assert dry.json() == {"a": 1}
        assert (await http.get("/config/app")).json() == GOOD
        same = await http.put("/config/app", json=GOOD)
        assert same.headers["resoto-config-revision"] == revision
        patched = await http.patch("/config/app", json={"other": {"more": 1}})
        assert patched.headers["resoto-config-revision"] != revision
        assert patched.json()["other"] == {"free": "form", "more": 1}
        assert updates == ["config-updated"]
        # the revision rule still holds
        stale = await http.put("/config/app", json={"b": 2}, headers={"if-match": revision})
        assert stale.status_code == 409


async def test_validation_settings_and_models_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(path)
    async with running_server(store=store) as server:
        http = server.http
        assert (await http.patch("/configs/model", json=WORKER_MODEL)).status_code == 200
        put = await http.put(
            "/config/resoto.worker/validation", json={"external_validation": False}
        )
        assert put.json() == {"id": "resoto.worker", "external_validation": False}
        alias = await http.get("/config_validation/resoto.worker")
        assert alias.json() == put.json()
        assert (await http.put("/config/resoto.worker", json=GOOD)).status_code == 200
        bad = await http.put("/config_validation/x", json={"external_validation": "yes"})
        assert bad.status_code == 400
        assert bad.json()["problems"] == ["external_validation: must be true or false, got 'yes'"]
    store.close()
    store = SQLiteStore(path)
    async with running_server(store=store) as server:
        http = server.http
        assert [k["fqn"] for k in (await http.get("/configs/model")).json()] == [
            "home_file",
            "merge_kind",
            "worker",
        ]
        assert (await http.get("/configs/validation")).json() == ["resoto.worker"]
        answer = await http.get(
            "/config/resoto.worker",
            params={"separate_overrides": "true", "include_raw_config": "true"},
        )
        assert answer.json() == {"config": GOOD, "overrides": None, "raw_config": GOOD}
        # the model still checks
        assert (await http.put("/config/resoto.worker", json={"worker": {}})).status_code == 400
        # deleting a config forgets its validation setting
        assert (await http.delete("/config/resoto.worker")).status_code == 204
        assert (await http.get("/config/resoto.worker/validation")).status_code == 404
    store.close()


async def test_a_model_that_names_unknown_kinds_is_refused_whole() -> None:
    async with running_server() as server:
        answer = await server.http.patch(
            "/configs/model",
            json=[
                {"fqn": "a", "properties": [{"name": "x", "kind": "nope[]"}]},
                {"fqn": "string", "runtime_kind": "string"},
                {"fqn": "b", "runtime_kind": "text"},
            ],
        )
        assert answer.status_code == 400
        assert answer.json()["problems"] == [
            "[1].fqn: 'string' is a predefined kind",
            "[2].runtime_kind: must be one of boolean, date, datetime, double, duration, float,"
            " int32, int64, string, got 'text'",
        ]
        answer = await server.http.patch(
            "/configs/model",
            json=[{"fqn": "a", "properties": [{"name": "x", "kind": "dictionary[string, nope]"}]}],
        )
        assert answer.json()["problems"] == ["[0].properties[0].kind: unknown kind 'nope'"]
        assert (await server.http.get("/configs/model")).json() == []


async def test_yaml_bodies_are_accepted_and_held_to_the_json_rule() -> None:
    async with running_server() as server:
        text = "app:\n  name: demo\n  when: 2024-01-02\n"
        put = await server.http.put(
            "/config/y", content=text, headers={"content-type": "application/yaml"}
        )
        assert put.status_code == 200
        assert put.json() == {"app": {"name": "demo", "when": "2024-01-02"}}
        bad = await server.http.put(
            "/config/y", content="a: .nan\n", headers={"content-type": "application/yaml"}
        )
        assert bad.status_code == 400
        assert bad.json()["problems"] == ["body: invalid JSON: NaN is not a JSON number"]


async def test_the_graph_api_answers_501_saying_why() -> None:
    async with running_server() as server:
        for method, path in [
            ("POST", "/graph/resoto"),
            ("PUT", "/graph/resoto/model"),
            ("POST", "/graph/resoto/merge"),
            ("POST", "/graph/resoto/search/aggregate"),
            ("GET", "/graph"),
        ]:
            answer = await server.http.request(method, path, content=b"{}")
            assert answer.status_code == 501, path
            assert answer.json()["error"] == "the inventory graph API is not part of phasebus"
