"""Reading a Clever district into raw run data, and back into canonical frames.

Raw data is one table per resource with the object's ``id`` and its JSON, exactly as Clever
sent it, so a transform can be re-run on what was read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import pyarrow as pa

from include.sis_sync import model
from include.sis_sync.providers import clever_mapping
from include.sis_sync.providers.base import Completeness

if TYPE_CHECKING:
    from include.sis_sync.config import Entities

# Clever user roles the portal's entity switches allow (roles.contact needs contacts on).
ROLE_SWITCH = {
    "student": "students",
    "teacher": "teachers",
    "district_admin": "administrators",
    "staff": "staff",
    "contact": "contacts",
}


class CleverReader(Protocol):
    """What extraction needs of a Clever client."""

    def list(self, resource: str, **params: Any) -> Iterator[dict[str, Any]]: ...

    def count(self, resource: str, **params: Any) -> int | None: ...

    def get_record(self, resource: str, record_id: str) -> dict[str, Any] | None: ...

    def newest_event_id(self, starting_after: str | None = None) -> str | None: ...


class IncompleteRead(RuntimeError):
    """A full Clever read that lost records (a page, a link): nothing may be staged from it."""


@dataclass(frozen=True)
class DistrictRead:
    """A full read's raw tables, and what its completeness checks looked at (counts only)."""

    tables: dict[str, pa.Table]
    checked: dict[str, Any]


def wanted_roles(entities: Entities) -> list[str]:
    return [role for role, switch in ROLE_SWITCH.items() if getattr(entities, switch)]


def _table(objects: Iterable[Mapping[str, Any]]) -> pa.Table:
    ids: list[str] = []
    texts: list[str] = []
    for obj in objects:
        ids.append(str(obj["id"]))
        texts.append(json.dumps(obj, separators=(",", ":"), sort_keys=True))
    return pa.table({"id": pa.array(ids, pa.string()), "json": pa.array(texts, pa.string())})


def read_district(client: CleverReader, entities: Entities) -> DistrictRead:
    """Every resource the portal syncs, as raw tables, checked complete (see
    :func:`check_complete`). Users are read per wanted role, and a user holding several wanted
    roles is kept once."""
    lists = {
        name: _read_list(client, name) for name in ("districts", "schools", "terms", "courses")
    }
    users: dict[str, dict[str, Any]] = {}
    for role in wanted_roles(entities):
        for user in _read_list(client, "users", role=role):
            users.setdefault(str(user["id"]), user)
    lists["users"] = list(users.values())
    if entities.sections:
        lists["sections"] = _read_list(client, "sections")
    checked = check_complete(client, lists, wanted_roles(entities))
    return DistrictRead({name: _table(rows) for name, rows in lists.items()}, checked)


def _read_list(client: CleverReader, resource: str, **params: Any) -> list[dict[str, Any]]:
    """A whole list, refused when it ended early: records after its last id (a lost ``next``
    link), or fewer or more records than the count Clever gives (when it gives one)."""
    what = resource + "".join(f" ({v})" for v in params.values())
    rows = list(client.list(resource, **params))
    if rows:
        last = str(rows[-1]["id"])
        more = next(iter(client.list(resource, starting_after=last, limit=1, **params)), None)
        if more is not None:
            raise IncompleteRead(
                f"Clever's {what} list ended after {len(rows)} records, but more follow id "
                f"{last}: a page was lost (its next link was missing). Nothing was staged; "
                "run the sync again"
            )
    count = client.count(resource, **params)
    if count is not None and count != len(rows):
        raise IncompleteRead(
            f"Clever counts {count} {what} but {len(rows)} were read: a page was lost or the "
            "list changed while it was read. Nothing was staged; run the sync again"
        )
    return rows


def check_complete(
    client: CleverReader, lists: Mapping[str, list[dict[str, Any]]], roles: list[str]
) -> dict[str, Any]:
    """Cross-check a full read before it is staged, and fail on a record it lost.

    Every school a user or section names, and every student or teacher a section names
    (for the roles the portal syncs), must be in what was read. An id that is not may be a
    record the district does not share with the app: each is asked for by id, and the read
    fails only when Clever does return it (then a page of the list was lost).
    """
    schools = {str(s["id"]) for s in lists["schools"]}
    users = {str(u["id"]) for u in lists["users"]}
    named_schools: set[str] = set()
    for user in lists["users"]:
        for detail in (user.get("roles") or {}).values():
            named_schools.update(str(s) for s in detail.get("schools") or [])
            if detail.get("school"):
                named_schools.add(str(detail["school"]))
    members: dict[str, set[str]] = {"student": set(), "teacher": set()}
    for section in lists.get("sections", []):
        if section.get("school"):
            named_schools.add(str(section["school"]))
        for role, field_name in (("student", "students"), ("teacher", "teachers")):
            members[role].update(str(i) for i in section.get(field_name) or [])
    unshared = {"schools": _lost(client, "schools", named_schools - schools, None)}
    for role, ids in members.items():
        if role in roles:
            unshared[f"{role}s"] = _lost(client, "users", ids - users, role)
    return {
        "schools": len(schools),
        "users": {
            role: sum(1 for u in lists["users"] if role in (u.get("roles") or {})) for role in roles
        },
        "sections": len(lists.get("sections", [])),
        "named_but_not_shared": unshared,
    }


def _lost(client: CleverReader, resource: str, ids: set[str], role: str | None) -> int:
    """How many of ``ids`` Clever does not share; fails at the first one it does return."""
    for record_id in sorted(ids):
        record = client.get_record(resource, record_id)
        if record is not None and (role is None or role in (record.get("roles") or {})):
            raise IncompleteRead(
                f"Clever's {resource} read lacks {resource[:-1]} {record_id}, which Clever does "
                f"return by id ({len(ids)} named by other records are missing): a page of "
                f"{resource} was lost. Nothing was staged; run the sync again"
            )
    return len(ids)


def _objects(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    if frame is None:
        return []
    return [json.loads(text) for text in frame["json"]]


def _deleted_keys(frame: pd.DataFrame | None) -> set[str]:
    if frame is None or "deleted" not in frame.columns:
        return set()
    return set(frame.loc[frame["deleted"].astype(bool), "id"].astype(str))


def _mark_deleted(frame: pd.DataFrame, keys: set[str]) -> pd.DataFrame:
    if keys:
        frame = frame.copy()
        frame.loc[frame["sis_key"].isin(list(keys)), "sis_status"] = model.TO_BE_DELETED
    return frame


def to_canonical(
    tables: Mapping[str, pd.DataFrame], entities: Entities, *, delta: bool = False
) -> dict[str, pd.DataFrame]:
    """Raw Clever tables to canonical frames; users keep only the roles the portal syncs.

    A full read has exactly one district. A delta (from events) has the objects events named,
    those deleted marked ``tobedeleted``; its enrollments are complete for each section it has.
    """
    districts = _objects(tables.get("districts"))
    schools = _objects(tables.get("schools"))
    if not delta and len(districts) != 1:
        raise ValueError(f"Clever returned {len(districts)} districts for the token; expected 1")
    if districts:
        organizations = clever_mapping.organizations(districts[0], schools)
    else:
        organizations = clever_mapping.schools_only(schools)
    frames = {
        model.ORGANIZATIONS.name: _mark_deleted(
            organizations, _deleted_keys(tables.get("schools"))
        ),
        model.TERMS.name: _mark_deleted(
            clever_mapping.terms(_objects(tables.get("terms"))), _deleted_keys(tables.get("terms"))
        ),
        model.COURSES.name: _mark_deleted(
            clever_mapping.courses(_objects(tables.get("courses"))),
            _deleted_keys(tables.get("courses")),
        ),
        model.USERS.name: _mark_deleted(
            clever_mapping.users(_wanted(_objects(tables.get("users")), entities)),
            _deleted_keys(tables.get("users")),
        ),
    }
    if entities.sections and (delta or "sections" in tables):
        sections = _objects(tables.get("sections"))
        gone = _deleted_keys(tables.get("sections"))
        frames[model.SECTIONS.name] = _mark_deleted(clever_mapping.sections(sections), gone)
        if entities.enrollments:
            live = [s for s in sections if str(s["id"]) not in gone]
            frames[model.ENROLLMENTS.name] = clever_mapping.enrollments(live)
    return frames


def _wanted(users: list[dict[str, Any]], entities: Entities) -> list[dict[str, Any]]:
    """Users with their unwanted role objects removed (and users left with none dropped)."""
    allowed = set(wanted_roles(entities))
    out = []
    for user in users:
        roles = {r: v for r, v in (user.get("roles") or {}).items() if r in allowed}
        if roles:
            out.append({**user, "roles": roles})
    return out


def full_modes(
    entities: Entities, mode: Completeness = Completeness.COMPLETE
) -> dict[str, Completeness]:
    """A full read is a complete snapshot of every entity the portal syncs; an events read is
    a delta of each."""
    modes = {e.name: mode for e in model.ENTITIES}
    if not entities.sections:
        modes[model.SECTIONS.name] = Completeness.ABSENT
    if not entities.sections or not entities.enrollments:
        modes[model.ENROLLMENTS.name] = Completeness.ABSENT
    return modes
