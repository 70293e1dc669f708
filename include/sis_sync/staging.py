"""Staging: the run's row, the per-portal lock, and the staged actions and warnings.

All of it lives in the LMS database so that a commit (LMS rows, action statuses, run status,
checkpoint) is one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from include.sis_sync.diff import ChangeSet
from include.sis_sync.lms import schema
from include.sis_sync.lms.bulk import insert_frame
from include.sis_sync.validation import Finding

IN_FLIGHT = ("running", "staged", "awaiting_approval", "approved", "committing")
FINAL = ("committed", "rejected", "expired", "failed", "refused")


class PortalLocked(RuntimeError):
    """Another sync of the same portal is in flight."""


class RunNotCommittable(RuntimeError):
    """A run whose change set may not be applied (rejected, expired, failed or stale)."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunRequest:
    """What ``start`` knows about a run when it opens its row."""

    portal_id: str
    dag_id: str
    airflow_run_id: str
    mode: str
    trigger: str
    triggered_by: str | None
    schools: list[str] | None
    auto_commit: bool
    allow_mass_archive: bool


def open_run(engine: sa.Engine, request: RunRequest) -> int:
    """Create the run's row, or return the existing one when ``start`` is retried."""
    runs = schema.runs
    with engine.begin() as conn:
        existing = conn.execute(
            sa.select(runs.c.id).where(
                runs.c.dag_id == request.dag_id, runs.c.airflow_run_id == request.airflow_run_id
            )
        ).scalar()
        if existing is not None:
            return int(existing)
        result = conn.execute(
            runs.insert().values(
                portal_id=request.portal_id,
                dag_id=request.dag_id,
                airflow_run_id=request.airflow_run_id,
                mode=request.mode,
                trigger=request.trigger,
                triggered_by=request.triggered_by,
                status="running",
                schools=json.dumps(request.schools) if request.schools else None,
                auto_commit=request.auto_commit,
                allow_mass_archive=request.allow_mass_archive,
                created_at=now(),
            )
        )
        return int(result.inserted_primary_key[0])


def acquire_lock(engine: sa.Engine, portal_id: str, run_id: int) -> int | None:
    """Take the portal's lock for ``run_id``; returns the run holding it if another does.

    A lock left by a run that has already ended (a crash before ``report``) is taken over.
    Two starts racing for a free lock both try to insert it: the primary key lets one win.
    """
    locks, runs = schema.locks, schema.runs
    try:
        with engine.begin() as conn:
            holder = conn.execute(
                sa.select(locks.c.run_id).where(locks.c.portal_id == portal_id)
            ).scalar()
            if holder is not None and int(holder) != run_id:
                status = conn.execute(sa.select(runs.c.status).where(runs.c.id == holder)).scalar()
                if status in IN_FLIGHT:
                    return int(holder)
                conn.execute(sa.delete(locks).where(locks.c.portal_id == portal_id))
                holder = None
            if holder is None:
                conn.execute(
                    locks.insert().values(portal_id=portal_id, run_id=run_id, acquired_at=now())
                )
    except sa.exc.IntegrityError:
        with engine.connect() as conn:
            holder = conn.execute(
                sa.select(locks.c.run_id).where(locks.c.portal_id == portal_id)
            ).scalar()
        return int(holder) if holder is not None and int(holder) != run_id else None
    return None


def release_lock(engine: sa.Engine, portal_id: str, run_id: int) -> None:
    locks = schema.locks
    with engine.begin() as conn:
        conn.execute(
            sa.delete(locks).where(locks.c.portal_id == portal_id, locks.c.run_id == run_id)
        )


def get_run(engine: sa.Engine | sa.Connection, run_id: int) -> dict[str, Any]:
    query = sa.select(schema.runs).where(schema.runs.c.id == run_id)
    if isinstance(engine, sa.Connection):
        row = engine.execute(query).mappings().one()
    else:
        with engine.connect() as conn:
            row = conn.execute(query).mappings().one()
    return dict(row)


def update_run(engine: sa.Engine | sa.Connection, run_id: int, **values: Any) -> None:
    """Set columns of the run's row; dicts and lists are stored as JSON."""
    for key, value in list(values.items()):
        if isinstance(value, (dict, list)):
            values[key] = json.dumps(value, default=str)
    statement = sa.update(schema.runs).where(schema.runs.c.id == run_id).values(**values)
    if isinstance(engine, sa.Connection):
        engine.execute(statement)
    else:
        with engine.begin() as conn:
            conn.execute(statement)


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
    engine: sa.Engine, run_id: int, portal_id: str, change_set: ChangeSet, findings: list[Finding]
) -> dict[str, dict[str, int]]:
    """Stage the actions and warnings, replacing any a retried diff staged before."""
    counts = change_set.counts()
    with engine.begin() as conn:
        conn.execute(sa.delete(schema.actions).where(schema.actions.c.run_id == run_id))
        conn.execute(sa.delete(schema.warnings).where(schema.warnings.c.run_id == run_id))
        insert_frame(
            conn,
            "sis_sync_actions",
            change_set.actions,
            {"run_id": run_id, "portal_id": portal_id, "selected": True, "status": "staged"},
        )
        insert_frame(conn, "sis_sync_warnings", findings_frame(run_id, findings))
        update_run(conn, run_id, status="staged", counts=counts)
    return counts


def findings_frame(run_id: int, findings: list[Finding]) -> pd.DataFrame:
    """Warning rows for findings; the message names keys only, never personal data."""
    return pd.DataFrame(
        {
            "run_id": [run_id] * len(findings),
            "action_id": [None] * len(findings),
            "entity": [f.entity for f in findings],
            "sis_key": [f.sis_keys[0] if f.sis_keys else None for f in findings],
            "kind": [f.check for f in findings],
            "message": [f.message() for f in findings],
        }
    )


def set_selected(engine: sa.Engine, run_id: int, action_ids: list[int], selected: bool) -> int:
    """Tick or untick actions of a run that has not been committed yet."""
    with engine.begin() as conn:
        status = conn.execute(
            sa.select(schema.runs.c.status).where(schema.runs.c.id == run_id)
        ).scalar()
        if status in FINAL:
            raise RunNotCommittable(f"run {run_id} is {status}: its actions can no longer change")
        result = conn.execute(
            sa.update(schema.actions)
            .where(schema.actions.c.run_id == run_id, schema.actions.c.id.in_(action_ids))
            .values(selected=selected)
        )
    return int(result.rowcount or 0)


def read_warnings(engine: sa.Engine, run_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(schema.warnings)
            .where(schema.warnings.c.run_id == run_id)
            .order_by(schema.warnings.c.id)
        ).mappings()
        return [dict(r) for r in rows]
