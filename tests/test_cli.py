from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from engine._diagrams import mermaid_diagram
from machines import BUILTIN_WORKFLOWS, PHASES
from machines.__main__ import main, main_async

ROOT = Path(__file__).resolve().parent.parent
DIAGRAMS = ROOT / "diagrams"
STEPS = [step for steps in PHASES.values() for step in steps]

USER_WORKFLOWS = """
[[workflows]]
id = "nightly"
description = "Collect, then wait for an approval."
triggers = [{ cron = "30 2 * * *", timezone = "Europe/Berlin" }]

[[workflows.steps]]
name = "collect"
phase = "collect"

[[workflows.steps]]
name = "approve"
action = { kind = "wait_for_event", message_type = "approved" }
timeout = 5
on_error = "stop"

[[jobs]]
id = "notify"
command = ["{python}", "-c", "pass"]
triggers = [{ event = "post_collect" }]
"""


def write_workflows(directory: Path, text: str = USER_WORKFLOWS, name: str = "user.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text.replace("{python}", sys.executable.replace("\\", "/")), encoding="utf-8")
    return directory


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("phasebus: error: ")
    return lines[0]


async def run_cli(*argv: str, console: Console | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = await main_async(list(argv), stdout=out, stderr=err, console=console)
    return status, out.getvalue(), err.getvalue()


def messages(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


# ---------------------------------------------------------------- run


async def test_run_demo_json_shows_every_step_acted_on_and_answered_in_order(
    autojump_clock: object,
) -> None:
    status, out, err = await run_cli("run", "collect_and_cleanup", "--demo", "--json")
    assert (status, err) == (0, "")
    stream = messages(out)
    kinds = [(m["kind"], m["message_type"]) for m in stream]
    assert kinds.index(("event", "task_started")) < kinds.index(("action", "pre_collect"))
    assert stream[-1]["message_type"] == "task_end"
    assert stream[-1]["data"]["outcome"] == "done"
    steps_seen = []
    for message in stream:
        if message["kind"] == "action":
            steps_seen.append([message["data"]["step"]])
        elif message["kind"] == "action_done":
            assert message["data"]["step"] == steps_seen[-1][0], "an answer to the current step"
            steps_seen[-1].append(message["data"]["subscriber_id"])
    assert [entry[0] for entry in steps_seen] == STEPS
    assert all(len(entry) == 2 for entry in steps_seen), steps_seen
    answered = dict((entry[0], entry[1]) for entry in steps_seen)
    assert answered["collect"] == "demo.collector"
    assert answered["merge_outer_edges"] == "demo.core"
    assert answered["generate_metrics"] == "demo.metrics"
    assert any(m["kind"] == "action_progress" for m in stream)


async def test_run_without_listeners_goes_through_every_step(autojump_clock: object) -> None:
    status, out, _ = await run_cli("run", "metrics", "--json")
    assert status == 0
    stream = messages(out)
    assert [m["message_type"] for m in stream if m["kind"] == "action"] == list(
        PHASES["generate_metrics"]
    )
    assert not any(m["kind"] == "action_done" for m in stream)


def test_run_streams_json_lines_when_stdout_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "metrics"]) == 0
    stream = messages(capsys.readouterr().out)
    assert stream[0]["message_type"] == "task_started"
    assert stream[-1]["data"]["outcome"] == "done"


async def test_run_exits_1_when_the_task_does_not_end_done(
    tmp_path: Path, autojump_clock: object
) -> None:
    directory = write_workflows(tmp_path / "flows")
    status, out, err = await run_cli("run", "nightly", "--workflows", str(directory), "--json")
    assert status == 1
    assert err == ""
    end = messages(out)[-1]
    assert end["message_type"] == "task_end"
    assert end["data"]["outcome"] == "failed"
    assert "timed out waiting for event 'approved'" in end["data"]["error"]


def test_run_a_job_from_a_workflows_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = write_workflows(tmp_path / "flows")
    assert main(["run", "notify", "--workflows", str(directory), "--json"]) == 0
    end = messages(capsys.readouterr().out)[-1]
    assert end["data"]["outcome"] == "done"
    assert end["data"]["descriptor_id"] == "notify"


def test_run_a_job_that_needs_a_registered_callable_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = write_workflows(
        tmp_path / "flows", '[[jobs]]\nid = "hook"\ncallable = "notify_team"\n'
    )
    assert main(["run", "hook", "--workflows", str(directory)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == ("phasebus: error: hook: callable: no command is registered as 'notify_team'")


def test_run_unknown_workflow(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "colect"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert one_error_line(captured.err) == (
        "phasebus: error: unknown workflow 'colect'"
        " (known: cleanup, collect, collect_and_cleanup, metrics)"
    )


def test_run_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "collect", "--demo", "--fast"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "phasebus: error: unrecognized arguments: --fast (see 'phasebus --help')"
    )


def test_run_needs_a_workflow(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert "the following arguments are required: WORKFLOW" in one_error_line(
        capsys.readouterr().err
    )


async def test_run_live_view_ends_with_a_summary_table(autojump_clock: object) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    status, out, err = await run_cli("run", "collect_and_cleanup", "--demo", console=console)
    assert (status, out, err) == (0, "", "")
    text = screen.getvalue()
    assert "Simulated listeners: demo.cleanup-planner, demo.collector, demo.core" in text
    assert "waiting for" in text  # the live panel
    assert "aws/123456789012/us-east-1" in text  # a listener's progress bar
    summary = text[text.index("collect_and_cleanup  done in") :]
    for step in STEPS:
        assert step in summary
    assert "demo.collector (done)" in summary
    assert "demo.core (done)" in summary
    assert "  ✓ merge_outer_edges" in text  # the log line of a finished step


async def test_run_live_view_of_a_failed_task(tmp_path: Path, autojump_clock: object) -> None:
    directory = write_workflows(tmp_path / "flows")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    status, _, _ = await run_cli("run", "nightly", "--workflows", str(directory), console=console)
    assert status == 1
    text = screen.getvalue()
    assert "nightly  failed in" in text
    assert "  ✗ approve" in text
    assert "timed out" in text


def test_python_m_engine_runs_the_demo_end_to_end() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "machines", "run", "collect_and_cleanup", "--demo", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    stream = messages(done.stdout)
    assert stream[-1]["message_type"] == "task_end"
    assert stream[-1]["data"]["outcome"] == "done"
    assert [m["data"]["step"] for m in stream if m["kind"] == "action_done"] == STEPS
    assert took < 15, f"the demo took {took:.1f}s"


# ---------------------------------------------------------------- workflows


def test_workflows_lists_steps_triggers_and_next_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workflows"]) == 0
    out = capsys.readouterr().out
    for workflow_id in BUILTIN_WORKFLOWS:
        assert f"{workflow_id}  workflow, built-in" in out
    assert "cron 0 * * * * (UTC)" in out
    assert "event start_collect_and_cleanup_workflow" in out
    assert (
        "13. [generate_metrics] post_generate_metrics  (perform_action, 10s, on error continue)"
        in out
    )
    assert "not scheduled" in out  # the workflows without a cron trigger


def test_workflows_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = write_workflows(tmp_path / "flows")
    before = datetime.now(UTC)
    assert main(["workflows", "--json", "--workflows", str(directory)]) == 0
    listed = {entry["id"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert list(listed) == [*BUILTIN_WORKFLOWS, "nightly", "notify"]
    main_job = listed["collect_and_cleanup"]
    assert [step["name"] for step in main_job["steps"]] == STEPS
    assert main_job["steps"][1] == {
        "name": "collect",
        "phase": "collect",
        "action": "perform_action",
        "message_type": "collect",
        "timeout": 10.0,
        "on_error": "continue",
    }
    assert main_job["triggers"] == [{"cron": "0 * * * *", "timezone": "UTC"}]
    next_run = datetime.fromisoformat(main_job["next_run"])
    assert before < next_run <= before + timedelta(hours=1)
    assert (next_run.minute, next_run.second, next_run.utcoffset()) == (0, 0, timedelta(0))
    assert listed["metrics"]["next_run"] is None
    assert listed["nightly"]["source"].endswith("user.toml")
    assert listed["nightly"]["steps"][1]["action"] == "wait_for_event"
    assert listed["notify"]["kind"] == "job"
    assert listed["notify"]["triggers"] == [{"event": "post_collect", "filter": {}}]
    assert listed["notify"]["steps"][0]["command"][1:] == ["-c", "pass"]


def test_workflows_directory_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workflows", "--workflows", str(tmp_path / "missing")]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"phasebus: error: --workflows: {str(tmp_path / 'missing')!r} does not exist"
    )


def test_workflows_invalid_file_is_one_line_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = '[[workflows]]\nid = "w"\nsteps = [{ name = "a", timeout = -1 }, { name = "a" }]\n'
    directory = write_workflows(tmp_path / "flows", bad, "bad.toml")
    assert main(["workflows", "--workflows", str(directory)]) == 2
    line = one_error_line(capsys.readouterr().err)
    path = directory / "bad.toml"
    assert line == (
        f"phasebus: error: {path}: workflows[0].steps[0].timeout: must be > 0, got -1"
        f" (and 1 more problem; see 'phasebus validate {path}')"
    )


def test_workflows_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = write_workflows(tmp_path / "flows", "\xff", "broken.json")
    (directory / "broken.json").write_bytes(b"\xff\xfe")
    assert main(["workflows", "--workflows", str(directory)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"phasebus: error: {directory / 'broken.json'}: cannot read the file: ")


def test_workflows_id_clash_with_a_built_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = write_workflows(
        tmp_path / "flows", '[[workflows]]\nid = "collect"\nsteps = [{ name = "a" }]\n'
    )
    assert main(["workflows", "--workflows", str(directory)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"phasebus: error: {directory / 'user.toml'}: workflows[0].id: duplicate id 'collect'"
        " (also declared in built-in)"
    )


# ---------------------------------------------------------------- validate


def test_validate_good_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = write_workflows(tmp_path / "flows")
    data = {"workflows": [{"id": "other", "steps": [{"name": "x"}]}]}
    (directory / "more.json").write_text(json.dumps(data), encoding="utf-8")
    assert main(["validate", str(directory)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{directory / 'more.json'}: ok (1 workflow, 0 jobs)",
        f"{directory / 'user.toml'}: ok (1 workflow, 1 job)",
    ]


def test_validate_prints_every_problem_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[workflows]]\nid = "w"\nsurpass = "never"\n'
        'steps = [{ name = "a", timeout = 0 }, { name = "a", action = { kind = "teleport" } }]\n'
        '[[workflows]]\nid = "collect"\nsteps = [{ name = "b" }]\n',
        encoding="utf-8",
    )
    (tmp_path / "x.yaml").write_text("workflows: []\n", encoding="utf-8")
    clash = tmp_path / "clash.json"
    clash.write_text(
        json.dumps({"workflows": [{"id": "collect", "steps": [{"name": "c"}]}]}), encoding="utf-8"
    )
    assert (
        main(
            [
                "validate",
                str(bad),
                str(clash),
                str(tmp_path / "gone.toml"),
                str(tmp_path / "x.yaml"),
            ]
        )
        == 1
    )
    out = capsys.readouterr().out.splitlines()
    assert f"{bad}: workflows[0].steps[0].timeout: must be > 0, got 0" in out
    assert any(
        line.startswith(f"{bad}: workflows[0].steps[1].action.kind: unknown action kind 'teleport'")
        for line in out
    )
    assert any(line.startswith(f"{bad}: workflows[0].surpass: must be one of") for line in out)
    assert f"{bad}: workflows[0].steps[1].name: duplicate name 'a'" in out
    assert f"{clash}: workflows[0].id: duplicate id 'collect' (also declared in built-in)" in out
    assert any(line.startswith(f"{tmp_path / 'gone.toml'}: cannot read the file: ") for line in out)
    assert f"{tmp_path / 'x.yaml'}: unknown file type '.yaml': use .toml or .json" in out
    assert out[-1].endswith("in 4 files")


def test_validate_invalid_json_syntax(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.json"
    path.write_text('{"workflows": [', encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    assert capsys.readouterr().out.splitlines()[0].startswith(f"{path}: invalid JSON: ")


def test_validate_clash_between_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a.toml", "b.toml"):
        (tmp_path / name).write_text(
            '[[workflows]]\nid = "same"\nsteps = [{ name = "x" }]\n', encoding="utf-8"
        )
    assert main(["validate", str(tmp_path)]) == 1
    assert (
        f"{tmp_path / 'b.toml'}: workflows[0].id: duplicate id 'same'"
        f" (also declared in {tmp_path / 'a.toml'})" in (capsys.readouterr().out.splitlines())
    )


def test_validate_needs_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 2
    assert "the following arguments are required: FILE" in one_error_line(capsys.readouterr().err)
    assert main(["validate", str(tmp_path)]) == 2
    assert (
        one_error_line(capsys.readouterr().err)
        == "phasebus: error: no .toml or .json files to validate"
    )


# ---------------------------------------------------------------- diagram


def test_diagram_check_passes_on_the_committed_diagrams(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--check", "--out", str(DIAGRAMS)]) == 0
    assert capsys.readouterr().out == f"4 diagrams up to date in {DIAGRAMS}\n"


def test_diagram_check_defaults_to_the_diagrams_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["diagram", "--check"]) == 0
    assert capsys.readouterr().out == "4 diagrams up to date in diagrams\n"


def test_diagram_check_fails_on_stale_missing_and_orphan_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for workflow_id in BUILTIN_WORKFLOWS:
        shutil.copy(DIAGRAMS / f"{workflow_id}.mmd", tmp_path)
    (tmp_path / "metrics.mmd").write_text("stateDiagram-v2\n", encoding="utf-8")
    (tmp_path / "collect.mmd").unlink()
    (tmp_path / "retired.mmd").write_text("stateDiagram-v2\n", encoding="utf-8")
    assert main(["diagram", "--check", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"{tmp_path / 'collect.mmd'}: missing",
        f"{tmp_path / 'metrics.mmd'}: out of date",
        f"{tmp_path / 'retired.mmd'}: no workflow 'retired' any more",
    ]
    assert (
        captured.err
        == f"phasebus: 3 diagrams to regenerate: run 'phasebus diagram --out {tmp_path}'\n"
    )


def test_diagram_check_named_workflows_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(DIAGRAMS / "metrics.mmd", tmp_path)
    assert main(["diagram", "metrics", "--check", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"1 diagram up to date in {tmp_path}\n"


def test_diagram_check_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--check", "--format", "dot", "--out", str(DIAGRAMS)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "phasebus: error: --check compares Mermaid files only (use --format mermaid)"
    )
    assert main(["diagram", "--check", "--out", str(tmp_path / "none")]) == 2
    assert "is not a directory" in one_error_line(capsys.readouterr().err)


def test_diagram_prints_mermaid_and_dot(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "metrics"]) == 0
    assert capsys.readouterr().out == mermaid_diagram(BUILTIN_WORKFLOWS["metrics"])
    assert main(["diagram", "metrics", "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph metrics {")


def test_diagram_writes_files_for_user_workflows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = write_workflows(tmp_path / "flows")
    out = tmp_path / "out"
    assert main(["diagram", "--workflows", str(directory), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{w}.mmd" for w in [*BUILTIN_WORKFLOWS, "nightly", "notify"])
    assert f"wrote {out / 'nightly.mmd'}" in capsys.readouterr().out.splitlines()
    nightly = (out / "nightly.mmd").read_text(encoding="utf-8")
    assert "state collect {" in nightly
    assert "approve --> end: error → stop (task failed)" in nightly


def test_diagram_unknown_workflow_and_bad_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "metrics", "nope"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(
        "phasebus: error: unknown workflow 'nope'"
    )
    assert main(["diagram", "--format", "png"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "phasebus: error: argument --format: invalid choice: 'png'"
        " (choose from 'mermaid', 'dot', 'svg') (see 'phasebus diagram --help')"
    )


def test_diagram_svg_without_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["diagram", "metrics", "--format", "svg"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "phasebus: error: SVG needs Graphviz's 'dot' program, which is not on the PATH"
        " (install Graphviz, e.g. 'apt-get install graphviz'), or use --format mermaid or dot"
    )


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_diagram_svg_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "metrics", "--format", "svg", "--out", str(tmp_path)]) == 0
    assert "<svg" in (tmp_path / "metrics.svg").read_text(encoding="utf-8")


def test_diagram_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    assert main(["diagram", "metrics", "--out", str(blocker / "sub")]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(
        f"phasebus: error: cannot write diagrams to {str(blocker / 'sub')!r}: "
    )


# ---------------------------------------------------------------- the program


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "run, list, check and draw phasebus workflows" in capsys.readouterr().out.lower()
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "phasebus 0.1.0\n"


def test_no_command_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "the following arguments are required: COMMAND" in one_error_line(
        capsys.readouterr().err
    )
    assert main(["serve-all"]) == 2
    assert "invalid choice: 'serve-all'" in one_error_line(capsys.readouterr().err)
