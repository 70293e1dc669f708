"""A deterministic, seeded sample district, written as OneRoster 1.1 CSV drops.

Why: the pipeline needs rosters to run against that look like a real SIS export (two-school
students, grade bands, primary teachers, multi-value fields that need CSV quoting) without ever
touching real people, and it needs them at three scales: a demo small enough to read, and a
large district (a million students) to prove the pipeline's speed and memory. Later days
(``next_day``, ``returning_students``) keep every unchanged key, so a sync sees adds, updates,
archives and reactivations exactly as it would from a live SIS.

Everything is built column-wise with numpy and pyarrow: no per-row Python at scale. Frames use
text for every value and ``""`` for blanks, mirroring what a CSV carries.

Run ``python -m include.sis_sync.sample.generator --preset demo --out DIR`` to write drops.
"""

from __future__ import annotations

import argparse
import itertools
import re
import time
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "HEADERS",
    "PRESETS",
    "ROSTER_FILES",
    "District",
    "DistrictSpec",
    "delta_between",
    "generate_district",
    "main",
    "next_day",
    "returning_students",
    "write_delta_drop",
    "write_demo_drops",
    "write_drop",
]

# --------------------------------------------------------------------------------------------
# OneRoster 1.1 file layout
# --------------------------------------------------------------------------------------------

HEADERS: dict[str, tuple[str, ...]] = {
    "orgs": (
        "sourcedId",
        "status",
        "dateLastModified",
        "name",
        "type",
        "identifier",
        "parentSourcedId",
    ),
    "academicSessions": (
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "type",
        "startDate",
        "endDate",
        "parentSourcedId",
        "schoolYear",
    ),
    "courses": (
        "sourcedId",
        "status",
        "dateLastModified",
        "schoolYearSourcedId",
        "title",
        "courseCode",
        "grades",
        "orgSourcedId",
        "subjects",
        "subjectCodes",
    ),
    "classes": (
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "grades",
        "courseSourcedId",
        "classCode",
        "classType",
        "location",
        "schoolSourcedId",
        "termSourcedIds",
        "subjects",
        "subjectCodes",
        "periods",
    ),
    "users": (
        "sourcedId",
        "status",
        "dateLastModified",
        "enabledUser",
        "orgSourcedIds",
        "role",
        "username",
        "userIds",
        "givenName",
        "familyName",
        "middleName",
        "identifier",
        "email",
        "sms",
        "phone",
        "agentSourcedIds",
        "grades",
        "password",
    ),
    "enrollments": (
        "sourcedId",
        "status",
        "dateLastModified",
        "classSourcedId",
        "schoolSourcedId",
        "userSourcedId",
        "role",
        "primary",
        "beginDate",
        "endDate",
    ),
}
# The roster files this generator writes, in the order District.frames() returns them.
ROSTER_FILES: tuple[str, ...] = (
    "orgs",
    "academicSessions",
    "courses",
    "classes",
    "users",
    "enrollments",
)
# Every file a OneRoster 1.1 manifest names, in the order the manifest lists them.
MANIFEST_FILES: tuple[str, ...] = (
    "academicSessions",
    "categories",
    "classes",
    "classResources",
    "courses",
    "courseResources",
    "demographics",
    "enrollments",
    "lineItems",
    "orgs",
    "resources",
    "results",
    "users",
)
MODES = ("bulk", "delta", "absent")
STATUS_COLUMNS = ("status", "dateLastModified")
SOURCE_NAME = "SIS Sync sample generator"
SOURCE_CODE = "sample"
BOM = b"\xef\xbb\xbf"
BATCH_ROWS = 250_000  # rows encoded at once when writing: bounds the writer's extra memory

# --------------------------------------------------------------------------------------------
# The district model: fixed calendar, grade bands, subjects and fake names
# --------------------------------------------------------------------------------------------

DISTRICT_NAME = "Sample Unified School District"
YEAR_KEY, FALL_KEY, SPRING_KEY = "ses-000001", "ses-000002", "ses-000003"
SESSIONS: tuple[tuple[str, ...], ...] = (
    # sourcedId, title, type, startDate, endDate, parentSourcedId, schoolYear
    (YEAR_KEY, "2026-2027", "schoolYear", "2026-08-15", "2027-06-15", "", "2027"),
    (FALL_KEY, "Fall 2026", "semester", "2026-08-15", "2026-12-20", YEAR_KEY, "2027"),
    (SPRING_KEY, "Spring 2027", "semester", "2027-01-05", "2027-06-15", YEAR_KEY, "2027"),
)
# A class runs all year (both semesters, a quoted multi-value field) or one semester.
TERM_CHOICES = (f"{FALL_KEY},{SPRING_KEY}", FALL_KEY, SPRING_KEY)
TERM_WEIGHTS = (0.6, 0.2, 0.2)

GRADES = ("KG", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12")
GRADE_TITLES = ("Kindergarten", *(f"Grade {g}" for g in range(1, 13)))
# name: (lowest grade, highest grade, students per grade relative to elementary, school suffix)
BANDS: dict[str, tuple[int, int, float, str]] = {
    "elementary": (0, 5, 1.0, "Elementary School"),
    "middle": (6, 8, 1.3, "Middle School"),
    "high": (9, 12, 1.6, "High School"),
}
BAND_NAMES = tuple(BANDS)
# Schools take bands in this cycle, so even the two-school demo has secondary grades with
# enough sections per grade, and large districts are mostly elementary, as real ones are.
BAND_CYCLE = ("high", "middle", "elementary", "elementary", "elementary")
SUBJECTS: tuple[tuple[str, str], ...] = (
    ("Mathematics", "MATH"),
    ("English Language Arts", "ELA"),
    ("Science", "SCI"),
    ("Social Studies", "SOC"),
    ("World Languages", "LANG"),
    ("Physical Education", "PE"),
    ("Visual Arts", "ART"),
    ("Computer Science", "CS"),
)
PERIODS = 8
DUAL_STUDENT_SHARE = 0.01  # students enrolled in two schools
DUAL_TEACHER_SHARE = 0.05  # teachers who teach in two schools
MIDDLE_NAME_SHARE = 0.3
SIS_NUMBER_BASE = 100_000_000  # identifier = this + the user's serial: a district SIS number

PLACES = (
    "Lincoln",
    "Washington",
    "Jefferson",
    "Roosevelt",
    "Riverside",
    "Oak Grove",
    "Maple Ridge",
    "Cedar Park",
    "Hillcrest",
    "Lakeview",
    "Sunnyside",
    "Westwood",
    "Eastgate",
    "Northfield",
    "Southpoint",
    "Pinecrest",
    "Brookside",
    "Fairview",
    "Highland",
    "Meadowbrook",
    "Willow Creek",
    "Stonebridge",
    "Harbor View",
    "Granite Falls",
)
# Fake names; a few accents and punctuation so UTF-8 and username slugs get exercised.
GIVEN_NAMES = (
    "Ava", "Liam", "Olivia", "Noah", "Emma", "Mateo", "Sofía", "Elijah", "Amara", "Lucas",
    "Mia", "Ethan", "Zoë", "Kai", "Aaliyah", "James", "Chloé", "Jayden", "Priya", "Oliver",
    "Fatima", "Diego", "Hannah", "Wei", "Isabella", "Malik", "Leah", "Santiago", "Aisha",
    "Henry", "Nora", "Arjun", "Camila", "Owen", "Yuki", "Gabriel", "Renée", "Omar", "Grace",
    "Luca", "Ingrid", "Theo", "Maya", "Kofi", "Elena", "Samuel", "Léa", "Ravi",
)  # fmt: skip
FAMILY_NAMES = (
    "Smith", "Johnson", "García", "Williams", "Brown", "Nguyễn", "Jones", "Martínez", "Davis",
    "Rodríguez", "Miller", "Wilson", "Anderson", "Taylor", "Thomas", "Hernández", "Moore",
    "Martin", "Jackson", "Lee", "Pérez", "Thompson", "White", "Harris", "Sánchez", "Clark",
    "Ramírez", "Lewis", "Robinson", "Walker", "Young", "Allen", "O'Brien", "King", "Wright",
    "Scott", "Torres", "Kim", "Hill", "Flores", "Green", "Adams", "Patel", "Okafor", "Müller",
    "Smith-Jones", "Kowalski", "Haddad",
)  # fmt: skip


def _slug(name: str) -> str:
    """ASCII lower-case form of a name, so usernames and emails are plain and portable."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9-]", "", ascii_name.lower())


GIVEN_SLUGS = tuple(_slug(n) for n in GIVEN_NAMES)
FAMILY_SLUGS = tuple(_slug(n) for n in FAMILY_NAMES)

# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistrictSpec:
    """The size of a sample district; with the seed it fixes every generated value."""

    schools: int
    students: int
    teachers: int
    administrators: int
    sections: int
    enrollments_per_student: int
    seed: int = 42

    def __post_init__(self) -> None:
        """Reject sizes the model cannot staff, so a bad spec fails before any work."""
        if self.schools < 1:
            raise ValueError("a district needs at least one school")
        for name in ("students", "teachers", "administrators", "sections"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.enrollments_per_student < 0:
            raise ValueError("enrollments_per_student must not be negative")
        if self.sections and self.teachers < self.schools:
            raise ValueError("every school needs a teacher: teachers must be >= schools")


PRESETS: dict[str, DistrictSpec] = {
    "demo": DistrictSpec(2, 300, 20, 2, 40, 5),
    "small": DistrictSpec(5, 10_000, 600, 10, 2_500, 6),
    "medium": DistrictSpec(20, 100_000, 6_000, 40, 25_000, 6),
    "large": DistrictSpec(60, 1_000_000, 60_000, 200, 250_000, 6),
}


@dataclass(eq=False)
class District:
    """A roster as OneRoster-shaped frames: columns are exactly the CSV headers, all text.

    ``serials`` remembers the highest key number ever issued per file (e.g. ``"users"``), so a
    later day never reuses the key of an archived record that may come back.
    """

    orgs: pd.DataFrame
    academic_sessions: pd.DataFrame
    courses: pd.DataFrame
    classes: pd.DataFrame
    users: pd.DataFrame
    enrollments: pd.DataFrame
    serials: dict[str, int] = field(default_factory=dict)

    def frames(self) -> dict[str, pd.DataFrame]:
        """The frames keyed by OneRoster file stem, the names drops and manifests use."""
        return {
            "orgs": self.orgs,
            "academicSessions": self.academic_sessions,
            "courses": self.courses,
            "classes": self.classes,
            "users": self.users,
            "enrollments": self.enrollments,
        }


# Attribute name of each file's frame on District.
_ATTRIBUTES = {
    "orgs": "orgs",
    "academicSessions": "academic_sessions",
    "courses": "courses",
    "classes": "classes",
    "users": "users",
    "enrollments": "enrollments",
}
_KEY_PREFIX = {
    "orgs": ("org-", 6),
    "academicSessions": ("ses-", 6),
    "courses": ("crs-", 6),
    "classes": ("cls-", 6),
    "users": ("usr-", 6),
    "enrollments": ("enr-", 7),
}

# --------------------------------------------------------------------------------------------
# Column builders (pyarrow compute: C speed for millions of strings)
# --------------------------------------------------------------------------------------------


def _const(value: str, n: int) -> pa.Array:
    """A column repeating one string, built from buffers so it is cheap at millions of rows."""
    data = value.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(data)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data * n))


def _large(value: str) -> pa.Scalar:
    """A string literal typed to match the large_string columns it meets."""
    return pa.scalar(value, pa.large_string())


def _lookup(table: Sequence[str], idx: np.ndarray) -> pa.Array:
    """Spread a small table of labels over many rows by position."""
    return pa.array(list(table), pa.large_string()).take(pa.array(idx, pa.int64()))


def _number_text(numbers: np.ndarray) -> pa.Array:
    """Integers as decimal text."""
    return pc.cast(pa.array(numbers, pa.int64()), pa.large_string())


def _join(*parts: pa.Array | str) -> pa.Array:
    """Concatenate string columns and literals row by row (all as large_string)."""
    args = [_large(p) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*args, _large(""))


def _keys(stem: str, numbers: np.ndarray) -> pa.Array:
    """Stable opaque keys (``usr-000001``) from serial numbers, the same on every day."""
    prefix, width = _KEY_PREFIX[stem]
    return _join(prefix, pc.utf8_lpad(_number_text(numbers), width, "0"))


def _column(series: pd.Series) -> pa.ChunkedArray:
    """A frame column as pyarrow text, blanks for nulls, without copying arrow-backed data."""
    array = pa.chunked_array(pa.array(series, from_pandas=True))
    if array.type != pa.large_string():
        array = pc.cast(array, pa.large_string())
    return pc.fill_null(array, "") if array.null_count else array


def _text(series: pd.Series) -> pa.Array:
    """A frame column as one contiguous pyarrow string array (for take and lookups)."""
    return _column(series).combine_chunks()


def _frame(stem: str, columns: dict[str, pa.Array | str], n: int) -> pd.DataFrame:
    """A frame with exactly the file's header, literals broadcast, unnamed columns blank."""
    arrays = []
    for name in HEADERS[stem]:
        value = columns.get(name, "")
        arrays.append(_const(value, n) if isinstance(value, str) else value)
    return pa.table(arrays, names=list(HEADERS[stem])).to_pandas()


def _apportion(total: int, weights: np.ndarray, minimum: int = 0) -> np.ndarray:
    """Split ``total`` into integer parts proportional to weights (largest remainder).

    Exact and deterministic, so a preset always has precisely the sizes it names; each part
    gets ``minimum`` first when the total allows it.
    """
    weights = np.asarray(weights, dtype=float)
    base = np.full(len(weights), minimum if total >= minimum * len(weights) else 0)
    rest = total - int(base.sum())
    share = weights / weights.sum() * rest if weights.sum() > 0 else np.zeros(len(weights))
    parts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - parts), kind="stable")
    parts[order[: rest - int(parts.sum())]] += 1
    return base + parts


# --------------------------------------------------------------------------------------------
# Generating day one
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Schools and their (school, grade) cells: the units students and sections fill."""

    school_band: np.ndarray  # per school, index into BAND_NAMES
    cell_school: np.ndarray  # per cell
    cell_grade: np.ndarray  # per cell, index into GRADES

    @property
    def schools(self) -> int:
        return len(self.school_band)

    def school_keys(self) -> list[str]:
        """Schools are org-000002.. (the district is org-000001)."""
        return [f"org-{n:06d}" for n in range(2, self.schools + 2)]


def _layout(spec: DistrictSpec) -> _Layout:
    """Give each school a grade band and list its grade cells, school-major."""
    band = np.array(
        [BAND_NAMES.index(BAND_CYCLE[s % len(BAND_CYCLE)]) for s in range(spec.schools)]
    )
    cell_school, cell_grade = [], []
    for school, b in enumerate(band):
        low, high = BANDS[BAND_NAMES[b]][:2]
        cell_school += [school] * (high - low + 1)
        cell_grade += list(range(low, high + 1))
    return _Layout(band, np.array(cell_school), np.array(cell_grade))


def _cell_weights(layout: _Layout) -> np.ndarray:
    """Relative students per cell: secondary grades are bigger than elementary ones."""
    return np.array([BANDS[BAND_NAMES[b]][2] for b in layout.school_band[layout.cell_school]])


def _orgs_frame(layout: _Layout) -> pd.DataFrame:
    """The district and its schools (a few dozen rows: plain Python is fine here)."""
    names, numbers = [DISTRICT_NAME], ["100"]
    for school, b in enumerate(layout.school_band):
        lap = school // len(PLACES)
        place = PLACES[school % len(PLACES)] + (f" {lap + 1}" if lap else "")
        names.append(f"{place} {BANDS[BAND_NAMES[b]][3]}")
        numbers.append(str(101 + school))
    n = layout.schools + 1
    return _frame(
        "orgs",
        {
            "sourcedId": pa.array(["org-000001", *layout.school_keys()]),
            "name": pa.array(names),
            "type": pa.array(["district"] + ["school"] * layout.schools),
            "identifier": pa.array(numbers),
            "parentSourcedId": pa.array([""] + ["org-000001"] * layout.schools),
        },
        n,
    )


def _sessions_frame() -> pd.DataFrame:
    """The school year and its two semesters."""
    columns = zip(*SESSIONS, strict=True)
    names = ("sourcedId", "title", "type", "startDate", "endDate", "parentSourcedId", "schoolYear")
    return _frame(
        "academicSessions",
        {name: pa.array(list(values)) for name, values in zip(names, columns, strict=True)},
        len(SESSIONS),
    )


def _courses_frame(layout: _Layout) -> pd.DataFrame:
    """One course per subject per grade cell; course index = cell * len(SUBJECTS) + subject."""
    cells = len(layout.cell_school)
    course_cell = np.repeat(np.arange(cells), len(SUBJECTS))
    subject = np.tile(np.arange(len(SUBJECTS)), cells)
    grade = layout.cell_grade[course_cell]
    subject_names = _lookup([s[0] for s in SUBJECTS], subject)
    return _frame(
        "courses",
        {
            "sourcedId": _keys("courses", np.arange(1, len(course_cell) + 1)),
            "schoolYearSourcedId": YEAR_KEY,
            "title": _join(subject_names, " ", _lookup(GRADE_TITLES, grade)),
            "courseCode": _join(
                _lookup([s[1] for s in SUBJECTS], subject), "-", _lookup(GRADES, grade)
            ),
            "grades": _lookup(GRADES, grade),
            "orgSourcedId": _lookup(layout.school_keys(), layout.cell_school[course_cell]),
            "subjects": subject_names,
        },
        len(course_cell),
    )


@dataclass(frozen=True)
class _ClassPlan:
    """Per class: where it sits and what it teaches, as integer codes."""

    cell: np.ndarray
    school: np.ndarray
    grade: np.ndarray
    subject: np.ndarray
    section: np.ndarray  # 1-based section number within its course
    course: np.ndarray  # index into the courses frame


def _plan_classes(layout: _Layout, spec: DistrictSpec) -> _ClassPlan:
    """Spread sections over cells in proportion to their students, then over subjects."""
    per_cell = _apportion(spec.sections, _cell_weights(layout), minimum=1)
    cell = np.repeat(np.arange(len(per_cell)), per_cell)
    first = np.repeat(np.cumsum(per_cell) - per_cell, per_cell)
    rank = np.arange(len(cell)) - first
    subject = rank % len(SUBJECTS)
    return _ClassPlan(
        cell=cell,
        school=layout.cell_school[cell],
        grade=layout.cell_grade[cell],
        subject=subject,
        section=rank // len(SUBJECTS) + 1,
        course=cell * len(SUBJECTS) + subject,
    )


def _classes_frame(
    plan: _ClassPlan, layout: _Layout, courses: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """Classes with a term (year or semester), a period and a room."""
    n = len(plan.cell)
    term = rng.choice(len(TERM_CHOICES), size=n, p=TERM_WEIGHTS)
    period = rng.integers(1, PERIODS + 1, size=n)
    room = rng.integers(100, 400, size=n)
    course_idx = pa.array(plan.course, pa.int64())
    section = _number_text(plan.section)
    return _frame(
        "classes",
        {
            "sourcedId": _keys("classes", np.arange(1, n + 1)),
            "title": _join(_text(courses["title"]).take(course_idx), " - Section ", section),
            "grades": _lookup(GRADES, plan.grade),
            "courseSourcedId": _text(courses["sourcedId"]).take(course_idx),
            "classCode": _join(
                _text(courses["courseCode"]).take(course_idx),
                "-",
                pc.utf8_lpad(section, 2, "0"),
            ),
            "classType": "scheduled",
            "location": _join("Room ", _number_text(room)),
            "schoolSourcedId": _lookup(layout.school_keys(), plan.school),
            "termSourcedIds": _lookup(TERM_CHOICES, term),
            "subjects": _lookup([s[0] for s in SUBJECTS], plan.subject),
            "periods": _number_text(period),
        },
        n,
    )


def _pick_names(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random given, family and (for some) middle name indexes; -1 means no middle name."""
    given = rng.integers(0, len(GIVEN_NAMES), size=n)
    family = rng.integers(0, len(FAMILY_NAMES), size=n)
    middle = rng.integers(0, len(GIVEN_NAMES), size=n)
    middle[rng.random(n) >= MIDDLE_NAME_SHARE] = -1
    return given, family, middle


def _users_frame(
    numbers: np.ndarray,
    role: str,
    orgs: pa.Array | str,
    names: tuple[np.ndarray, np.ndarray, np.ndarray],
    grades: pa.Array | str = "",
) -> pd.DataFrame:
    """Users of one role; username/email = name slug + serial, so they are unique."""
    given, family, middle = names
    username = _join(
        _lookup(GIVEN_SLUGS, given), ".", _lookup(FAMILY_SLUGS, family), _number_text(numbers)
    )
    middle_name = pc.if_else(
        pa.array(middle >= 0),
        _lookup(GIVEN_NAMES, np.maximum(middle, 0)),
        _large(""),
    )
    return _frame(
        "users",
        {
            "sourcedId": _keys("users", numbers),
            "enabledUser": "true",
            "orgSourcedIds": orgs,
            "role": role,
            "username": username,
            "givenName": _lookup(GIVEN_NAMES, given),
            "familyName": _lookup(FAMILY_NAMES, family),
            "middleName": middle_name,
            "identifier": _number_text(numbers + SIS_NUMBER_BASE),
            "email": _join(username, "@example.org"),
            "grades": grades,
        },
        len(numbers),
    )


def _second_school(
    school: np.ndarray, layout: _Layout, share: float, rng: np.random.Generator
) -> np.ndarray:
    """A second school for ``share`` of people (-1 for the rest), same band when possible.

    Same band first because a student attending two high schools is the common case.
    """
    second = np.full(len(school), -1, np.int64)
    if layout.schools < 2 or len(school) == 0:
        return second
    chosen = np.flatnonzero(rng.random(len(school)) < share)
    if len(chosen) == 0:
        return second
    own = school[chosen]
    band = layout.school_band[own]
    table = np.zeros((len(BANDS), layout.schools), np.int64)  # (band, position) -> school
    position = np.zeros(layout.schools, np.int64)  # school -> its position within its band
    sizes = np.zeros(len(BANDS), np.int64)
    for b in range(len(BANDS)):
        members = np.flatnonzero(layout.school_band == b)
        table[b, : len(members)] = members
        position[members] = np.arange(len(members))
        sizes[b] = len(members)
    band_size = sizes[band]
    shift_band = rng.integers(1, np.maximum(band_size, 2))
    shift_any = rng.integers(1, layout.schools, size=len(chosen))
    in_band = table[band, (position[own] + shift_band) % np.maximum(band_size, 1)]
    other = (own + shift_any) % layout.schools
    second[chosen] = np.where(band_size >= 2, in_band, other)
    return second


def _assign_classes(
    stu_school: np.ndarray,
    stu_grade: np.ndarray,
    per_student: np.ndarray,
    cls_school: np.ndarray,
    cls_grade: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``per_student[i]`` distinct classes for each student, vectorised.

    Candidates are the classes of the student's school and grade, or the whole school when
    that grade has too few. Each student takes a random offset and steps evenly through the
    candidates (with jitter inside each step), which keeps picks distinct and class sizes
    balanced. Returns (student row, class row) pairs, student-major.
    """
    n = len(stu_school)
    if n == 0 or len(cls_school) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    grades = int(max(stu_grade.max(), cls_grade.max())) + 1
    cls_cell = cls_school.astype(np.int64) * grades + cls_grade
    order = np.argsort(cls_cell, kind="stable")
    sorted_cell, sorted_school = cls_cell[order], cls_school[order]
    stu_cell = stu_school.astype(np.int64) * grades + stu_grade
    start = np.searchsorted(sorted_cell, stu_cell, "left")
    size = np.searchsorted(sorted_cell, stu_cell, "right") - start
    school_start = np.searchsorted(sorted_school, stu_school, "left")
    school_size = np.searchsorted(sorted_school, stu_school, "right") - school_start
    thin = size < per_student
    start = np.where(thin, school_start, start)
    size = np.where(thin, school_size, size)
    width = int(per_student.max()) if n else 0
    safe = np.maximum(size, 1)
    step = np.maximum(size // np.maximum(per_student, 1), 1)
    offset = rng.integers(0, safe)
    jitter = rng.integers(0, step[:, None], size=(n, width))
    slot = np.arange(width)
    pos = (offset[:, None] + slot * step[:, None] + jitter) % safe[:, None]
    valid = slot < np.minimum(per_student, size)[:, None]
    rows = np.broadcast_to(np.arange(n)[:, None], pos.shape)[valid]
    return rows, order[(start[:, None] + pos)[valid]]


def _staff_classes(
    plan: _ClassPlan,
    teacher_school: np.ndarray,
    teacher_second: np.ndarray,
    schools: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The primary teacher of each class, from the teachers of its school.

    Classes of a school, ordered by subject, grade and section, are cut into one contiguous
    block per teacher, so a teacher mostly teaches one subject, as in a real timetable.
    """
    dual = np.flatnonzero(teacher_second >= 0)
    pool_teacher = np.concatenate([np.arange(len(teacher_school)), dual])
    pool_school = np.concatenate([teacher_school, teacher_second[dual]])
    pool_order = np.lexsort((rng.permutation(len(pool_teacher)), pool_school))
    pool_teacher, pool_school = pool_teacher[pool_order], pool_school[pool_order]
    pool_start = np.searchsorted(pool_school, np.arange(schools), "left")
    pool_size = np.bincount(pool_school, minlength=schools)
    order = np.lexsort((plan.section, plan.grade, plan.subject, plan.school))
    school = plan.school[order]
    rank = np.arange(len(order)) - np.searchsorted(school, school, "left")
    in_school = np.bincount(plan.school, minlength=schools)[school]
    teacher = np.empty(len(order), np.int64)
    teacher[order] = pool_teacher[pool_start[school] + rank * pool_size[school] // in_school]
    return teacher


@dataclass(frozen=True)
class _ClassRefs:
    """What an enrollment copies from its class: keys and the class's term dates."""

    keys: pa.Array
    schools: pa.Array
    begin: pa.Array
    end: pa.Array


def _class_refs(classes: pd.DataFrame, sessions: pd.DataFrame) -> _ClassRefs:
    """Per class, its key, school and the first start / last end of its terms."""
    starts = dict(zip(sessions["sourcedId"], sessions["startDate"], strict=True))
    ends = dict(zip(sessions["sourcedId"], sessions["endDate"], strict=True))
    encoded = pc.dictionary_encode(_text(classes["termSourcedIds"]))
    term_lists = [str(v).split(",") for v in encoded.dictionary.to_pylist()]
    begin = [min((starts.get(t.strip(), "") for t in terms), default="") for terms in term_lists]
    end = [max((ends.get(t.strip(), "") for t in terms), default="") for terms in term_lists]
    return _ClassRefs(
        keys=_text(classes["sourcedId"]),
        schools=_text(classes["schoolSourcedId"]),
        begin=pa.array(begin, pa.large_string()).take(encoded.indices),
        end=pa.array(end, pa.large_string()).take(encoded.indices),
    )


def _enrollments_frame(
    numbers: np.ndarray, class_rows: np.ndarray, user_keys: pa.Array, role: str, refs: _ClassRefs
) -> pd.DataFrame:
    """Enrollments of one role; the school and dates come from the class."""
    take = pa.array(class_rows, pa.int64())
    return _frame(
        "enrollments",
        {
            "sourcedId": _keys("enrollments", numbers),
            "classSourcedId": refs.keys.take(take),
            "schoolSourcedId": refs.schools.take(take),
            "userSourcedId": user_keys,
            "role": role,
            "primary": "true" if role == "teacher" else "false",
            "beginDate": refs.begin.take(take),
            "endDate": refs.end.take(take),
        },
        len(numbers),
    )


def _org_lists(first: np.ndarray, second: np.ndarray, school_keys: list[str]) -> pa.Array:
    """orgSourcedIds: the school, or "schoolA,schoolB" for people in two schools."""
    own = _lookup(school_keys, first)
    both = _join(own, ",", _lookup(school_keys, np.maximum(second, 0)))
    return pc.if_else(pa.array(second >= 0), both, own)


def _resolve_spec(spec: DistrictSpec | str) -> DistrictSpec:
    """A preset name or a spec, as a spec."""
    if isinstance(spec, DistrictSpec):
        return spec
    if spec not in PRESETS:
        raise ValueError(f"unknown preset {spec!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[spec]


def generate_district(spec: DistrictSpec | str) -> District:
    """Day one of a district: the same spec and seed always give identical frames."""
    spec = _resolve_spec(spec)
    rng = np.random.default_rng(spec.seed)
    layout = _layout(spec)
    school_keys = layout.school_keys()
    sessions = _sessions_frame()
    courses = _courses_frame(layout)
    plan = _plan_classes(layout, spec)
    classes = _classes_frame(plan, layout, courses, rng)

    # Students fill cells in proportion to the cells' weights, in random order.
    per_cell = _apportion(spec.students, _cell_weights(layout))
    student_cell = rng.permutation(np.repeat(np.arange(len(per_cell)), per_cell))
    student_school = layout.cell_school[student_cell]
    student_grade = layout.cell_grade[student_cell]
    student_second = _second_school(student_school, layout, DUAL_STUDENT_SHARE, rng)

    # Teachers go where the sections are; each school gets at least one.
    sections_per_school = np.bincount(plan.school, minlength=layout.schools)
    per_school = _apportion(spec.teachers, sections_per_school + 1.0, minimum=1)
    teacher_school = rng.permutation(np.repeat(np.arange(layout.schools), per_school))
    teacher_second = _second_school(teacher_school, layout, DUAL_TEACHER_SHARE, rng)
    class_teacher = (
        _staff_classes(plan, teacher_school, teacher_second, layout.schools, rng)
        if len(plan.cell)
        else np.zeros(0, np.int64)
    )

    student_numbers = np.arange(1, spec.students + 1)
    teacher_numbers = np.arange(1, spec.teachers + 1) + spec.students
    admin_numbers = np.arange(1, spec.administrators + 1) + spec.students + spec.teachers
    admin_orgs = ["org-000001", *school_keys]
    users = pd.concat(
        [
            _users_frame(
                student_numbers,
                "student",
                _org_lists(student_school, student_second, school_keys),
                _pick_names(rng, spec.students),
                _lookup(GRADES, student_grade),
            ),
            _users_frame(
                teacher_numbers,
                "teacher",
                _org_lists(teacher_school, teacher_second, school_keys),
                _pick_names(rng, spec.teachers),
            ),
            _users_frame(
                admin_numbers,
                "administrator",
                _lookup(admin_orgs, np.arange(spec.administrators) % len(admin_orgs)),
                _pick_names(rng, spec.administrators),
            ),
        ],
        ignore_index=True,
    )

    # Students take classes of their own school; a two-school student takes one in each.
    per_student = np.full(spec.students, spec.enrollments_per_student)
    dual = np.flatnonzero(student_second >= 0)
    if spec.enrollments_per_student > 1:
        per_student[dual] -= 1
    stu_rows, stu_classes = _assign_classes(
        student_school, student_grade, per_student, plan.school, plan.grade, rng
    )
    dual_rows, dual_classes = _assign_classes(
        student_second[dual],
        student_grade[dual],
        np.ones(len(dual), np.int64),
        plan.school,
        plan.grade,
        rng,
    )
    pairs = np.concatenate([stu_rows, dual[dual_rows]]), np.concatenate([stu_classes, dual_classes])
    order = np.lexsort((pairs[1], pairs[0]))
    stu_rows, stu_classes = pairs[0][order], pairs[1][order]

    refs = _class_refs(classes, sessions)
    n_classes = len(plan.cell)
    enrollments = pd.concat(
        [
            _enrollments_frame(
                np.arange(1, n_classes + 1),
                np.arange(n_classes),
                _keys("users", teacher_numbers[class_teacher]),
                "teacher",
                refs,
            ),
            _enrollments_frame(
                np.arange(1, len(stu_rows) + 1) + n_classes,
                stu_classes,
                _keys("users", student_numbers[stu_rows]),
                "student",
                refs,
            ),
        ],
        ignore_index=True,
    )
    return District(
        orgs=_orgs_frame(layout),
        academic_sessions=sessions,
        courses=courses,
        classes=classes,
        users=users,
        enrollments=enrollments,
        serials={
            "users": spec.students + spec.teachers + spec.administrators,
            "enrollments": n_classes + len(stu_rows),
            "classes": n_classes,
            "courses": len(courses),
        },
    )


# --------------------------------------------------------------------------------------------
# Later days
# --------------------------------------------------------------------------------------------


def _high_water(district: District, stem: str) -> int:
    """The highest key number ever issued for a file: remembered, or read from the keys."""
    keys = _text(district.frames()[stem]["sourcedId"])
    parsed = pc.extract_regex(keys, r"(?P<n>\d+)$")
    digits = pc.struct_field(parsed.filter(parsed.is_valid()), [0])
    seen = pc.max(pc.cast(digits, pa.int64())).as_py() if len(digits) else 0
    return max(district.serials.get(stem, 0), seen or 0)


def _first_org(orgs: pd.Series) -> np.ndarray:
    """The first org of each orgSourcedIds list: the user's home school."""
    return np.asarray(pc.replace_substring_regex(_text(orgs), r",.*$", ""), dtype=object)


def _school_grade_ranges(district: District) -> dict[str, tuple[int, int]]:
    """Per school, the lowest and highest grade its courses teach (its band)."""
    grade = district.courses["grades"].map({g: i for i, g in enumerate(GRADES)})
    known = grade.notna()
    ranges = (
        pd.DataFrame({"school": district.courses["orgSourcedId"][known], "g": grade[known]})
        .groupby("school")["g"]
        .agg(["min", "max"])
    )
    return {s: (int(r["min"]), int(r["max"])) for s, r in ranges.iterrows()}


def _grade_bounds(
    schools: np.ndarray, ranges: dict[str, tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest grade index of each given school (all grades if unknown)."""
    table = pd.DataFrame(ranges.values(), index=list(ranges), columns=["low", "high"])
    bounds = table.reindex(pd.Index(schools, dtype=object))
    low = bounds["low"].fillna(0).to_numpy(np.int64)
    return low, bounds["high"].fillna(len(GRADES) - 1).to_numpy(np.int64)


def _set_rows(frame: pd.DataFrame, rows: np.ndarray, column: str, values: np.ndarray) -> None:
    """Overwrite some cells of one column of a frame we own (a copy, never the input)."""
    if len(rows):
        frame.iloc[rows, frame.columns.get_loc(column)] = values


def _update_students(
    users: pd.DataFrame,
    rows: np.ndarray,
    ranges: dict[str, tuple[int, int]],
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Change one field of each given student: family name, email or grade (a third each).

    Every change really differs from the old value, so the count of updated rows is exact.
    """
    users = users.copy()
    kind = rng.integers(0, 3, size=len(rows))
    family_pick = rng.integers(0, len(FAMILY_NAMES), size=len(rows))
    direction = rng.choice(np.array([-1, 1]), size=len(rows))

    family_rows = rows[kind == 0]
    old = users["familyName"].iloc[family_rows].to_numpy(dtype=object)
    names = np.array(FAMILY_NAMES, dtype=object)
    pick = family_pick[kind == 0]
    new = np.where(names[pick] == old, names[(pick + 1) % len(names)], names[pick])
    _set_rows(users, family_rows, "familyName", new)

    email_rows = rows[kind == 1]
    username = users["username"].iloc[email_rows]
    base = (username + "@example.org").to_numpy(dtype=object)
    alt = (username.str.replace(".", "_", n=1, regex=False) + "@example.org").to_numpy(dtype=object)
    old = users["email"].iloc[email_rows].to_numpy(dtype=object)
    _set_rows(users, email_rows, "email", np.where(old == base, alt, base))

    grade_rows = rows[kind == 2]
    low, high = _grade_bounds(_first_org(users["orgSourcedIds"].iloc[grade_rows]), ranges)
    index = {g: i for i, g in enumerate(GRADES)}
    old_grade = users["grades"].iloc[grade_rows].map(index).fillna(-1).to_numpy(np.int64)
    step = direction[kind == 2]
    moved = old_grade + step
    moved = np.where((moved < low) | (moved > high), old_grade - step, moved)
    moved = np.where((moved < low) | (moved > high) | (old_grade < 0), low, moved)
    _set_rows(users, grade_rows, "grades", np.array(GRADES, dtype=object)[moved])
    return users


def _move_classes(classes: pd.DataFrame, count: int, rng: np.random.Generator) -> pd.DataFrame:
    """Give ``count`` classes a new room: the small class updates a real day brings."""
    classes = classes.copy()
    rows = np.sort(rng.choice(len(classes), size=min(count, len(classes)), replace=False))
    room = rng.integers(100, 400, size=len(rows))
    new = np.char.add("Room ", room.astype(str)).astype(object)
    old = classes["location"].iloc[rows].to_numpy(dtype=object)
    moved = np.char.add("Room ", (room + 400).astype(str)).astype(object)
    _set_rows(classes, rows, "location", np.where(new == old, moved, new))
    return classes


def _codes(*columns: np.ndarray) -> list[np.ndarray]:
    """Integer codes for several string arrays over one shared vocabulary."""
    codes, _ = pd.factorize(np.concatenate(columns))
    bounds = np.cumsum([0, *(len(c) for c in columns)])
    return [codes[a:b] for a, b in itertools.pairwise(bounds)]


def _assign_from_frames(
    schools: np.ndarray,
    grades: np.ndarray,
    per_student: np.ndarray,
    classes: pd.DataFrame,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """_assign_classes for students and classes given as keys rather than integer codes."""
    cls_school, stu_school = _codes(
        classes["schoolSourcedId"].to_numpy(dtype=object), schools.astype(object)
    )
    cls_grade, stu_grade = _codes(classes["grades"].to_numpy(dtype=object), grades.astype(object))
    return _assign_classes(stu_school, stu_grade, per_student, cls_school, cls_grade, rng)


def _swap_enrollments(
    enrollments: pd.DataFrame,
    users: pd.DataFrame,
    refs: _ClassRefs,
    classes: pd.DataFrame,
    count: int,
    serial: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Schedule changes: ``count`` students each drop one class and (usually) join another.

    Returns the rows of ``enrollments`` to drop and the enrollments to add (keys after
    ``serial``). A new class the student already has is skipped, so some swaps are plain drops.
    """
    students = users[users["role"] == "student"]
    picked = students.iloc[np.sort(rng.choice(len(students), min(count, len(students)), False))]
    mine = (enrollments["role"] == "student") & enrollments["userSourcedId"].isin(
        picked["sourcedId"]
    )
    candidates = np.flatnonzero(mine.to_numpy())
    user_of = enrollments["userSourcedId"].iloc[candidates].to_numpy(dtype=object)
    class_of = enrollments["classSourcedId"].iloc[candidates].to_numpy(dtype=object)
    user_code = pd.factorize(user_of)[0]
    order = np.lexsort((rng.random(len(candidates)), user_code))
    first = np.ones(len(order), bool)
    first[1:] = user_code[order][1:] != user_code[order][:-1]
    dropped = candidates[order[first]]

    rows, class_rows = _assign_from_frames(
        _first_org(picked["orgSourcedIds"]),
        picked["grades"].to_numpy(dtype=object),
        np.ones(len(picked), np.int64),
        classes,
        rng,
    )
    user_keys = picked["sourcedId"].to_numpy(dtype=object)[rows]
    class_keys = np.asarray(refs.keys.take(pa.array(class_rows, pa.int64())), dtype=object)
    held = pd.MultiIndex.from_arrays([user_of, class_of])
    fresh = ~pd.MultiIndex.from_arrays([user_keys, class_keys]).isin(held)
    added = _enrollments_frame(
        np.arange(1, int(fresh.sum()) + 1) + serial,
        class_rows[fresh],
        pa.array(user_keys[fresh], pa.large_string()),
        "student",
        refs,
    )
    return dropped, added


def _admit_students(
    district: District,
    users: pd.DataFrame,
    classes: pd.DataFrame,
    refs: _ClassRefs,
    count: int,
    per_student: int,
    serials: dict[str, int],
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``count`` new students with fresh keys, spread like the current ones, with classes."""
    orgs = district.orgs
    school_keys = orgs.loc[orgs["type"] == "school", "sourcedId"].to_numpy(dtype=object)
    students = users["role"] == "student"
    if len(school_keys) == 0 or count == 0:
        return users.iloc[0:0], district.enrollments.iloc[0:0]
    home = pd.Series(_first_org(users.loc[students, "orgSourcedIds"]))
    weights = home.value_counts().reindex(school_keys, fill_value=0).to_numpy(float)
    weights = weights if weights.sum() > 0 else np.ones(len(school_keys))
    school = rng.choice(len(school_keys), size=count, p=weights / weights.sum())
    low, high = _grade_bounds(school_keys[school], _school_grade_ranges(district))
    grade = low + (rng.random(count) * (high - low + 1)).astype(np.int64)
    numbers = np.arange(1, count + 1) + serials["users"]
    new_users = _users_frame(
        numbers,
        "student",
        _lookup(list(school_keys), school),
        _pick_names(rng, count),
        _lookup(GRADES, grade),
    )
    rows, class_rows = _assign_from_frames(
        school_keys[school],
        np.array(GRADES, dtype=object)[grade],
        np.full(count, per_student, np.int64),
        classes,
        rng,
    )
    new_enrollments = _enrollments_frame(
        np.arange(1, len(rows) + 1) + serials["enrollments"],
        class_rows,
        _keys("users", numbers[rows]),
        "student",
        refs,
    )
    serials["users"] += count
    serials["enrollments"] += len(rows)
    return new_users, new_enrollments


def _check_fraction(**fractions: float) -> None:
    """Fractions of students must be within 0..1."""
    for name, value in fractions.items():
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be a fraction between 0 and 1, got {value}")


def next_day(
    district: District,
    *,
    seed: int,
    add: float = 0.01,
    update: float = 0.01,
    archive: float = 0.005,
) -> District:
    """A later day's full roster: some students added, changed and archived.

    ``round(add * students)`` new students (fresh keys, with enrollments), ``round(update *
    students)`` students with one changed field (family name, email or grade) and ``round(archive
    * students)`` students removed with their enrollments. Also ``round(update * classes)``
    classes change room and ``round(update * students)`` students swap a class. Every other row
    is kept as is, under the same key. Deterministic for a seed; the input is not modified.
    """
    _check_fraction(add=add, update=update, archive=archive)
    rng = np.random.default_rng(seed)
    users = district.users.reset_index(drop=True)
    students = np.flatnonzero((users["role"] == "student").to_numpy())
    n = len(students)
    n_archive = min(round(archive * n), n)
    n_update = min(round(update * n), n - n_archive)
    chosen = students[rng.permutation(n)[: n_archive + n_update]]
    archived, updated = np.sort(chosen[:n_archive]), np.sort(chosen[n_archive:])

    users = _update_students(users, updated, _school_grade_ranges(district), rng)
    gone = users["sourcedId"].iloc[archived]
    keep = np.ones(len(users), bool)
    keep[archived] = False
    users = users[keep].reset_index(drop=True)

    classes = _move_classes(district.classes, round(update * len(district.classes)), rng)
    refs = _class_refs(classes, district.academic_sessions)
    serials = {
        **district.serials,
        "users": _high_water(district, "users"),
        "enrollments": _high_water(district, "enrollments"),
    }
    old = district.enrollments
    dropped, swapped_in = _swap_enrollments(
        old, users, refs, classes, round(update * n), serials["enrollments"], rng
    )
    serials["enrollments"] += len(swapped_in)
    held = int((old["role"] == "student").sum())
    per_student = round(held / n) if n else 1
    new_users, new_enrollments = _admit_students(
        district, users, classes, refs, round(add * n), per_student, serials, rng
    )
    # One filter over the (possibly millions of) enrollments keeps a single copy in memory.
    kept = ~old["userSourcedId"].isin(gone).to_numpy()
    kept[dropped] = False
    return replace(
        district,
        classes=classes,
        users=pd.concat([users, new_users], ignore_index=True),
        enrollments=pd.concat([old[kept], swapped_in, new_enrollments], ignore_index=True),
        serials=serials,
    )


def returning_students(earlier: District, later: District, count: int, *, seed: int) -> District:
    """``later`` plus ``count`` students of ``earlier`` that ``later`` lacks, put back.

    They come back with the same key and fields, and with their earlier enrollments in classes
    that still exist: what a reactivation looks like in a feed. Picked at random for ``seed``.
    """
    users = earlier.users
    missing = users[
        (users["role"] == "student") & ~users["sourcedId"].isin(later.users["sourcedId"])
    ]
    if count > len(missing):
        raise ValueError(f"only {len(missing)} students of earlier are missing from later")
    rng = np.random.default_rng(seed)
    back = missing.iloc[np.sort(rng.choice(len(missing), size=count, replace=False))]
    old = earlier.enrollments
    restored = old[
        old["userSourcedId"].isin(back["sourcedId"])
        & old["classSourcedId"].isin(later.classes["sourcedId"])
        & ~old["sourcedId"].isin(later.enrollments["sourcedId"])
    ]
    serials = {
        stem: max(_high_water(earlier, stem), _high_water(later, stem))
        for stem in ("users", "enrollments")
    }
    return replace(
        later,
        users=pd.concat([later.users, back], ignore_index=True),
        enrollments=pd.concat([later.enrollments, restored], ignore_index=True),
        serials={**later.serials, **serials},
    )


# --------------------------------------------------------------------------------------------
# Deltas
# --------------------------------------------------------------------------------------------


def _delta_frame(before: pd.DataFrame, after: pd.DataFrame, stem: str, stamp: str) -> pd.DataFrame:
    """New or changed rows of ``after`` (active) and rows gone from it (tobedeleted)."""
    compared = [c for c in HEADERS[stem] if c not in STATUS_COLUMNS]
    before_keys, after_keys = _text(before["sourcedId"]), _text(after["sourcedId"])
    position = pc.index_in(after_keys, value_set=before_keys)
    matched = pc.is_valid(position)
    changed = pc.invert(matched)
    known = pc.fill_null(position, 0)
    for column in compared[1:]:
        old = _text(before[column]).take(known)
        changed = pc.or_(changed, pc.not_equal(old, _text(after[column])))
    gone = pc.invert(pc.is_in(before_keys, value_set=after_keys))
    parts = []
    for frame, mask, status in ((after, changed, "active"), (before, gone, "tobedeleted")):
        rows = frame.loc[:, list(HEADERS[stem])][np.asarray(mask, dtype=bool)].copy()
        rows["status"] = status
        rows["dateLastModified"] = stamp
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def delta_between(before: District, after: District, *, last_modified: str) -> District:
    """The delta feed turning ``before`` into ``after``; unchanged rows are left out.

    Rows new or changed in ``after`` are ``active``; rows of ``before`` missing from ``after`` are
    ``tobedeleted`` with their old fields. Every row's dateLastModified is ``last_modified``.
    """
    frames = {
        _ATTRIBUTES[stem]: _delta_frame(old, after.frames()[stem], stem, last_modified)
        for stem, old in before.frames().items()
    }
    return District(**frames, serials=dict(after.serials))


# --------------------------------------------------------------------------------------------
# Writing drops
# --------------------------------------------------------------------------------------------


def _quote(column: pa.Array) -> pa.Array:
    """CSV-quote only the values that need it (comma, quote or line break), as RFC 4180 does."""
    needs = pc.match_substring_regex(column, r'[",\r\n]')
    if not pc.any(needs).as_py():
        return column
    escaped = pc.replace_substring(column, '"', '""')
    return pc.if_else(needs, _join('"', escaped, '"'), column)


def _csv_bytes(batch: pa.RecordBatch, eol: str) -> memoryview:
    """Encode rows as CSV lines in pyarrow and hand back the bytes without a Python loop.

    Each row becomes one string ending in ``eol``; the data buffer of that string array is then
    exactly the CSV text of the batch.
    """
    cells = [_quote(column) for column in batch.columns]
    cells[-1] = _join(cells[-1], eol)
    lines = pc.binary_join_element_wise(*cells, _large(","))
    _, offsets_buffer, data = lines.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)
    first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return memoryview(data)[int(first) : int(last)]


def _write_csv(out: BinaryIO, header: Sequence[str], table: pa.Table, bom: bool, eol: str) -> None:
    """Stream one CSV file: optional BOM, the header unquoted, then the rows in batches."""
    if bom:
        out.write(BOM)
    out.write((",".join(header) + eol).encode())
    for batch in table.to_batches(max_chunksize=BATCH_ROWS):
        if batch.num_rows:
            out.write(_csv_bytes(batch, eol))


def _file_table(frame: pd.DataFrame, stem: str, mode: str, last_modified: str | None) -> pa.Table:
    """The file's columns in header order, as text, with status/dateLastModified per mode.

    Bulk files leave both blank (the spec allows it); delta files need them, so blanks become
    ``active`` and ``last_modified``.
    """
    missing = [c for c in HEADERS[stem] if c not in frame.columns]
    if missing:
        raise ValueError(f"{stem}: frame lacks column(s) {', '.join(missing)}")
    columns = {name: _column(frame[name]) for name in HEADERS[stem]}
    n = len(frame)
    if mode == "bulk":
        columns["status"] = columns["dateLastModified"] = _const("", n)
    else:
        status, stamp = columns["status"], columns["dateLastModified"]
        columns["status"] = pc.if_else(pc.equal(status, ""), _large("active"), status)
        blank = pc.equal(stamp, "")
        if last_modified is None and pc.any(blank).as_py():
            raise ValueError(f"{stem}: a delta file needs dateLastModified; pass last_modified")
        if last_modified is not None:
            columns["dateLastModified"] = pc.if_else(blank, _large(last_modified), stamp)
    return pa.table(list(columns.values()), names=list(columns))


def _manifest_table(modes: dict[str, str]) -> pa.Table:
    """manifest.csv: the versions, each file's mode and the source system."""
    rows = [("manifest.version", "1.0"), ("oneroster.version", "1.1")]
    rows += [(f"file.{stem}", modes.get(stem, "absent")) for stem in MANIFEST_FILES]
    rows += [("source.systemName", SOURCE_NAME), ("source.systemCode", SOURCE_CODE)]
    names, values = zip(*rows, strict=True)
    return pa.table(
        {
            "propertyName": pa.array(names, pa.large_string()),
            "value": pa.array(values, pa.large_string()),
        }
    )


def _resolve_modes(modes: dict[str, str] | None) -> dict[str, str]:
    """Each roster file's mode: as given, else bulk."""
    modes = dict(modes or {})
    unknown = set(modes) - set(ROSTER_FILES)
    if unknown:
        raise ValueError(f"unknown file(s) {sorted(unknown)}; expected some of {ROSTER_FILES}")
    bad = {stem: mode for stem, mode in modes.items() if mode not in MODES}
    if bad:
        raise ValueError(f"bad mode(s) {bad}; expected one of {MODES}")
    return {stem: modes.get(stem, "bulk") for stem in ROSTER_FILES}


def write_drop(
    district: District,
    folder: Path | str,
    *,
    modes: dict[str, str] | None = None,
    bom: bool = False,
    crlf: bool = True,
    zip_name: str | None = None,
    last_modified: str | None = None,
) -> Path:
    """Write a OneRoster drop: manifest.csv plus every file whose mode is not ``absent``.

    ``modes`` maps file stems to bulk/delta/absent (files not named are bulk). In delta files
    blank status becomes ``active`` and blank dateLastModified ``last_modified``. With
    ``zip_name`` the CSVs go, at the archive's root, into ``folder/zip_name`` and that path is
    returned; otherwise the folder is.
    """
    resolved = _resolve_modes(modes)
    eol = "\r\n" if crlf else "\n"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = district.frames()
    files = [("manifest.csv", ("propertyName", "value"), lambda: _manifest_table(resolved))]
    for stem, mode in resolved.items():
        if mode != "absent":
            files.append(
                (
                    f"{stem}.csv",
                    HEADERS[stem],
                    lambda stem=stem, mode=mode: _file_table(
                        frames[stem], stem, mode, last_modified
                    ),
                )
            )
    if zip_name is None:
        for name, header, table in files:
            with open(folder / name, "wb") as out:
                _write_csv(out, header, table(), bom, eol)
        return folder
    target = folder / zip_name
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, header, table in files:
            with archive.open(name, "w", force_zip64=True) as out:
                _write_csv(out, header, table(), bom, eol)
    return target


def write_delta_drop(
    before: District, after: District, folder: Path | str, *, last_modified: str, **kw: object
) -> Path:
    """Write the delta from ``before`` to ``after`` as a drop with every file in delta mode."""
    delta = delta_between(before, after, last_modified=last_modified)
    modes = dict.fromkeys(ROSTER_FILES, "delta")
    return write_drop(delta, folder, modes=modes, last_modified=last_modified, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Ready-made drops and the command line
# --------------------------------------------------------------------------------------------


def write_demo_drops(
    root: Path | str, dates: Sequence[str] = ("2026-09-01", "2026-09-02", "2026-09-03")
) -> list[Path]:
    """Bulk drops of the demo district for consecutive days, in ``root/<date>/``.

    Day 2 adds, updates and archives 9 students each (3% of 300); day 3 makes small changes and
    brings back 2 of the students archived on day 2, so a sync sees reactivations. Later dates
    repeat day 3's small changes.
    """
    root = Path(root)
    days = [generate_district("demo")]
    for number in range(2, len(dates) + 1):
        previous = days[-1]
        if number == 2:
            days.append(next_day(previous, seed=2, add=0.03, update=0.03, archive=0.03))
            continue
        following = next_day(previous, seed=number, add=0.01, update=0.01, archive=0.01)
        if number == 3:
            # Only students archived on day 2 qualify: they were absent from day 2's drop.
            first = days[0]
            archived = first.users[~first.users["sourcedId"].isin(previous.users["sourcedId"])]
            following = returning_students(
                replace(first, users=archived), following, count=2, seed=number
            )
        days.append(following)
    return [write_drop(day, root / date) for day, date in zip(days, dates, strict=True)]


def _counts(district: District) -> str:
    """Row counts for the log: never names or emails."""
    roles = district.users["role"].value_counts()
    parts = [f"{stem}={len(frame):,}" for stem, frame in district.frames().items()]
    parts += [f"{role}s={int(roles.get(role, 0)):,}" for role in ("student", "teacher")]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Write DIR/day1 (and later days as next_day) as bulk drops and print row counts."""
    parser = argparse.ArgumentParser(
        prog="python -m include.sis_sync.sample.generator",
        description="Write a synthetic OneRoster 1.1 district as CSV drops.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--out", required=True, type=Path, help="folder for day1/, day2/, ...")
    parser.add_argument("--days", type=int, default=1, help="number of daily drops (default 1)")
    parser.add_argument("--seed", type=int, help="override the preset's seed")
    parser.add_argument("--zip", action="store_true", help="write each day as oneroster.zip")
    parser.add_argument("--bom", action="store_true", help="start each CSV with a UTF-8 BOM")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    spec = PRESETS[args.preset]
    if args.seed is not None:
        spec = replace(spec, seed=args.seed)
    district: District | None = None
    for day in range(1, args.days + 1):
        started = time.perf_counter()
        if district is None:
            district = generate_district(spec)
        else:
            district = next_day(district, seed=spec.seed + day)
        built = time.perf_counter()
        target = write_drop(
            district,
            args.out / f"day{day}",
            bom=args.bom,
            zip_name="oneroster.zip" if args.zip else None,
        )
        done = time.perf_counter()
        print(
            f"day{day}: {_counts(district)} -> {target} "
            f"(built {built - started:.1f}s, written {done - built:.1f}s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
