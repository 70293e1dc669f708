"""Reading a Clever district into raw run data, and back into canonical frames.

Raw data is one table per resource with the object's ``id`` and its JSON, exactly as Clever
sent it, so a transform can be re-run on what was read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

from include.sis_sync import model
from include.sis_sync.config import Entities
from include.sis_sync.providers import clever_mapping

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

    def newest_event_id(self, starting_after: str | None = None) -> str | None: ...


def wanted_roles(entities: Entities) -> list[str]:
    return [role for role, switch in ROLE_SWITCH.items() if getattr(entities, switch)]


def _table(objects: Iterable[Mapping[str, Any]]) -> pa.Table:
    ids: list[str] = []
    texts: list[str] = []
    for obj in objects:
        ids.append(str(obj["id"]))
        texts.append(json.dumps(obj, separators=(",", ":"), sort_keys=True))
    return pa.table({"id": pa.array(ids, pa.string()), "json": pa.array(texts, pa.string())})


def read_district(client: CleverReader, entities: Entities) -> dict[str, pa.Table]:
    """Every resource the portal syncs, as raw tables. Users are read per wanted role, and a
    user holding several wanted roles is kept once."""
    tables = {
        "districts": _table(client.list("districts")),
        "schools": _table(client.list("schools")),
        "terms": _table(client.list("terms")),
        "courses": _table(client.list("courses")),
    }
    seen: dict[str, dict[str, Any]] = {}
    for role in wanted_roles(entities):
        for user in client.list("users", role=role):
            seen.setdefault(str(user["id"]), user)
    tables["users"] = _table(seen.values())
    if entities.sections:
        tables["sections"] = _table(client.list("sections"))
    return tables


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


def full_modes(entities: Entities, mode: str = "bulk") -> dict[str, str]:
    """A full read is a complete snapshot (``bulk``) of every entity the portal syncs; an
    events read is a ``delta`` of each."""
    modes = {e.name: mode for e in model.ENTITIES}
    if not entities.sections:
        modes[model.SECTIONS.name] = "absent"
    if not entities.sections or not entities.enrollments:
        modes[model.ENROLLMENTS.name] = "absent"
    return modes
