"""The README's examples run and say what they show."""

from __future__ import annotations

import re
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from engine import DeclarationError, Declarations, Job

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_the_python_and_toml_declarations_are_the_same_workflow() -> None:
    namespace: dict[str, object] = {}
    exec(blocks("python")[0], namespace)
    declared = Declarations.from_toml(blocks("toml")[0])
    assert declared.workflows == (namespace["nightly"],)


def test_the_job_example_loads() -> None:
    (job,) = Declarations.from_toml(blocks("toml")[1]).jobs
    assert isinstance(job, Job)
    assert job.command == ("logger", "phasebus: collect finished")


def test_the_error_example_is_what_a_bad_file_gives(tmp_path: Path) -> None:
    example = re.search(r"An invalid file raises.*?```\n(.*?)```", README, flags=re.DOTALL)
    assert example is not None
    shown = example.group(1).strip()
    path = tmp_path / "flows.toml"
    path.write_text(
        blocks("toml")[0]
        .replace("timeout = 300", "timeout = -1")
        .replace('cron = "30 2 * * *"', 'cron = "61 * * * *"')
    )
    with pytest.raises(DeclarationError) as raised:
        Declarations.from_file(path)
    assert str(raised.value).replace(str(path), "flows.toml") == shown


def test_the_trio_program_prints_what_the_readme_says() -> None:
    program = blocks("python")[1]
    expected = re.search(r"prints `(.*?)`", README)
    assert expected is not None
    out = StringIO()
    with redirect_stdout(out):
        exec(program, {"__name__": "readme"})
    assert out.getvalue().strip() == expected.group(1)


def test_the_testing_kit_example_passes_in_a_project_of_its_own(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\ntrio_mode = true\n")
    pytester.makepyfile(test_nightly=blocks("python")[2])
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_diagram_in_the_readme_is_the_generated_one() -> None:
    (shown,) = blocks("mermaid")
    generated = Path(__file__).parent.parent / "diagrams" / "collect_and_cleanup.mmd"
    assert shown == generated.read_text(encoding="utf-8")


def test_without_pytest_trio_the_fixture_says_what_to_install(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="async def test_uses_the_engine(phasebus_engine):\n    pass\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-p", "no:trio")
    from engine._pytest_plugin import MISSING_PYTEST_TRIO

    assert MISSING_PYTEST_TRIO in result.stdout.lines
    assert result.ret != 0


def test_the_testing_extra_brings_pytest_trio() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    testing = pyproject["project"]["optional-dependencies"]["testing"]
    assert any(requirement.startswith("pytest-trio") for requirement in testing)
    assert "pip install 'phasebus[testing]'" in README


async def test_every_route_of_the_api_is_in_the_readme_table() -> None:
    import re

    from starlette.routing import Route, WebSocketRoute

    from engine import open_engine
    from engine._web import create_app

    table = README.split("### Every route")[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    async with open_engine() as engine:
        app = create_app(engine)
        routes = list(app._router.routes)
        app.close()
    missing = []
    for route in routes:
        path = re.sub(r"\{\w+:path\}", "...", route.path)  # type: ignore[attr-defined]
        if path == "/...":
            continue  # the refusal of WebSockets anywhere else
        pattern = re.compile(re.escape(path) + r"(?![\w/{])")
        found = [row.split(" | ")[0] for row in rows if pattern.search(row)]
        if isinstance(route, WebSocketRoute):
            ok = any("WebSocket" in row for row in found)
        else:
            assert isinstance(route, Route)
            methods = (route.methods or set()) - {"HEAD", "OPTIONS"}
            ok = any("any method" in row or all(f"`{m}" in row for m in methods) for row in found)
        if not ok:
            missing.append(f"{path} {sorted(getattr(route, 'methods', None) or ['WS'])}")
    assert missing == []
