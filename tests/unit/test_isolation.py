"""Two portals share one LMS database and the very same SIS keys: whatever one syncs (a full
drop that drops half its users, a delta deleting records, a run over one school), no row of
the other changes, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.sis_sync.sample.generator import District, generate_district
from tests.feeds import DAY1, DAY2, Feed


@pytest.fixture
def portals(tmp_path: Path, lms_url: str, data_dir: Path) -> tuple[Feed, Feed]:
    """Portals ``alpha`` and ``beta``, both with day one of the demo district committed."""
    feeds = []
    for name in ("alpha", "beta"):
        feed = Feed(tmp_path / name, lms_url, id=name, name=name.title())
        feed.write(generate_district("demo"), DAY1)
        assert feed.sync(DAY1).report["status"] == "committed"
        feeds.append(feed)
    return feeds[0], feeds[1]


def _without_half_the_students(district: District) -> District:
    users = district.users
    students = users.index[users["role"] == "student"]
    gone = set(users.loc[students[: len(students) // 2], "sourcedId"])
    district.users = users[~users["sourcedId"].isin(gone)]
    district.enrollments = district.enrollments[~district.enrollments["userSourcedId"].isin(gone)]
    return district


def _archived(feed: Feed) -> int:
    return sum(r["archived_at"] is not None for r in feed.lms()["lms_users"])


def test_a_full_sync_of_one_portal_never_touches_the_other(portals: tuple[Feed, Feed]) -> None:
    alpha, beta = portals
    before = alpha.lms()
    beta.write(_without_half_the_students(generate_district("demo")))
    outcome = beta.sync(DAY2, allow_mass_archive=True)
    assert outcome.report["status"] == "committed", outcome.text()
    assert _archived(beta) > 100  # beta lost half its students...
    assert alpha.lms() == before  # ...and alpha, holding the same keys, nothing


def test_a_delta_of_one_portal_never_touches_the_other(portals: tuple[Feed, Feed]) -> None:
    alpha, beta = portals
    before = alpha.lms()
    district = generate_district("demo")
    deleted = district.users[district.users["role"] == "teacher"].head(3).copy()
    deleted["status"] = "tobedeleted"
    district.users = deleted
    modes = {"users": "delta", **dict.fromkeys(_others(), "absent")}
    beta.write(district, modes=modes, last_modified="2026-09-02T06:00:00Z")
    outcome = beta.sync(DAY2, allow_mass_archive=True)
    assert outcome.report["status"] == "committed", outcome.text()
    assert _archived(beta) == 3
    assert alpha.lms() == before


def test_a_run_over_one_school_never_touches_the_other(portals: tuple[Feed, Feed]) -> None:
    alpha, beta = portals
    before = alpha.lms()
    district = _without_half_the_students(generate_district("demo"))
    school = str(district.orgs.loc[district.orgs["type"] == "school", "sourcedId"].iloc[0])
    beta.write(district)
    outcome = beta.sync(DAY2, schools=[school], allow_mass_archive=True)
    assert outcome.report["status"] == "committed", outcome.text()
    assert _archived(beta) > 0
    assert alpha.lms() == before


def _others() -> list[str]:
    return ["orgs", "academicSessions", "courses", "classes", "enrollments"]
