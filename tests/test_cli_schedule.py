"""phasebus schedule preview: the next fire times, with daylight-saving notes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from machines.__main__ import main

NIGHTLY = """
[[workflows]]
id = "nightly"
triggers = [
  { cron = "30 2 * * *", timezone = "Europe/Berlin" },
  { cron = "0 * * * *", timezone = "Europe/Berlin" },
]
[[workflows.steps]]
name = "work"
"""


@pytest.fixture
def workflows(tmp_path: Path) -> Path:
    (tmp_path / "nightly.toml").write_text(NIGHTLY)
    return tmp_path


def test_preview_lists_fire_times_and_flags_dst(
    workflows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "schedule",
            "preview",
            "nightly",
            "--workflows",
            str(workflows),
            "--from",
            "2026-03-29T00:10:00+00:00",
            "--next",
            "4",
        ]
    )
    assert status == 0
    assert capsys.readouterr().out.splitlines() == [
        "2026-03-29 01:00 UTC  2026-03-29 03:00 CEST  cron 30 2 * * * (Europe/Berlin)  DST: its"
        " time does not exist this day (UTC+01:00 to UTC+02:00): runs at the next valid instant,"
        " 03:00",
        "2026-03-29 01:00 UTC  2026-03-29 03:00 CEST  cron 0 * * * * (Europe/Berlin)  DST: first"
        " run after the clocks changed (UTC+01:00 to UTC+02:00)",
        "2026-03-29 02:00 UTC  2026-03-29 04:00 CEST  cron 0 * * * * (Europe/Berlin)",
        "2026-03-29 03:00 UTC  2026-03-29 05:00 CEST  cron 0 * * * * (Europe/Berlin)",
    ]


def test_preview_json_on_the_fall_back_day(
    workflows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "schedule",
            "preview",
            "nightly",
            "--workflows",
            str(workflows),
            "--json",
            "--from",
            "2026-10-25T00:00:00+00:00",
            "--next",
            "3",
        ]
    )
    assert status == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["workflow"] == "nightly"
    assert shown["times"] == [
        {
            "at": "2026-10-25T00:30:00+00:00",
            "local": "2026-10-25T02:30:00+02:00",
            "cron": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "dst": "runs once although 02:30 occurs twice this day (UTC+02:00 to UTC+01:00)",
        },
        {
            "at": "2026-10-25T01:00:00+00:00",
            "local": "2026-10-25T02:00:00+01:00",
            "cron": "0 * * * *",
            "timezone": "Europe/Berlin",
            "dst": "first run after the clocks changed (UTC+02:00 to UTC+01:00)",
        },
        {
            "at": "2026-10-25T02:00:00+00:00",
            "local": "2026-10-25T03:00:00+01:00",
            "cron": "0 * * * *",
            "timezone": "Europe/Berlin",
            "dst": None,
        },
    ]


def test_preview_of_an_unscheduled_workflow(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "preview", "metrics"]) == 0
    assert capsys.readouterr().out == "metrics has no schedule\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["schedule", "preview", "nightly", "--from", "2026-03-27"],
            "phasebus: error: argument --from: needs a UTC offset, such as +00:00: '2026-03-27'"
            " (see 'phasebus schedule preview --help')",
        ),
        (
            ["schedule", "preview", "metrics", "--next", "0"],
            "phasebus: error: argument --next: must be from 1 to 1000, got 0"
            " (see 'phasebus schedule preview --help')",
        ),
        (
            ["schedule", "preview", "nope"],
            "phasebus: error: unknown workflow 'nope' (known: cleanup, collect,"
            " collect_and_cleanup, metrics)",
        ),
        (["schedule"], None),
    ],
)
def test_preview_errors_are_one_line(
    argv: list[str], message: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    if message is not None:
        assert err == message + "\n"
