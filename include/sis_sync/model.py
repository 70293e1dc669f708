"""The canonical roster model: the frames every provider maps to.

Every frame has a ``sis_key`` (the provider's stable id) and a ``sis_status`` (``active`` or
``tobedeleted``: the latter only appears in delta feeds). All other columns are text, so the diff
compares like with like on every database: multi-value fields are sorted, comma-joined lists,
dates are ``YYYY-MM-DD`` and flags are ``true``/``false``. Empty values are nulls, never ``""``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ACTIVE = "active"
TO_BE_DELETED = "tobedeleted"


@dataclass(frozen=True)
class Entity:
    """One canonical frame: its name, the fields the diff compares, and what it refers to."""

    name: str
    fields: tuple[str, ...]
    required: tuple[str, ...] = ()
    references: Mapping[str, str] = None  # type: ignore[assignment]  # field -> entity name

    @property
    def columns(self) -> list[str]:
        return ["sis_key", "sis_status", *self.fields]


ORGANIZATIONS = Entity(
    "organizations",
    ("name", "kind", "parent_key", "school_number"),
    required=("name", "kind"),
    references={"parent_key": "organizations"},
)
TERMS = Entity(
    "terms",
    ("name", "kind", "start_date", "end_date", "parent_key", "school_year"),
    required=("name", "kind", "start_date", "end_date"),
    references={"parent_key": "terms"},
)
COURSES = Entity(
    "courses",
    ("title", "code", "organization_key", "school_year_key", "grades", "subjects"),
    required=("title",),
    references={"organization_key": "organizations", "school_year_key": "terms"},
)
USERS = Entity(
    "users",
    (
        "role",
        "roles",
        "given_name",
        "family_name",
        "middle_name",
        "email",
        "username",
        "sis_id",
        "student_number",
        "teacher_number",
        "grades",
        "organizations",
        "enabled",
    ),
    required=("role",),
)
# A user's membership of one organization: derived from users.organizations so that a user
# leaving one of two schools loses that membership only.
USER_ORGANIZATIONS = Entity(
    "user_organizations",
    ("user_key", "organization_key", "role"),
    required=("user_key", "organization_key"),
    references={"user_key": "users", "organization_key": "organizations"},
)
SECTIONS = Entity(
    "sections",
    (
        "name",
        "organization_key",
        "course_key",
        "term_keys",
        "period",
        "subject",
        "grades",
        "code",
        "kind",
    ),
    required=("name", "organization_key"),
    references={"organization_key": "organizations", "course_key": "courses"},
)
ENROLLMENTS = Entity(
    "enrollments",
    ("section_key", "user_key", "organization_key", "role", "primary", "begin_date", "end_date"),
    required=("section_key", "user_key", "role"),
    references={"section_key": "sections", "user_key": "users"},
)

# Dependency order: an entity only refers to entities before it. Commit applies adds in this
# order and archives in the reverse one.
ENTITIES: tuple[Entity, ...] = (
    ORGANIZATIONS,
    TERMS,
    COURSES,
    USERS,
    USER_ORGANIZATIONS,
    SECTIONS,
    ENROLLMENTS,
)
BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}

ORGANIZATION_KINDS = ("district", "school", "department", "state", "national")
TERM_KINDS = ("school_year", "semester", "term", "grading_period")
# Primary role order: a user holding several roles is shown as the first of these it has.
USER_ROLES = ("student", "teacher", "aide", "administrator", "staff", "contact")
# Canonical user role -> the portal's entity switch that syncs it.
ROLE_SWITCH = {
    "student": "students",
    "teacher": "teachers",
    "administrator": "administrators",
    "aide": "staff",
    "staff": "staff",
    "contact": "contacts",
}
ENROLLMENT_ROLES = ("student", "teacher", "aide", "administrator", "proctor")


def primary_role(roles: pd.Series) -> pd.Series:
    """Pick each user's primary role from a comma list of roles, by ``USER_ROLES`` order."""
    result = pd.Series(pd.NA, index=roles.index, dtype="string")
    for role in reversed(USER_ROLES):
        has = roles.str.contains(rf"(?:^|,){role}(?:,|$)", regex=True, na=False)
        result = result.mask(has, role)
    return result


def empty_frame(entity: Entity) -> pd.DataFrame:
    """A frame with the entity's columns and no rows."""
    return pd.DataFrame({c: pd.Series(dtype="string") for c in entity.columns})


def conform(frame: pd.DataFrame, entity: Entity) -> pd.DataFrame:
    """Give ``frame`` exactly the entity's columns, as nullable strings, with ``""`` as null."""
    out = pd.DataFrame(index=frame.index)
    for column in entity.columns:
        values = frame[column] if column in frame.columns else pd.Series(pd.NA, index=frame.index)
        values = values.astype("string").str.strip()
        out[column] = values.mask(values == "")
    out["sis_status"] = out["sis_status"].fillna(ACTIVE)
    return out.reset_index(drop=True)


def join_sorted(values: pd.Series) -> pd.Series:
    """Normalise comma lists so that ``"10, 09"`` and ``"09,10"`` compare equal.

    Only values holding a comma need sorting; they are few, so the per-value work stays small.
    """
    text = values.astype("string").str.strip()
    lists = text.str.contains(",", regex=False, na=False)
    if lists.any():
        text = text.copy()
        text[lists] = text[lists].map(
            lambda v: ",".join(sorted({i.strip() for i in v.split(",") if i.strip()}))
        )
    return text.mask(text == "")


def arrow_keys(values: object) -> pa.Array | pa.ChunkedArray:
    """Keys as Arrow large strings: convert once what many look-ups probe."""
    if isinstance(values, (pd.Series, pd.Index)):
        converted = pa.array(pd.Series(values).astype("string"), from_pandas=True)
    else:
        converted = pa.array(list(values), type=pa.large_string())  # type: ignore[call-overload]
    return converted.cast(pa.large_string())


def key_in(values: pd.Series, keys: object) -> pd.Series:
    """``values.isin(keys)`` for large key sets, hashed by Arrow.

    pandas' ``isin`` on Arrow strings first turns every key into a Python object (seconds for
    a million keys); this stays in Arrow. Nulls are never in the set.
    """
    value_set = arrow_keys(keys)
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    hits = pc.is_in(arrow_keys(values), value_set=value_set, skip_nulls=True)
    return pd.Series(
        hits.fill_null(False).to_numpy(zero_copy_only=False), index=values.index, dtype=bool
    )


def key_positions(values: pd.Series, keys: pa.Array) -> np.ndarray:
    """Where each of ``values`` is in ``keys`` (both unique; ``keys`` from ``arrow_keys``),
    -1 where it is not. ``values`` are hashed, ``keys`` probed once: cheap when a few
    thousand values are looked for among millions of keys."""
    found = pc.index_in(keys, value_set=arrow_keys(values), skip_nulls=True)
    found = found.fill_null(-1).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(found >= 0)
    positions = np.full(len(values), -1, dtype=np.int64)
    positions[found[rows]] = rows
    return positions
