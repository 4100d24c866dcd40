"""Take the README's screenshot of the web console from a real run.

    python -m tests.console_shot [--out docs/console.png] [--width 1280] [--height 1500]

It starts ``phasebus serve --demo --store memory --port 0``, finishes one run of
``collect`` (for the history), subscribes an ``ops.approver`` that never answers
``cleanup``, starts ``collect_and_cleanup`` and photographs its page once the run
waits at ``cleanup`` for the approver. Needs Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .browser_support import (
    Subscriber,
    missing_browser,
    open_chromium,
    request,
    serve,
    wait_for,
)


def take(out: Path, width: int, height: int) -> None:
    """Run the scene and save the screenshot to ``out``."""
    with serve(workflows=None) as url:
        done = request(f"{url}/workflow/collect/run", "POST")[1]["task_id"]
        wait_for(
            lambda: not request(f"{url}/task/{done}")[1]["running"],
            timeout=30,
            what="the collect run",
        )
        approver = Subscriber(url, "ops.approver", ["cleanup"])
        driver = open_chromium((width, height))
        try:
            task_id = request(f"{url}/workflow/collect_and_cleanup/run", "POST")[1]["task_id"]
            driver.get(f"{url}/ui/#task/{task_id}")
            approver.next_action(timeout=60)  # the run now waits at cleanup for the approver
            time.sleep(1.5)  # the collector answers too; the deadline counts down
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
            approver.close()


def main(argv: list[str] | None = None) -> int:
    """Take the screenshot; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.console_shot")
    parser.add_argument("--out", type=Path, default=Path("docs/console.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args(argv)
    reason = missing_browser()
    if reason is not None:
        print(f"console_shot: {reason}", file=sys.stderr)
        return 1
    take(args.out, args.width, args.height)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
