"""The diff: a canonical snapshot against the portal's current LMS rows, as actions.

One action per record: ``add``, ``update``, ``archive`` or ``reactivate`` (a record that comes
back under the same ``sis_key`` keeps its LMS id). Everything here is set-based pandas: merges
and masks over whole frames, never a lookup per row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from include.sis_sync import model
from include.sis_sync.transform import Scope, in_scope

ACTION_COLUMNS = [
    "entity",
    "action",
    "sis_key",
    "lms_id",
    "school_key",
    "kind",
    "reason",
    "changes",
    "label",
    "parent_user_key",
    "parent_section_key",
]
# Children whose archive an archived parent explains: child -> ((reference, parent entity), ...)
CASCADES: dict[str, tuple[tuple[str, str], ...]] = {
    "user_organizations": (("user_key", "users"),),
    "enrollments": (("user_key", "users"), ("section_key", "sections")),
}
WARNING_COLUMNS = ["entity", "sis_key", "kind", "message"]

ADD, UPDATE, ARCHIVE, REACTIVATE = "add", "update", "archive", "reactivate"
ACTIONS = (ADD, UPDATE, ARCHIVE, REACTIVATE)


@dataclass
class DiffInput:
    """What the diff needs besides the snapshot: modes, LMS rows and the run's scope."""

    modes: Mapping[str, str]  # entity -> bulk | delta | absent
    current: Mapping[str, pd.DataFrame]  # entity -> LMS rows (id, sis_key, active, fields)
    scope: Scope
    synced_roles: frozenset[str] = frozenset(model.USER_ROLES)
    school_year: tuple[str, str] | None = None
    # In a delta, the children of each listed parent are complete for that parent: a user row
    # lists all its organizations (always), a section event from a provider all its members.
    complete_per_parent: Mapping[str, tuple[str, str]] = field(
        default_factory=lambda: {"user_organizations": ("user_key", "users")}
    )
    # entity -> keys of rows the feed carried but validation left out (a bad reference):
    # not absent, so never archived for missing.
    left_out: Mapping[str, pd.Series] = field(default_factory=dict)

    def carried(self, entity: model.Entity, snapshot: pd.DataFrame) -> pd.Series:
        """Keys the feed carried for ``entity``: its rows, and the rows left out."""
        held = self.left_out.get(entity.name)
        keys = snapshot["sis_key"]
        return keys if held is None or held.empty else pd.concat([keys, held])


@dataclass
class ChangeSet:
    """The staged actions of one run, and what the diff noticed on the way."""

    actions: pd.DataFrame
    warnings: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=WARNING_COLUMNS))
    # sections whose terms all fall outside the school year: not added or updated
    outside_school_year: pd.Series = field(default_factory=lambda: pd.Series(dtype="string"))

    def counts(self) -> dict[str, dict[str, int]]:
        """``{entity: {action: n}}`` for every action kind, zeros included."""
        return entity_counts(self.actions)


def entity_counts(actions: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``{entity: {action: n}}`` of an actions frame for every action kind, zeros included."""
    table = actions.groupby(["entity", "action"]).size()
    return {e.name: {a: int(table.get((e.name, a), 0)) for a in ACTIONS} for e in model.ENTITIES}


def add_counts(
    total: dict[str, dict[str, int]], more: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    """``total`` plus ``more``, key by key (counts of change sets staged in parts)."""
    for label, per_action in more.items():
        mine = total.setdefault(label, dict.fromkeys(ACTIONS, 0))
        for action, n in per_action.items():
            mine[action] = mine.get(action, 0) + n
    return total


def count_label(entity: str, kind: str | None) -> str:
    """How reports count actions: users per primary role, other entities as they are."""
    return f"users ({kind})" if entity == "users" and kind else entity


def label_counts(actions: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``{label: {action: n}}`` (see :func:`count_label`) of an actions frame, in one pass."""
    if actions.empty:
        return {}
    kind = actions["kind"].where(actions["entity"] == "users")
    table = (
        pd.DataFrame({"entity": actions["entity"], "kind": kind, "action": actions["action"]})
        .value_counts(dropna=False)
        .items()
    )
    counts: dict[str, dict[str, int]] = {}
    for (entity, kind_, action), n in table:
        label = count_label(entity, None if pd.isna(kind_) else kind_)
        per_action = counts.setdefault(label, dict.fromkeys(ACTIONS, 0))
        per_action[action] += int(n)
    return counts


def _differs(before: pd.Series, after: pd.Series) -> pd.Series:
    """Null-safe inequality: two nulls are equal, a null and a value differ."""
    before = before.astype("string")
    after = after.astype("string")
    unequal = (before != after).fillna(True).astype(bool)
    both_null = before.isna().to_numpy() & after.isna().to_numpy()
    return unequal & ~both_null


def _changes_json(merged: pd.DataFrame, fields: tuple[str, ...], rows: pd.Series) -> pd.Series:
    """``{field: [before, after]}`` as JSON for the rows that changed, null elsewhere."""
    changed = merged[rows]
    masks = {f: _differs(changed[f"{f}_lms"], changed[f]) for f in fields}
    out = []
    for position in range(len(changed)):
        row = {
            f: [_plain(changed[f"{f}_lms"].iat[position]), _plain(changed[f].iat[position])]
            for f in fields
            if masks[f].iat[position]
        }
        out.append(json.dumps(row, sort_keys=True) if row else None)
    result = pd.Series(pd.NA, index=merged.index, dtype="string")
    result[rows] = pd.Series(out, index=changed.index, dtype="string")
    return result


def _plain(value: object) -> str | None:
    return None if value is None or value is pd.NA or (isinstance(value, float)) else str(value)


def school_of(frame: pd.DataFrame, entity: model.Entity) -> pd.Series:
    """The organization an action counts against in per-school guards."""
    if entity is model.ORGANIZATIONS:
        return frame["sis_key"]
    if entity is model.USERS:
        return frame["organizations"].str.split(",").str[0]
    if "organization_key" in frame.columns:
        return frame["organization_key"]
    return pd.Series(pd.NA, index=frame.index, dtype="string")


def kind_of(frame: pd.DataFrame, entity: model.Entity) -> pd.Series:
    if entity is model.USERS:
        return frame["role"]
    if entity is model.ORGANIZATIONS:
        return frame["kind"]
    return pd.Series(pd.NA, index=frame.index, dtype="string")


def label_of(frame: pd.DataFrame, entity: model.Entity) -> pd.Series:
    """What an admin searches and reads an action by: a person's or a record's name.
    Memberships and enrollments have none of their own (their list shows their keys)."""
    if entity is model.USERS:
        given = frame["given_name"].astype("string").fillna("")
        family = frame["family_name"].astype("string").fillna("")
        return (given + " " + family).str.strip().replace("", pd.NA)
    for name in ("name", "title"):
        if name in entity.fields:
            return frame[name].astype("string")
    return pd.Series(pd.NA, index=frame.index, dtype="string")


def _frame(entity: model.Entity, action: str, rows: pd.DataFrame, reason: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity": entity.name,
            "action": action,
            "sis_key": rows["sis_key"].astype("string"),
            "lms_id": rows["id"].astype("Int64") if "id" in rows else pd.NA,
            "school_key": school_of(rows, entity).astype("string"),
            "kind": kind_of(rows, entity).astype("string"),
            "reason": reason,
            "changes": rows.get("changes", pd.NA),
            "label": label_of(rows, entity),
            "parent_user_key": pd.Series(pd.NA, index=rows.index, dtype="string"),
            "parent_section_key": pd.Series(pd.NA, index=rows.index, dtype="string"),
        },
        columns=ACTION_COLUMNS,
    )


def _archivable(current: pd.DataFrame, entity: model.Entity, diff_in: DiffInput) -> pd.Series:
    """Active LMS rows this run may archive when they are missing from a complete feed."""
    scope = diff_in.scope
    mask = current["active"].astype(bool)
    if entity is model.USERS:
        mask &= current["role"].isin(list(diff_in.synced_roles)) | current["role"].isna()
    if scope.portal_wide:
        return mask
    if entity is model.USERS:
        memberships = diff_in.current.get(model.USER_ORGANIZATIONS.name)
        return mask & _only_within(current, memberships, scope.archivable or frozenset())
    if entity is model.TERMS or (
        entity is model.COURSES and not scope.archivable  # nothing school-level selected
    ):
        return pd.Series(False, index=current.index)
    return mask & in_scope(current, entity, scope.archivable)


def _only_within(
    users: pd.DataFrame, memberships: pd.DataFrame | None, orgs: frozenset[str]
) -> pd.Series:
    """Users whose active memberships all lie within ``orgs`` (and who have at least one)."""
    if memberships is None or memberships.empty:
        return pd.Series(False, index=users.index)
    active = memberships[memberships["active"].astype(bool)]
    inside = active["organization_key"].isin(list(orgs))
    per_user = pd.DataFrame({"user": active["user_key"], "inside": inside}).groupby("user")
    all_inside = per_user["inside"].all()
    return users["sis_key"].map(all_inside).fillna(False).astype(bool)


def diff_entity(entity: model.Entity, snapshot: pd.DataFrame, diff_in: DiffInput) -> pd.DataFrame:
    """The actions of one entity."""
    mode = diff_in.modes.get(entity.name, "absent")
    current = diff_in.current.get(entity.name)
    if current is None:
        current = pd.DataFrame(columns=["id", "sis_key", "active", *entity.fields])
    is_live = snapshot["sis_status"] == model.ACTIVE
    live = snapshot if is_live.all() else snapshot[is_live]
    # Only rows the LMS already has need the field comparison: merge just those.
    known = model.key_in(live["sis_key"], current["sis_key"])
    lms = current.rename(columns={f: f"{f}_lms" for f in entity.fields})
    merged = live[known].merge(lms, on="sis_key", how="inner")
    active = merged["active"].astype(bool)
    changed = pd.Series(False, index=merged.index)
    for f in entity.fields:
        changed |= _differs(merged[f"{f}_lms"], merged[f])
    merged["changes"] = _changes_json(merged, entity.fields, changed)
    parts = [
        _frame(entity, ADD, live[~known], "new"),
        _frame(entity, REACTIVATE, merged[~active], "returned"),
        _frame(entity, UPDATE, merged[active & changed], "changed"),
    ]
    if mode == "bulk":
        carried = diff_in.carried(entity, live)
        missing = ~model.key_in(current["sis_key"], carried)
        gone = _archivable(current, entity, diff_in) & missing
        parts.append(_frame(entity, ARCHIVE, current[gone], "absent from feed"))
    elif mode == "delta":
        deleted = snapshot.loc[snapshot["sis_status"] != model.ACTIVE, "sis_key"]
        gone = current["active"].astype(bool) & model.key_in(current["sis_key"], deleted)
        parts.append(_frame(entity, ARCHIVE, current[gone], "deleted"))
    return _concat(parts)


def _delta_children(
    entity: model.Entity,
    snapshot: pd.DataFrame,
    listed: pd.Series,
    column: str,
    diff_in: DiffInput,
) -> pd.DataFrame:
    """In a delta, archive the children a listed parent no longer lists (a membership a user
    row dropped, a student a section event no longer carries)."""
    current = diff_in.current.get(entity.name)
    if current is None or current.empty:
        return pd.DataFrame(columns=ACTION_COLUMNS)
    parent = column.removesuffix("_key")
    gone = (
        current["active"].astype(bool)
        & model.key_in(current[column], listed)
        & ~model.key_in(current["sis_key"], diff_in.carried(entity, snapshot))
        & in_scope(current, entity, diff_in.scope.archivable)
    )
    return _frame(entity, ARCHIVE, current[gone], f"no longer listed by its {parent}")


def _cascade(
    child: model.Entity,
    actions: pd.DataFrame,
    current: pd.DataFrame | None,
    archived: pd.Series,
    parent: str,
    via: str,
) -> pd.DataFrame:
    """Archive the active children (enrollments, memberships) of archived parents."""
    if current is None or current.empty or archived.empty:
        return pd.DataFrame(columns=ACTION_COLUMNS)
    already = actions.loc[actions["action"] == ARCHIVE, "sis_key"]
    hit = (
        current["active"].astype(bool)
        & model.key_in(current[via], archived)
        & ~model.key_in(current["sis_key"], already)
    )
    return _frame(child, ARCHIVE, current[hit], f"{parent[:-1]} archived")


@dataclass
class Carried:
    """What the diff of earlier entities hands to later ones, so that each entity (or each
    bucket of one) is diffed on its own: the user and section keys archived so far (their
    children cascade), the parents a delta lists, terms and the sections outside the school
    year, and the sections kept out for that reason."""

    archived: dict[str, list[pd.Series]] = field(
        default_factory=lambda: {"users": [], "sections": []}
    )
    listed: dict[str, list[pd.Series]] = field(default_factory=dict)
    terms: pd.DataFrame | None = None
    outside: pd.Series | None = None  # section keys entirely outside the school year
    kept_out: list[pd.Series] = field(default_factory=list)

    def archived_keys(self, parent: str) -> pd.Series:
        return _keys(self.archived[parent])

    def note(self, entity: model.Entity, snapshot: pd.DataFrame, actions: pd.DataFrame) -> None:
        """Remember what later entities need from this part's snapshot and actions."""
        if entity.name in self.archived:
            self.archived[entity.name].append(actions.loc[actions["action"] == ARCHIVE, "sis_key"])
        if entity.name in self.listed:
            live = snapshot.loc[snapshot["sis_status"] == model.ACTIVE, "sis_key"]
            self.listed[entity.name].append(live)
        if entity is model.TERMS:
            self.terms = snapshot if self.terms is None else pd.concat([self.terms, snapshot])


def _keys(parts: list[pd.Series]) -> pd.Series:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.Series(dtype="string")
    return pd.concat(parts, ignore_index=True).astype("string")


def carried_for(diff_in: DiffInput) -> Carried:
    """A fresh hand-over for one diff: it lists the parents whose children a delta
    completes (a user's memberships, a section event's members)."""
    carried = Carried()
    for _, parent in diff_in.complete_per_parent.values():
        carried.listed[parent] = []
    return carried


def diff_part(
    entity: model.Entity, snapshot: pd.DataFrame | None, diff_in: DiffInput, carried: Carried
) -> pd.DataFrame:
    """The actions of one entity, or of one key bucket of it, with its cascades, parent links
    and school-year window: ``diff_in.current`` holds the LMS rows of the same keys (and,
    in a run over some schools, every user's memberships). An entity the feed does not carry
    (``snapshot`` None or its mode absent) still gets its archived parents' cascades.
    Updates ``carried``."""
    mode = diff_in.modes.get(entity.name, "absent")
    carries = snapshot is not None and mode != "absent"
    if snapshot is None:
        snapshot = model.empty_frame(entity)
    if carries:
        actions = diff_entity(entity, snapshot, diff_in)
    else:
        actions = pd.DataFrame(columns=ACTION_COLUMNS)
    parent = diff_in.complete_per_parent.get(entity.name)
    if carries and parent and mode == "delta":
        column, parent_entity = parent
        listed = _keys(carried.listed.get(parent_entity, []))
        actions = _concat([actions, _delta_children(entity, snapshot, listed, column, diff_in)])
    if entity.name in CASCADES:
        actions = _cascaded(entity, actions, diff_in.current.get(entity.name), carried)
    if diff_in.school_year:
        actions = _apply_school_year(entity, actions, snapshot, diff_in.school_year, carried)
    carried.note(entity, snapshot, actions)
    return actions.reset_index(drop=True)


def _cascaded(
    entity: model.Entity, actions: pd.DataFrame, current: pd.DataFrame | None, carried: Carried
) -> pd.DataFrame:
    """A child entity's actions plus the archives its archived parents cascade, each archive
    linked to the parents archived beside it."""
    cascades = [
        _cascade(entity, actions, current, carried.archived_keys(parent), parent, via)
        for via, parent in CASCADES[entity.name]
    ]
    # an enrollment of an archived user in an archived section cascades twice: once is enough
    cascaded = _concat(cascades).drop_duplicates(["entity", "sis_key"])
    actions = _concat([actions, cascaded]).reset_index(drop=True)
    return _link_parents(entity, actions, current, carried)


def diff_snapshot(frames: Mapping[str, pd.DataFrame], diff_in: DiffInput) -> ChangeSet:
    """Every entity's actions, with cascades and the school-year window applied, from
    frames held in memory (the diff stage streams the same steps: ``diff_parts``)."""
    carried = carried_for(diff_in)
    parts = [diff_part(e, frames.get(e.name), diff_in, carried) for e in model.ENTITIES]
    actions = _concat(parts).reset_index(drop=True)
    return ChangeSet(actions, outside_school_year=kept_out(carried))


def kept_out(carried: Carried) -> pd.Series:
    """The sections the school year kept from being added or updated."""
    return _keys(carried.kept_out).reset_index(drop=True)


def _link_parents(
    entity: model.Entity, actions: pd.DataFrame, current: pd.DataFrame | None, carried: Carried
) -> pd.DataFrame:
    """Name, on each membership and enrollment archive, the user and section archived in
    the same change set that explain it: cascaded, or absent from a full feed beside them.
    Commit keeps the child when the admin unticks every one of those parents' archives."""
    links = CASCADES[entity.name]
    rows = actions["action"] == ARCHIVE
    if current is None or current.empty or not rows.any():
        return actions
    columns = [column for column, _ in links]
    children = actions.loc[rows, ["sis_key"]]
    # a few thousand archives against millions of LMS rows: pick those rows first
    mine = current.loc[model.key_in(current["sis_key"], children["sis_key"]), ["sis_key", *columns]]
    lms = children.merge(mine, on="sis_key", how="left")
    for column, parent in links:
        parent_key = lms[column].where(model.key_in(lms[column], carried.archived_keys(parent)))
        target = f"parent_{parent[:-1]}_key"
        actions[target] = actions[target].astype("string")
        actions.loc[rows, target] = parent_key.astype("string").to_numpy()
    return actions


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=ACTION_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def _apply_school_year(
    entity: model.Entity,
    actions: pd.DataFrame,
    snapshot: pd.DataFrame,
    window: tuple[str, str],
    carried: Carried,
) -> pd.DataFrame:
    """Drop adds, updates and reactivations of sections entirely outside the school year,
    and the enrollment adds into them; archives are left as they are."""
    from include.sis_sync.transform import outside_school_year

    if entity is model.SECTIONS and carried.terms is not None:
        outside = snapshot.loc[outside_school_year(snapshot, carried.terms, *window), "sis_key"]
        carried.outside = _keys([k for k in (carried.outside, outside) if k is not None])
        dropped = (actions["action"] != ARCHIVE) & model.key_in(actions["sis_key"], outside)
        carried.kept_out.append(actions.loc[dropped, "sis_key"].astype("string"))
        return actions[~dropped]
    if entity is model.ENROLLMENTS and carried.outside is not None and len(carried.outside):
        into = snapshot.loc[model.key_in(snapshot["section_key"], carried.outside), "sis_key"]
        dropped = (actions["action"] != ARCHIVE) & model.key_in(actions["sis_key"], into)
        return actions[~dropped]
    return actions
