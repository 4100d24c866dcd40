"""``phasebus`` (and ``python -m machines``): the command line with the built-in workflows.

The engine's command line knows no workflow of its own; this launcher hands it
the ones declared in :mod:`machines`, so that ``machines`` imports ``engine``
and never the reverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine import _cli

from . import BUILTIN_WORKFLOWS


def main(argv: list[str] | None = None) -> int:
    """Run the ``phasebus`` command line; return the exit status."""
    return _cli.main(argv, builtins=BUILTIN_WORKFLOWS.values())


async def main_async(argv: Sequence[str] | None = None, **options: Any) -> int:
    """Run the ``phasebus`` command line inside trio; return the exit status.

    ``options`` are those of :func:`engine._cli.main_async` (``stdout``,
    ``stderr``, ``console``), for programs and tests that run it in-process.
    """
    return await _cli.main_async(argv, builtins=BUILTIN_WORKFLOWS.values(), **options)


if __name__ == "__main__":
    raise SystemExit(main())
