"""End-to-end fixtures: Debian's headless Chromium driven by Playwright, and a real `lopso serve`.

    def test_x(lopso, browser_pages):
        studio = browser_pages.open(lopso.demo["lecturer"]["url"], name="studio")

Every page opened through `browser_pages` gets its own browser context (its own cookies and
storage, as on separate machines) with camera and microphone allowed (Chromium's fake
devices). When a test fails, each page leaves a screenshot and its console log in
test-artifacts/.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.serverproc import LopsoServer

ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = os.environ.get("LOPSO_CHROMIUM", "/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Keep each phase's report on the item, so fixtures can tell that the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not pathlib.Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright_instance: Any) -> Iterator[Any]:
    """One headless Chromium for the module's tests."""
    b = playwright_instance.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
    )
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def lopso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LopsoServer]:
    """`lopso serve --demo-json` with two demo sites, for the module's tests."""
    with LopsoServer(tmp_path_factory.mktemp("lopso"), demo_sites=2) as srv:
        yield srv


class BrowserPages:
    """Opens pages, each in its own context; keeps their console output for failures."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.pages: list[tuple[str, Any, list[str]]] = []
        self.contexts: list[Any] = []

    def open(
        self,
        url: str,
        *,
        name: str,
        lang: str | None = None,
        viewport: dict[str, int] | None = None,
        init_script: str | None = None,
        enforce_policy: bool = False,
        timeout_ms: int = 20_000,
    ) -> Any:
        # Playwright's wait_for_function evaluates its predicate with eval, which the pages'
        # Content-Security-Policy forbids: tests that enforce it (test_security) poll instead.
        context = self.browser.new_context(
            bypass_csp=not enforce_policy,
            permissions=["camera", "microphone"],
            viewport=viewport or {"width": 1280, "height": 720},
            locale="vi-VN",
        )
        context.set_default_timeout(timeout_ms)
        self.contexts.append(context)
        if init_script:  # runs in the page before any of its own scripts
            context.add_init_script(init_script)
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
        self.pages.append((name, page, console))
        if lang:
            url += ("&" if "?" in url else "?") + f"lang={lang}"
        page.goto(url)
        return page

    def console(self, name: str) -> list[str]:
        return next(c for n, _, c in self.pages if n == name)

    def save_artifacts(self, folder: pathlib.Path, prefix: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, page, console in self.pages:
            stem = folder / f"{prefix}-{name}"
            try:
                page.screenshot(path=str(stem) + ".png")
            except Exception as exc:  # noqa: BLE001 - a closed page must not hide the failure
                console.append(f"screenshot failed: {exc}")
            stem.with_suffix(".log").write_text("\n".join(console), encoding="utf-8")

    def close(self) -> None:
        for context in self.contexts:
            try:
                context.close()
            except Exception:  # noqa: BLE001 - browser may already be gone
                pass


@pytest.fixture(autouse=True)
def server_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """When a test that used the server fails, keep the server's log next to the screenshots."""
    yield
    report = getattr(request.node, "rep_call", None)
    if "lopso" in request.fixturenames and (report is None or report.failed):
        srv = request.getfixturevalue("lopso")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        (ARTIFACTS / f"{name}-server.log").write_text(srv.log(), encoding="utf-8")


@pytest.fixture
def browser_pages(
    browser: Any, request: pytest.FixtureRequest, artifacts_dir: pathlib.Path
) -> Iterator[BrowserPages]:
    pages = BrowserPages(browser)
    try:
        yield pages
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            pages.save_artifacts(artifacts_dir, prefix)
        pages.close()
