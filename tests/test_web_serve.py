"""``phasebus serve``: the engine with its API, the core config, options and errors."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import httpx
import pytest
import trio

from engine._serve import add_serve_arguments, core_config, serve, serve_command, serve_options
from machines import BUILTIN_WORKFLOWS


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


async def test_serve_opens_the_engine_with_its_core_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "extra.toml").write_text(
        "[[workflows]]\n"
        'id = "nightly"\n'
        'triggers = [{ cron = "30 2 * * *", timezone = "Europe/Berlin" }]\n'
        "[[workflows.steps]]\n"
        'name = "report"\n'
    )
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve, port=0, workflows_dir=tmp_path, builtins=BUILTIN_WORKFLOWS.values()
            )
        )
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/system/ready")).text == "ok"
            core = await http.get("/config/phasebus.core")
            ids = [row["id"] for row in (await http.get("/workflows")).json()]
        nursery.cancel_scope.cancel()
    assert url.startswith("http://127.0.0.1:")
    assert capsys.readouterr().out == f"phasebus listening on {url} (no authentication)\n"
    assert core.json() == {
        "workflows": {
            "collect_and_cleanup": {"schedule": "0 * * * *", "timezone": "UTC"},
            "nightly": {"schedule": "30 2 * * *", "timezone": "Europe/Berlin"},
        }
    }
    assert core.headers["Resoto-Config-Revision"]
    assert ids == ["cleanup", "collect", "collect_and_cleanup", "metrics", "nightly"]


async def test_serve_with_demo_listeners_and_psk() -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve,
                port=0,
                psk="secret",
                demo=True,
                announce=False,
                builtins=BUILTIN_WORKFLOWS.values(),
            )
        )
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/subscribers")).status_code == 401
            from engine._auth import make_token

            answer = await http.get(
                "/subscribers", headers={"authorization": f"Bearer {make_token('secret')}"}
            )
        nursery.cancel_scope.cancel()
    ids = [subscriber["id"] for subscriber in answer.json()]
    assert "demo.collector" in ids


async def test_serve_command_reports_bad_declarations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.toml").write_text('[[workflows]]\nid = "x"\nsteps = []\n')
    status = await serve_command(parse("--port", "0", "--workflows", str(tmp_path)))
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("phasebus: error: ")
    assert "bad.toml" in err
    status = await serve_command(parse("--port", "0", "--workflows", str(tmp_path / "none")))
    assert status == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_arguments_and_psk_from_the_environment() -> None:
    args = parse()
    assert (args.host, args.port, args.psk, args.store, args.demo, args.retention) == (
        "127.0.0.1",
        8900,
        None,
        "phasebus.sqlite3",
        False,
        60,
    )
    assert parse("--store", "memory").store == "memory"


def test_the_psk_comes_from_the_option_or_the_environment() -> None:
    assert serve_options(parse(), {})["psk"] is None
    assert serve_options(parse(), {"PHASEBUS_PSK": ""})["psk"] is None
    assert serve_options(parse(), {"PHASEBUS_PSK": "from-env"})["psk"] == "from-env"
    assert serve_options(parse("--psk", "given"), {"PHASEBUS_PSK": "env"})["psk"] == "given"
    assert serve_options(parse("--port", "0", "--demo", "--store", "memory"), {}) == {
        "host": "127.0.0.1",
        "port": 0,
        "psk": None,
        "workflows_dir": None,
        "demo": True,
        "store": "memory",
        "retention_days": 60,
        "tls": False,
        "cert": None,
        "key": None,
        "metrics": True,
        "replica": None,
        "lease_seconds": None,
    }


async def test_core_config_lists_single_schedules() -> None:
    from engine import open_engine

    async with open_engine(workflows=BUILTIN_WORKFLOWS.values()) as engine:
        assert core_config(engine) == {
            "workflows": {"collect_and_cleanup": {"schedule": "0 * * * *", "timezone": "UTC"}}
        }
