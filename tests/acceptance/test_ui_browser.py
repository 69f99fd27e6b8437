"""The web UI in a real browser: Playwright driving Debian's Chromium (its own download
cannot work on these machines) against `kser serve` and a `kser worker` on the real
broker and PostgreSQL. A person logs in, starts an operation from its form, watches it
finish on the graph, opens a task's log, then cancels a second one. Screenshots are
kept in .artifacts/ui/ (KSER_ARTIFACTS), the test's artifacts."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.acceptance.test_control_plane import CHAIN, control_plane  # noqa: F401 (fixture)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("KSER_ARTIFACTS", Path(__file__).resolve().parents[2]
                                / ".artifacts")) / "ui"
#: milliseconds any expectation of the page may take
WAIT_MS = 60_000


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists():  # a failure, not a skip: make test installs it
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--no-sandbox", "--disable-dev-shm-usage"]}


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_start_watch_read_a_log_and_cancel_from_the_browser(control_plane, page: Page,  # noqa: F811
                                                            tmp_path):
    _run, url = control_plane
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{url}/ui/")
    expect(page).to_have_url(f"{url}/ui/login?next=/ui/?")  # asked for a token first
    page.fill("#token", "adm-secret")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("h1")).to_have_text("Operations")

    # start a chain of 4 hops from its form
    page.click("text=Start")
    form = page.locator(f'section[data-entrypoint="{CHAIN}"] form')
    form.locator('textarea[name="params"]').fill('{"hops": 4, "sleep": 0.3}')
    form.locator("button[type=submit]").click()
    operation = page.locator("#operation")
    op_id = operation.get_attribute("data-operation")
    assert op_id and page.url.endswith(f"/ui/operations/{op_id}")

    # the page refreshes itself while it runs; every node of the graph ends SUCCESS
    nodes = page.locator("svg.graph g.node")
    expect(nodes).to_have_count(4)
    expect(page.locator('#operation[data-status="SUCCESS"]')).to_be_visible(timeout=WAIT_MS)
    for name in ("Hop", "Hop-2", "Hop-3", "Hop-4"):
        expect(page.locator(f'svg.graph g.node[data-task="{name}"]')).to_have_attribute(
            "data-status", "SUCCESS")
    expect(page.locator("svg.timeline g[data-attempt]")).to_have_count(4)
    shot(page, "operation")

    # a task's log
    page.locator('details[data-logs="Hop-3"] summary').click()
    expect(page.locator('details[data-logs="Hop-3"] pre.log')).to_contain_text(
        "hop 2 after [0, 1]")
    shot(page, "task-log")

    # a second one, held on its first task, canceled (confirmed in the dialog)
    hold = tmp_path / "hold"
    page.click("text=Start")
    form = page.locator(f'section[data-entrypoint="{CHAIN}"] form')
    form.locator('textarea[name="params"]').fill(f'{{"hops": 3, "hold_until": "{hold}"}}')
    form.locator("button[type=submit]").click()
    second = page.locator("#operation").get_attribute("data-operation")
    assert second and second != op_id
    expect(page.locator('svg.graph g.node[data-task="Hop"]')).to_have_attribute(
        "data-status", "RUNNING")
    # a log opened while it runs stays open across the page's refreshes
    page.locator('details[data-logs="Hop"] summary').click()
    with page.expect_response(lambda r: r.request.headers.get("hx-request") == "true"):
        pass  # (the next refresh)
    page.wait_for_timeout(300)
    expect(page.locator('details[data-logs="Hop"]')).to_have_attribute("open", "")
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.click('button[data-control="cancel"]')
    assert dialogs and second in dialogs[0]
    hold.touch()  # its running task returns; nothing follows it
    expect(page.locator('#operation[data-status="CANCELED"]')).to_be_visible()
    expect(page.locator('svg.graph g.node[data-task="Hop-3"]')).to_have_attribute(
        "data-status", "CANCELED")
    shot(page, "canceled")

    # both in the list, with their statuses
    page.click("text=Operations")
    expect(page.locator(f'tr[data-operation="{op_id}"]')).to_have_attribute(
        "data-status", "SUCCESS")
    expect(page.locator(f'tr[data-operation="{second}"]')).to_have_attribute(
        "data-status", "CANCELED")
    shot(page, "operations")


def test_a_read_token_sees_but_cannot_control(control_plane, page: Page):  # noqa: F811
    _run, url = control_plane
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{url}/ui/login")
    page.fill("#token", "read-secret")
    page.get_by_role("button", name="Log in").click()
    page.click("text=Start")
    expect(page.locator(f'section[data-entrypoint="{CHAIN}"]')).to_be_visible()
    expect(page.locator(f'section[data-entrypoint="{CHAIN}"] form')).to_have_count(0)
    page.goto(f"{url}/ui/login")
    page.fill("#token", "not-a-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("p.error")).to_contain_text("not one of KSER_API_TOKENS")
