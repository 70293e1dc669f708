"""The diff against a real SQLite LMS: every action kind, cascades, deltas and scope."""

from __future__ import annotations

import json

import pandas as pd
import sqlalchemy as sa

from include.sis_sync.lms.db import engine_for
from include.sis_sync.transform import derive_user_organizations
from tests.helpers import ALL_BULK, actions_of, canonical, district, run_diff, sync


def _lms_user(lms_url: str, key: str) -> dict:
    with engine_for(lms_url).connect() as conn:
        row = conn.execute(
            sa.text("SELECT * FROM lms_users WHERE sis_key = :k"), {"k": key}
        ).mappings()
        return dict(row.one())


def test_first_sync_adds_everything(lms_url: str) -> None:
    frames = district(
        students={"s1": "sch-a", "s2": "sch-b"},
        sections={"c1": "sch-a"},
        enrollments=[("c1", "s1")],
    )
    change_set, _ = run_diff(lms_url, frames)
    counts = change_set.counts()
    assert counts["organizations"]["add"] == 3
    assert counts["users"]["add"] == 2
    assert counts["user_organizations"]["add"] == 2
    assert counts["enrollments"]["add"] == 1
    assert set(change_set.actions["action"]) == {"add"}


def test_update_reports_field_level_before_and_after(lms_url: str) -> None:
    frames = district(students={"s1": "sch-a", "s2": "sch-a"})
    sync(lms_url, frames)
    users = frames["users"].copy()
    users.loc[users["sis_key"] == "s1", "family_name"] = "Renamed"
    frames["users"] = users
    change_set, _ = run_diff(lms_url, frames)
    assert actions_of(change_set, "users") == {"s1": "update"}
    row = change_set.actions[change_set.actions["sis_key"] == "s1"].iloc[0]
    assert json.loads(row["changes"]) == {"family_name": ["Family s1", "Renamed"]}
    assert row["lms_id"] == _lms_user(lms_url, "s1")["id"]


def test_rows_holding_nulls_are_not_reported_changed(lms_url: str) -> None:
    """Under pandas 3 a plain != calls every null-holding row changed; the diff must not."""
    frames = district(students={f"s{i}": "sch-a" for i in range(30)})
    assert frames["users"]["email"].isna().all()  # every row holds nulls
    sync(lms_url, frames)
    change_set, _ = run_diff(lms_url, frames)
    assert change_set.actions.empty


def test_missing_record_is_archived_and_its_enrollments_cascade(lms_url: str) -> None:
    frames = district(
        students={"s1": "sch-a", "s2": "sch-a"},
        sections={"c1": "sch-a"},
        enrollments=[("c1", "s1"), ("c1", "s2")],
    )
    sync(lms_url, frames)
    later = district(students={"s2": "sch-a"}, sections={"c1": "sch-a"}, enrollments=[("c1", "s2")])
    change_set, _ = run_diff(lms_url, later)
    assert actions_of(change_set, "users") == {"s1": "archive"}
    assert actions_of(change_set, "enrollments") == {"c1:s1": "archive"}
    assert actions_of(change_set, "user_organizations") == {"s1:sch-a": "archive"}


def test_archived_section_archives_its_enrollments(lms_url: str) -> None:
    frames = district(
        students={"s1": "sch-a"},
        sections={"c1": "sch-a", "c2": "sch-a"},
        enrollments=[("c1", "s1"), ("c2", "s1")],
    )
    sync(lms_url, frames)
    later = district(students={"s1": "sch-a"}, sections={"c1": "sch-a"})
    # this feed carries no enrollments at all: only the cascade can archive c2's
    change_set, _ = run_diff(lms_url, later, modes={**ALL_BULK, "enrollments": "absent"})
    assert actions_of(change_set, "sections") == {"c2": "archive"}
    enrollments = change_set.actions[change_set.actions["entity"] == "enrollments"]
    assert dict(zip(enrollments["sis_key"], enrollments["reason"], strict=True)) == {
        "c2:s1": "section archived"
    }


def test_returning_record_is_reactivated_with_the_same_lms_id(lms_url: str) -> None:
    first = district(students={"s1": "sch-a", "s2": "sch-a"})
    sync(lms_url, first)
    original_id = _lms_user(lms_url, "s1")["id"]
    sync(lms_url, district(students={"s2": "sch-a"}))
    assert _lms_user(lms_url, "s1")["archived_at"] is not None
    change_set, _ = sync(lms_url, first)
    assert actions_of(change_set, "users") == {"s1": "reactivate"}
    row = _lms_user(lms_url, "s1")
    assert row["id"] == original_id
    assert row["archived_at"] is None


def test_delta_archives_only_tobedeleted_rows(lms_url: str) -> None:
    sync(lms_url, district(students={"s1": "sch-a", "s2": "sch-a", "s3": "sch-a"}))
    delta_users = canonical(
        "users",
        [
            {
                "sis_key": "s2",
                "sis_status": "tobedeleted",
                "role": "student",
                "organizations": "sch-a",
                "given_name": "G",
                "family_name": "Family s2",
            },
            {
                "sis_key": "s4",
                "role": "student",
                "roles": "student",
                "organizations": "sch-a",
                "given_name": "Given",
                "family_name": "New",
                "username": "s4",
            },
        ],
    )
    frames = {
        "users": delta_users,
        "user_organizations": derive_user_organizations(delta_users),
        "organizations": district()["organizations"],
    }
    modes = {"users": "delta", "user_organizations": "delta", "organizations": "absent"}
    change_set, _ = run_diff(lms_url, frames, modes=modes)
    # s1 and s3 are absent from the delta: unchanged, never archived
    assert actions_of(change_set, "users") == {"s2": "archive", "s4": "add"}
    assert actions_of(change_set, "user_organizations") == {
        "s2:sch-a": "archive",
        "s4:sch-a": "add",
    }


def test_absent_entity_is_left_alone(lms_url: str) -> None:
    sync(lms_url, district(students={"s1": "sch-a"}, sections={"c1": "sch-a"}))
    frames = district(students={"s1": "sch-a"})  # no sections in this feed
    modes = {**ALL_BULK, "sections": "absent", "enrollments": "absent"}
    change_set, _ = run_diff(lms_url, frames, modes=modes)
    assert actions_of(change_set, "sections") == {}


def test_subset_of_schools_never_archives_outside_it(lms_url: str) -> None:
    sync(
        lms_url,
        district(students={"a1": "sch-a", "b1": "sch-b"}, sections={"ca": "sch-a", "cb": "sch-b"}),
    )
    # a run over sch-a only, whose feed no longer carries anybody
    change_set, _ = run_diff(lms_url, district(students={}, sections={}), run_schools=["sch-a"])
    assert actions_of(change_set, "users") == {"a1": "archive"}
    assert actions_of(change_set, "sections") == {"ca": "archive"}
    touched_schools = set(change_set.actions["school_key"].dropna())
    assert touched_schools == {"sch-a"}
    assert "sch-b" not in set(change_set.actions["sis_key"])
    assert actions_of(change_set, "organizations") == {}  # the district is out of its reach


def test_user_leaving_one_of_two_schools_keeps_account(lms_url: str) -> None:
    sync(lms_url, district(students={"s1": "sch-a,sch-b"}))
    change_set, _ = run_diff(lms_url, district(students={"s1": "sch-b"}))
    assert actions_of(change_set, "user_organizations") == {"s1:sch-a": "archive"}
    assert actions_of(change_set, "users") == {"s1": "update"}  # its organizations list


def test_user_missing_from_synced_school_but_in_unsynced_one_only_loses_membership(
    lms_url: str,
) -> None:
    sync(lms_url, district(students={"s1": "sch-a,sch-b"}))
    # the portal now syncs only sch-a, and the feed no longer lists s1 there
    change_set, _ = run_diff(lms_url, district(students={}), portal_schools=frozenset({"sch-a"}))
    assert actions_of(change_set, "users") == {}
    assert actions_of(change_set, "user_organizations") == {"s1:sch-a": "archive"}


def test_sections_outside_the_school_year_are_not_added(lms_url: str) -> None:
    frames = district(
        students={"s1": "sch-a"},
        sections={"c1": "sch-a", "old": "sch-a"},
        enrollments=[("c1", "s1"), ("old", "s1")],
    )
    terms = pd.concat(
        [
            frames["terms"],
            canonical(
                "terms",
                [
                    {
                        "sis_key": "last-year",
                        "name": "Last year",
                        "kind": "semester",
                        "start_date": "2025-08-15",
                        "end_date": "2025-12-20",
                    }
                ],
            ),
        ],
        ignore_index=True,
    )
    sections = frames["sections"].copy()
    sections.loc[sections["sis_key"] == "old", "term_keys"] = "last-year"
    frames.update(terms=terms, sections=sections)
    change_set, _ = run_diff(lms_url, frames, school_year=("2026-08-01", "2027-06-30"))
    assert actions_of(change_set, "sections") == {"c1": "add"}
    assert actions_of(change_set, "enrollments") == {"c1:s1": "add"}
    assert change_set.outside_school_year.tolist() == ["old"]


def test_portals_are_isolated(lms_url: str) -> None:
    sync(lms_url, district(students={"s1": "sch-a"}), portal_id="p1")
    change_set, _ = run_diff(lms_url, district(students={"s1": "sch-a"}), portal_id="p2")
    assert actions_of(change_set, "users") == {"s1": "add"}  # p1's row is not p2's
    sync(lms_url, district(students={}), portal_id="p2")
    assert _lms_user(lms_url, "s1")["archived_at"] is None  # p2's sync never touched p1


def test_teacher_from_an_unsynced_school_is_kept_for_the_synced_section(lms_url: str) -> None:
    frames = district(
        students={"s1": "sch-a", "t1": "sch-b"},
        sections={"c1": "sch-a"},
        enrollments=[("c1", "s1"), ("c1", "t1")],
    )
    change_set, _ = run_diff(lms_url, frames, portal_schools=frozenset({"sch-a"}))
    assert actions_of(change_set, "users") == {"s1": "add", "t1": "add"}
    assert actions_of(change_set, "enrollments") == {"c1:s1": "add", "c1:t1": "add"}
    # but not its membership of the unsynced school
    assert actions_of(change_set, "user_organizations") == {"s1:sch-a": "add"}


def test_cascades_and_parent_links_reach_across_key_buckets(lms_url: str) -> None:
    """One row per bucket: an archived user's memberships and enrollments, and an archived
    section's enrollments, sit in other buckets than their parents and still cascade, each
    naming the parent that explains it."""
    frames = district(
        students={"s1": "sch-a", "s2": "sch-a", "s3": "sch-a"},
        sections={"c1": "sch-a", "c2": "sch-a"},
        enrollments=[("c1", "s1"), ("c1", "s2"), ("c2", "s3"), ("c2", "s2")],
    )
    sync(lms_url, frames, bucket_rows=1)
    later = district(students={"s2": "sch-a", "s3": "sch-a"}, sections={"c1": "sch-a"})
    modes = {**ALL_BULK, "enrollments": "absent"}
    change_set, _ = run_diff(lms_url, later, modes=modes, bucket_rows=1)
    assert actions_of(change_set, "users") == {"s1": "archive"}
    assert actions_of(change_set, "sections") == {"c2": "archive"}
    enrollments = change_set.actions[change_set.actions["entity"] == "enrollments"]
    reasons = dict(zip(enrollments["sis_key"], enrollments["reason"], strict=True))
    assert reasons == {
        "c1:s1": "user archived",
        "c2:s3": "section archived",
        "c2:s2": "section archived",
    }
    parents = {
        key: (user, section)
        for key, user, section in zip(
            enrollments["sis_key"],
            enrollments["parent_user_key"],
            enrollments["parent_section_key"],
            strict=True,
        )
    }
    assert parents["c1:s1"][0] == "s1" and pd.isna(parents["c1:s1"][1])
    assert parents["c2:s3"][1] == "c2" and parents["c2:s2"][1] == "c2"
    memberships = actions_of(change_set, "user_organizations")
    assert memberships == {"s1:sch-a": "archive"}
