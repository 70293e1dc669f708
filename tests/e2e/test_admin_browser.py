"""A portal admin in a real browser (headless Debian Chromium driven by Playwright) against a
real `airflow standalone`: sign in, open "SIS sync" from Airflow's navigation, start a sync
that waits for approval with "Sync now", open its report, drill into an action list, untick
one action, commit, and read "Committed" with that action skipped; then reject a second sync
from its action list. Every page is kept as a screenshot under ``.artifacts/screenshots``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.sis_sync.dag_factory import LMS_WRITES_POOL
from include.sis_sync.lms.db import migrate
from include.sis_sync.sample.generator import generate_district, write_drop
from tests.e2e.browser import browser_page, plugin_frame, shot, sign_in, sis_sync_entry
from tests.e2e.standalone import (
    Standalone,
    ready_to_sync,
    signed_in_users,
    start_standalone,
    sync_env,
    wait_until,
)
from tests.helpers import run_rows, write_portal

pytestmark = [pytest.mark.standalone, pytest.mark.timeout(900)]
PORTAL = "district"
DAG_ID = f"sis_sync__{PORTAL}"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Standalone, Path]]:
    root = tmp_path_factory.mktemp("browser")
    portals = root / "portals"
    portals.mkdir()
    write_portal(
        portals,
        id=PORTAL,
        name="Riverside District",
        source={"provider": "oneroster_csv", "path": f"{root / 'drops' / PORTAL}/{{date}}"},
        auto_commit=False,
    )
    write_drop(generate_district("demo"), root / "drops" / PORTAL / "2026-09-01")
    lms = root / "lms.db"
    migrate(f"sqlite:///{lms}")
    env = sync_env(root, **signed_in_users("admin:admin,eve:user"))
    with start_standalone(root / "airflow", env) as af:
        ready_to_sync(af, [DAG_ID], LMS_WRITES_POOL)
        yield af, lms


@pytest.fixture(scope="module")
def page(airflow: tuple[Standalone, Path]) -> Iterator[Any]:
    with browser_page() as page:
        yield page


def _waiting(af: Standalone, known: set[str]) -> str:
    """The new DAG run that "Sync now" started, once its approval waits."""
    runs = wait_until(
        "the run started from Sync now",
        lambda: [r for r in af.dag_runs(DAG_ID) if r["dag_run_id"] not in known],
        timeout=60,
    )
    run_id = runs[0]["dag_run_id"]
    af.pending_approval(DAG_ID, run_id)
    return run_id


def _sync_now(page: Any, af: Standalone) -> str:
    known = {r["dag_run_id"] for r in af.dag_runs(DAG_ID)}
    frame = plugin_frame(page)
    frame.get_by_role("link", name="Riverside District").click()
    frame.get_by_label("full").check()
    frame.get_by_label("auto-commit when no guard trips").uncheck()
    shot(page, "02-status")
    frame.get_by_role("button", name="Sync now").click()
    frame.get_by_text("Sync started").wait_for()
    return _waiting(af, known)


def _students_to_add(page: Any, shot_name: str | None = None) -> Any:
    """From the status page, the waiting sync's report, then its list of students to add
    (the count in the report is the link)."""
    page.reload()
    frame = plugin_frame(page)
    frame.get_by_role("link", name="Report").first.click()
    frame.get_by_text("This sync waits for approval").wait_for()
    if shot_name:
        shot(page, shot_name)
    students = frame.locator("tbody tr", has_text="users (student)")
    students.get_by_role("link").first.click()
    frame.locator('input[name="ticked"]').first.wait_for()
    return frame


def test_an_admin_reviews_unticks_commits_then_rejects(
    airflow: tuple[Standalone, Path], page: Any
) -> None:
    af, lms = airflow
    sign_in(page, af.base_url, "eve", af.password("eve"))
    shot(page, "00-airflow-home")
    sis_sync_entry(page).click()
    frame = plugin_frame(page)
    frame.get_by_role("heading", name="Portals").wait_for()
    shot(page, "01-portals")

    first = _sync_now(page, af)
    frame = _students_to_add(page, shot_name="03-report-waiting")
    unticked_key = frame.locator("tbody tr td:nth-child(2)").first.inner_text()
    frame.locator('input[name="ticked"]').first.uncheck()
    shot(page, "04-action-list")
    frame.get_by_role("button", name="Save selection").click()
    frame.get_by_text("Selection saved").wait_for()
    frame.get_by_role("button", name="Commit").click()
    frame.get_by_text("Commit asked").wait_for()
    assert af.wait_for_run(DAG_ID, first)["state"] == "success"
    page.reload()
    frame = plugin_frame(page)
    frame.get_by_text("1 unticked").wait_for()
    row = frame.locator("tbody tr", has_text=unticked_key).first
    assert "skipped: unticked" in row.inner_text()
    shot(page, "05-action-list-committed")
    frame.get_by_role("link", name=re.compile(r"^Sync \d+$")).click()
    # The action list says "committed" too: wait for the report's own heading, not a word.
    frame.get_by_role("heading", name=re.compile(r"^Sync \d+ committed$", re.I)).wait_for()
    frame.get_by_role("heading", name=re.compile(r"^Guards")).wait_for()
    assert "approved by eve" in frame.locator("body").inner_text()
    shot(page, "06-report-committed")
    (row_of_first,) = [r for r in run_rows(f"sqlite:///{lms}") if r["airflow_run_id"] == first]
    assert row_of_first["status"] == "committed"

    frame.get_by_role("link", name="SIS sync").click()
    second = _sync_now(page, af)  # the student left out before is added now
    frame = _students_to_add(page)
    frame.get_by_role("button", name="Reject").click()
    frame.get_by_text("Rejected: nothing is applied").wait_for()
    assert af.wait_for_run(DAG_ID, second)["state"] == "success"
    page.reload()
    frame = plugin_frame(page)
    frame.get_by_text("This sync is rejected").wait_for()
    shot(page, "07-action-list-rejected")
    frame.get_by_role("link", name="Riverside District").first.click()
    frame.get_by_role("link", name="every sync").click()
    frame.get_by_role("heading", name=re.compile("History")).wait_for()
    history = frame.locator("tbody").inner_text()
    assert "rejected" in history and "committed" in history
    shot(page, "08-history")
    frame.get_by_role("link", name="SIS sync").click()
    frame.get_by_role("heading", name="Portals").wait_for()
    assert "rejected" in frame.locator("tbody").inner_text()
    shot(page, "09-portals")
