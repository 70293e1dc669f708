"""Staging: a run's staged actions and warnings, and what the committed history says.

It lives in the LMS database beside the runs (``runs.py``) so that a commit (LMS rows, action
statuses, run status, checkpoint) is one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from include.sis_sync.diff import ACTIONS, add_counts, entity_counts, label_counts
from include.sis_sync.lms import schema
from include.sis_sync.lms.bulk import insert_frame
from include.sis_sync.lms.db import write_transaction
from include.sis_sync.runs import AWAITING_APPROVAL, PREPARING, STAGED, RunClosed, move, now
from include.sis_sync.validation import Finding

OPTIONAL_COLUMNS = ("label", "parent_user_key", "parent_section_key")
# A selection may change until the change set is decided.
SELECTABLE = (*PREPARING, AWAITING_APPROVAL)


def last_committed(engine: sa.Engine, portal_id: str) -> dict[str, Any]:
    """What the portal's committed history says: newest drop date, checkpoint, last full sync."""
    runs = schema.runs
    committed = (runs.c.portal_id == portal_id) & (runs.c.status == "committed")
    with engine.connect() as conn:
        newest_drop = conn.execute(
            sa.select(sa.func.max(runs.c.source_date)).where(committed)
        ).scalar()
        checkpoint_row = conn.execute(
            sa.select(runs.c.checkpoint, runs.c.committed_at)
            .where(committed, runs.c.schools.is_(None), runs.c.checkpoint.is_not(None))
            .order_by(runs.c.committed_at.desc(), runs.c.id.desc())
            .limit(1)
        ).first()
        last_full = conn.execute(
            sa.select(sa.func.max(runs.c.committed_at)).where(
                committed, runs.c.ran_as == "full", runs.c.schools.is_(None)
            )
        ).scalar()
    return {
        "newest_drop": _as_date(newest_drop),
        "checkpoint": checkpoint_row[0] if checkpoint_row else None,
        "checkpoint_at": checkpoint_row[1] if checkpoint_row else None,
        "last_full": last_full,
    }


def _as_date(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def write_change_set(
    engine: sa.Engine,
    run_id: int,
    portal_id: str,
    parts: Iterable[pd.DataFrame],
    findings: list[Finding],
) -> dict[str, dict[str, int]]:
    """Stage the actions (one frame or many parts of a change set) and warnings, replacing
    any a retried diff staged before, in one transaction; each warning names the action of
    its record (when the record has one)."""
    counts = entity_counts(pd.DataFrame(columns=["entity", "action"]))  # every kind, zeros
    labels: dict[str, dict[str, int]] = {}
    with write_transaction(engine) as conn:
        conn.execute(sa.delete(schema.actions).where(schema.actions.c.run_id == run_id))
        conn.execute(sa.delete(schema.warnings).where(schema.warnings.c.run_id == run_id))
        for actions in parts:
            insert_frame(
                conn,
                "sis_sync_actions",
                _without_empty_columns(actions),
                {"run_id": run_id, "portal_id": portal_id, "selected": True, "status": "staged"},
            )
            add_counts(counts, entity_counts(actions))
            add_counts(labels, label_counts(actions))
        insert_frame(conn, "sis_sync_warnings", warnings_frame(findings), {"run_id": run_id})
        link_warnings(conn, run_id)
        staged = {"staged": labels}
        if not move(
            conn, run_id, STAGED, allowed_from=PREPARING, counts=counts, action_counts=staged
        ):
            raise RunClosed(f"sync {run_id} is no longer being prepared: nothing was staged")
    return counts


def _without_empty_columns(actions: pd.DataFrame) -> pd.DataFrame:
    """The actions without optional columns that hold nothing (parent links in an initial
    sync, labels of enrollments): binding millions of NULLs costs time, and the columns
    default to NULL anyway."""
    empty = [c for c in OPTIONAL_COLUMNS if c in actions and actions[c].isna().all()]
    return actions.drop(columns=empty) if empty else actions


def warnings_frame(findings: list[Finding]) -> pd.DataFrame:
    """One warning row per affected record (one per finding that names none): its entity,
    SIS key, kind and message. Messages name keys only, never personal data."""
    parts = []
    for f in findings:
        keys = [k for k in f.sis_keys if k] or [None]
        message = f.detail if f.sis_keys else f.message()
        parts.append(
            pd.DataFrame(
                {
                    "entity": f.entity,
                    "sis_key": keys,
                    "kind": f.check,
                    "message": message or f.check,
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=["entity", "sis_key", "kind", "message"])
    return pd.concat(parts, ignore_index=True)


def link_warnings(conn: sa.Connection, run_id: int) -> None:
    """Point each warning of the run at its record's action, found by entity and key."""
    actions, warnings = schema.actions, schema.warnings
    action_id = (
        sa.select(actions.c.id)
        .where(
            actions.c.run_id == warnings.c.run_id,
            actions.c.entity == warnings.c.entity,
            actions.c.action.in_(ACTIONS),  # lets the (run, entity, action, key) index serve
            actions.c.sis_key == warnings.c.sis_key,
        )
        .limit(1)
        .scalar_subquery()
    )
    conn.execute(
        sa.update(warnings)
        .where(warnings.c.run_id == run_id, warnings.c.sis_key.is_not(None))
        .values(action_id=action_id)
    )


def set_selected(engine: sa.Engine, run_id: int, action_ids: list[int], selected: bool) -> int:
    """Tick or untick the listed actions of a run that is not decided yet."""
    return _select(engine, run_id, [(schema.actions.c.id.in_(action_ids), selected)])


def set_selected_where(
    engine: sa.Engine, run_id: int, where: sa.ColumnElement[bool], *, selected: bool
) -> int:
    """Tick or untick the run's actions matching ``where`` (a whole filtered list at once)."""
    return _select(engine, run_id, [(where, selected)])


def save_page_selection(
    engine: sa.Engine, run_id: int, shown: Iterable[int], ticked: Iterable[int]
) -> int:
    """Save one page of an action list: the ``ticked`` actions among those ``shown``
    selected, the other shown ones not, in one transaction."""
    ticked_ids, shown_ids = set(ticked), set(shown)
    ids = schema.actions.c.id
    return _select(
        engine,
        run_id,
        [(ids.in_(ticked_ids), True), (ids.in_(shown_ids - ticked_ids), False)],
    )


def _select(
    engine: sa.Engine, run_id: int, changes: list[tuple[sa.ColumnElement[bool], bool]]
) -> int:
    """Apply selection changes while the run is not decided (staged or awaiting approval).

    The run's row is written first: it takes the row's lock, so a selection and an Approve
    never interleave, and it stamps ``selection_at``, so an Approve given before a late
    selection was saved is refused (the approver approved another selection).
    """
    runs = schema.runs
    changed = 0
    with write_transaction(engine) as conn:
        open_for_selection = conn.execute(
            sa.update(runs)
            .where(runs.c.id == run_id, runs.c.status.in_(SELECTABLE))
            .values(selection_at=now())
        ).rowcount
        if not open_for_selection:
            status = conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).scalar()
            raise RunClosed(f"sync {run_id} is {status}: its selection can no longer change")
        for where, selected in changes:
            result = conn.execute(
                sa.update(schema.actions)
                .where(schema.actions.c.run_id == run_id, where)
                .values(selected=selected)
            )
            changed += int(result.rowcount or 0)
    return changed


def read_warnings(engine: sa.Engine, run_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(schema.warnings)
            .where(schema.warnings.c.run_id == run_id)
            .order_by(schema.warnings.c.id)
        ).mappings()
        return [dict(r) for r in rows]


# --------------------------------------------------------------------------------------------
# Retention
# --------------------------------------------------------------------------------------------

PURGE_CHUNK = 10_000


def purge_personal_values(engine: sa.Engine, portal_id: str, retention_days: int) -> int:
    """Forget the personal values of the portal's syncs that ended over ``retention_days``
    ago; returns how many syncs were purged.

    Each action keeps what it did (entity, keys, kind, action, status, reason) and the names
    of the fields an update changed, so a record's history still reads "email changed"; the
    before and after values go (``{field: null}``), and so do people's names in the labels.
    """
    runs, actions = schema.runs, schema.actions
    cutoff = now() - timedelta(days=retention_days)
    with write_transaction(engine) as conn:
        due = [
            int(r)
            for r in conn.execute(
                sa.select(runs.c.id).where(
                    runs.c.portal_id == portal_id,
                    runs.c.finished_at < cutoff,
                    runs.c.purged_at.is_(None),
                )
            ).scalars()
        ]
        for run_id in due:
            _forget_values(conn, run_id)
            conn.execute(
                sa.update(actions)
                .where(actions.c.run_id == run_id, actions.c.entity == "users")
                .values(label=None)
            )
        if due:
            conn.execute(sa.update(runs).where(runs.c.id.in_(due)).values(purged_at=now()))
    return len(due)


def _forget_values(conn: sa.Connection, run_id: int) -> None:
    """Replace one run's ``{field: [before, after]}`` with ``{field: null}``, in chunks."""
    actions = schema.actions
    rows = conn.execute(
        sa.select(actions.c.id, actions.c.changes).where(
            actions.c.run_id == run_id, actions.c.changes.is_not(None)
        )
    ).all()
    update = (
        sa.update(actions)
        .where(actions.c.id == sa.bindparam("b_id"))
        .values(changes=sa.bindparam("b_changes"))
    )
    for start in range(0, len(rows), PURGE_CHUNK):
        chunk = rows[start : start + PURGE_CHUNK]
        conn.execute(
            update,
            [
                {"b_id": i, "b_changes": json.dumps(dict.fromkeys(json.loads(c)), sort_keys=True)}
                for i, c in chunk
            ],
        )
