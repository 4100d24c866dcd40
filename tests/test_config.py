"""The config service and the engine's own config, phasebus.core."""

from __future__ import annotations

import re

import pytest
import trio

from engine import ConfigConflict, InvalidInputError, open_engine
from engine._config import merge_patch
from machines import COLLECT_AND_CLEANUP, METRICS

from .conftest import START
from .test_engine import drain, events


async def test_writes_and_deletes_have_revisions_and_events() -> None:
    async with (
        open_engine() as engine,
        engine.open_listener(message_types=["config-updated", "config-deleted"]) as watch,
    ):
        first = engine.configs.put("app", {"a": {"b": 1, "c": 2}})
        second = engine.configs.patch("app", {"a": {"b": None, "d": 3}, "e": [1]})
        assert second.data == {"a": {"c": 2, "d": 3}, "e": [1]}
        assert first.revision != second.revision
        assert engine.configs.get("app") == second
        assert engine.configs.ids() == ["app"]
        assert engine.configs.delete("app") is True
        assert engine.configs.delete("app") is False
        assert engine.configs.get("app") is None
        seen = [(e.message_type, e.data) for e in events(drain(watch))]
    assert seen == [
        ("config-updated", {"id": "app", "revision": first.revision}),
        ("config-updated", {"id": "app", "revision": second.revision}),
        ("config-deleted", {"id": "app"}),
    ]


async def test_if_match_refuses_a_stale_revision_and_changes_nothing() -> None:
    async with open_engine() as engine:
        stored = engine.configs.put("app", {"v": 1})
        engine.configs.put("app", {"v": 2}, if_match=stored.revision)
        current = engine.configs.get("app")
        assert current is not None
        message = f"config 'app' is at revision {current.revision!r}, not {stored.revision!r}"
        with pytest.raises(ConfigConflict, match=rf"^{re.escape(message)}$"):
            engine.configs.put("app", {"v": 3}, if_match=stored.revision)
        with pytest.raises(ConfigConflict):
            engine.configs.delete("app", if_match=stored.revision)
        with pytest.raises(
            ConfigConflict, match=r"^config 'new' does not exist \(expected revision 'r1'\)$"
        ):
            engine.configs.patch("new", {"v": 1}, if_match="r1")
        config = engine.configs.get("app")
        assert config is not None
        assert config.data == {"v": 2}
        assert engine.configs.ids() == ["app"]


async def test_revisions_are_never_handed_out_twice() -> None:
    async with open_engine() as engine:
        seen = set()
        for _ in range(3):
            seen.add(engine.configs.put("app", {}).revision)
            engine.configs.delete("app")
        assert len(seen) == 3
        first = engine.configs.put("app", {}).revision
    async with open_engine() as again:  # a fresh counter, as after a restart without a store
        assert again.configs.put("app", {}).revision != first


async def test_bad_configs_are_rejected() -> None:
    async with open_engine(workflows=[METRICS]) as engine:
        with pytest.raises(InvalidInputError, match=r"^a config must be a JSON object, got \[1\]$"):
            engine.configs.put("app", [1])  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match=r"^id: must be 1-200 letters"):
            engine.configs.put("bad id", {})
        with pytest.raises(InvalidInputError) as raised:
            engine.configs.put(
                "phasebus.core",
                {
                    "workflows": {
                        "nope": {"schedule": "0 * * * *"},
                        "metrics": {"schedule": "61 * * * *", "timezone": "Nowhere/City", "x": 1},
                    }
                },
            )
        assert str(raised.value).splitlines() == [
            "workflows.nope: unknown workflow 'nope'",
            "workflows.metrics.x: unknown field",
            "workflows.metrics.schedule: '61 * * * *' is not a valid cron expression",
            "workflows.metrics.timezone: unknown time zone 'Nowhere/City'",
        ]
        assert engine.configs.ids() == []


async def test_changing_the_core_schedule_takes_effect_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_engine(workflows=[COLLECT_AND_CLEANUP, METRICS], start_time=START) as engine:
        async with engine.open_listener(message_types=["task_started"]) as watch:
            assert engine.next_run("collect_and_cleanup") == START.replace(
                hour=1, minute=0, second=0
            )
            assert engine.next_run("metrics") is None
            engine.configs.put(
                "phasebus.core",
                {
                    "workflows": {
                        "collect_and_cleanup": {"schedule": None},
                        "metrics": {"schedule": "*/15 * * * *"},
                    }
                },
            )
            assert engine.next_run("collect_and_cleanup") is None
            assert engine.next_run("metrics") == START.replace(minute=15, second=0)
            await trio.sleep(3600 * 2)
            started = [e.data["workflow"] for e in events(drain(watch))]
            assert started == ["metrics"] * 8
            engine.configs.delete("phasebus.core")
            assert engine.next_run("metrics") is None
            await trio.sleep(3600)
            assert [e.data["workflow"] for e in events(drain(watch))] == ["collect_and_cleanup"]


def test_merge_patch_follows_rfc_7386() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch([1, 2], {"a": "b"}) == {"a": "b"}
