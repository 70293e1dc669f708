"""The summary of the schools the SIS sent in its last complete read, on both stores."""

from __future__ import annotations

from pathlib import Path

from include.sis_sync import school_summary
from include.sis_sync.lms.db import engine_for
from include.sis_sync.sample.generator import District, generate_district
from tests.feeds import DAY1, DAY2, Feed


def _expected_users(district: District, school: str, role: str | None = None) -> int:
    """Users (of a role) whose organizations list the school, counted plainly."""
    users = district.users
    return sum(
        school in [o.strip() for o in orgs.split(",")] and role in (None, user_role)
        for orgs, user_role in zip(users["orgSourcedIds"], users["role"], strict=True)
    )


def test_a_complete_read_keeps_each_school_with_its_counts(
    tmp_path: Path, lms_url: str, data_dir: Path
) -> None:
    district = generate_district("demo")
    schools = district.orgs.loc[district.orgs["type"] == "school", "sourcedId"].tolist()
    feed = Feed(tmp_path, lms_url, schools={"mapping": {schools[0]: "first-school"}})
    feed.write(district, DAY1)
    outcome = feed.sync(DAY1)
    assert outcome.report["status"] == "committed", outcome.text()

    rows = {r["sis_key"]: r for r in school_summary.read(engine_for(lms_url), feed.portal.id)}
    assert set(rows) == set(district.orgs["sourcedId"])  # the district and every school
    for school in schools:
        row = rows[school]
        assert row["kind"] == "school" and row["run_id"] == outcome.run_id
        assert row["synced"] == (school == schools[0])  # only the mapped school is synced
        assert row["users"] == _expected_users(district, school) > 0
        for role in ("student", "teacher", "administrator"):
            assert row[f"{role}s"] == _expected_users(district, school, role)
        assert row["students"] > 0 and row["teachers"] > 0
        classes = district.classes["schoolSourcedId"] == school
        assert row["sections"] == int(classes.sum()) > 0
        in_school = set(district.classes.loc[classes, "sourcedId"])
        enrolled = district.enrollments["classSourcedId"].isin(in_school)
        assert row["enrollments"] == int(enrolled.sum()) > 0
    district_row = next(r for r in rows.values() if r["kind"] == "district")
    assert not district_row["synced"] and district_row["sections"] == 0


def test_a_quick_read_leaves_the_summary_and_a_full_one_replaces_it(
    tmp_path: Path, lms_url: str, data_dir: Path
) -> None:
    feed = Feed(tmp_path, lms_url)
    district = generate_district("demo")
    feed.write(district, DAY1)
    first = feed.sync(DAY1)
    engine = engine_for(lms_url)
    before = school_summary.read(engine, feed.portal.id)

    delta = generate_district("demo")
    delta.users = delta.users.head(1)
    others = ("orgs", "academicSessions", "courses", "classes", "enrollments")
    modes = {"users": "delta", **dict.fromkeys(others, "absent")}
    feed.write(delta, DAY2, modes=modes, last_modified="2026-09-02T06:00:00Z")
    assert feed.sync(DAY2).report["status"] == "committed"
    assert school_summary.read(engine, feed.portal.id) == before  # orgs absent: kept

    renamed = generate_district("demo")
    school = renamed.orgs.index[renamed.orgs["type"] == "school"][0]
    renamed.orgs.loc[school, "name"] = "Renamed Academy"
    feed.write(renamed, "2026-09-03")
    third = feed.sync("2026-09-03")
    assert third.report["status"] == "committed", third.text()
    after = {r["sis_key"]: r for r in school_summary.read(engine, feed.portal.id)}
    assert after[renamed.orgs.loc[school, "sourcedId"]]["name"] == "Renamed Academy"
    assert {r["run_id"] for r in after.values()} == {third.run_id} != {first.run_id}
