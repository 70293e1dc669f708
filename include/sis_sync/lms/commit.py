"""Commit: apply a run's selected actions to the LMS in one transaction.

The transaction's first write claims the run (``runs.claim_commit``): only an approved run
that holds the portal's lock, with no newer committed sync of the portal, is applied, and of
two commits of one run exactly one wins. In that one transaction: the LMS rows (adds,
updates, reactivations, archives), each action's applied status, the warnings of skipped
actions, the run's status and its checkpoint. A failure anywhere rolls all of it back. A
retried commit of a committed run changes nothing; any other refused commit is recorded.
Nothing is ever deleted: archiving sets ``archived_at``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from include.sis_sync import model
from include.sis_sync.diff import ACTIONS, ADD, ARCHIVE, REACTIVATE, UPDATE, label_counts
from include.sis_sync.lms import schema
from include.sis_sync.lms.bulk import (
    insert_frame,
    placeholder,
    quote_name,
    read_frame,
    temp_table,
    update_from,
)
from include.sis_sync.lms.counts import count_lms
from include.sis_sync.lms.db import write_transaction
from include.sis_sync.lms.schema import lms_table_name
from include.sis_sync.rundata import LazyFrames
from include.sis_sync.runs import (
    COMMITTED,
    RunNotCommittable,
    claim_commit,
    commit_refusals,
    get_run,
    now,
    refuse_commit,
    update_run,
)
from include.sis_sync.search import SEARCH_FIELDS, search_text

# entity -> (reference column, referenced entity) that must exist for the row to be applied
DEPENDENCIES: dict[str, tuple[tuple[str, str], ...]] = {
    "user_organizations": (("user_key", "users"), ("organization_key", "organizations")),
    "enrollments": (("section_key", "sections"), ("user_key", "users")),
}


SKIPPED_COLUMNS = ["id", "entity", "sis_key", "kind", "why"]
BULK_LOAD_ROWS = 50_000  # adds from which a commit rebuilds the browse indexes once
SNAPSHOT_ROWS = 500_000  # snapshot rows read at once: a larger entity is applied in parts


@dataclass
class CommitResult:
    """What a commit did, per entity and action."""

    applied: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: int = 0
    not_selected: int = 0
    already_committed: bool = False


@dataclass(frozen=True)
class CommitTarget:
    """Whose LMS rows a commit may touch, and how new organizations are named."""

    portal_id: str
    provider: str
    slugs: Mapping[str, str] = field(default_factory=dict)  # organization sis_key -> slug


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "organization"


def organization_slugs(
    rows: pd.DataFrame, taken: set[str], mapping: Mapping[str, str]
) -> pd.Series:
    """Slugs for new organizations: the mapping's, else the name's; unique within the portal."""
    slugs = []
    for key, name in zip(rows["sis_key"], rows["name"].fillna(""), strict=True):
        slug = mapping.get(key) or slugify(str(name))
        if slug in taken:
            slug = f"{slug}-{slugify(str(key))}"
        taken.add(slug)
        slugs.append(slug)
    return pd.Series(slugs, index=rows.index, dtype="string")


def commit_run(
    engine: sa.Engine,
    run_id: int,
    frames: Mapping[str, pd.DataFrame],
    target: CommitTarget,
    *,
    checkpoint: str | None,
) -> CommitResult:
    """Apply the run's selected actions; all or nothing.

    Entities are applied one at a time in dependency order, so only one entity's actions and
    rows are in memory at once, and a dependency check sees its parents as this commit leaves
    them.
    """
    with write_transaction(engine) as conn:
        if not claim_commit(conn, run_id, target.portal_id):
            if get_run(conn, run_id)["status"] == COMMITTED:
                return CommitResult(already_committed=True)
            refusals = commit_refusals(conn, run_id, target.portal_id)
        else:
            refusals = []
            result = _apply_run(conn, run_id, frames, target, checkpoint)
    if refusals:
        raise RunNotCommittable(f"sync {run_id}: {refuse_commit(engine, run_id, refusals)}")
    return result


def _apply_run(
    conn: sa.Connection,
    run_id: int,
    frames: Mapping[str, pd.DataFrame],
    target: CommitTarget,
    checkpoint: str | None,
) -> CommitResult:
    """The LMS changes, action statuses and checkpoint of a claimed run."""
    run = get_run(conn, run_id)
    stamp = now()
    result = CommitResult()
    skipped_parts = []
    unticked: dict[str, pd.Series] = {}  # parent entity -> keys whose archive is unticked
    counted: dict[str, dict[str, dict[str, int]]] = {}
    for entity in model.ENTITIES:
        actions = _load_actions(conn, run_id, entity.name)
        result.not_selected += int((~actions["selected"]).sum())
        unticked[entity.name] = actions.loc[
            ~actions["selected"] & (actions["action"] == ARCHIVE), "sis_key"
        ]
        selected = actions[actions["selected"]]
        kept = _kept_by_unticked_parents(selected, unticked)
        applied, unmet = _commit_entity(conn, entity, selected, kept, frames, target, run_id, stamp)
        skipped = pd.concat([kept, unmet], ignore_index=True)
        _count_statuses(counted, actions, selected[~selected["id"].isin(skipped["id"])], skipped)
        result.applied[entity.name] = applied
        skipped_parts.append(skipped)
    skipped = pd.concat(skipped_parts, ignore_index=True)
    _record_statuses(conn, run_id, skipped)
    count_lms(conn, target.portal_id, run_id)
    result.skipped = len(skipped)
    update_run(
        conn,
        run_id,
        committed_at=stamp,
        checkpoint=checkpoint if not run["schools"] else None,
        action_counts={**json.loads(run["action_counts"] or "{}"), **counted},
    )
    return result


def _commit_entity(
    conn: sa.Connection,
    entity: model.Entity,
    selected: pd.DataFrame,
    kept: pd.DataFrame,
    frames: Mapping[str, pd.DataFrame],
    target: CommitTarget,
    run_id: int,
    stamp: datetime,
) -> tuple[dict[str, int], pd.DataFrame]:
    """Apply one entity's selected actions but those ``kept`` (their parents' archive was
    unticked), part by part; returns the counts applied and the actions skipped because a
    record they reference is not active."""
    parents = _active_parents(conn, entity.name, selected, target)
    applied = dict.fromkeys(ACTIONS, 0)
    unmet_parts = [pd.DataFrame(columns=SKIPPED_COLUMNS)]
    adding = int((selected["action"] == ADD).sum())
    with _browse_indexes_built_after(conn, entity, adding):
        for part, frame in _with_snapshot_rows(frames, entity, selected):
            unmet = _unmet_dependencies(entity.name, part, frame, parents)
            unmet_parts.append(unmet)
            todo = part[~part["id"].isin(kept["id"]) & ~part["id"].isin(unmet["id"])]
            for action, count in _apply_entity(
                conn, entity, todo, frame, target, run_id, stamp
            ).items():
                applied[action] += count
    return applied, pd.concat(unmet_parts, ignore_index=True)


def _count_statuses(
    counted: dict[str, dict[str, dict[str, int]]],
    actions: pd.DataFrame,
    applied: pd.DataFrame,
    skipped: pd.DataFrame,
) -> None:
    """Add one entity's actions to the run's counts per status (for its report)."""
    parts = {
        "applied": applied,
        "not_selected": actions[~actions["selected"]],
        "skipped": actions[actions["id"].isin(skipped["id"])],
    }
    for status, part in parts.items():
        for label, per_action in label_counts(part).items():
            counted.setdefault(status, {})[label] = per_action


def _with_snapshot_rows(
    frames: Mapping[str, pd.DataFrame], entity: model.Entity, selected: pd.DataFrame
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame | None]]:
    """The selected actions in parts, each with the snapshot rows it may need.

    A large entity's snapshot (6.25 million enrollments) is read part by part, and each part
    comes with the actions on its keys: the commit never holds the whole frame. Archives need
    no row and come first, with None; so does everything when the run has no frame of the
    entity.
    """
    needs_row = (selected["action"] != ARCHIVE).to_numpy()
    if not needs_row.any() or entity.name not in frames:
        yield selected, None
        return
    if not isinstance(frames, LazyFrames) or frames.rows(entity.name) <= SNAPSHOT_ROWS:
        yield selected, frames[entity.name]
        return
    if not needs_row.all():
        yield selected[~needs_row], None
    rest = selected[needs_row]
    ends, rows = _snapshot_rows_of(frames, entity.name, rest["sis_key"])
    if (rows < 0).any():  # the diff adds and updates only keys of the snapshot
        missing = rest.loc[rows < 0, "sis_key"]
        raise RuntimeError(
            f"{len(missing)} {entity.name} actions name keys the run's snapshot does not "
            f"hold, first {missing.iloc[0]}: nothing was applied"
        )
    part_of = np.searchsorted(ends, rows, side="right")
    order = np.argsort(part_of, kind="stable")
    bounds = np.searchsorted(part_of[order], np.arange(len(ends) + 1))
    for number, part in enumerate(frames.parts(entity.name, SNAPSHOT_ROWS)):
        positions = order[bounds[number] : bounds[number + 1]]
        if len(positions):
            yield rest.iloc[positions], part


def _snapshot_rows_of(
    frames: LazyFrames, entity: str, keys: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """The row of the entity's snapshot each key is on (-1: none), and where each part of
    ``SNAPSHOT_ROWS`` ends: the parts are read again with the same boundaries."""
    parts = [p["sis_key"] for p in frames.parts(entity, SNAPSHOT_ROWS, ["sis_key"])]
    ends = np.cumsum([len(p) for p in parts])
    snapshot = pa.chunked_array([model.arrow_keys(p) for p in parts]).combine_chunks()
    return ends, model.key_positions(keys, snapshot)


def _load_actions(conn: sa.Connection, run_id: int, entity: str) -> pd.DataFrame:
    ph = placeholder(conn)
    frame = read_frame(
        conn,
        "SELECT id, action, sis_key, lms_id, kind, selected, parent_user_key, "
        "parent_section_key "
        "FROM sis_sync_actions "
        f"WHERE run_id = {ph} AND entity = {ph}",
        (run_id, entity),
    )
    frame["id"] = frame["id"].astype("int64")
    frame["lms_id"] = frame["lms_id"].astype("Int64")
    frame["selected"] = frame["selected"].astype(bool)
    for column in ("sis_key", "kind", "parent_user_key", "parent_section_key"):
        frame[column] = frame[column].astype("string")
    frame["entity"] = entity
    return frame


def _active_keys(conn: sa.Connection, entity: str, target: CommitTarget) -> pd.Series:
    ph = placeholder(conn)
    frame = read_frame(
        conn,
        f"SELECT sis_key FROM {quote_name(conn, lms_table_name(entity))} "
        f"WHERE portal_id = {ph} AND sis_provider = {ph} AND archived_at IS NULL",
        (target.portal_id, target.provider),
    )
    return frame["sis_key"].astype("string")


def _active_parents(
    conn: sa.Connection, entity: str, selected: pd.DataFrame, target: CommitTarget
) -> dict[str, pd.Series]:
    """The active keys of each entity this one references, as this commit leaves them (its
    parents are applied first); read once per entity, not once per part."""
    if not selected["action"].isin([ADD, REACTIVATE, UPDATE]).any():
        return {}
    return {
        parent: _active_keys(conn, parent, target) for _, parent in DEPENDENCIES.get(entity, ())
    }


def _unmet_dependencies(
    entity: str,
    selected: pd.DataFrame,
    frame: pd.DataFrame | None,
    parents: Mapping[str, pd.Series],
) -> pd.DataFrame:
    """Selected actions whose referenced record is not active once its parents are applied
    (an enrollment into a section whose add was unticked)."""
    references = DEPENDENCIES.get(entity, ())
    mine = selected[selected["action"].isin([ADD, REACTIVATE, UPDATE])]
    if not references or mine.empty or frame is None:
        return pd.DataFrame(columns=SKIPPED_COLUMNS)
    columns = [c for c, _ in references]
    rows = mine.merge(frame[["sis_key", *columns]], on="sis_key", how="left")
    missing = pd.Series(False, index=rows.index)
    reasons = pd.Series("", index=rows.index, dtype="string")
    for column, parent in references:
        gone = rows[column].notna() & ~model.key_in(rows[column], parents[parent])
        reasons = reasons.mask(gone & ~missing, f"its {parent[:-1]} " + rows[column].fillna(""))
        missing |= gone
    skipped = rows.loc[missing, ["id", "entity", "sis_key"]].copy()
    skipped["kind"] = "dependency_not_selected"
    skipped["why"] = reasons[missing] + " is not active after this commit (action unticked)"
    return skipped


def _kept_by_unticked_parents(
    selected: pd.DataFrame, unticked: Mapping[str, pd.Series]
) -> pd.DataFrame:
    """Selected archives of memberships and enrollments whose every archived parent (the user,
    the section) was unticked: the cascade follows its cause, so the child stays too."""
    archives = selected[selected["action"] == ARCHIVE]
    links = [("parent_user_key", "users"), ("parent_section_key", "sections")]
    has_parent = archives["parent_user_key"].notna() | archives["parent_section_key"].notna()
    if not has_parent.any():
        return pd.DataFrame(columns=SKIPPED_COLUMNS)
    every_parent_kept = has_parent.copy()
    reasons = pd.Series("", index=archives.index, dtype="string")
    for column, parent in links:
        linked = archives[column].notna()
        kept = linked & model.key_in(archives[column], unticked.get(parent, pd.Series()))
        every_parent_kept &= ~linked | kept
        named = f"the archive of its {parent[:-1]} " + archives[column].fillna("")
        reasons = reasons.mask(kept, reasons.where(reasons == "", reasons + " and ") + named)
    rows = archives.loc[every_parent_kept, ["id", "entity", "sis_key"]].copy()
    rows["kind"] = "parent_archive_unticked"
    rows["why"] = reasons[every_parent_kept] + " was unticked, so it stays active"
    return rows


def _apply_entity(
    conn: sa.Connection,
    entity: model.Entity,
    todo: pd.DataFrame,
    frame: pd.DataFrame | None,
    target: CommitTarget,
    run_id: int,
    stamp: datetime,
) -> dict[str, int]:
    counts = {a: int((todo["action"] == a).sum()) for a in ACTIONS}
    if todo.empty:
        return counts
    table = lms_table_name(entity.name)
    adds = todo[todo["action"] == ADD]
    if len(adds):
        rows = frame.loc[
            model.key_in(frame["sis_key"], adds["sis_key"]), ["sis_key", *entity.fields]
        ]
        if entity is model.ORGANIZATIONS:
            rows = rows.assign(
                slug=organization_slugs(rows, _taken_slugs(conn, target), target.slugs)
            )
        insert_frame(
            conn,
            table,
            _with_search_text(entity, rows),
            {
                "portal_id": target.portal_id,
                "sis_provider": target.provider,
                "created_at": stamp,
                "updated_at": stamp,
                "last_sync_run_id": run_id,
            },
        )
    changes = todo[todo["action"].isin([UPDATE, REACTIVATE])]
    if len(changes):
        rows = changes[["lms_id", "sis_key"]].merge(
            frame[["sis_key", *entity.fields]], on="sis_key"
        )
        rows = _with_search_text(entity, rows).rename(columns={"lms_id": "id"})
        columns = [c for c in rows.columns if c not in ("id", "sis_key")]
        source = temp_table(
            conn,
            "sis_sync_changes",
            [("id", "INTEGER"), *((c, "TEXT") for c in columns)],
            rows,
        )
        update_from(
            conn,
            table,
            source,
            columns,
            {"archived_at": None, "updated_at": stamp, "last_sync_run_id": run_id},
        )
    archives = todo[todo["action"] == ARCHIVE]
    if len(archives):
        ids = archives[["lms_id"]].rename(columns={"lms_id": "id"})
        source = temp_table(conn, "sis_sync_archives", [("id", "INTEGER")], ids)
        update_from(
            conn,
            table,
            source,
            [],
            {"archived_at": stamp, "updated_at": stamp, "last_sync_run_id": run_id},
        )
    return counts


@contextlib.contextmanager
def _browse_indexes_built_after(
    conn: sa.Connection, entity: model.Entity, adding: int
) -> Iterator[None]:
    """A bulk load (an initial sync, or a table growing by more than a quarter) inserts
    without the browse pages' indexes and builds them once after, in the same transaction:
    a sorted build costs far less than millions of scattered index inserts. A few adds go
    through the indexes as they are."""
    table = schema.LMS_TABLES[entity.name]
    indexes = [ix for ix in table.indexes if ix.name in schema.BROWSE_INDEXES]
    if not indexes or adding < BULK_LOAD_ROWS:
        yield
        return
    largest = conn.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0
    if adding < largest / 4:  # ids are never reused: rows are archived, never deleted
        yield
        return
    for index in indexes:
        index.drop(conn)
    yield
    for index in indexes:
        index.create(conn)


def _with_search_text(entity: model.Entity, rows: pd.DataFrame) -> pd.DataFrame:
    """People and classes carry their folded search text (search.py) into the LMS."""
    if entity.name not in SEARCH_FIELDS:
        return rows
    return rows.assign(search_text=search_text(entity.name, rows))


def _taken_slugs(conn: sa.Connection, target: CommitTarget) -> set[str]:
    ph = placeholder(conn)
    frame = read_frame(
        conn, f"SELECT slug FROM lms_organizations WHERE portal_id = {ph}", (target.portal_id,)
    )
    return set(frame["slug"].astype(str))


def _record_statuses(conn: sa.Connection, run_id: int, skipped: pd.DataFrame) -> None:
    ph = placeholder(conn)
    conn.exec_driver_sql(
        "UPDATE sis_sync_actions SET status = CASE WHEN selected THEN 'applied' "
        f"ELSE 'not_selected' END WHERE run_id = {ph}",
        (run_id,),
    )
    if skipped.empty:
        return
    ids = skipped[["id"]].astype("int64")
    source = temp_table(conn, "sis_sync_skipped", [("id", "INTEGER")], ids)
    update_from(conn, "sis_sync_actions", source, [], {"status": "skipped"})
    warnings = pd.DataFrame(
        {
            "run_id": run_id,
            "action_id": skipped["id"].astype("int64"),
            "entity": skipped["entity"],
            "sis_key": skipped["sis_key"],
            "kind": skipped["kind"],
            "message": skipped["entity"]
            + " "
            + skipped["sis_key"]
            + ": skipped because "
            + skipped["why"].astype(str),
        }
    )
    insert_frame(conn, "sis_sync_warnings", warnings)


def lms_snapshot(
    engine: sa.Engine, portal_id: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every LMS row, for tests and checks that compare the store row by row."""
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for entity in model.ENTITIES:
            table = sa.table(lms_table_name(entity.name))
            query = sa.text(f"SELECT * FROM {lms_table_name(entity.name)} ORDER BY id")
            rows = [dict(r) for r in conn.execute(query).mappings()]
            if portal_id is not None:
                rows = [r for r in rows if r["portal_id"] == portal_id]
            out[table.name] = rows
    return out
