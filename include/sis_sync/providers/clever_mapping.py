"""Clever Data API v3.0 objects to the canonical roster frames.

The key is always Clever's object ``id``. A user holding several roles (``roles.student``,
``roles.teacher``, ``roles.staff``, ``roles.district_admin``, ``roles.contact``) is one user;
``sis_id``, numbers, grades and schools sit inside each role object. Enrollments are not
objects in Clever: they come from each section's ``students`` and ``teachers`` id arrays, keyed
``<section>:<user>:<role>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from include.sis_sync import model

# Clever role object -> canonical role; the primary role follows model.USER_ROLES' order.
ROLES = {
    "student": "student",
    "teacher": "teacher",
    "district_admin": "administrator",
    "staff": "staff",
    "contact": "contact",
}
# The role object whose identifiers describe the user, most specific first.
IDENTITY_ORDER = ("student", "teacher", "staff", "district_admin", "contact")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _join(values: Iterable[Any]) -> str | None:
    items = sorted({str(v).strip() for v in values if v is not None and str(v).strip()})
    return ",".join(items) or None


def _school_rows(schools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "sis_key": s["id"],
            "name": s.get("name"),
            "kind": "school",
            "parent_key": s.get("district"),
            "school_number": _text(s.get("school_number")) or _text(s.get("sis_id")),
        }
        for s in schools
    ]


def organizations(
    district: Mapping[str, Any], schools: Iterable[Mapping[str, Any]]
) -> pd.DataFrame:
    """The district and its schools."""
    rows = [{"sis_key": district["id"], "name": district.get("name"), "kind": "district"}]
    rows += [{**row, "parent_key": district["id"]} for row in _school_rows(schools)]
    return model.conform(pd.DataFrame(rows), model.ORGANIZATIONS)


def schools_only(schools: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Schools without their district (a delta names only what changed)."""
    frame = pd.DataFrame(_school_rows(schools), columns=model.ORGANIZATIONS.columns)
    return model.conform(frame, model.ORGANIZATIONS)


def terms(objects: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "sis_key": t["id"],
            "name": t.get("name"),
            "kind": "term",
            "start_date": (_text(t.get("start_date")) or "")[:10] or None,
            "end_date": (_text(t.get("end_date")) or "")[:10] or None,
        }
        for t in objects
    ]
    return model.conform(pd.DataFrame(rows, columns=model.TERMS.columns), model.TERMS)


def courses(objects: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Clever courses belong to the district, not to a school."""
    rows = [
        {
            "sis_key": c["id"],
            "title": c.get("name"),
            "code": _text(c.get("number")),
            "organization_key": c.get("district"),
        }
        for c in objects
    ]
    return model.conform(pd.DataFrame(rows, columns=model.COURSES.columns), model.COURSES)


def _user_row(user: Mapping[str, Any]) -> dict[str, Any]:
    roles = user.get("roles") or {}
    held = [ROLES[r] for r in ROLES if r in roles]
    primary = next(
        (
            ROLES[r]
            for r in ("student", "teacher", "district_admin", "staff", "contact")
            if r in roles
        ),
        None,
    )
    identity = next((roles[r] for r in IDENTITY_ORDER if r in roles), {}) or {}
    schools: set[str] = set()
    for role in ("student", "teacher", "staff"):
        detail = roles.get(role) or {}
        schools.update(detail.get("schools") or [])
        if detail.get("school"):
            schools.add(detail["school"])
    if "district_admin" in roles and user.get("district"):
        schools.add(user["district"])
    name = user.get("name") or {}
    student = roles.get("student") or {}
    teacher = roles.get("teacher") or {}
    credentials = identity.get("credentials") or {}
    return {
        "sis_key": user["id"],
        "role": primary,
        "roles": _join(held),
        "given_name": name.get("first"),
        "family_name": name.get("last"),
        "middle_name": name.get("middle"),
        "email": _text(user.get("email")),
        "username": _text(credentials.get("district_username")),
        "sis_id": _text(identity.get("sis_id")) or _text(identity.get("staff_id")),
        "student_number": _text(student.get("student_number")),
        "teacher_number": _text(teacher.get("teacher_number")),
        "grades": _text(student.get("grade")),
        "organizations": _join(schools),
        "enabled": "true",
    }


def users(objects: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = [_user_row(u) for u in objects]
    return model.conform(pd.DataFrame(rows, columns=model.USERS.columns), model.USERS)


def sections(objects: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "sis_key": s["id"],
            "name": s.get("name"),
            "organization_key": s.get("school"),
            "course_key": s.get("course"),
            "term_keys": s.get("term_id"),
            "period": _text(s.get("period")),
            "subject": _text(s.get("subject")),
            "grades": _text(s.get("grade")),
            "code": _text(s.get("section_number")) or _text(s.get("sis_id")),
        }
        for s in objects
    ]
    return model.conform(pd.DataFrame(rows, columns=model.SECTIONS.columns), model.SECTIONS)


def enrollments(objects: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One enrollment per section member; the section's ``teacher`` is the primary one."""
    section_keys: list[str] = []
    user_keys: list[str] = []
    roles: list[str] = []
    primary: list[str] = []
    schools: list[str | None] = []
    for section in objects:
        lead = section.get("teacher")
        for role, members in (
            ("student", section.get("students")),
            ("teacher", section.get("teachers")),
        ):
            for member in members or []:
                section_keys.append(section["id"])
                user_keys.append(member)
                roles.append(role)
                primary.append("true" if role == "teacher" and member == lead else "false")
                schools.append(section.get("school"))
    frame = pd.DataFrame(
        {
            "section_key": pd.array(section_keys, dtype="string"),
            "user_key": pd.array(user_keys, dtype="string"),
            "role": pd.array(roles, dtype="string"),
            "primary": pd.array(primary, dtype="string"),
            "organization_key": pd.array(schools, dtype="string"),
        }
    )
    frame["sis_key"] = frame["section_key"] + ":" + frame["user_key"] + ":" + frame["role"]
    return model.conform(frame, model.ENROLLMENTS)
