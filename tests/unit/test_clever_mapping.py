"""Clever v3.0 objects to canonical frames, on hand-written objects shaped as the spec says."""

from __future__ import annotations

import json

import pandas as pd

from include.sis_sync.config import Entities
from include.sis_sync.providers.clever_extract import to_canonical

DISTRICT = {"id": "d0000000000000000000000d", "name": "Springfield"}
SCHOOLS = [
    {
        "id": "s0000000000000000000000a",
        "district": DISTRICT["id"],
        "name": "North High",
        "school_number": "101",
        "sis_id": "N1",
    },
    {
        "id": "s0000000000000000000000b",
        "district": DISTRICT["id"],
        "name": "South High",
        "school_number": "",
        "sis_id": "S2",
    },
]
A, B = SCHOOLS[0]["id"], SCHOOLS[1]["id"]
STUDENT = {
    "id": "u00000000000000000000001",
    "district": DISTRICT["id"],
    "email": "kid@example.org",
    "name": {"first": "Ada", "last": "Lovelace", "middle": None},
    "roles": {
        "student": {
            "sis_id": "1001",
            "student_number": "1001",
            "school": A,
            "schools": [A, B],
            "grade": "9",
            "credentials": {"district_username": "ada9"},
        }
    },
    "uri": "/v3.0/users/u00000000000000000000001",
}
TEACHER_STAFF = {
    "id": "u00000000000000000000002",
    "district": DISTRICT["id"],
    "email": None,
    "name": {"first": "Alan", "last": "Turing"},
    "roles": {
        "teacher": {
            "sis_id": "T7",
            "teacher_number": "77",
            "school": A,
            "schools": [A],
            "credentials": {"district_username": "turing"},
        },
        "staff": {"staff_id": "ST7", "schools": [B], "department": "Maths"},
    },
}
ADMIN = {
    "id": "u00000000000000000000003",
    "district": DISTRICT["id"],
    "name": {"first": "Grace", "last": "Hopper"},
    "roles": {"district_admin": {"title": "x"}},
}
SECTION = {
    "id": "c00000000000000000000001",
    "district": DISTRICT["id"],
    "school": A,
    "course": "k00000000000000000000001",
    "term_id": "t00000000000000000000001",
    "name": "Algebra",
    "period": "2",
    "subject": "math",
    "grade": "9",
    "sis_id": "ALG",
    "section_number": "",
    "students": [STUDENT["id"], "u0000000000000000000000ff"],
    "teachers": [TEACHER_STAFF["id"]],
    "teacher": TEACHER_STAFF["id"],
}


def _tables(**resources: list[dict]) -> dict[str, pd.DataFrame]:
    return {
        name: pd.DataFrame(
            {"id": [o["id"] for o in objs], "json": [json.dumps(o) for o in objs]}, dtype="string"
        )
        for name, objs in resources.items()
    }


def _canonical(entities: Entities | None = None) -> dict[str, pd.DataFrame]:
    tables = _tables(
        districts=[DISTRICT],
        schools=SCHOOLS,
        terms=[
            {
                "id": "t00000000000000000000001",
                "name": "Fall",
                "start_date": "2026-08-15T00:00:00.000Z",
                "end_date": "2026-12-20",
            }
        ],
        courses=[
            {
                "id": "k00000000000000000000001",
                "district": DISTRICT["id"],
                "name": "Algebra I",
                "number": "MA1",
            }
        ],
        users=[STUDENT, TEACHER_STAFF, ADMIN],
        sections=[SECTION],
    )
    return to_canonical(tables, entities or Entities())


def _row(frame: pd.DataFrame, key: str) -> dict:
    return frame.set_index("sis_key").loc[key].to_dict()


def test_district_and_schools_become_organizations() -> None:
    orgs = _canonical()["organizations"]
    assert _row(orgs, DISTRICT["id"])["kind"] == "district"
    north = _row(orgs, A)
    assert (north["kind"], north["parent_key"], north["school_number"]) == (
        "school",
        DISTRICT["id"],
        "101",
    )
    assert _row(orgs, B)["school_number"] == "S2"  # falls back to the sis_id


def test_user_fields_come_from_role_objects() -> None:
    student = _row(_canonical()["users"], STUDENT["id"])
    assert student["role"] == "student" and student["roles"] == "student"
    assert (student["sis_id"], student["student_number"], student["grades"]) == (
        "1001",
        "1001",
        "9",
    )
    assert student["username"] == "ada9"
    assert student["organizations"] == ",".join(sorted([A, B]))  # a student in two schools
    assert pd.isna(student["middle_name"])


def test_multi_role_user_is_one_user_with_every_role() -> None:
    users = _canonical(Entities(staff=True))["users"]
    assert list(users["sis_key"]).count(TEACHER_STAFF["id"]) == 1
    teacher = _row(users, TEACHER_STAFF["id"])
    assert teacher["role"] == "teacher"
    assert teacher["roles"] == "staff,teacher"
    assert teacher["sis_id"] == "T7" and teacher["teacher_number"] == "77"
    assert teacher["organizations"] == ",".join(sorted([A, B]))


def test_roles_the_portal_does_not_sync_are_left_out() -> None:
    users = _canonical(Entities(administrators=False, staff=False))["users"]
    assert ADMIN["id"] not in set(users["sis_key"])
    assert _row(users, TEACHER_STAFF["id"])["roles"] == "teacher"


def test_section_members_become_enrollments() -> None:
    frames = _canonical()
    section = _row(frames["sections"], SECTION["id"])
    assert (section["organization_key"], section["course_key"], section["term_keys"]) == (
        A,
        SECTION["course"],
        SECTION["term_id"],
    )
    assert section["code"] == "ALG"
    enrollments = frames["enrollments"].set_index("sis_key")
    teacher_key = f"{SECTION['id']}:{TEACHER_STAFF['id']}:teacher"
    assert enrollments.loc[teacher_key, "primary"] == "true"
    student_key = f"{SECTION['id']}:{STUDENT['id']}:student"
    assert enrollments.loc[student_key, ["role", "primary"]].tolist() == ["student", "false"]
    # the member Clever has not shared with the app is kept here; validation warns and drops it
    assert f"{SECTION['id']}:u0000000000000000000000ff:student" in enrollments.index


def test_dates_are_cut_to_days() -> None:
    term = _canonical()["terms"].iloc[0]
    assert (term["start_date"], term["end_date"]) == ("2026-08-15", "2026-12-20")
