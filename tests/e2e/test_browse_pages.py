"""The browse pages through Airflow's real API server (the plugin mounted as in production,
the simple auth manager signing users in), and in a real browser: anonymous requests refused,
the overview's counts
equal to the LMS's rows, a reactivated student's history in order with its syncs, a search by
a name with an apostrophe and an accent, escaping, and the school filter only where a portal
has several schools.

The LMS is filled first, in this process, by three real syncs of generated CSV drops (day 1;
day 2 without one student; day 3 with her back), so the server only reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from include.sis_sync.lms import schema
from include.sis_sync.lms.db import engine_for, migrate
from include.sis_sync.sample.generator import District, generate_district
from include.sis_sync.staging import purge_personal_values
from tests.e2e.browser import browser_page, plugin_frame, shot, sign_in, sis_sync_entry
from tests.e2e.standalone import Standalone, signed_in_users, start_api_server, sync_env
from tests.feeds import Feed
from tests.helpers import write_portal

pytestmark = [pytest.mark.standalone, pytest.mark.timeout(600)]
PORTAL, SOLO, FORGETFUL = "riverside", "solo", "forgetful"
OLD_EMAIL, NEW_EMAIL = "liam.king1@example.org", "zoe.obrien@example.org"
NAME = "Riverside & <Co>"
ZOE, SCRIPTED = "usr-000001", "usr-000002"
DAYS = ("2026-09-01", "2026-09-02", "2026-09-03")


@dataclass
class Setup:
    server: Standalone
    lms_url: str
    runs: list[int]  # the three syncs of the portal, in order
    viewer: httpx.Client


def _day_one() -> District:
    district = generate_district("demo")
    users = district.users
    users.loc[users["sourcedId"] == ZOE, ["givenName", "familyName"]] = ["Zoë", "O'Brien"]
    users.loc[users["sourcedId"] == SCRIPTED, "familyName"] = "<script>alert(1)</script>"
    return district


def _without(district: District, user: str) -> District:
    """The same roster without one student and her enrollments."""
    return District(
        district.orgs,
        district.academic_sessions,
        district.courses,
        district.classes,
        district.users[district.users["sourcedId"] != user],
        district.enrollments[district.enrollments["userSourcedId"] != user],
        dict(district.serials),
    )


def _back_with_a_new_email(district: District) -> District:
    users = district.users.copy()
    users.loc[users["sourcedId"] == ZOE, "email"] = NEW_EMAIL
    return District(
        district.orgs,
        district.academic_sessions,
        district.courses,
        district.classes,
        users,
        district.enrollments,
        dict(district.serials),
    )


def _synced(root: Path, lms_url: str, portal_id: str, day_one: District, **portal: str) -> list:
    feed = Feed(root / portal_id, lms_url, id=portal_id, **portal)
    days = (day_one, _without(day_one, ZOE), _back_with_a_new_email(day_one))
    for day, district in zip(DAYS, days, strict=True):
        feed.write(district, day)
    runs = []
    for day in DAYS:
        outcome = feed.sync(day)
        assert outcome.error is None and outcome.gate == "commit", outcome.text()
        runs.append(outcome.run_id)
    source = {"provider": "oneroster_csv", "path": f"{root / portal_id}/drops/{{date}}"}
    write_portal(root / "portals", id=portal_id, source=source, **portal)
    return runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("browse")
    (root / "portals").mkdir()
    lms_url = f"sqlite:///{root / 'lms.db'}"
    migrate(lms_url)
    day_one = _day_one()
    runs = _synced(root, lms_url, PORTAL, day_one, name=NAME)
    school = str(day_one.orgs.loc[day_one.orgs["type"] == "school", "sourcedId"].iloc[0])
    _synced(root, lms_url, SOLO, day_one, name="Solo", schools={"mode": "single", "school": school})
    _synced(root, lms_url, FORGETFUL, day_one, name="Forgetful", retention_days=1)
    _past_retention(lms_url, FORGETFUL)
    env = sync_env(root, **signed_in_users("admin:admin,vera:viewer"))
    with start_api_server(root / "airflow", env) as server:
        viewer = server.client_as("vera")
        yield Setup(server, lms_url, runs, viewer)
        viewer.close()


def _past_retention(lms_url: str, portal_id: str) -> None:
    """The portal's syncs ended long ago: retention forgets their staged values."""
    engine = engine_for(lms_url)
    runs = schema.runs
    with engine.begin() as conn:
        conn.execute(
            sa.update(runs)
            .where(runs.c.portal_id == portal_id)
            .values(finished_at=datetime(2000, 1, 1, tzinfo=UTC))
        )
    assert purge_personal_values(engine, portal_id, 1) == len(DAYS)


def _page(setup: Setup, path: str, status: int = 200) -> str:
    response = setup.viewer.get(f"/sis-sync/portals/sis_sync__{path}")
    assert response.status_code == status, response.text[:2000]
    return response.text


def _count(setup: Setup, sql: str) -> int:
    with engine_for(setup.lms_url).connect() as conn:
        return int(conn.execute(sa.text(sql), {"p": PORTAL}).scalar_one())


PAGES = (
    "overview",
    "schools",
    "schools/org-000002",
    "people/students",
    f"person/{ZOE}",
    "classes",
    "class/cls-000001",
)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_refuses_anonymous_and_answers_a_viewer(setup: Setup, path: str) -> None:
    anonymous = httpx.get(f"{setup.server.base_url}/sis-sync/portals/sis_sync__{PORTAL}/{path}")
    assert anonymous.status_code == 401
    assert "<title>" in _page(setup, f"{PORTAL}/{path}")


def _row(html: str, label: str) -> list[str]:
    """The numbers of the overview's row ``label`` (links and thousands separators dropped)."""
    match = re.search(rf"<tr><th>{re.escape(label)}</th>(.*?)</tr>", html, re.S)
    assert match, f"no row {label}"
    cells = re.findall(r"<td class=\"num\">(.*?)</td>", match.group(1), re.S)
    return [re.sub(r"<[^>]+>", "", c).replace(",", "").strip() for c in cells]


def test_overview_counts_equal_the_lms_rows(setup: Setup) -> None:
    html = _page(setup, f"{PORTAL}/overview")
    users = (
        "SELECT count(*) FROM lms_users WHERE portal_id = :p AND role = '{}' AND archived_at IS {}"
    )
    for label, role in (("students", "student"), ("teachers", "teacher")):
        active = _count(setup, users.format(role, "NULL"))
        archived = _count(setup, users.format(role, "NOT NULL"))
        assert _row(html, label)[:2] == [str(active), str(archived)]
    sections = _count(
        setup, "SELECT count(*) FROM lms_sections WHERE portal_id = :p AND archived_at IS NULL"
    )
    enrollments = _count(
        setup,
        "SELECT count(*) FROM lms_enrollments WHERE portal_id = :p AND archived_at IS NULL",
    )
    assert _row(html, "classes (sections)")[0] == str(sections)
    assert _row(html, "enrollments")[0] == str(enrollments)
    assert _row(html, "schools")[:2] == ["2", "0"]
    # the SIS column: the last read (day 3) sent 300 students, as the LMS holds active now
    assert _row(html, "students")[2] == "300"
    assert f'href="/sis-sync/portals/sis_sync__{PORTAL}/people/students?state=active"' in html


def test_a_reactivated_student_shows_add_archive_reactivate_with_their_syncs(
    setup: Setup,
) -> None:
    html = _page(setup, f"{PORTAL}/person/{ZOE}")
    history = html[html.index("Sync history") :]
    shown = re.findall(
        r"runs/(\d+)\">Sync \d+</a>.*?<span class=\"badge\">(\w+)</span>", history, re.S
    )
    added, archived, reactivated = setup.runs
    assert shown == [
        (str(reactivated), "reactivate"),
        (str(archived), "archive"),
        (str(added), "add"),
    ]
    assert history.count(">applied<") == 3
    assert f"email: {OLD_EMAIL} → {NEW_EMAIL}" in history
    assert "Zoë O&#39;Brien" in html
    # her schools and classes, and the report of the sync that last changed her
    assert "/schools/org-00000" in html and "/class/cls-" in html
    assert f'by <a href="/sis-sync/portals/sis_sync__{PORTAL}/runs/{reactivated}">' in html


def test_after_retention_the_history_names_the_changed_fields_only(setup: Setup) -> None:
    html = _page(setup, f"{FORGETFUL}/person/{ZOE}")
    history = html[html.index("Sync history") :]
    assert re.search(
        r"email changed\s*<span class=\"muted\">\(values forgotten after retention\)", history
    )
    assert OLD_EMAIL not in html and NEW_EMAIL not in history
    assert [a for a in re.findall(r'<span class="badge">(\w+)</span>', history)] == [
        "reactivate",
        "archive",
        "add",
    ]


@pytest.mark.parametrize(
    ("words", "alone"),
    [("zoe o'brien", True), ("ZOË O'BRIEN", True), ("O\u2019Brien", False), ("o'bri", False)],
)
def test_search_by_a_name_with_an_apostrophe_and_an_accent(
    setup: Setup, words: str, alone: bool
) -> None:
    html = _page(setup, f"{PORTAL}/people/students?q={quote(words)}")
    assert f"person/{ZOE}" in html
    found = html.count("/person/usr-")
    # the generated roster has other O'Briens; with her given name she is the only one
    assert found == 1 if alone else found > 1
    assert html.count("O&#39;Brien") >= found


def test_names_and_search_words_are_escaped(setup: Setup) -> None:
    listed = _page(setup, f"{PORTAL}/people/students?q=script")
    person = _page(setup, f"{PORTAL}/person/{SCRIPTED}")
    searched = _page(setup, f"{PORTAL}/people/students?q={quote('<img src=x onerror=alert(1)>')}")
    for html in (listed, person, searched):
        assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listed
    assert "&lt;img src=x onerror=alert(1)&gt;" in searched
    assert "Riverside &amp; &lt;Co&gt;" in _page(setup, f"{PORTAL}/overview")


def test_the_school_filter_shows_only_in_a_multi_school_portal(setup: Setup) -> None:
    for path in ("people/students", "people/teachers", "classes"):
        assert 'name="school"' in _page(setup, f"{PORTAL}/{path}")
        assert 'name="school"' not in _page(setup, f"{SOLO}/{path}")


def test_lists_filter_by_school_and_state_and_page(setup: Setup) -> None:
    school = _page(setup, f"{PORTAL}/people/students?school=org-000002")
    everyone = _page(setup, f"{PORTAL}/people/students")
    assert "next →" in everyone and "← previous" not in everyone
    after = re.search(r"after=(\d+)", everyone).group(1)
    second = _page(setup, f"{PORTAL}/people/students?after={after}")
    assert "← previous" in second
    members = _count(
        setup,
        "SELECT count(*) FROM lms_user_organizations WHERE portal_id = :p AND role = 'student' "
        "AND organization_key = 'org-000002' AND archived_at IS NULL",
    )
    assert f"{members} active students in Lincoln High School" in school
    assert "Nobody matches." in _page(setup, f"{PORTAL}/people/students?state=archived")
    _page(setup, f"{PORTAL}/people/students?state=gone", status=400)
    _page(setup, f"{PORTAL}/person/nobody", status=404)
    _page(setup, f"{PORTAL}/people/parents", status=404)


def test_an_admin_browses_from_the_portal_to_the_sync_that_last_changed_a_student(
    setup: Setup,
) -> None:
    """In a real browser, inside the Airflow UI: status page, overview, a school, its
    students, a search, her page, her class, and the report of the sync that last changed
    her. Each page is kept as a screenshot."""
    with browser_page("browse-last") as page:
        sign_in(page, setup.server.base_url, "vera", setup.server.password("vera"))
        sis_sync_entry(page).click()
        frame = plugin_frame(page)
        frame.get_by_role("link", name=NAME).click()
        frame.get_by_role("link", name="Overview").first.click()
        frame.get_by_role("heading", name="Per school").wait_for()
        shot(page, "browse-01-overview")
        frame.get_by_role("link", name="Schools", exact=True).click()
        frame.get_by_text("not mapped").or_(
            frame.get_by_text("washington-middle-school")
        ).first.wait_for()
        shot(page, "browse-02-schools")
        frame.get_by_role("link", name="Washington Middle School").first.click()
        frame.get_by_role("heading", name="Counts").wait_for()
        shot(page, "browse-02-school")
        frame.get_by_role("link", name="students", exact=True).click()
        frame.get_by_label("Search").fill("Zoë O\u2019Brien")
        frame.get_by_role("button", name="Show").click()
        frame.get_by_text("1 active student in Washington Middle School").wait_for()
        shot(page, "browse-03-students-search")
        frame.get_by_role("link", name="O'Brien, Zoë").click()
        frame.get_by_role("heading", name="Sync history").wait_for()
        shot(page, "browse-04-student")
        frame.locator("table.history").scroll_into_view_if_needed()
        shot(page, "browse-04-history")
        history = frame.locator("table.history tbody tr")
        actions = [history.nth(i).locator("td .badge").first.inner_text() for i in range(3)]
        assert actions == ["reactivate", "archive", "add"]
        frame.locator("a[href*='/class/']").first.click()
        frame.get_by_role("heading", name="Students").wait_for()
        assert frame.get_by_role("link", name="Zoë O'Brien").count() == 1
        shot(page, "browse-05-class")
        frame.get_by_role("link", name="Zoë O'Brien").click()
        reactivated = setup.runs[-1]
        frame.get_by_role("link", name=f"sync {reactivated}", exact=True).click()
        frame.get_by_role(
            "heading", name=re.compile(rf"^Sync {reactivated} committed$", re.I)
        ).wait_for()
        shot(page, "browse-06-report")
