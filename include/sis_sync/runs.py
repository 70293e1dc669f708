"""A sync's row in ``sis_sync_runs``: opening it, moving its status, recording who decided,
and the portal's lock (one sync at a time).

Every status change is one conditional UPDATE ("only from these statuses"), inside the
caller's transaction where it has one. A task that Airflow runs again after the run was
decided (a cleared task, a retry, a task marked success) therefore cannot move it: a committed,
rejected, expired, refused or failed sync stays as it ended, whatever Airflow's task states
say. Each decision, refusal and lock take-over is also kept in ``sis_sync_run_events`` with
who and when, for the history and the report.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from include.sis_sync.lms import schema
from include.sis_sync.lms.db import write_transaction

RUNNING = "running"  # opened; the stages up to the change set run
STAGED = "staged"  # diff staged the change set
AWAITING_APPROVAL = "awaiting_approval"
APPROVED = "approved"  # a recorded Approve from an allowed user, or the gate's auto-commit
COMMITTED = "committed"
REJECTED = "rejected"
EXPIRED = "expired"
REFUSED = "refused"  # an old drop, or a commit that nobody's decision allowed
FAILED = "failed"

PREPARING = (RUNNING, STAGED)
IN_FLIGHT = (RUNNING, STAGED, AWAITING_APPROVAL, APPROVED)
FINAL = (COMMITTED, REJECTED, EXPIRED, REFUSED, FAILED)

# Whether the Airflow run ``(dag_id, run_id)`` is still queued or running; None when unknown.
AirflowRunAlive = Callable[[str, str], bool | None]


class RunClosed(RuntimeError):
    """A stage asked of a sync that is past it: decided, ended, or waiting for approval."""


class RunNotCommittable(RuntimeError):
    """A commit refused: no recorded decision allows it, or its change set is stale."""


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


# --------------------------------------------------------------------------------------------
# Reading and writing a run's row
# --------------------------------------------------------------------------------------------


def _execute(engine: sa.Engine | sa.Connection, statement: sa.Executable) -> sa.CursorResult:
    """Run one statement in the caller's transaction, or in one of its own."""
    if isinstance(engine, sa.Connection):
        return engine.execute(statement)
    with write_transaction(engine) as conn:
        return conn.execute(statement)


def _stored(values: dict[str, Any]) -> dict[str, Any]:
    """Column values as stored: dicts and lists as JSON."""
    return {
        k: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v
        for k, v in values.items()
    }


def get_run(engine: sa.Engine | sa.Connection, run_id: int) -> dict[str, Any]:
    query = sa.select(schema.runs).where(schema.runs.c.id == run_id)
    if isinstance(engine, sa.Connection):
        return dict(engine.execute(query).mappings().one())
    with engine.connect() as conn:
        return dict(conn.execute(query).mappings().one())


def run_of_airflow_run(
    engine: sa.Engine | sa.Connection, dag_id: str, airflow_run_id: str
) -> int | None:
    """The newest sync (attempt) of one Airflow DAG run."""
    runs = schema.runs
    query = (
        sa.select(runs.c.id)
        .where(runs.c.dag_id == dag_id, runs.c.airflow_run_id == airflow_run_id)
        .order_by(runs.c.attempt.desc())
        .limit(1)
    )
    return _execute(engine, query).scalar()


def update_run(engine: sa.Engine | sa.Connection, run_id: int, **values: Any) -> None:
    """Set columns of the run's row other than its status (see :func:`move`)."""
    if "status" in values:
        raise ValueError("a run's status changes through runs.move, from named statuses only")
    _execute(
        engine, sa.update(schema.runs).where(schema.runs.c.id == run_id).values(**_stored(values))
    )


def move(
    engine: sa.Engine | sa.Connection,
    run_id: int,
    to: str,
    *,
    allowed_from: Sequence[str],
    **values: Any,
) -> bool:
    """Move the run to ``to`` (and set ``values``) only if its status is one of
    ``allowed_from``; returns whether it moved. One statement: no read-then-write race."""
    runs = schema.runs
    statement = (
        sa.update(runs)
        .where(runs.c.id == run_id, runs.c.status.in_(list(allowed_from)))
        .values(status=to, **_stored(values))
    )
    return bool(_execute(engine, statement).rowcount)


def record_event(
    engine: sa.Engine | sa.Connection,
    run_id: int,
    event: str,
    detail: str,
    actor: str | None = None,
) -> None:
    """Keep what happened to a run, who did it (when known) and when."""
    _execute(
        engine,
        schema.run_events.insert().values(
            run_id=run_id, at=now(), event=event, actor=actor, detail=detail
        ),
    )


def read_events(engine: sa.Engine, run_id: int) -> list[dict[str, Any]]:
    events = schema.run_events
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(events).where(events.c.run_id == run_id).order_by(events.c.id)
        ).mappings()
        return [dict(r) for r in rows]


# --------------------------------------------------------------------------------------------
# Opening a run and entering its stages
# --------------------------------------------------------------------------------------------


def open_run(engine: sa.Engine, request: RunRequest) -> int:
    """The run's row for this start: the same row while ``start`` is retried or waits for the
    lock, a new attempt once the DAG run was cleared and runs again.

    A new attempt closes the earlier one if it never ended (``failed``, saying why), so the
    history keeps it as it was and its change set can never be committed.
    """
    runs = schema.runs
    with write_transaction(engine) as conn:
        latest = (
            conn.execute(
                sa.select(runs.c.id, runs.c.attempt, runs.c.status, runs.c.stage)
                .where(
                    runs.c.dag_id == request.dag_id,
                    runs.c.airflow_run_id == request.airflow_run_id,
                )
                .order_by(runs.c.attempt.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        if latest is not None and latest["status"] == RUNNING and latest["stage"] == "start":
            return int(latest["id"])
        result = conn.execute(
            runs.insert().values(
                portal_id=request.portal_id,
                dag_id=request.dag_id,
                airflow_run_id=request.airflow_run_id,
                attempt=int(latest["attempt"]) + 1 if latest is not None else 1,
                stage="start",
                mode=request.mode,
                trigger=request.trigger,
                triggered_by=request.triggered_by,
                status=RUNNING,
                schools=json.dumps(request.schools) if request.schools else None,
                auto_commit=request.auto_commit,
                allow_mass_archive=request.allow_mass_archive,
                data_key=uuid.uuid4().hex,
                created_at=now(),
            )
        )
        run_id = int(result.inserted_primary_key[0])
        if latest is not None:
            why = f"its Airflow run was cleared and runs again as sync {run_id}"
            if move(
                conn, latest["id"], FAILED, allowed_from=IN_FLIGHT, error=why, finished_at=now()
            ):
                record_event(conn, latest["id"], "abandoned", why)
    return run_id


def enter_stage(engine: sa.Engine, run_id: int, stage: str) -> None:
    """Note that ``stage`` starts; refuse it once the change set is decided or awaits a
    decision (a task cleared or re-run in Airflow must not rebuild a decided change set)."""
    runs = schema.runs
    entered = _execute(
        engine,
        sa.update(runs)
        .where(runs.c.id == run_id, runs.c.status.in_(PREPARING))
        .values(stage=stage),
    ).rowcount
    if entered:
        retire_error(engine, run_id)
        return
    status = get_run(engine, run_id)["status"]
    detail = (
        f"{stage} was run again while the sync was {status}: refused, nothing changed. "
        "Trigger a new sync, or clear the whole DAG run (a new sync with its own approval)."
    )
    record_event(engine, run_id, "stage_refused", detail)
    raise RunClosed(f"sync {run_id}: {detail}")


def retire_error(engine: sa.Engine, run_id: int) -> None:
    """A try that now goes on (a stage entered again, a commit that went through) leaves an
    earlier try's error in the run's history, not on the run: a committed sync shows none."""
    error = get_run(engine, run_id).get("error")
    if error:
        record_event(engine, run_id, "earlier_try_failed", error)
        update_run(engine, run_id, error=None)


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------


def record_answer(
    engine: sa.Engine,
    run_id: int,
    approve: bool,
    by: str | None,
    approvers: Sequence[str] = (),
    answered_at: datetime | None = None,
) -> str:
    """Keep the approval step's answer the moment it comes; returns the run's status after.

    Approve from an allowed user makes the run ``approved``; Reject makes it ``rejected``; no
    answer before the timeout (``by`` is None) ``expired``. An Approve from someone outside
    the portal's ``approvers``, or one given before the selection last changed (the approver
    approved another selection), refuses the run. An answer to a run that is no longer
    waiting (one whose approval step was cleared after it ended) changes nothing and is
    recorded.
    """
    with write_transaction(engine) as conn:
        # lock the row first: a selection saved now waits, or has already been stamped
        conn.execute(
            sa.update(schema.runs)
            .where(schema.runs.c.id == run_id)
            .values(stage=schema.runs.c.stage)
        )
        selection_at = get_run(conn, run_id)["selection_at"]
        late = approve and answered_at and selection_at and as_utc(selection_at) > answered_at
        to, event, detail = _answer(approve, by, approvers)
        if late:
            to, event = REFUSED, "approval_refused"
            detail = (
                f"Approve by {by} at {answered_at:%Y-%m-%d %H:%M:%S} UTC came before the "
                f"selection last changed ({as_utc(selection_at):%Y-%m-%d %H:%M:%S} UTC): the "
                "approver approved another selection"
            )
        return _record(conn, run_id, approve, by, to, event, detail)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _answer(approve: bool, by: str | None, approvers: Sequence[str]) -> tuple[str, str, str]:
    """The status, event and detail an answer leads to."""
    if by is None:
        to, event, detail = EXPIRED, "expired", "nobody answered before the approval timeout"
    elif approve and approvers and by not in approvers:
        to, event = REFUSED, "approval_refused"
        detail = (
            f"Approve by {by}, who is not among the portal's approvers ({', '.join(approvers)})"
        )
    elif approve:
        to, event, detail = APPROVED, "approved", f"approved by {by}"
    else:
        to, event, detail = REJECTED, "rejected", f"rejected by {by}"
    return to, event, detail


def _record(
    conn: sa.Connection,
    run_id: int,
    approve: bool,
    by: str | None,
    to: str,
    event: str,
    detail: str,
) -> str:
    values: dict[str, Any] = {"decided_at": now()}
    if to == REFUSED:
        values.update(error=detail, finished_at=now())
    else:
        values["decided_by"] = by
    if move(conn, run_id, to, allowed_from=(AWAITING_APPROVAL,), **values):
        record_event(conn, run_id, event, detail, by)
        return to
    status = get_run(conn, run_id)["status"]
    answer = "Approve" if approve else "Reject"
    record_event(
        conn,
        run_id,
        "answer_ignored",
        f"{answer} by {by or 'nobody (the timeout)'} came when the sync was {status}: "
        "it changes nothing",
        by,
    )
    return status


def commit_refusals(conn: sa.Connection, run_id: int, portal_id: str) -> list[str]:
    """Why this run may not be committed now; empty when it may. Read in the commit's own
    transaction, after its claim failed."""
    run = get_run(conn, run_id)
    reasons = []
    if run["portal_id"] != portal_id:
        reasons.append(f"it belongs to portal {run['portal_id']}, not {portal_id}")
    if run["status"] != APPROVED:
        reasons.append(_not_approved(run))
    newer = _newer_commit(conn, run)
    if newer is not None:
        reasons.append(
            f"sync {newer['id']} of the portal committed after it (at {newer['committed_at']}):"
            " its change set is stale"
        )
    holder = conn.execute(
        sa.select(schema.locks.c.run_id).where(schema.locks.c.portal_id == run["portal_id"])
    ).scalar()
    if holder != run_id and run["status"] == APPROVED:
        held = f"sync {holder} holds it" if holder is not None else "nobody holds it"
        reasons.append(f"it no longer holds the portal's lock ({held})")
    return reasons


def _not_approved(run: dict[str, Any]) -> str:
    status, by, at = run["status"], run["decided_by"], run["decided_at"]
    if status == AWAITING_APPROVAL:
        return (
            "no Approve is recorded for it: its approval step ended without an answer (a task "
            "state changed in Airflow is not an approval; Airflow's audit log names who did it)"
        )
    if status == REJECTED:
        return f"it was rejected by {by} at {at}"
    if status == EXPIRED:
        return f"its approval expired at {at}: nobody answered in time"
    if status in (RUNNING, STAGED):
        return f"it is {status}: its change set was never put to a decision"
    return f"it ended {status}" + (f" ({run['error']})" if run.get("error") else "")


def _newer_commit(conn: sa.Connection, run: dict[str, Any]) -> dict[str, Any] | None:
    runs = schema.runs
    row = (
        conn.execute(
            sa.select(runs.c.id, runs.c.committed_at)
            .where(
                runs.c.portal_id == run["portal_id"],
                runs.c.status == COMMITTED,
                runs.c.id > run["id"],
            )
            .order_by(runs.c.id)
            .limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


def claim_commit(conn: sa.Connection, run_id: int, portal_id: str) -> bool:
    """Mark the run committed as the first write of the commit's transaction, only if it is
    approved, holds the portal's lock and no newer sync of the portal committed.

    Two commits of one run race here: on PostgreSQL the second waits for the row lock and
    then finds the run committed; on SQLite the second waits for the write lock. Exactly
    one applies the change set.
    """
    runs, locks = schema.runs, schema.locks
    newer = runs.alias("newer")
    holds_lock = sa.exists().where(locks.c.portal_id == portal_id, locks.c.run_id == run_id)
    newer_commit = sa.exists().where(
        newer.c.portal_id == portal_id, newer.c.status == COMMITTED, newer.c.id > run_id
    )
    claimed = conn.execute(
        sa.update(runs)
        .where(
            runs.c.id == run_id,
            runs.c.portal_id == portal_id,
            runs.c.status == APPROVED,
            holds_lock,
            ~newer_commit,
        )
        .values(status=COMMITTED, committed_at=now(), stage="commit")
    ).rowcount
    return bool(claimed)


def refuse_commit(engine: sa.Engine, run_id: int, reasons: Sequence[str]) -> str:
    """Record a refused commit: a run never decided becomes ``refused``; a decided or ended
    run keeps its status. Returns the message."""
    message = "commit refused: " + "; ".join(reasons)
    with write_transaction(engine) as conn:
        move(conn, run_id, REFUSED, allowed_from=IN_FLIGHT, error=message, finished_at=now())
        record_event(conn, run_id, "commit_refused", message)
    return message


# --------------------------------------------------------------------------------------------
# The portal's lock: one sync at a time
# --------------------------------------------------------------------------------------------


def acquire_lock(
    engine: sa.Engine, portal_id: str, run_id: int, alive: AirflowRunAlive | None = None
) -> int | None:
    """Take the portal's lock for ``run_id``; returns the run holding it if another does.

    A lock is taken over when its holder has ended (a crash before ``report``), or when the
    Airflow run behind it is no longer running (``alive`` says so: failed, marked, deleted);
    a holder that never ended is then closed as ``failed``, saying why. Two starts racing for
    a free lock both try to insert it: the primary key lets one win.
    """
    locks = schema.locks
    try:
        with write_transaction(engine) as conn:
            holder = conn.execute(
                sa.select(locks.c.run_id).where(locks.c.portal_id == portal_id)
            ).scalar()
            if holder == run_id:
                return None
            if holder is not None:
                stale = _stale_lock(conn, int(holder), alive)
                if stale is None:
                    return int(holder)
                conn.execute(
                    sa.delete(locks).where(locks.c.portal_id == portal_id, locks.c.run_id == holder)
                )
                why = f"{stale}; sync {run_id} took the portal's lock over"
                if move(conn, holder, FAILED, allowed_from=IN_FLIGHT, error=why, finished_at=now()):
                    record_event(conn, holder, "lock_taken_over", why)
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


def _stale_lock(conn: sa.Connection, holder: int, alive: AirflowRunAlive | None) -> str | None:
    """Why the holder's lock no longer stands, or None while it does."""
    runs = schema.runs
    row = (
        conn.execute(
            sa.select(runs.c.status, runs.c.dag_id, runs.c.airflow_run_id).where(
                runs.c.id == holder
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return f"sync {holder} holding the lock does not exist"
    if row["status"] in FINAL:
        return f"sync {holder} holding the lock ended {row['status']}"
    if alive is not None and alive(row["dag_id"], row["airflow_run_id"]) is False:
        return (
            f"sync {holder} was {row['status']}, but its Airflow run {row['airflow_run_id']} "
            "is no longer running"
        )
    return None


def release_lock(engine: sa.Engine, portal_id: str, run_id: int) -> None:
    locks = schema.locks
    with write_transaction(engine) as conn:
        conn.execute(
            sa.delete(locks).where(locks.c.portal_id == portal_id, locks.c.run_id == run_id)
        )


def lock_holder(engine: sa.Engine, portal_id: str) -> dict[str, Any] | None:
    """The lock of a portal and the run holding it, or None when it is free."""
    locks, runs = schema.locks, schema.runs
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(
                    locks.c.run_id,
                    locks.c.acquired_at,
                    runs.c.status,
                    runs.c.dag_id,
                    runs.c.airflow_run_id,
                    runs.c.stage,
                )
                .select_from(locks.outerjoin(runs, runs.c.id == locks.c.run_id))
                .where(locks.c.portal_id == portal_id)
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


def force_unlock(engine: sa.Engine, portal_id: str, by: str) -> dict[str, Any] | None:
    """An operator's release of a portal's lock: the run holding it, if it never ended, is
    closed as ``failed`` (it can then never be committed) and the release is recorded."""
    holder = lock_holder(engine, portal_id)
    if holder is None:
        return None
    run_id = int(holder["run_id"])
    why = f"the portal's lock was released by hand by {by}"
    with write_transaction(engine) as conn:
        conn.execute(
            sa.delete(schema.locks).where(
                schema.locks.c.portal_id == portal_id, schema.locks.c.run_id == run_id
            )
        )
        move(conn, run_id, FAILED, allowed_from=IN_FLIGHT, error=why, finished_at=now())
        record_event(conn, run_id, "lock_released", why, by)
    return holder
