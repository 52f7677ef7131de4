"""Playwright (Python) driving Debian's Chromium against a live Relay (tests/conftest.asgi_server).

Never `playwright install`: the browser is /usr/bin/chromium (`.ci/run` installs it). Without it
or without the playwright package the tests skip, and fail under RELAY_REQUIRE_SERVICES=1.
"""

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import require

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"]
PASSWORD = "correct horse battery staple"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TOKEN_DELAY_MS = 25  # slow enough that several DOM updates are observable, fast enough for CI


@pytest.fixture(scope="module")  # not session: its running event loop would break later tests of this worker
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require(sync_playwright is not None, "the playwright package is not installed (requirements-dev.txt)")
    require(os.path.exists(CHROMIUM) or shutil.which("chromium") is not None, f"{CHROMIUM} is missing (apt chromium)")
    # Playwright's sync API keeps an event loop running in this thread (in a greenlet); the ORM
    # calls tests and fixtures make between browser steps are plain synchronous code all the same.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def live(browser, asgi_server, settings):
    """The live server, its prices seeded (transactional tests flush them) and tokens paced."""
    from tests.billing.conftest import seed_prices

    settings.RELAY_LOCAL_TOKEN_DELAY_MS = TOKEN_DELAY_MS
    seed_prices()
    return asgi_server


@pytest.fixture
def new_page(browser, live):
    """new_page(user=None, width=1280, height=860) -> a Playwright page, signed in when user is given."""
    contexts = []

    def make(user=None, width=1280, height=860):
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=live.url)
        context.set_default_timeout(30_000)  # CI runs this beside the rest of the suite
        contexts.append(context)
        page = context.new_page()
        if user is not None:
            sign_in(page, user.username)
        return page

    yield make
    for context in contexts:
        context.close()


def sign_in(page, username: str, password: str = PASSWORD):
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/login/" not in url)


def screenshot(page, name: str, full_page: bool = False):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)
