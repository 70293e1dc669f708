"""Provider-independent shaping of a snapshot: derived frames and the sync's scope.

The scope answers two questions for every record: may this run add or update it, and may this
run archive it when it is missing? A run over a subset of schools must never archive what lives
in the other schools, and only a run over all the portal's schools may archive portal-level
records (the district, terms, district-wide courses).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from include.sis_sync import model


@dataclass(frozen=True)
class Scope:
    """Organizations a run covers.

    ``schools`` are the selected schools (None: every school of the feed); ``organizations``
    adds their departments and ancestors, for adds and updates; ``archivable`` is where a
    missing record may be archived. ``portal_wide`` runs may archive portal-level records.
    """

    schools: frozenset[str] | None
    organizations: frozenset[str] | None
    archivable: frozenset[str] | None

    @property
    def portal_wide(self) -> bool:
        return self.schools is None


def build_scope(
    organizations: pd.DataFrame,
    portal_schools: frozenset[str] | None,
    run_schools: Iterable[str] | None,
) -> Scope:
    """The scope of a run, from the portal's synced schools and the run's own subset.

    ``organizations`` holds every organization known (feed and LMS) with ``sis_key``,
    ``kind`` and ``parent_key``.
    """
    subset = frozenset(s for s in (run_schools or []) if s)
    if portal_schools is None and not subset:
        return Scope(None, None, None)
    selected = subset or portal_schools or frozenset()
    if portal_schools is not None and subset:
        selected = selected & portal_schools
    parent = dict(
        zip(organizations["sis_key"], organizations["parent_key"].fillna(""), strict=False)
    )
    children = _descendants(parent, selected)
    ancestors: set[str] = set()
    for key in selected:
        seen = key
        while parent.get(seen) and parent[seen] not in ancestors and parent[seen] != seen:
            seen = parent[seen]
            ancestors.add(seen)
    archivable = frozenset(selected | children)
    return Scope(frozenset(selected), frozenset(archivable | ancestors), archivable)


def _descendants(parent: dict[str, str], roots: frozenset[str]) -> set[str]:
    found: set[str] = set()
    frontier = set(roots)
    while frontier:
        frontier = {k for k, p in parent.items() if p in frontier and k not in found} - roots
        found |= frontier
    return found


def derive_user_organizations(users: pd.DataFrame) -> pd.DataFrame:
    """One membership row per user and organization, keyed ``<user>:<organization>``."""
    pairs = users[["sis_key", "sis_status", "organizations", "role"]].copy()
    pairs["organization_key"] = pairs["organizations"].str.split(",")
    pairs = pairs.explode("organization_key").dropna(subset=["organization_key"])
    pairs["organization_key"] = pairs["organization_key"].astype("string")
    memberships = pd.DataFrame(
        {
            "sis_key": pairs["sis_key"] + ":" + pairs["organization_key"],
            "sis_status": pairs["sis_status"],
            "user_key": pairs["sis_key"],
            "organization_key": pairs["organization_key"],
            "role": pairs["role"],
        }
    )
    return model.conform(memberships, model.USER_ORGANIZATIONS)


def in_scope(frame: pd.DataFrame, entity: model.Entity, orgs: frozenset[str] | None) -> pd.Series:
    """Rows of a canonical frame that fall within a set of organizations (None: all rows)."""
    if orgs is None:
        return pd.Series(True, index=frame.index)
    keys = pd.Index(sorted(orgs))
    if entity is model.ORGANIZATIONS:
        return frame["sis_key"].isin(keys)
    if entity is model.TERMS:
        return pd.Series(True, index=frame.index)
    if entity is model.USERS:
        return _any_listed(frame["organizations"], keys)
    return frame["organization_key"].isin(keys)


def _any_listed(lists: pd.Series, keys: pd.Index) -> pd.Series:
    """Whether any item of each comma list is one of ``keys``."""
    exploded = lists.str.split(",").explode()
    hit = exploded.isin(keys)
    return hit.groupby(level=0).any().reindex(lists.index, fill_value=False).astype(bool)


def restrict(
    frames: dict[str, pd.DataFrame], scope: Scope
) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """Keep only the snapshot rows within the run's scope (organizations and their contents).

    A user outside the scope who is enrolled in a section inside it (a teacher whose home
    school is not synced) is kept, so the enrollment can be made; their keys come back as the
    second value, for a warning.
    """
    outsiders = pd.Series([], dtype="string")
    if scope.organizations is None:
        return dict(frames), outsiders
    out = {
        name: restrict_frame(model.BY_NAME[name], frame, scope)
        for name, frame in frames.items()
        if name != model.USERS.name
    }
    if model.USERS.name in frames:
        enrollments = out.get(model.ENROLLMENTS.name)
        wanted = None if enrollments is None else enrollments["user_key"]
        users = frames[model.USERS.name]
        out[model.USERS.name], outsiders = restrict_users(users, scope, wanted)
    return {name: out[name] for name in frames}, outsiders


def restrict_frame(entity: model.Entity, frame: pd.DataFrame, scope: Scope) -> pd.DataFrame:
    """The rows of one snapshot frame (or part of one) within the run's scope."""
    if scope.organizations is None:
        return frame
    return frame[in_scope(frame, entity, scope.organizations)].reset_index(drop=True)


def restrict_users(
    users: pd.DataFrame, scope: Scope, wanted: pd.Series | None
) -> tuple[pd.DataFrame, pd.Series]:
    """Users within the scope, plus those outside it that an in-scope enrollment names
    (``wanted``): the latter's keys come back as the second value."""
    if scope.organizations is None:
        return users, pd.Series([], dtype="string")
    inside = in_scope(users, model.USERS, scope.organizations)
    extra = pd.Series(False, index=users.index)
    if wanted is not None and len(wanted):
        extra = ~inside & model.key_in(users["sis_key"], wanted)
    kept = pd.concat([users[inside], users[extra]], ignore_index=True)
    return kept, users.loc[extra, "sis_key"].reset_index(drop=True)


def outside_school_year(
    sections: pd.DataFrame, terms: pd.DataFrame, start: str, end: str
) -> pd.Series:
    """Sections all of whose terms end before ``start`` or begin after ``end``.

    A section with no known term dates is kept: the window cannot say it is outside.
    """
    bounds = terms.set_index("sis_key")[["start_date", "end_date"]]
    pairs = sections[["term_keys"]].copy()
    pairs["term_key"] = pairs["term_keys"].str.split(",")
    pairs = pairs.explode("term_key")
    pairs = pairs.join(bounds, on="term_key")
    known = pairs["start_date"].notna() & pairs["end_date"].notna()
    outside_row = known & ((pairs["end_date"] < start) | (pairs["start_date"] > end))
    grouped = pd.DataFrame({"known": known, "outside": outside_row}).groupby(level=0).sum()
    all_outside = (grouped["known"] > 0) & (grouped["outside"] == grouped["known"])
    return all_outside.reindex(sections.index, fill_value=False).astype(bool)
