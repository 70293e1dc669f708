"""OneRoster REST objects flatten to the CSV binding's rows, then share its canonical mapping."""

from __future__ import annotations

from include.sis_sync.config import Entities
from include.sis_sync.providers.oneroster_csv import to_canonical
from include.sis_sync.providers.oneroster_rest_mapping import flatten


def _ref(kind: str, key: str) -> dict:
    return {"href": f"hhttp://bad/{key}", "sourcedId": key, "type": kind}


def test_guidrefs_and_lists_become_the_csv_columns() -> None:
    user = {
        "sourcedId": "u1",
        "status": "active",
        "dateLastModified": "2026-09-02T06:00:00.000Z",
        "enabledUser": "true",
        "orgs": [_ref("org", "sch-b"), _ref("org", "sch-a")],
        "role": "student",
        "username": "ada",
        "givenName": "Ada",
        "familyName": "L",
        "identifier": "1001",
        "email": "ada@example.org",
        "grades": ["10", "09"],
    }
    row = flatten("users", [user]).to_pylist()[0]
    assert row["orgSourcedIds"] == "sch-b,sch-a"
    assert row["grades"] == "10,09" and row["middleName"] == ""
    frames = to_canonical({"users": flatten("users", [user]).to_pandas()}, Entities())
    canonical = frames["users"].iloc[0]
    assert canonical["organizations"] == "sch-a,sch-b" and canonical["grades"] == "09,10"
    assert canonical["enabled"] == "true" and canonical["sis_id"] == "1001"


def test_classes_and_enrollments_keep_their_references() -> None:
    klass = {
        "sourcedId": "c1",
        "status": "tobedeleted",
        "title": "Algebra",
        "course": _ref("course", "k1"),
        "school": _ref("org", "sch-a"),
        "terms": [_ref("academicSession", "fall"), _ref("academicSession", "spring")],
        "periods": ["2"],
        "classType": "scheduled",
    }
    enrollment = {
        "sourcedId": "e1",
        "status": "active",
        "class": _ref("class", "c1"),
        "school": _ref("org", "sch-a"),
        "user": _ref("user", "u1"),
        "role": "teacher",
        "primary": True,
    }
    frames = to_canonical(
        {
            "classes": flatten("classes", [klass]).to_pandas(),
            "enrollments": flatten("enrollments", [enrollment]).to_pandas(),
        },
        Entities(),
    )
    section = frames["sections"].iloc[0]
    assert (section["course_key"], section["organization_key"], section["term_keys"]) == (
        "k1",
        "sch-a",
        "fall,spring",
    )
    assert section["sis_status"] == "tobedeleted"
    row = frames["enrollments"].iloc[0]
    assert (row["section_key"], row["user_key"], row["primary"]) == ("c1", "u1", "true")


def test_org_hierarchy_follows_each_parent() -> None:
    orgs = [
        {"sourcedId": "dist", "name": "District", "type": "district"},
        {"sourcedId": "sch-a", "name": "A", "type": "school", "parent": _ref("org", "dist")},
        {
            "sourcedId": "dep-1",
            "name": "Maths",
            "type": "department",
            "parent": _ref("org", "sch-a"),
        },
    ]
    frame = to_canonical({"orgs": flatten("orgs", orgs).to_pandas()}, Entities())["organizations"]
    parents = dict(zip(frame["sis_key"], frame["parent_key"].fillna(""), strict=True))
    assert parents == {"dist": "", "sch-a": "dist", "dep-1": "sch-a"}
