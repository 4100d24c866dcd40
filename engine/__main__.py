"""``python -m engine``: say where the command line is.

The ``phasebus`` command runs the engine with the built-in workflows, which
live in :mod:`machines` (``machines`` imports ``engine``, never the reverse).
"""

import sys

#: The exit status of a usage error, as the command line's.
EXIT_USAGE = 2


def main() -> int:
    """Print where the command line is; return the exit status of a usage error."""
    sys.stderr.write(
        "phasebus: run 'phasebus' (or 'python -m machines'): the command line needs the"
        " built-in workflows, which the engine package does not hold\n"
    )
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
