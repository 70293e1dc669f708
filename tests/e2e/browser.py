"""A real browser for the page tests: headless Debian Chromium driven by Playwright, with every
page it is asked to keep saved as a screenshot under ``.artifacts/screenshots``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("SIS_SYNC_ARTIFACTS", ROOT / ".artifacts")) / "screenshots"


def chromium() -> str:
    """Debian's Chromium, which ``scripts/test.sh`` installs and names. Without it the test
    fails, saying so: a browser test is never skipped."""
    path = os.environ.get("SIS_SYNC_CHROMIUM") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(f"no Chromium at {path}: run scripts/chromium.sh (scripts/test.sh does)")
    return path


@contextlib.contextmanager
def browser_page(last_shot: str = "last") -> Iterator[Any]:
    """A page of a fresh browser, 1440 px wide; its last state is kept as ``last_shot``."""
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        context.set_default_timeout(30_000)
        page = context.new_page()
        try:
            yield page
        finally:
            page.screenshot(path=str(SHOTS / f"{last_shot}.png"), full_page=True)
            browser.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def plugin_frame(page: Any) -> Any:
    """The plugin's pages render in an iframe inside the Airflow UI."""
    return page.frame_locator("iframe").first


def sign_in(page: Any, base_url: str, user: str, password: str) -> None:
    """Through Airflow's login form, to its home page with the "SIS sync" entry."""
    page.goto(base_url + "/")
    page.locator('input[name="username"]').fill(user)
    page.locator('input[type="password"]').fill(password)
    page.keyboard.press("Enter")
    sis_sync_entry(page).wait_for()


def sis_sync_entry(page: Any) -> Any:
    return (
        page.get_by_role("link", name="SIS sync")
        .or_(page.get_by_role("button", name="SIS sync"))
        .first
    )
