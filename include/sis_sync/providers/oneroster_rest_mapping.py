"""OneRoster 1.1 REST objects to the rows of the OneRoster CSV binding.

REST and CSV carry the same records; REST nests references as GUIDRefs
(``{"sourcedId", "type", "href"}``) and lists as JSON arrays. Flattening them to the CSV
binding's columns lets both transports share one mapping to the canonical frames
(:func:`include.sis_sync.providers.oneroster_csv.to_canonical`). ``href`` is ignored: servers
fill it unreliably.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa

COLLECTIONS = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _ref(value: Any) -> str:
    """A GUIDRef's sourcedId (a bare string is taken as the id itself)."""
    if isinstance(value, Mapping):
        return _text(value.get("sourcedId"))
    return _text(value)


def _refs(values: Any) -> str:
    return ",".join(r for r in (_ref(v) for v in values or []) if r)


def _items(values: Any) -> str:
    if isinstance(values, str):
        return values.strip()
    return ",".join(t for t in (_text(v) for v in values or []) if t)


def _base(obj: Mapping[str, Any]) -> dict[str, str]:
    return {
        "sourcedId": _text(obj.get("sourcedId")),
        "status": _text(obj.get("status")),
        "dateLastModified": _text(obj.get("dateLastModified")),
    }


def _org(o: Mapping[str, Any]) -> dict[str, str]:
    return {
        **_base(o),
        "name": _text(o.get("name")),
        "type": _text(o.get("type")),
        "identifier": _text(o.get("identifier")),
        "parentSourcedId": _ref(o.get("parent")),
    }


def _session(o: Mapping[str, Any]) -> dict[str, str]:
    return {
        **_base(o),
        "title": _text(o.get("title")),
        "type": _text(o.get("type")),
        "startDate": _text(o.get("startDate")),
        "endDate": _text(o.get("endDate")),
        "parentSourcedId": _ref(o.get("parent")),
        "schoolYear": _text(o.get("schoolYear")),
    }


def _course(o: Mapping[str, Any]) -> dict[str, str]:
    return {
        **_base(o),
        "schoolYearSourcedId": _ref(o.get("schoolYear")),
        "title": _text(o.get("title")),
        "courseCode": _text(o.get("courseCode")),
        "grades": _items(o.get("grades")),
        "orgSourcedId": _ref(o.get("org")),
        "subjects": _items(o.get("subjects")),
    }


def _class(o: Mapping[str, Any]) -> dict[str, str]:
    return {
        **_base(o),
        "title": _text(o.get("title")),
        "grades": _items(o.get("grades")),
        "courseSourcedId": _ref(o.get("course")),
        "classCode": _text(o.get("classCode")),
        "classType": _text(o.get("classType")),
        "location": _text(o.get("location")),
        "schoolSourcedId": _ref(o.get("school")),
        "termSourcedIds": _refs(o.get("terms")),
        "subjects": _items(o.get("subjects")),
        "periods": _items(o.get("periods")),
    }


def _user(o: Mapping[str, Any]) -> dict[str, str]:
    return {
        **_base(o),
        "enabledUser": _text(o.get("enabledUser")),
        "orgSourcedIds": _refs(o.get("orgs")),
        "role": _text(o.get("role")),
        "username": _text(o.get("username")),
        "givenName": _text(o.get("givenName")),
        "familyName": _text(o.get("familyName")),
        "middleName": _text(o.get("middleName")),
        "identifier": _text(o.get("identifier")),
        "email": _text(o.get("email")),
        "grades": _items(o.get("grades")),
    }


def _enrollment(o: Mapping[str, Any]) -> dict[str, str]:
    return {
        **_base(o),
        "classSourcedId": _ref(o.get("class")),
        "schoolSourcedId": _ref(o.get("school")),
        "userSourcedId": _ref(o.get("user")),
        "role": _text(o.get("role")),
        "primary": _text(o.get("primary")),
        "beginDate": _text(o.get("beginDate")),
        "endDate": _text(o.get("endDate")),
    }


FLATTEN: dict[str, Callable[[Mapping[str, Any]], dict[str, str]]] = {
    "orgs": _org,
    "academicSessions": _session,
    "courses": _course,
    "classes": _class,
    "users": _user,
    "enrollments": _enrollment,
}


def flatten(collection: str, objects: Iterable[Mapping[str, Any]]) -> pa.Table:
    """A collection's objects as a table of the CSV binding's columns, all text."""
    rows = [FLATTEN[collection](o) for o in objects]
    columns = list(FLATTEN[collection]({}).keys())
    return pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns})
