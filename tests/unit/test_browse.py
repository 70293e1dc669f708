"""The browse pages' read model on both stores: counts equal to the LMS's rows, people and
classes listed in name order and paged, searched without regard to case or accents, and a
record's sync history across syncs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from include.sis_sync import browse
from include.sis_sync.browse import ClassFilter, PeopleFilter
from include.sis_sync.lms import counts, schema
from include.sis_sync.lms.db import engine_for
from include.sis_sync.staging import purge_personal_values
from include.sis_sync.transform import derive_user_organizations
from tests.helpers import district, sync

STUDENTS = {f"s{n:03}": ("sch-a" if n % 3 else "sch-a,sch-b") for n in range(1, 41)}
SECTIONS = {"m1": "sch-a", "m2": "sch-b", "art": "sch-a"}
ENROLLED = [("m1", "s001"), ("m1", "s002"), ("m2", "s003"), ("art", "s001")]
NAMED = {
    "s001": ("Zoë", "O'Brien", "zoe.obrien@example.org"),
    "s002": ("Thị", "Nguyễn", "nguyen@example.org"),
    "s003": ("Åsa", "<b>Bold</b>", "asa@example.org"),
}


def _snapshot(students: dict[str, str] = STUDENTS, **changes: Any) -> dict[str, Any]:
    frames = district(students=students, sections=SECTIONS, enrollments=ENROLLED, **changes)
    users = frames["users"]
    for key, (given, family, email) in NAMED.items():
        row = users["sis_key"] == key
        users.loc[row, ["given_name", "family_name", "email"]] = [given, family, email]
    users.loc[users["sis_key"] == "s010", "role"] = "teacher"
    frames["users"] = users
    frames["user_organizations"] = derive_user_organizations(users)
    return frames


def _keys(page: Any) -> list[str]:
    return [r["sis_key"] for r in page.rows]


def _walk(engine: sa.Engine, flt: PeopleFilter, limit: int = 4) -> list[str]:
    keys, after = [], None
    while True:
        page = browse.people_page(engine, "p1", flt, after=after, limit=limit)
        keys += _keys(page)
        if page.next_after is None:
            return keys
        after = int(page.next_after)


def _lms_count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(sql).scalar() or 0)


def test_counts_equal_the_lms_rows_after_each_commit(lms_url: str) -> None:
    engine = engine_for(lms_url)
    sync(lms_url, _snapshot())
    day2 = {k: v for k, v in STUDENTS.items() if k not in ("s004", "s005")}
    sync(lms_url, _snapshot(day2))
    got = counts.read(engine, "p1")
    whole, school_b = got[counts.WHOLE_PORTAL], got["sch-b"]
    active_students = _lms_count(
        engine, "SELECT count(*) FROM lms_users WHERE role='student' AND archived_at IS NULL"
    )
    archived_students = _lms_count(
        engine, "SELECT count(*) FROM lms_users WHERE role='student' AND archived_at IS NOT NULL"
    )
    assert (whole["students"]["active"], whole["students"]["archived"]) == (
        active_students,
        archived_students,
    )
    assert (active_students, archived_students) == (37, 2)
    assert whole["teachers"]["active"] == 1
    assert whole["schools"]["active"] == 2
    in_b = _lms_count(
        engine,
        "SELECT count(*) FROM lms_user_organizations WHERE organization_key='sch-b' "
        "AND role='student' AND archived_at IS NULL",
    )
    assert school_b["students"]["active"] == in_b == 13
    assert whole["enrollments"]["active"] == len(ENROLLED)
    assert (got["sch-a"]["enrollments"]["active"], school_b["enrollments"]["active"]) == (3, 1)
    assert (whole["sections"]["active"], got["sch-a"]["sections"]["active"]) == (3, 2)


def test_people_list_in_name_order_paged_and_filtered(lms_url: str) -> None:
    engine = engine_for(lms_url)
    sync(lms_url, _snapshot())
    students = _walk(engine, PeopleFilter("student"))
    assert len(students) == 39 and len(set(students)) == 39
    # family names folded: "<b>bold</b>", "family s0..", "nguyen", "o'brien"
    assert students[0] == "s003" and students[-2:] == ["s002", "s001"]
    in_b = _walk(engine, PeopleFilter("student", school="sch-b"))
    assert sorted(in_b) == sorted(k for k, v in STUDENTS.items() if "sch-b" in v and k != "s010")
    assert _walk(engine, PeopleFilter("teacher")) == ["s010"]
    assert _walk(engine, PeopleFilter("student", state="archived")) == []
    first = browse.people_page(engine, "p1", PeopleFilter("student"), limit=5)
    second = browse.people_page(
        engine, "p1", PeopleFilter("student"), after=int(first.next_after), limit=5
    )
    back = browse.people_page(
        engine, "p1", PeopleFilter("student"), before=int(second.prev_before), limit=5
    )
    assert _keys(back) == _keys(first) and back.prev_before is None
    assert browse.count_people(engine, "p1", PeopleFilter("student", school="sch-b")) == len(in_b)


def test_search_ignores_case_and_accents_and_takes_quotes_as_text(lms_url: str) -> None:
    engine = engine_for(lms_url)
    sync(lms_url, _snapshot())

    def found(words: str) -> list[str]:
        return _walk(engine, PeopleFilter("student", search=words))

    assert found("zoe") == found("ZOË") == found("o'brien") == found("O\u2019Brien")
    assert found("zoe") == ["s001"]
    assert found("nguyen thi") == found("Thị Nguyễn") == found("NGUYỄN") == ["s002"]
    assert found("zoe nguyen") == []  # every word must match
    assert found("asa@example") == ["s003"] and found("<b>") == ["s003"]
    assert found("s02") == [f"s02{n}" for n in range(10)]  # SIS key
    assert found("%") == [] and found("_") == []


def test_person_page_shows_schools_classes_and_history_newest_first(lms_url: str) -> None:
    engine = engine_for(lms_url)
    _, added = sync(lms_url, _snapshot())
    gone = {k: v for k, v in STUDENTS.items() if k != "s001"}
    _, archived = sync(lms_url, _snapshot(gone))
    back = _snapshot()
    back["users"].loc[back["users"]["sis_key"] == "s001", "email"] = "zoe@new.example.org"
    _, reactivated = sync(lms_url, back)
    record = browse.person(engine, "p1", "s001")
    assert record is not None and record["email"] == "zoe@new.example.org"
    assert record["archived_at"] is None
    assert [s["organization_key"] for s in record["schools"]] == ["sch-a"]
    assert {c["section_key"] for c in record["classes"]} == {"m1", "art"}
    steps = [(r["run_id"], r["action"], r["outcome"]) for r in record["history"]["rows"]]
    assert steps == [
        (reactivated, "reactivate", "applied"),
        (archived, "archive", "applied"),
        (added, "add", "applied"),
    ]
    assert record["history"]["rows"][0]["changes"]["email"] == [
        "zoe.obrien@example.org",
        "zoe@new.example.org",
    ]
    assert browse.person(engine, "p1", "nobody") is None


def test_history_after_retention_keeps_the_field_names_only(lms_url: str) -> None:
    engine = engine_for(lms_url)
    sync(lms_url, _snapshot())
    changed = _snapshot()
    changed["users"].loc[changed["users"]["sis_key"] == "s002", "email"] = "n2@example.org"
    _, run_id = sync(lms_url, changed)
    with engine.begin() as conn:
        long_ago = datetime(2000, 1, 1, tzinfo=UTC)
        conn.execute(sa.update(schema.runs).values(finished_at=long_ago))
    purge_personal_values(engine, "p1", 1)
    update = browse.history(engine, "p1", "users", "s002")["rows"][0]
    assert (update["run_id"], update["action"]) == (run_id, "update")
    assert update["changes"] == {"email": None} and update["purged_at"] is not None


def test_class_lists_filter_by_school_term_course_and_show_members(lms_url: str) -> None:
    engine = engine_for(lms_url)
    sync(lms_url, _snapshot())

    def listed(**kwargs: Any) -> list[str]:
        return _keys(browse.class_page(engine, "p1", ClassFilter(**kwargs)))

    assert listed() == ["m1", "m2", "art"] or listed() == sorted(
        ["m1", "m2", "art"], key=lambda k: f"section {k}"
    )
    assert listed(school="sch-a") == ["art", "m1"]
    assert listed(course="crs-sch-b") == ["m2"]
    assert listed(term="fall", search="SECTION M") == ["m1", "m2"]
    assert listed(term="spring") == []
    page = browse.class_page(engine, "p1", ClassFilter(school="sch-a"))
    assert {r["sis_key"]: r["students"] for r in page.rows} == {"art": 1, "m1": 2}
    record = browse.class_record(engine, "p1", "m1")
    assert record is not None
    assert [p["user_key"] for p in record["students"]] == ["s002", "s001"]  # nguyen, o'brien
    assert record["school"]["name"] == "School sch-a"
    assert record["course"]["title"] == "Math" and record["terms"][0]["name"] == "Fall"
    assert [r["action"] for r in record["history"]["rows"]] == ["add"]
    choices = browse.class_choices(engine, "p1", "sch-a")
    assert [c["sis_key"] for c in choices["courses"]] == ["crs-sch-a"]


def test_schools_list_maps_each_sent_school_to_its_lms_organization(lms_url: str) -> None:
    from include.sis_sync import school_summary

    engine = engine_for(lms_url)
    frames = _snapshot(schools=("sch-a", "sch-b", "sch-c"))
    sync(lms_url, _snapshot())  # sch-c is sent later, and not synced
    summary = school_summary.summarise(frames, frozenset({"sch-a", "sch-b"}))
    school_summary.write(engine, "p1", 1, summary, school_summary.totals(frames))
    rows = {r["sis_key"]: r for r in browse.schools(engine, "p1")}
    assert rows["sch-a"]["lms"]["slug"] and rows["sch-c"]["lms"] is None
    assert not rows["sch-c"]["synced"] and rows["sch-a"]["synced"]
    district_ = browse.school(engine, "p1", "dist")
    assert [c["sis_key"] for c in district_["children"]] == ["sch-a", "sch-b", "sch-c"]
    assert browse.school(engine, "p1", "sch-b")["parent"]["sis_key"] == "dist"
    got = counts.read(engine, "p1")
    assert got[counts.WHOLE_PORTAL]["students"]["sis"] == 39
    assert got["sch-b"]["students"]["sis"] == 13  # memberships sent, the teacher aside
    assert pd.notna(got["sch-a"]["students"]["active"])


def test_a_bulk_load_builds_the_browse_indexes_after_its_inserts(
    lms_url: str, monkeypatch: Any
) -> None:
    """An initial sync inserts without the browse indexes and builds them at its end: they
    are there afterwards, and the pages read through them."""
    from include.sis_sync.lms import commit

    monkeypatch.setattr(commit, "BULK_LOAD_ROWS", 1)
    engine = engine_for(lms_url)
    dropped: list[str] = []
    real_drop = sa.Index.drop
    monkeypatch.setattr(
        sa.Index,
        "drop",
        lambda self, bind, **kw: (dropped.append(self.name), real_drop(self, bind, **kw)),
    )
    sync(lms_url, _snapshot())
    assert set(dropped) == set(schema.BROWSE_INDEXES)
    inspector = sa.inspect(engine)
    found = {
        ix["name"]
        for table in ("lms_users", "lms_sections", "lms_user_organizations", "lms_enrollments")
        for ix in inspector.get_indexes(table)
    }
    assert found >= schema.BROWSE_INDEXES
    assert _walk(engine, PeopleFilter("student", search="zoe")) == ["s001"]
