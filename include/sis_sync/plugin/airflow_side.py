"""What the admin pages ask of Airflow itself: whether a portal's DAG is paused, the waiting
approval of a run, and the changes (trigger, pause, answer the approval).

Each change goes through the very function behind Airflow's public REST route, with the
signed-in user, so Airflow validates it and records who did it exactly as it does for its own
UI: a triggered run carries its triggering user, an answer its respondent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.models.dag import DagModel
from airflow.models.hitl import HITLDetail
from airflow.models.taskinstance import TaskInstance
from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

APPROVAL_TASK = "await_approval"


@dataclass(frozen=True)
class DagState:
    """What the portals list shows of a portal's DAG."""

    exists: bool
    paused: bool


def dag_states(session: Session, dag_ids: list[str]) -> dict[str, DagState]:
    rows = session.execute(
        select(DagModel.dag_id, DagModel.is_paused).where(DagModel.dag_id.in_(dag_ids))
    ).all()
    found = {dag_id: DagState(True, bool(paused)) for dag_id, paused in rows}
    return {d: found.get(d, DagState(False, False)) for d in dag_ids}


@dataclass(frozen=True)
class Approval:
    """The approval step of one DAG run, as Airflow holds it."""

    waiting: bool  # the task waits for an answer
    answered: bool  # an answer is recorded (the run may not have resumed yet)
    chosen: list[str]
    by: str | None
    at: datetime | None


def approval(session: Session, dag_id: str, airflow_run_id: str) -> Approval | None:
    """The run's approval request, or None when its approval step never asked."""
    row = session.execute(
        select(TaskInstance.state, HITLDetail)
        .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
        .where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == airflow_run_id,
            TaskInstance.task_id == APPROVAL_TASK,
            TaskInstance.map_index == -1,
        )
    ).first()
    if row is None:
        return None
    state, detail = row
    by = detail.responded_by or {}
    return Approval(
        waiting=state == "awaiting_input" and detail.responded_at is None,
        answered=detail.responded_at is not None,
        chosen=list(detail.chosen_options or []),
        by=by.get("name") or by.get("id"),
        at=detail.responded_at,
    )


def answer(session: Session, user: BaseUser, dag_id: str, airflow_run_id: str, option: str) -> None:
    """Answer the run's waiting approval (``Approve`` or ``Reject``) as ``user``: Airflow's
    own handler checks the assigned approvers, refuses a second answer (409) and resumes the
    task."""
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail

    update_hitl_detail(
        dag_id=dag_id,
        dag_run_id=airflow_run_id,
        task_id=APPROVAL_TASK,
        update_hitl_detail_payload=UpdateHITLDetailPayload(
            chosen_options=[option], params_input={}
        ),
        user=user,
        session=session,
        map_index=-1,
    )


def trigger(
    session: Session, request: Request, user: BaseUser, dag_id: str, conf: dict[str, Any]
) -> str:
    """Trigger a manual run with ``conf`` (validated against the DAG's params); returns its
    run id."""
    from airflow.api_fastapi.core_api.datamodels.dag_run import TriggerDAGRunPostBody
    from airflow.api_fastapi.core_api.routes.public.dag_run import trigger_dag_run
    from airflow.models.dagbag import DBDagBag

    run = trigger_dag_run(
        dag_id=dag_id,
        body=TriggerDAGRunPostBody(logical_date=None, conf=conf),
        dag_bag=DBDagBag(),
        user=user,
        session=session,
        request=request,
    )
    return str(run.run_id)


def set_paused(session: Session, dag_id: str, paused: bool) -> None:
    """Pause or unpause the portal's DAG, as the DAG list's switch does."""
    dag = session.get(DagModel, dag_id)
    if dag is None:
        raise LookupError(f"DAG {dag_id} is not known to Airflow (yet)")
    dag.is_paused = paused
