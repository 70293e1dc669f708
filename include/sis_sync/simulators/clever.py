"""A local Clever server: the Data API and Events API v3.0, over real HTTP on 127.0.0.1.

Why: the Clever provider must be tested against something that answers the way Clever does
(envelopes, paging links, bearer auth, rate limits, events) without a district token or the
network. Responses follow Clever's own Swagger 2.0 definitions (``Clever/swagger-api``
``v3.0.yml`` and ``v3.0-events.yml``; local copies in ``shared/reference/specs``), and the
tests validate them against those definitions.

Served (all under ``/v3.0``, ``Authorization: Bearer <token>`` required on every request):

- lists ``/districts``, ``/schools``, ``/users`` (``role=student|teacher|staff|district_admin|
  contact``; no role: every user), ``/sections``, ``/terms``, ``/courses``, ``/events``;
- items ``/{resource}/{id}`` and ``/events/{id}``.

Lists take ``limit`` (default 100, at most 10000), ``starting_after`` and ``ending_before``;
rows come in ascending id order as ``{"data": {...}, "uri": "/v3.0/<resource>/<id>"}`` and
``links`` holds ``self``, ``prev`` when rows exist before the page and ``next`` when rows exist
after it, as relative uris (``/v3.0/users?limit=N&role=student&starting_after=<last id>``).

Where Clever's definitions and documentation are silent, the simulator assumes (the project's
docs repeat this list):

1. **Ids.** 24 lower-case hex characters shaped like Mongo ObjectIds: 8 hex of a Unix time,
   16 more. Objects converted from a OneRoster district get the time 2026-08-01 and a hash of
   their kind and ``sourcedId`` (deterministic); objects and events created later get the
   current time (never earlier than that date) and a counter, so they sort after everything
   before them, as Clever's "ascending ids (based on create time)" implies.
2. **Range paging.** ``starting_after``/``ending_before`` are positions in the id order, not
   lookups: an id that no longer exists still pages correctly. The last page has no ``next``
   link (Clever's recorded responses show the same); ``next`` keeps ``limit`` and every filter
   (``role``, ``record_type``).
3. **Errors** are JSON ``{"message": "..."}`` (the spec's ``BadRequest``/``NotFound``/
   ``InternalError`` shape): 401 for a missing or wrong token, 400 for a bad ``limit`` or
   ``role``, 413 for ``limit`` over 10000, 404 for unknown ids and paths, 405 for methods
   other than GET, 501 for sub-resources (``/sections/{id}/users``...) the simulator does not
   serve. A 429 has an empty body (Clever documents "an empty response") with
   ``X-RateLimit-Reset`` (Unix seconds), ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``,
   ``X-RateLimit-Bucket`` and, beyond Clever's documented set, ``Retry-After`` (seconds).
4. **Events disabled** (``events_enabled=False``, Clever's events are opt-in since Dec 2022):
   ``GET /v3.0/events`` answers **404** ``{"message": "events are not enabled ..."}``. The
   events spec declares 404 (``NotFound``) as the only non-200 answer of ``/events``.
5. **Checkpoint outside the window.** ``/events?starting_after=<id>`` where ``<id>`` is not an
   event still held (expired by ``expire_events_before``, Clever's 30-day window, or never
   issued) answers **404** ``{"message": "event <id> is not in the events window ..."}``:
   paging on from an unknown point could silently skip changes. A client tells the two 404s
   apart by asking ``/events?limit=1`` without ``starting_after``: 404 again means disabled.
   ``ending_before`` is a plain range bound.
6. **Event shape.** ``{"id", "created", "type", "data": {"object": <the record after the
   change, or the last state for *.deleted>, "previous_attributes": {<changed top-level
   field>: <old value>}}}``; ``previous_attributes`` only on ``*.updated``, inside ``data`` as
   Clever's recorded events show (the Swagger file declares it beside ``data``, with object
   values, which real events do not follow). Membership changes are ``sections.updated`` with
   the old ``students``/``teachers`` arrays. Deleting a user first removes them from every
   section (``sections.updated`` events), then emits ``users.deleted``. An update that changes
   nothing emits nothing. The initial data has no events: the window starts empty.
7. **Record types and filters.** ``record_type`` filters events by type prefix (``users``,
   ``sections``...); ``school`` is not supported (501). ``count=true`` on a list answers
   ``{"count": N}`` (the rows the same filters would page through); this is the Clever v1
   behaviour, not confirmed for v3.0, so clients must treat a missing count as unknown.
8. **Object contents** (from the OneRoster frames): ``sis_id`` is the OneRoster
   ``sourcedId``; ``student_number``/``teacher_number`` the OneRoster ``identifier``;
   ``credentials.district_username`` the ``username``; a class with several terms gets their
   common parent term (the school year); a school's ``principal`` is its administrator;
   district-level administrators are ``roles.district_admin``, school-level ones
   ``roles.staff``; the first ``multi_role`` teachers (by ``sourcedId``) also hold
   ``roles.staff`` under the same id; ``contacts`` optional synthetic guardians carry their
   full name in ``name.last`` as Clever's contacts do.

Run ``python -m include.sis_sync.simulators.clever --preset demo --port 8765 --token T`` to
serve a generated district until SIGINT/SIGTERM. The token is never logged.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import math
import os
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from include.sis_sync.simulators.http import (
    Answer,
    LocalServer,
    Request,
    district_parser,
    serve_until_stopped,
)

if TYPE_CHECKING:
    from include.sis_sync.sample.generator import District

__all__ = [
    "API_PREFIX",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "RESOURCES",
    "ROLES",
    "CleverData",
    "CleverSimulator",
    "clever_data_from_district",
    "clever_id",
    "main",
]

API_PREFIX = "/v3.0"
RESOURCES = ("districts", "schools", "users", "sections", "terms", "courses")
ROLES = ("student", "teacher", "staff", "district_admin", "contact")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
RATE_LIMIT_PER_MINUTE = 1200
# The time part of every id converted from a OneRoster district, and their created stamps.
BASE_TIME = int(datetime(2026, 8, 1, tzinfo=UTC).timestamp())
BASE_STAMP = "2026-08-01T00:00:00.000Z"
PAGING_PARAMS = ("limit", "starting_after", "ending_before", "count")
# Order of creation and (reversed) of deletion, so references point at existing records.
_CREATE_ORDER = ("districts", "schools", "terms", "courses", "users", "sections")

# OneRoster grade codes (CEDS) -> Clever's grade enum.
_GRADES = {
    "IT": "InfantToddler",
    "PR": "Preschool",
    "PK": "PreKindergarten",
    "TK": "TransitionalKindergarten",
    "KG": "Kindergarten",
    "PS": "PostGraduate",
    "UG": "Ungraded",
    "OTHER": "Other",
    **{f"{g:02d}": str(g) for g in range(1, 14)},
    **{str(g): str(g) for g in range(1, 14)},
}
_GRADE_ORDER = (
    "InfantToddler",
    "Preschool",
    "PreKindergarten",
    "TransitionalKindergarten",
    "Kindergarten",
    *(str(g) for g in range(1, 14)),
    "PostGraduate",
)
# OneRoster subject titles -> Clever's subject enum.
_SUBJECTS = {
    "mathematics": "math",
    "math": "math",
    "english language arts": "english/language arts",
    "english": "english/language arts",
    "reading": "english/language arts",
    "science": "science",
    "social studies": "social studies",
    "history": "social studies",
    "world languages": "language",
    "language": "language",
    "physical education": "PE and health",
    "health": "PE and health",
    "visual arts": "arts and music",
    "music": "arts and music",
    "arts": "arts and music",
    "computer science": "technology and engineering",
    "technology": "technology and engineering",
    "homeroom": "homeroom/advisory",
}
_CONTACT_GIVEN = ("Alex", "Jordan", "Sam", "Morgan", "Taylor", "Casey", "Robin", "Jamie")


def clever_id(kind: str, key: str) -> str:
    """The 24-hex id of a converted record: ObjectId-shaped, the same for the same key."""
    digest = hashlib.sha256(f"{kind}:{key}".encode()).hexdigest()[:16]
    return f"{BASE_TIME:08x}{digest}"


def _stamp(moment: float | None = None) -> str:
    """An ISO-8601 UTC timestamp with milliseconds, as Clever writes them."""
    when = datetime.fromtimestamp(time.time() if moment is None else moment, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class _IdFactory:
    """Strictly increasing ObjectId-shaped ids: current time (never before BASE_TIME), counter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._time = BASE_TIME + 1
        self._counter = 0

    def next(self) -> str:
        with self._lock:
            self._time = max(self._time, int(time.time()))
            self._counter += 1
            return f"{self._time:08x}{self._counter:016x}"


# --------------------------------------------------------------------------------------------
# The district as Clever objects
# --------------------------------------------------------------------------------------------


@dataclass
class CleverData:
    """A district as Clever v3.0 objects, each keyed by its Clever id.

    ``ids`` maps OneRoster ``sourcedId`` to the Clever id it became (handy in tests).
    """

    district: dict[str, Any]
    schools: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    terms: dict[str, dict[str, Any]] = field(default_factory=dict)
    courses: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def without_terms_or_courses(self) -> CleverData:
        """This district as one that shares neither terms nor courses with the app (both are
        optional Clever data types): its sections then name neither."""
        sections = {
            key: {k: v for k, v in section.items() if k not in ("term_id", "course")}
            for key, section in self.sections.items()
        }
        return dataclasses.replace(self, sections=sections, terms={}, courses={})

    def resources(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every list endpoint's records, keyed by the endpoint's resource name."""
        return {
            "districts": {self.district["id"]: self.district},
            "schools": self.schools,
            "users": self.users,
            "sections": self.sections,
            "terms": self.terms,
            "courses": self.courses,
        }


def _split(value: Any) -> list[str]:
    """A OneRoster multi-value cell as a list (blank -> [])."""
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


def _grade(value: str) -> str:
    """The first OneRoster grade of a cell in Clever's grade enum ("" when blank)."""
    grades = _split(value)
    if not grades:
        return ""
    return _GRADES.get(grades[0].upper(), "Other")


def _grade_number(grade: str) -> int | None:
    """1..13 for numbered grades, 0 for Kindergarten, else None."""
    if grade == "Kindergarten":
        return 0
    return int(grade) if grade.isdigit() else None


def _subject(value: str) -> str:
    """The first OneRoster subject of a cell in Clever's subject enum."""
    subjects = _split(value)
    if not subjects:
        return ""
    return _SUBJECTS.get(subjects[0].lower(), "other")


def _hash_int(*parts: str) -> int:
    return int(hashlib.sha256(":".join(parts).encode()).hexdigest()[:8], 16)


def _records(frame: Any) -> list[dict[str, str]]:
    """A generator frame as rows of plain strings."""
    return [
        {key: "" if value is None else str(value) for key, value in row.items()}
        for row in frame.to_dict("records")
    ]


def clever_data_from_district(
    district: District, *, multi_role: int = 2, contacts: int = 0
) -> CleverData:
    """Convert the generator's OneRoster frames into Clever v3.0 objects.

    Deterministic: the same district gives the same ids and objects. ``multi_role`` teachers
    (the first by ``sourcedId``) also hold ``roles.staff``; ``contacts`` guardians (of the first
    students) are added as users with ``roles.contact``. The OneRoster frames hold no contacts,
    so counts match the frames when ``contacts`` is 0.
    """
    orgs = _records(district.orgs)
    sessions = _records(district.academic_sessions)
    courses = _records(district.courses)
    classes = _records(district.classes)
    users = _records(district.users)
    enrollments = _records(district.enrollments)

    ids: dict[str, str] = {}
    district_org = next((o for o in orgs if o["type"] == "district"), None)
    district_key = district_org["sourcedId"] if district_org else "district"
    district_id = clever_id("district", district_key)
    ids[district_key] = district_id
    school_orgs = [o for o in orgs if o["type"] == "school"]
    for org in school_orgs:
        ids[org["sourcedId"]] = clever_id("school", org["sourcedId"])
    for row in sessions:
        ids[row["sourcedId"]] = clever_id("term", row["sourcedId"])
    for row in courses:
        ids[row["sourcedId"]] = clever_id("course", row["sourcedId"])
    for row in classes:
        ids[row["sourcedId"]] = clever_id("section", row["sourcedId"])
    for row in users:
        ids[row["sourcedId"]] = clever_id("user", row["sourcedId"])
    school_ids = {o["sourcedId"]: ids[o["sourcedId"]] for o in school_orgs}

    def schools_of(row: dict[str, str], column: str = "orgSourcedIds") -> list[str]:
        return [school_ids[key] for key in _split(row[column]) if key in school_ids]

    # Terms: every academic session.
    terms = {
        ids[row["sourcedId"]]: {
            "id": ids[row["sourcedId"]],
            "district": district_id,
            "name": row["title"],
            "start_date": row["startDate"] or None,
            "end_date": row["endDate"] or None,
        }
        for row in sessions
    }
    session_parent = {row["sourcedId"]: row["parentSourcedId"] for row in sessions}

    def term_of(term_keys: list[str]) -> str | None:
        known = [key for key in term_keys if key in ids]
        if not known:
            return None
        if len(known) > 1:
            parents = {session_parent.get(key, "") for key in known}
            parent = parents.pop() if len(parents) == 1 else ""
            if parent in ids:
                return ids[parent]
        return ids[known[0]]

    clever_courses = {
        ids[row["sourcedId"]]: {
            "id": ids[row["sourcedId"]],
            "district": district_id,
            "name": row["title"],
            "number": row["courseCode"],
        }
        for row in courses
    }

    # Users.
    admins = [u for u in users if u["role"] in ("administrator", "districtAdministrator")]
    staff_teachers = {
        u["sourcedId"]
        for u in sorted((u for u in users if u["role"] == "teacher"), key=lambda u: u["sourcedId"])[
            : max(multi_role, 0)
        ]
    }
    clever_users: dict[str, dict[str, Any]] = {}
    for row in users:
        user_id = ids[row["sourcedId"]]
        schools = schools_of(row)
        school = schools[0] if schools else None
        credentials = {"district_username": row["username"]}
        role = row["role"]
        roles: dict[str, Any] = {}
        if role == "student":
            grade = _grade(row["grades"])
            number = _grade_number(grade)
            seed = _hash_int("student", row["sourcedId"])
            roles["student"] = {
                "sis_id": row["sourcedId"],
                "student_number": row["identifier"],
                "state_id": "",
                "school": school,
                "schools": schools,
                "grade": grade,
                "graduation_year": str(2039 - number) if number is not None else "",
                "dob": (
                    f"{seed % 12 + 1}/{seed // 12 % 28 + 1}/{2020 - number}"
                    if number is not None
                    else None
                ),
                "gender": ("F", "M", "X")[seed % 3],
                "race": "",
                "hispanic_ethnicity": "",
                "ell_status": "N",
                "enrollments": [],
                "credentials": credentials,
                "created": BASE_STAMP,
                "last_modified": BASE_STAMP,
            }
        elif role in ("teacher", "aide"):
            roles["teacher"] = {
                "sis_id": row["sourcedId"],
                "teacher_number": row["identifier"],
                "state_id": "",
                "school": school,
                "schools": schools,
                "title": "Teacher" if role == "teacher" else "Aide",
                "district": district_id,
                "credentials": credentials,
                "created": BASE_STAMP,
                "last_modified": BASE_STAMP,
            }
            if row["sourcedId"] in staff_teachers:
                roles["staff"] = {
                    "staff_id": row["sourcedId"],
                    "schools": schools,
                    "department": "Instruction",
                    "title": "Department Chair",
                    "roles": [],
                    "credentials": credentials,
                }
        elif role in ("administrator", "districtAdministrator") and not schools:
            roles["district_admin"] = {"title": "District Administrator"}
        elif role in ("guardian", "parent", "relative"):
            roles["contact"] = {
                "sis_id": row["sourcedId"],
                "phone": row.get("phone", ""),
                "phone_type": "Cell" if row.get("phone") else "",
                "student_relationships": [
                    {"student": ids[key], "relationship": "Parent", "type": "Parent/Guardian"}
                    for key in _split(row.get("agentSourcedIds", ""))
                    if key in ids
                ],
            }
        else:  # school administrators and any other staff role
            roles["staff"] = {
                "staff_id": row["sourcedId"],
                "schools": schools,
                "department": "Administration" if role == "administrator" else "",
                "title": "Principal" if role == "administrator" else role,
                "roles": [],
                "credentials": credentials,
            }
        clever_users[user_id] = {
            "id": user_id,
            "district": district_id,
            "email": row["email"] or None,
            "name": {
                "first": row["givenName"],
                "last": row["familyName"],
                "middle": row["middleName"],
            },
            "created": BASE_STAMP,
            "last_modified": BASE_STAMP,
            "roles": roles,
        }
    students = [u for u in users if u["role"] == "student"]
    for index, row in enumerate(students[: max(contacts, 0)]):
        key = f"{row['sourcedId']}-contact"
        contact_id = clever_id("user", key)
        ids[key] = contact_id
        given = _CONTACT_GIVEN[_hash_int("contact", key) % len(_CONTACT_GIVEN)]
        clever_users[contact_id] = {
            "id": contact_id,
            "district": district_id,
            "email": f"guardian{index + 1}@example.org",
            # Clever puts a contact's full name in name.last.
            "name": {"first": None, "last": f"{given} {row['familyName']}", "middle": None},
            "created": BASE_STAMP,
            "last_modified": BASE_STAMP,
            "roles": {
                "contact": {
                    "sis_id": key,
                    "phone": f"555-01{index % 100:02d}",
                    "phone_type": "Cell",
                    "student_relationships": [
                        {
                            "student": ids[row["sourcedId"]],
                            "relationship": "Parent",
                            "type": "Parent/Guardian",
                        }
                    ],
                }
            },
        }

    # Sections: membership comes from the enrollments.
    members: dict[str, dict[str, list[str]]] = {}
    for row in enrollments:
        user_id = ids.get(row["userSourcedId"])
        if row["classSourcedId"] not in ids or user_id is None:
            continue
        entry = members.setdefault(
            row["classSourcedId"], {"students": [], "teachers": [], "primary": []}
        )
        if row["role"] == "student":
            entry["students"].append(user_id)
        elif row["role"] in ("teacher", "aide"):
            if row.get("primary", "").lower() == "true":
                entry["primary"].append(user_id)
            entry["teachers"].append(user_id)
    sections: dict[str, dict[str, Any]] = {}
    for row in classes:
        section_id = ids[row["sourcedId"]]
        entry = members.get(row["sourcedId"], {"students": [], "teachers": [], "primary": []})
        primary = entry["primary"][:1] or entry["teachers"][:1]
        teachers = primary + [t for t in dict.fromkeys(entry["teachers"]) if t not in primary]
        periods = _split(row["periods"])
        sections[section_id] = {
            "id": section_id,
            "district": district_id,
            "school": school_ids.get(row["schoolSourcedId"]),
            "course": ids.get(row["courseSourcedId"]),
            "term_id": term_of(_split(row["termSourcedIds"])),
            "name": row["title"],
            "period": periods[0] if periods else "",
            "subject": _subject(row["subjects"]),
            "grade": _grade(row["grades"]),
            "sis_id": row["sourcedId"],
            "section_number": row["classCode"],
            "students": list(dict.fromkeys(entry["students"])),
            "teachers": teachers,
            "teacher": primary[0] if primary else None,
            "created": BASE_STAMP,
            "last_modified": BASE_STAMP,
        }

    # Schools: grade span from their sections, principal from their administrators.
    spans: dict[str, list[int]] = {school_id: [] for school_id in school_ids.values()}
    for section in sections.values():
        if section["school"] in spans and section["grade"] in _GRADE_ORDER:
            spans[section["school"]].append(_GRADE_ORDER.index(section["grade"]))
    with_sections = {school for school, span in spans.items() if span}
    for user in clever_users.values():  # schools without sections: their students' grades
        student = user["roles"].get("student")
        school = student["school"] if student else None
        if school in spans and school not in with_sections and student["grade"] in _GRADE_ORDER:
            spans[school].append(_GRADE_ORDER.index(student["grade"]))
    principals: dict[str, dict[str, Any]] = {}
    for row in admins:
        for school_id in schools_of(row):
            principals.setdefault(
                school_id,
                {"name": f"{row['givenName']} {row['familyName']}", "email": row["email"]},
            )
    schools: dict[str, dict[str, Any]] = {}
    for org in school_orgs:
        school_id = school_ids[org["sourcedId"]]
        span = spans[school_id]
        schools[school_id] = {
            "id": school_id,
            "district": district_id,
            "name": org["name"],
            "sis_id": org["sourcedId"],
            "school_number": org["identifier"],
            "state_id": "",
            "nces_id": None,
            "mdr_number": None,
            "low_grade": _GRADE_ORDER[min(span)] if span else "",
            "high_grade": _GRADE_ORDER[max(span)] if span else "",
            "phone": "",
            "principal": principals.get(school_id, {"name": None, "email": None}),
            "location": {"address": "", "city": "", "state": "", "zip": ""},
            "created": BASE_STAMP,
            "last_modified": BASE_STAMP,
        }

    district_admin = next((u for u in admins if not schools_of(u)), admins[0] if admins else None)
    name = district_org["name"] if district_org else "Sample District"
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    clever_district: dict[str, Any] = {
        "id": district_id,
        "name": name,
        "state": "success",
        "sis_type": "sftp",
        "last_sync": BASE_STAMP,
        "launch_date": BASE_STAMP[:10],
        "pause_start": None,
        "pause_end": None,
        "login_methods": ["clever"],
        "portal_url": f"https://clever.com/in/{slug}",
        "nces_id": None,
        "mdr_number": None,
        "error": "",
    }
    if district_admin is not None:
        clever_district["district_contact"] = {
            "id": ids[district_admin["sourcedId"]],
            "district": district_id,
            "email": district_admin["email"] or None,
            "name": {
                "first": district_admin["givenName"],
                "last": district_admin["familyName"],
                "middle": district_admin["middleName"],
            },
            "title": "District Administrator",
        }
    return CleverData(
        district=clever_district,
        schools=schools,
        users=clever_users,
        sections=sections,
        terms=terms,
        courses=clever_courses,
        ids=ids,
    )


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass
class _Fault:
    """An injected answer for the next ``remaining`` requests under ``path_prefix``."""

    status: int
    remaining: int
    path_prefix: str
    headers: dict[str, str]
    reset_in: float | None = None  # set for rate limits


def _message(status: int, text: str, **headers: str) -> Answer:
    return Answer(status, {"message": text}, dict(headers))


class CleverSimulator(LocalServer):
    """A Clever Data + Events API v3.0 server for one district, in a background thread.

    ``start()`` binds a free port on 127.0.0.1 (or ``port``) and returns ``base_url``; requests
    go to ``base_url + "/v3.0/..."``. Mutations (``add_user``, ``update_section``...) change the
    data and append the matching events. ``requests`` logs ``{method, path, query, status}`` of
    every request, never headers or the token.
    """

    server_version = "CleverSimulator/3.0"
    thread_name = "clever-simulator"

    def __init__(
        self,
        data: CleverData,
        token: str = "test-token",
        *,
        events_enabled: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self._token = token
        self.events_enabled = events_enabled
        self.requests: list[dict[str, Any]] = []
        self._store = copy.deepcopy(data.resources())
        self._district_id: str = data.district["id"]
        self._sorted: dict[str, list[str]] = {}
        self._events: list[dict[str, Any]] = []
        self._event_ids: list[str] = []
        self._faults: list[_Fault] = []
        self._losing: dict[tuple[str, str | None], int] = {}
        self._hidden: dict[str, set[str]] = {}
        self._ids = _IdFactory()

    def __repr__(self) -> str:
        return f"CleverSimulator(base_url={self.base_url!r}, events={len(self._events)})"

    # -- fault injection -------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        path_prefix: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests under ``path_prefix`` with ``status``.

        ``path_prefix`` is matched against the request path, with or without ``/v3.0``
        (``"/users"`` and ``"/v3.0/users"`` are the same); ``""`` matches everything. The
        body is ``{"message": ...}``; ``headers`` are added to the answer.
        """
        self._add_fault(_Fault(status, count, self._prefix(path_prefix), dict(headers or {})))

    def rate_limit_next(
        self, count: int = 1, *, reset_in: float = 1.0, path_prefix: str = ""
    ) -> None:
        """Answer the next ``count`` requests with 429, resetting ``reset_in`` seconds later."""
        self._add_fault(_Fault(429, count, self._prefix(path_prefix), {}, reset_in=reset_in))

    def lose_next_link(self, resource: str, *, page: int = 1, role: str | None = None) -> None:
        """Serve the ``page``-th page of the next read of ``resource`` (with ``role``, for
        users) without its ``next`` link, once: a server losing the rest of a list mid-read."""
        with self._lock:
            self._losing[(resource, role)] = page

    def hide_from_lists(self, resource: str, ids: Iterable[str]) -> None:
        """Leave ``ids`` out of ``resource``'s list pages and counts, while still serving them
        by id: a list that loses records without its paging showing it."""
        with self._lock:
            self._hidden.setdefault(resource, set()).update(ids)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._losing.clear()
            self._hidden.clear()

    @staticmethod
    def _prefix(path_prefix: str) -> str:
        if path_prefix and not path_prefix.startswith(API_PREFIX):
            path_prefix = API_PREFIX + "/" + path_prefix.lstrip("/")
        return path_prefix

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, path: str) -> Answer | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    break
            else:
                return None
        if fault.reset_in is not None:
            reset = time.time() + fault.reset_in
            headers = {
                "X-RateLimit-Reset": str(math.ceil(reset)),
                "X-RateLimit-Limit": str(RATE_LIMIT_PER_MINUTE),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Bucket": "simulator",
                "Retry-After": str(max(0, math.ceil(fault.reset_in))),
                **fault.headers,
            }
            return Answer(429, None, headers)
        text = "Internal Error" if fault.status >= 500 else f"injected HTTP {fault.status}"
        return _message(fault.status, text, **fault.headers)

    # -- request handling ------------------------------------------------------------------

    def handle(self, request: Request) -> Answer:
        method, authorization = request.method, request.headers.get("authorization")
        path = request.path
        query = parse_qs(request.raw_query, keep_blank_values=True)
        try:
            answer = self._answer(method, path, query, authorization)
        except Exception as exc:  # a simulator bug must still answer, and visibly
            answer = _message(500, f"simulator error: {type(exc).__name__}: {exc}")
        with self._lock:
            self.requests.append(
                {
                    "method": method,
                    "path": path,
                    "query": {k: v[0] if len(v) == 1 else list(v) for k, v in query.items()},
                    "status": answer.status,
                }
            )
        return answer

    def _authorized(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return False
        return hmac.compare_digest(credential.strip().encode(), self._token.encode())

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        authorization: str | None,
    ) -> Answer:
        fault = self._take_fault(path)
        if fault is not None:
            return fault
        if not self._authorized(authorization):
            return _message(401, "Unauthorized: missing or invalid bearer token")
        if method not in ("GET", "HEAD"):
            return _message(405, f"{method} is not supported: the API is read-only", Allow="GET")
        if not path.startswith(API_PREFIX + "/"):
            return _message(404, f"no such endpoint: {path}")
        segments = [s for s in path[len(API_PREFIX) + 1 :].split("/") if s]
        if len(segments) == 1 and segments[0] in RESOURCES:
            return self._list(segments[0], path, query)
        if segments == ["events"]:
            return self._list_events(path, query)
        if len(segments) == 2 and segments[0] in (*RESOURCES, "events"):
            return self._item(*segments)
        if len(segments) == 3 and segments[0] in (*RESOURCES, "events"):
            return _message(501, f"{path}: sub-resources are not served by the simulator")
        return _message(404, f"no such endpoint: {path}")

    @staticmethod
    def _one(query: dict[str, list[str]], name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    def _limit(self, query: dict[str, list[str]]) -> int | Answer:
        raw = self._one(query, "limit")
        if raw is None or raw == "":
            return DEFAULT_LIMIT
        try:
            limit = int(raw)
        except ValueError:
            return _message(400, f"limit must be an integer, got {raw!r}")
        if limit < 1:
            return _message(400, "limit must be at least 1")
        if limit > MAX_LIMIT:
            return _message(413, f"Request entity too large: limit may not be over {MAX_LIMIT}")
        return limit

    def _sorted_ids(self, resource: str) -> list[str]:
        ids = self._sorted.get(resource)
        if ids is None:
            ids = self._sorted[resource] = sorted(self._store[resource])
        return ids

    def _list(self, resource: str, path: str, query: dict[str, list[str]]) -> Answer:
        limit = self._limit(query)
        if isinstance(limit, Answer):
            return limit
        role = self._one(query, "role")
        if role is not None and (resource != "users" or role not in ROLES):
            return _message(400, f"invalid role {role!r}; expected one of {', '.join(ROLES)}")
        with self._lock:
            records = self._store[resource]
            ids = self._sorted_ids(resource)
            if role:
                ids = [i for i in ids if records[i].get("roles", {}).get(role) is not None]
            if self._hidden.get(resource):
                ids = [i for i in ids if i not in self._hidden[resource]]
            if self._one(query, "count") == "true":
                return Answer(200, {"count": len(ids)})
            page = self._page(ids, query, limit)
            rows = [
                {"data": copy.deepcopy(records[i]), "uri": f"{API_PREFIX}/{resource}/{i}"}
                for i in page
            ]
            links = self._links(ids, page, path, query, limit)
            if (resource, role) in self._losing:
                self._losing[(resource, role)] -= 1
                if self._losing[(resource, role)] <= 0:
                    del self._losing[(resource, role)]
                    links = [link for link in links if link["rel"] != "next"]
        return Answer(200, {"data": rows, "links": links})

    def _page(self, ids: Sequence[str], query: dict[str, list[str]], limit: int) -> list[str]:
        after = self._one(query, "starting_after")
        before = self._one(query, "ending_before")
        high = bisect_left(ids, before) if before else len(ids)
        if before and not after:
            return list(ids[max(0, high - limit) : high])
        low = bisect_right(ids, after) if after else 0
        return list(ids[low : min(low + limit, high)])

    def _links(
        self,
        ids: Sequence[str],
        page: list[str],
        path: str,
        query: dict[str, list[str]],
        limit: int,
    ) -> list[dict[str, str]]:
        own = [(k, v) for k, values in query.items() for v in values]
        links = [{"rel": "self", "uri": path + (f"?{urlencode(own)}" if own else "")}]
        if not page:
            return links
        kept = [(k, v) for k, v in own if k not in PAGING_PARAMS]
        if page[0] > ids[0]:
            prev = urlencode([("limit", limit), *kept, ("ending_before", page[0])])
            links.append({"rel": "prev", "uri": f"{path}?{prev}"})
        if page[-1] < ids[-1]:
            after = urlencode([("limit", limit), *kept, ("starting_after", page[-1])])
            links.append({"rel": "next", "uri": f"{path}?{after}"})
        return links

    def _item(self, resource: str, item_id: str) -> Answer:
        with self._lock:
            if resource == "events":
                if not self.events_enabled:
                    return self._events_disabled()
                index = bisect_left(self._event_ids, item_id)
                found = (
                    self._events[index]
                    if index < len(self._event_ids) and self._event_ids[index] == item_id
                    else None
                )
            else:
                found = self._store[resource].get(item_id)
            if found is None:
                return _message(404, f"{resource} {item_id} not found")
            uri = f"{API_PREFIX}/{resource}/{item_id}"
            return Answer(
                200, {"data": copy.deepcopy(found), "links": [{"rel": "self", "uri": uri}]}
            )

    @staticmethod
    def _events_disabled() -> Answer:
        return _message(
            404,
            "events are not enabled for this district: enable them in Clever "
            "(Settings > Integrations > Enable events)",
        )

    def _list_events(self, path: str, query: dict[str, list[str]]) -> Answer:
        if not self.events_enabled:
            return self._events_disabled()
        limit = self._limit(query)
        if isinstance(limit, Answer):
            return limit
        if self._one(query, "school"):
            return _message(501, "the school filter of /events is not served by the simulator")
        record_types = [t for value in query.get("record_type", []) for t in _split(value)]
        unknown = [t for t in record_types if t not in RESOURCES and t != "resources"]
        if unknown:
            return _message(400, f"invalid record_type {', '.join(unknown)}")
        after = self._one(query, "starting_after")
        with self._lock:
            if after:
                index = bisect_left(self._event_ids, after)
                if index >= len(self._event_ids) or self._event_ids[index] != after:
                    return _message(
                        404,
                        f"event {after} is not in the events window (events are kept for 30 "
                        "days): resync from the Data API",
                    )
            events = {e["id"]: e for e in self._events}
            ids: Sequence[str] = self._event_ids
            if record_types:
                ids = [i for i in ids if events[i]["type"].split(".")[0] in record_types]
            page = self._page(ids, query, limit)
            rows = [
                {"data": copy.deepcopy(events[i]), "uri": f"{API_PREFIX}/events/{i}"} for i in page
            ]
        return Answer(200, {"data": rows, "links": self._links(ids, page, path, query, limit)})

    # -- data and events -------------------------------------------------------------------

    def get(self, resource: str, record_id: str) -> dict[str, Any] | None:
        """A copy of one record (None when absent)."""
        with self._lock:
            record = self._store[resource].get(record_id)
            return copy.deepcopy(record) if record is not None else None

    def records(self, resource: str) -> dict[str, dict[str, Any]]:
        """A copy of every record of one resource, keyed by id."""
        with self._lock:
            return copy.deepcopy(self._store[resource])

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the events in the window, oldest first."""
        with self._lock:
            return copy.deepcopy(self._events)

    def latest_event_id(self) -> str | None:
        with self._lock:
            return self._event_ids[-1] if self._event_ids else None

    def expire_events_before(self, event_id: str) -> int:
        """Drop events older than ``event_id`` (Clever's 30-day window); returns how many."""
        with self._lock:
            cut = bisect_left(self._event_ids, event_id)
            del self._events[:cut]
            del self._event_ids[:cut]
            return cut

    def _emit(
        self, resource: str, action: str, record: dict[str, Any], previous: dict | None = None
    ) -> str:
        event_id = self._ids.next()
        data: dict[str, Any] = {"object": copy.deepcopy(record)}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        self._events.append(
            {"id": event_id, "created": _stamp(), "type": f"{resource}.{action}", "data": data}
        )
        self._event_ids.append(event_id)
        return event_id

    def add(self, resource: str, record: dict[str, Any]) -> str:
        """Add a record (a new id unless it has one) and emit ``<resource>.created``."""
        if resource not in RESOURCES or resource == "districts":
            raise ValueError(f"cannot add to {resource!r}")
        record = copy.deepcopy(record)
        with self._lock:
            record_id = record.get("id") or self._ids.next()
            if record_id in self._store[resource]:
                raise ValueError(f"{resource} {record_id} already exists")
            now = _stamp()
            record["id"] = record_id
            record.setdefault("district", self._district_id)
            if resource not in ("terms", "courses"):
                record.setdefault("created", now)
                record.setdefault("last_modified", now)
            self._store[resource][record_id] = record
            self._sorted.pop(resource, None)
            self._emit(resource, "created", record)
            return record_id

    def update(self, resource: str, record_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change top-level fields; emits ``<resource>.updated`` with ``previous_attributes``.

        Returns the previous values of the fields that changed (nothing changed: no event).
        """
        if "id" in changes:
            raise ValueError("a record's id cannot change")
        with self._lock:
            record = self._store[resource].get(record_id)
            if record is None:
                raise KeyError(f"{resource} {record_id} not found")
            previous = {
                key: copy.deepcopy(record.get(key))
                for key, value in changes.items()
                if record.get(key) != value
            }
            if not previous:
                return {}
            for key in previous:
                record[key] = copy.deepcopy(changes[key])
            if "last_modified" in record and "last_modified" not in changes:
                record["last_modified"] = _stamp()
            self._emit(resource, "updated", record, previous)
            return previous

    def delete(self, resource: str, record_id: str) -> dict[str, Any]:
        """Remove a record and emit ``<resource>.deleted`` with its last state.

        A deleted user is first taken out of every section (``sections.updated`` events).
        """
        with self._lock:
            record = self._store[resource].get(record_id)
            if record is None:
                raise KeyError(f"{resource} {record_id} not found")
            if resource == "users":
                for section_id in self._sorted_ids("sections"):
                    section = self._store["sections"][section_id]
                    changes: dict[str, Any] = {}
                    for key in ("students", "teachers"):
                        if record_id in section.get(key, []):
                            changes[key] = [u for u in section[key] if u != record_id]
                    if section.get("teacher") == record_id:
                        changes["teacher"] = (changes.get("teachers") or [None])[0]
                    if changes:
                        self.update("sections", section_id, changes)
            del self._store[resource][record_id]
            self._sorted.pop(resource, None)
            self._emit(resource, "deleted", record)
            return copy.deepcopy(record)

    def add_user(self, user: dict[str, Any]) -> str:
        return self.add("users", user)

    def update_user(self, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self.update("users", user_id, changes)

    def delete_user(self, user_id: str) -> dict[str, Any]:
        return self.delete("users", user_id)

    def add_section(self, section: dict[str, Any]) -> str:
        return self.add("sections", section)

    def update_section(self, section_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self.update("sections", section_id, changes)

    def delete_section(self, section_id: str) -> dict[str, Any]:
        return self.delete("sections", section_id)

    def apply(self, data: CleverData) -> int:
        """Make the served data equal ``data``, emitting the events Clever would; returns how many.

        Creates go first (schools, terms, courses, users, sections), then updates, then
        deletes in the reverse order, so events never point at records not yet created. Use it
        to turn the generator's next day into a stream of events.
        """
        target = data.resources()
        with self._lock:
            before = len(self._event_ids)
            for resource in _CREATE_ORDER[1:]:
                for record_id in sorted(set(target[resource]) - set(self._store[resource])):
                    self.add(resource, target[resource][record_id])
            for resource in _CREATE_ORDER:
                for record_id in sorted(set(target[resource]) & set(self._store[resource])):
                    wanted = target[resource][record_id]
                    current = self._store[resource][record_id]
                    changes = {
                        k: v
                        for k, v in wanted.items()
                        if k not in ("created", "last_modified") and current.get(k) != v
                    }
                    if changes:
                        self.update(resource, record_id, changes)
            for resource in reversed(_CREATE_ORDER[1:]):
                for record_id in sorted(set(self._store[resource]) - set(target[resource])):
                    self.delete(resource, record_id)
            return len(self._event_ids) - before


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a generated district until SIGINT or SIGTERM."""
    from include.sis_sync.sample import generator

    parser = district_parser(
        "include.sis_sync.simulators.clever",
        "Serve a generated district as a local Clever API v3.0.",
        port=8765,
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("CLEVER_SIMULATOR_TOKEN", "test-token"),
        help="the bearer token to accept (default $CLEVER_SIMULATOR_TOKEN or test-token)",
    )
    parser.add_argument("--multi-role", type=int, default=2, help="teachers also made staff")
    parser.add_argument("--contacts", type=int, default=0, help="guardian contacts to add")
    parser.add_argument("--no-events", action="store_true", help="serve events as disabled")
    args = parser.parse_args(argv)

    district = generator.generate_district(args.preset)
    data = clever_data_from_district(district, multi_role=args.multi_role, contacts=args.contacts)
    simulator = CleverSimulator(
        data, args.token, events_enabled=not args.no_events, host=args.host, port=args.port
    )

    def convert(day: Any) -> CleverData:
        return clever_data_from_district(day, multi_role=args.multi_role, contacts=args.contacts)

    return serve_until_stopped(
        simulator,
        district,
        convert,
        "Clever simulator",
        lambda: (
            f"{args.preset} district at {simulator.base_url}{API_PREFIX} ({len(data.schools)} "
            f"schools, {len(data.users)} users, {len(data.sections)} sections)"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
