"""The live job page at ``GET /``: served with a strict Content-Security-Policy, and driven in a
real headless Chromium against the whole stack (redis-server, fakegraph, producer, consumer).

The browser test needs Debian's ``chromium`` (``/usr/bin/chromium``, installed by
``scripts/setup``) and the ``playwright`` package (the dev extra); it never downloads a browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_TOKENS, PAGE, ROOT, Stack, psids
from starlette.testclient import TestClient

from services.producer.app import create_app
from services.producer.page import CSP
from shared.settings import producer_settings

try:
    from playwright.sync_api import Page, expect, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - the dev extra installs it
    HAVE_PLAYWRIGHT = False

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
TOKEN = API_TOKENS["acme"]


@pytest.fixture
def client() -> Iterator[TestClient]:
    # No route under test touches Redis, so nothing listens at this address.
    settings = producer_settings(
        {
            "FANOUT_REDIS_URL": "redis://127.0.0.1:1/0",
            "FANOUT_API_TOKENS": f"acme={TOKEN}",
            "FANOUT_PAGE_TOKENS": f"{PAGE}=EAAsecret",
        }
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_page_is_html_with_a_strict_policy_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<script src="/static/app.js" defer></script>' in page.text
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline

    script = client.get("/static/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert script.headers["x-content-type-options"] == "nosniff"
    assert "sessionStorage" in script.text and "localStorage" not in script.text
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"] == "text/css; charset=utf-8"

    # Only the page's own files: nothing else under static/, nothing outside it.
    for path in ("/static/index.html", "/static/nope.js", "/static/..%2Fpage.py"):
        missing = client.get(path)
        assert missing.status_code == 404, path
        assert missing.json()["error"]["code"] == "not_found"


# ---- in a real browser ----

needs_browser = pytest.mark.skipif(
    not HAVE_PLAYWRIGHT or not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium and the playwright package "
    "(./scripts/setup installs both)",
)


def counters(page: Page) -> dict[str, str]:
    return {key: page.locator(f"#c-{key}").inner_text() for key in COUNTERS}


COUNTERS = ("sent", "failed", "skipped", "indoubt", "total")


def expected(job: dict[str, Any]) -> dict[str, str]:
    return {key: f"{job[key]:,}" for key in COUNTERS}


@needs_browser
def test_job_page_follows_jobs_live_and_cancels_one(stack: Stack) -> None:
    small_ids = psids(1500)
    blocked = [small_ids[i] for i in (7, 700, 1400)]  # answered 551: the error tables fill
    stack.start_fakegraph("--latency-ms", "20", "--blocked", ",".join(blocked))
    api = stack.start_producer()
    stack.start_consumer("c1", FANOUT_RATE_LIMIT="300")
    base = str(api.base_url).rstrip("/")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1100, "height": 1000}, locale="en-US", timezone_id="UTC"
            )
            page = context.new_page()
            page.set_default_timeout(10_000)
            problems: list[str] = []  # console errors (CSP violations among them), uncaught
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))

            answer = page.goto(f"{base}/")
            assert answer is not None and answer.headers["content-security-policy"] == CSP

            # Sign in.
            page.get_by_label("API token").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()
            assert page.get_by_label("API token").input_value() == ""

            # A job of 1,500 at 300/s: open it from the list with the keyboard, watch it end.
            small = stack.submit(small_ids)
            link = page.get_by_role("link", name=f"Job {small}")
            link.focus()
            page.keyboard.press("Enter")
            expect(page.locator("#job-id")).to_have_attribute("title", small)
            status = page.locator("#job-status")
            expect(status).to_have_text("completed", timeout=25_000)
            done = stack.job(small)
            assert done["status"] == "completed" and done["sent"] == 1497
            assert done["failed"] == 3 and done["error_codes"] == {"551": 3}
            for key, text in expected(done).items():
                expect(page.locator(f"#c-{key}")).to_have_text(text)
            expect(page.locator("#job-percent")).to_have_text("100%")
            expect(page.locator("#c-eta")).to_have_text("done")
            for name in ("Pause", "Resume", "Cancel"):
                expect(page.get_by_role("button", name=name, exact=True)).to_be_disabled()
            expect(page.locator("#codes-rows tr")).to_have_text([re.compile(r"^551\s*3$")])
            errors = page.locator("#errors-rows tr")
            expect(errors).to_have_count(3)
            for line, psid in zip(errors.all(), blocked, strict=True):
                expect(line.locator("td").nth(0)).to_have_text(psid)
                expect(line.locator("td").nth(1)).to_have_text("551")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "job-page-completed.png"), full_page=True)

            # Back to the list; a job of 20,000 (about a minute at 300/s): open it by its row.
            page.get_by_role("link", name="All jobs").click()
            expect(page.locator(f'tr[data-job-id="{small}"] .badge')).to_have_text("completed")
            page.screenshot(path=str(ARTIFACTS / "job-list.png"), full_page=True)
            big = stack.submit(psids(20_000, offset=1_000_000))
            row = page.locator(f'tr[data-job-id="{big}"]')
            row.locator("td").nth(2).click()  # the total, not the link: the row opens the job
            expect(page.locator("#job-id")).to_have_attribute("title", big)
            expect(status).to_have_text("running", timeout=15_000)
            expect(page.locator("#c-total")).to_have_text("20,000")
            sent = page.locator("#c-sent")
            expect(sent).not_to_have_text(re.compile(r"^(–|0)$"))
            seen = sent.inner_text()
            expect(sent).not_to_have_text(seen)  # live: the counter moves while we watch
            expect(page.get_by_role("button", name="Pause")).to_be_enabled()
            expect(page.get_by_role("button", name="Resume")).to_be_disabled()
            expect(page.get_by_role("progressbar", name="Progress")).to_be_visible()

            # Cancel, confirmed in the page's own dialog.
            page.get_by_role("button", name="Cancel", exact=True).click()
            dialog = page.get_by_role("dialog", name="Cancel this job?")
            expect(dialog).to_be_visible()
            dialog.get_by_role("button", name="Cancel job").click()
            expect(dialog).to_be_hidden()
            expect(status).to_have_text("cancelled")
            expect(page.locator("#live-state")).to_have_text("Final.", timeout=15_000)
            cancelled = stack.job(big)
            assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
            assert 0 < cancelled["skipped"] < 20_000
            assert counters(page) == expected(cancelled)
            expect(page.locator("#job-reason")).to_have_text("Reason: cancelled by request")
            expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_disabled()

            # The token: in this tab's sessionStorage only, never in a URL or a cookie.
            assert page.evaluate("sessionStorage.getItem('fanout.token')") == TOKEN
            assert page.evaluate("localStorage.length") == 0
            assert context.cookies() == []
            assert TOKEN not in page.url
            assert not [url for url in requested if TOKEN in url]
            assert problems == []

            page.screenshot(path=str(ARTIFACTS / "job-page.png"), full_page=True)
            # Readable on a phone: nothing wider than a 360 px screen.
            page.set_viewport_size({"width": 360, "height": 780})
            assert page.evaluate("document.documentElement.scrollWidth") <= 360
            page.screenshot(path=str(ARTIFACTS / "job-page-phone.png"), full_page=True)
            page.get_by_role("link", name="All jobs").click()
            expect(page.locator(f'tr[data-job-id="{big}"] .badge')).to_have_text("cancelled")
            assert page.evaluate("document.documentElement.scrollWidth") <= 360
            page.screenshot(path=str(ARTIFACTS / "job-list-phone.png"), full_page=True)

            # Fifty more jobs: the list shows the newest 50; "Load more" brings the rest.
            page.set_viewport_size({"width": 1100, "height": 1000})
            more = {stack.submit(psids(1, offset=2_000_000 + i)) for i in range(50)}
            rows = page.locator("#job-rows tr")
            expect(rows).to_have_count(50)
            shown = {row.get_attribute("data-job-id") for row in rows.all()}
            assert shown == more
            load_more = page.get_by_role("button", name="Load more")
            load_more.click()
            expect(rows).to_have_count(52)
            expect(load_more).to_be_hidden()
            expect(page.locator("#job-rows tr").last).to_have_attribute("data-job-id", small)

            # A token the API refuses (401) sends the page back to sign in, saying why.
            page.evaluate("sessionStorage.setItem('fanout.token', 'revoked-token')")
            page.get_by_label("Status").select_option("cancelled")
            expect(page.get_by_role("alert")).to_contain_text("401")
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            assert page.evaluate("sessionStorage.getItem('fanout.token')") is None

            # Sign in again, then sign out: the token is gone.
            page.get_by_label("API token").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            assert page.evaluate("sessionStorage.length") == 0
            page.screenshot(path=str(ARTIFACTS / "sign-in-phone.png"), full_page=True)
        finally:
            browser.close()
