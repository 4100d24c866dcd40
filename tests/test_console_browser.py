"""The web console in a real browser: headless Chromium on a real ``phasebus serve --demo``.

Outside CI a missing browser skips these tests with the reason; under ``CI=true``
they must run. A failing test leaves a screenshot (the report says where).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .browser_support import Subscriber, missing_browser, open_chromium, request, serve, wait_for
from .conftest import BROWSER_KEY

PSK = "browser-test-key"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = missing_browser()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    driver = open_chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(browser: Any) -> Iterator[str]:
    with serve() as url:
        yield url


@pytest.fixture
def page(request: pytest.FixtureRequest, browser: Any) -> Any:
    """The browser, remembered for a screenshot if the test fails."""
    request.node.stash[BROWSER_KEY] = browser
    return browser


@pytest.fixture
def prober(server: str) -> Iterator[Subscriber]:
    """The only subscriber of the probe workflow's steps: nothing moves until it answers."""
    subscriber = Subscriber(server, "test.prober", ["probe_one", "probe_two"])
    try:
        yield subscriber
    finally:
        subscriber.close()


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def one(driver: Any, selector: str, timeout: float = 5.0) -> Any:
    return wait_for(lambda: css(driver, selector)[:1], timeout=timeout, what=selector)[0]


def text_of(driver: Any, selector: str) -> str:
    return str(wait_for(lambda: css(driver, selector)[0].text, what=f"the text of {selector}"))


def click(driver: Any, selector: str) -> None:
    """Click an element, looked up afresh (the page redraws live parts as events come)."""

    def clicked() -> bool:
        css(driver, selector)[0].click()
        return True

    wait_for(clicked, what=f"a click on {selector}")


def timeline_rows(driver: Any, item: str) -> list[dict[str, Any]]:
    """The rows of a timeline, read in one go (the list may be redrawn meanwhile)."""
    rows: list[dict[str, Any]] = driver.execute_script(
        """
        return [...document.querySelectorAll(arguments[0] + " li[data-step]")].map((row) => {
          const bar = row.querySelector(".bar");
          return {
            step: row.dataset.step,
            text: row.textContent,
            duration: row.querySelector(".duration").textContent,
            left: parseFloat(bar.dataset.left),
            width: parseFloat(bar.dataset.width),
            placed: bar.style.width.endsWith("%") && bar.style.left.endsWith("%"),
          };
        });
        """,
        item,
    )
    return rows


def state_of(driver: Any, name: str) -> tuple[set[str], str]:
    """The classes and the mark's words of a state in the task's diagram."""
    group = one(driver, f'#task-diagram [data-state="{name}"]')
    mark = group.find_element("css selector", ".mark").text
    return set(group.get_attribute("class").split()), mark


def open_console(driver: Any, url: str, hash: str = "") -> None:
    driver.get(f"{url}/{'#' + hash if hash else ''}")
    # redirected to /ui/, the page is up and listening on the bus
    wait_for(lambda: driver.current_url.startswith(f"{url}/ui/"), what="the redirect to /ui/")
    wait_for(lambda: one(driver, "#connection").text == "live", what="the live connection")


def start_from_console(driver: Any, workflow: str) -> str:
    """Start a run with the console's form; return the task id it reports."""
    from selenium.webdriver.support.select import Select

    Select(one(driver, "#start-workflow")).select_by_value(workflow)
    one(driver, "#start-form button").click()
    text = wait_for(
        lambda: (
            "as task" in one(driver, "#start-result").text and one(driver, "#start-result").text
        ),
        what="the start result",
    )
    return str(text.rsplit(" ", 1)[1])


def test_a_started_run_appears_and_its_diagram_follows_the_steps(
    page: Any, server: str, prober: Subscriber
) -> None:
    open_console(page, server)
    clicked = time.monotonic()
    task_id = start_from_console(page, "console_probe")
    card = f'#live-tasks [data-task="{task_id}"]'
    one(page, card, timeout=1.0)
    appeared = time.monotonic() - clicked
    assert appeared < 1.0, f"the run took {appeared:.2f} s to appear"
    # who is blocking: the prober owes probe_one
    wait_for(lambda: "test.prober — last heard" in text_of(page, card), what="the owed listener")
    assert "first \u203a probe_one (1 of 2)" in text_of(page, card)  # phase, step

    click(page, f"{card} h2 a")
    wait_for(lambda: state_of(page, "probe_one")[0] >= {"state", "current"}, what="probe_one lit")
    assert state_of(page, "probe_one")[1] == "▶ now"
    assert "done" in state_of(page, "start")[0]
    assert state_of(page, "probe_two") == ({"state"}, "")

    prober.answer(prober.next_action())
    wait_for(lambda: "current" in state_of(page, "probe_two")[0], what="probe_two lit")
    assert state_of(page, "probe_one") == ({"state", "done"}, "✓ done")
    assert state_of(page, "probe_two")[1] == "▶ now"

    prober.answer(prober.next_action())
    wait_for(lambda: "done" in state_of(page, "end")[0], what="the end lit")
    assert state_of(page, "end")[1] == "✓ done"
    assert state_of(page, "probe_two") == ({"state", "done"}, "✓ done")
    assert "test.prober: done" in text_of(page, "#task-timeline")
    # the task left the live list
    page.get(f"{server}/ui/#live")
    wait_for(lambda: not css(page, f'#live-tasks [data-task="{task_id}"]'), what="the task gone")


def test_stopping_from_the_console_ends_the_task_as_stopped(
    page: Any, server: str, prober: Subscriber
) -> None:
    open_console(page, server)
    task_id = start_from_console(page, "console_probe")
    click(page, f'#live-tasks [data-task="{task_id}"] button.danger')
    dialog = one(page, "dialog#confirm-stop[open]")
    assert task_id in dialog.text
    # keeping it running changes nothing
    dialog.find_element("css selector", 'button[value="cancel"]').click()
    time.sleep(0.3)
    assert request(f"{server}/task/{task_id}")[1]["running"] is True

    click(page, f'#live-tasks [data-task="{task_id}"] button.danger')
    one(page, 'dialog#confirm-stop[open] button[value="stop"]').click()
    wait_for(lambda: not css(page, f'#live-tasks [data-task="{task_id}"]'), what="the task gone")
    status, task = request(f"{server}/task/{task_id}")
    assert status == 200
    assert task["outcome"] == "stopped"

    page.get(f"{server}/ui/#task/{task_id}")
    wait_for(lambda: "stopped" in state_of(page, "end")[0], what="the end marked stopped")
    assert state_of(page, "end")[1] == "■ stopped"
    assert "■ stopped" in one(page, "#task-facts").text


def test_history_shows_a_finished_run_as_a_timeline(
    page: Any, server: str, prober: Subscriber
) -> None:
    started = request(f"{server}/workflow/console_probe/run", "POST")[1]
    task_id = started["task_id"]
    prober.answer(prober.next_action())
    time.sleep(0.2)  # the second step takes a moment: its bar is longer
    prober.answer(prober.next_action())
    wait_for(lambda: request(f"{server}/task/{task_id}")[1]["running"] is False, what="the end")

    open_console(page, server, "history")
    from selenium.webdriver.support.select import Select

    Select(one(page, "#history-form select[name=workflow]")).select_by_value("console_probe")
    Select(one(page, "#history-form select[name=outcome]")).select_by_value("done")
    one(page, "#history-form button").click()
    item = f'#history-list [data-task="{task_id}"]'
    wait_for(lambda: "✓ done" in text_of(page, item), what="the finished run in the history")
    rows = wait_for(lambda: timeline_rows(page, item), what="the run's timeline")
    assert [row["step"] for row in rows] == ["probe_one", "probe_two"]
    for row in rows:
        assert "test.prober: done" in row["text"]
        assert row["duration"].endswith("s")
        assert row["placed"]  # sized on the page, not only in data
    assert rows[0]["left"] < rows[1]["left"]
    assert rows[1]["width"] > rows[0]["width"]  # to scale: the second step took longer

    # the outcome filter leaves it out when asked for stopped runs
    Select(one(page, "#history-form select[name=outcome]")).select_by_value("stopped")
    one(page, "#history-form button").click()
    wait_for(lambda: not css(page, f'#history-list [data-task="{task_id}"]'), what="filtered")


def test_with_a_psk_nothing_loads_before_signing_in(page: Any) -> None:
    with serve("--psk", PSK) as url:
        page.get(f"{url}/ui/")
        form = one(page, "#sign-in-form")
        assert form.is_displayed()
        for view in ("#view-live", "#view-workflows", "#view-history", "#view-bus", "#nav"):
            assert not one(page, view).is_displayed(), view
        assert css(page, "#start-workflow option") == []
        assert css(page, "#live-tasks li") == []

        one(page, "#psk").send_keys("not the key")
        one(page, "#sign-in-form button").click()
        wait_for(lambda: one(page, "#sign-in-error").text, what="the refusal", timeout=6)
        assert one(page, "#sign-in-error").text == "wrong pre-shared key"
        assert not one(page, "#view-live").is_displayed()

        one(page, "#psk").clear()
        one(page, "#psk").send_keys(PSK)
        one(page, "#sign-in-form button").click()
        wait_for(lambda: one(page, "#connection").text == "live", what="the live connection")
        assert one(page, "#view-live").is_displayed()
        assert one(page, "#psk").get_attribute("value") == ""  # the key is not kept
        options = [o.get_attribute("value") for o in css(page, "#start-workflow option")]
        assert "collect_and_cleanup" in options
        # nothing of the key in the browser's storage
        stored = page.execute_script(
            "return JSON.stringify([localStorage, sessionStorage, document.cookie])"
        )
        assert PSK not in stored

        # signed in, the console drives the server; the API stays closed to others
        task_id = start_from_console(page, "metrics")
        assert request(f"{url}/task/{task_id}")[0] == 401
        one(page, "#sign-out").click()
        assert one(page, "#sign-in-form").is_displayed()
        assert not one(page, "#view-live").is_displayed()

        # a sign-in that expires sends the console back to the sign-in
        page.get(f"{url}/ui/?session=2")
        one(page, "#psk").send_keys(PSK)
        one(page, "#sign-in-form button").click()
        wait_for(lambda: one(page, "#view-live").is_displayed(), what="the console")
        wait_for(lambda: one(page, "#sign-in-form").is_displayed(), what="the sign-in", timeout=6)
        assert "expired" in text_of(page, "#sign-in-error")
        assert not one(page, "#view-live").is_displayed()
        assert css(page, "#live-tasks li") == []


def press(driver: Any, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def tab_to(driver: Any, matches: str, limit: int = 40) -> Any:
    """Press Tab until the focused element matches the CSS selector ``matches``."""
    from selenium.webdriver.common.keys import Keys

    for _ in range(limit):
        press(driver, Keys.TAB)
        if driver.execute_script("return document.activeElement.matches(arguments[0])", matches):
            return driver.switch_to.active_element
    raise AssertionError(f"Tab never reached {matches}")


def test_the_console_works_by_keyboard(page: Any, server: str, prober: Subscriber) -> None:
    from selenium.webdriver.common.keys import Keys

    open_console(page, server)
    one(page, "#start-workflow").send_keys("console_probe")
    tab_to(page, "#start-form button")
    press(page, Keys.ENTER)
    text = wait_for(lambda: "as task" in text_of(page, "#start-result"), what="the start")
    assert text
    task_id = text_of(page, "#start-result").rsplit(" ", 1)[1]
    card = f'#live-tasks [data-task="{task_id}"]'
    one(page, card)

    tab_to(page, f"{card} button.danger")
    press(page, Keys.ENTER)
    one(page, "dialog#confirm-stop[open]")
    # the safe choice has the focus; Escape keeps the task running
    assert page.switch_to.active_element.text == "Keep it running"
    press(page, Keys.ESCAPE)
    wait_for(lambda: not css(page, "dialog#confirm-stop[open]"), what="the dialog closed")
    assert request(f"{server}/task/{task_id}")[1]["running"] is True

    tab_to(page, f"{card} button.danger")
    press(page, Keys.ENTER)
    one(page, "dialog#confirm-stop[open]")
    press(page, Keys.TAB)
    assert page.switch_to.active_element.text == "Stop the task"
    press(page, Keys.ENTER)
    left = time.monotonic()
    wait_for(lambda: not css(page, card), what="the stopped task gone", timeout=1.0)
    assert time.monotonic() - left < 1.0
    assert request(f"{server}/task/{task_id}")[1]["outcome"] == "stopped"


def test_errors_are_marked_and_filtered_in_the_history(
    page: Any, server: str, prober: Subscriber
) -> None:
    from selenium.webdriver.support.select import Select

    failed = request(f"{server}/workflow/console_probe/run", "POST")[1]["task_id"]
    prober.answer(prober.next_action(), "action_error")
    prober.answer(prober.next_action())
    clean = request(f"{server}/workflow/console_probe/run", "POST")[1]["task_id"]
    prober.answer(prober.next_action())
    prober.answer(prober.next_action())
    wait_for(lambda: not request(f"{server}/task/{clean}")[1]["running"], what="the clean run")

    open_console(page, server, f"task/{failed}")
    wait_for(lambda: "error" in state_of(page, "probe_one")[0], what="probe_one marked")
    assert state_of(page, "probe_one") == ({"state", "error"}, "✗ error")
    assert state_of(page, "probe_two") == ({"state", "done"}, "✓ done")
    assert "test.prober: n/a" in text_of(page, "#task-timeline")

    page.get(f"{server}/ui/#history")
    form = "#history-form"
    Select(one(page, f"{form} select[name=workflow]")).select_by_value("console_probe")
    Select(one(page, f"{form} select[name=has_errors]")).select_by_value("true")
    click(page, f"{form} button")
    listed = lambda task: bool(css(page, f'#history-list [data-task="{task}"]'))  # noqa: E731
    wait_for(lambda: listed(failed) and not listed(clean), what="only the failed run")
    assert "✗ has errors" in text_of(page, f'#history-list [data-task="{failed}"]')

    Select(one(page, f"{form} select[name=has_errors]")).select_by_value("false")
    click(page, f"{form} button")
    wait_for(lambda: listed(clean) and not listed(failed), what="only the clean run")

    # nothing ended in the future
    page.execute_script(
        "document.querySelector(arguments[0]).value = '2099-01-01T00:00:00'",
        f"{form} input[name=since]",
    )
    click(page, f"{form} button")
    wait_for(lambda: one(page, "#history-empty").is_displayed(), what="an empty history")
    assert not css(page, "#history-list > li")


def test_subscribers_listeners_and_schedules_are_shown(
    page: Any, server: str, prober: Subscriber
) -> None:
    open_console(page, server, "bus")
    row = '#subscribers tr[data-subscriber="test.prober"]'
    wait_for(lambda: css(page, row), what="the prober's row")
    text = text_of(page, row)
    assert "⇄ connected" in text
    assert "probe_one: waits, 120 s" in text
    listeners = text_of(page, "#listeners")
    assert "test.prober" in listeners
    assert "demo.collector" in listeners
    assert "0 dropped for being too slow" in text_of(page, "#dropped")
    schedules = text_of(page, '#schedules [data-schedule="collect_and_cleanup"]')
    assert "0 * * * * (UTC)" in schedules
    wait_for(
        lambda: len(css(page, '[data-schedule="collect_and_cleanup"] .next-times')) == 1,
        what="the next fire times",
    )
    shown = text_of(page, '[data-schedule="collect_and_cleanup"] .next-times span').split(" · ")
    assert len(shown) == 5

    # a subscriber that goes away is seen going
    visitor = Subscriber(server, "test.visitor", ["probe_two"])
    wait_for(lambda: "test.visitor" in text_of(page, "#bus-log"), what="the visitor coming")
    visitor.close()
    wait_for(lambda: "✕ disconnected test.visitor" in text_of(page, "#bus-log"), what="it going")

    # each workflow's diagram opens in place, and a run starts from there
    page.get(f"{server}/ui/#workflows")
    article = '#workflow-list [data-workflow="console_probe"]'
    click(page, f"{article} summary")
    wait_for(lambda: css(page, f'{article} svg [data-state="probe_two"]'), what="the diagram")
    click(page, f"{article} button")
    result = wait_for(lambda: "as task" in text_of(page, article) and text_of(page, article))
    task_id = result.split("as task ", 1)[1].split()[0]
    assert request(f"{server}/task/{task_id}")[1]["running"] is True
    prober.answer(prober.next_action())
    prober.answer(prober.next_action())


def test_the_console_reads_on_a_phone_sized_screen(
    page: Any, server: str, prober: Subscriber
) -> None:
    phone = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
    try:
        task_id = request(f"{server}/workflow/console_probe/run", "POST")[1]["task_id"]
        for view in ("live", f"task/{task_id}", "history", "workflows", "bus"):
            open_console(page, server, view)
            if view.startswith("task/"):
                # the diagram fits the screen, the current step lit
                wait_for(lambda: "current" in state_of(page, "probe_one")[0], what="lit")
                box = page.execute_script(
                    "return document.querySelector('#task-diagram svg')"
                    ".getBoundingClientRect().right"
                )
                assert box <= 390
            time.sleep(0.3)  # let the view fill in
            width, inner = page.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert width <= inner, f"{view}: {width} px wide on a {inner} px screen"
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        prober.answer(prober.next_action())
        prober.answer(prober.next_action())


def test_a_finished_task_shows_its_log_and_triggers_can_be_paused(
    page: Any, server: str, prober: Subscriber
) -> None:
    task_id = request(f"{server}/workflow/console_probe/run", "POST")[1]["task_id"]
    prober.answer(prober.next_action(), "action_error")
    prober.answer(prober.next_action())
    wait_for(lambda: not request(f"{server}/task/{task_id}")[1]["running"], what="the end")

    open_console(page, server, f"task/{task_id}")
    wait_for(lambda: one(page, "#task-log-section").is_displayed(), what="the log")
    assert "test.prober" in text_of(page, "#task-log")
    assert "✗ error" in text_of(page, "#task-log .level-error")

    page.get(f"{server}/ui/#workflows")
    article = '#workflow-list [data-workflow="metrics"]'
    wait_for(lambda: "● active" in text_of(page, article), what="metrics active")
    click(page, f"{article} button:nth-of-type(2)")
    wait_for(lambda: "‖ paused" in text_of(page, article), what="metrics paused")
    assert [w["active"] for w in request(f"{server}/workflows")[1] if w["id"] == "metrics"] == [
        False
    ]
    click(page, f"{article} button:nth-of-type(2)")
    wait_for(lambda: "● active" in text_of(page, article), what="metrics active again")
