"""How the packages hang together: ``machines`` imports ``engine``, errors live in one module."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import engine
from engine._errors import PhasebusError

ENGINE_MODULES = sorted(
    info.name for info in pkgutil.walk_packages(engine.__path__, prefix="engine.")
)


def test_every_engine_module_imports_without_machines() -> None:
    program = (
        "import importlib, sys\n"
        f"for name in {ENGINE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'machines' or m.startswith('machines.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
    assert "engine._cli" in ENGINE_MODULES
    assert "engine._serve" in ENGINE_MODULES
    assert "engine._catalog" in ENGINE_MODULES


def test_every_exception_class_is_in_errors_and_a_phasebus_error() -> None:
    found = {}
    for name in ENGINE_MODULES:
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("engine"):
                found[value.__qualname__] = value
    assert {"WorkFailed", "TLSError", "RestoreError", "StoreError"} <= set(found)
    misplaced = sorted(name for name, cls in found.items() if cls.__module__ != "engine._errors")
    assert misplaced == []
    strays = sorted(name for name, cls in found.items() if not issubclass(cls, PhasebusError))
    assert strays == []


def test_old_homes_of_moved_errors_still_import() -> None:
    from engine._errors import TLSError, WorkFailed
    from engine._tls import TLSError as tls_error
    from engine._workqueue import WorkFailed as work_failed

    assert (tls_error, work_failed) == (TLSError, WorkFailed)


def test_python_m_engine_says_where_the_command_line_is() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "workflows"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "phasebus: run 'phasebus' (or 'python -m machines'): the command line needs the"
        " built-in workflows, which the engine package does not hold\n"
    )


def test_python_m_machines_is_the_command_line_with_the_built_ins() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "machines", "workflows", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"id": "collect_and_cleanup"' in done.stdout
