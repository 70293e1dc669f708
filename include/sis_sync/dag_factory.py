"""One DAG per portal file: the only module of the package that imports Airflow.

The tasks here only translate between Airflow (context, connections, XCom, exceptions) and the
plain stage functions of :mod:`include.sis_sync.pipeline`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import (
    DAG,
    Asset,
    BaseHook,
    BaseNotifier,
    CronTriggerTimetable,
    Param,
    PokeReturnValue,
    TriggerRule,
    Variable,
    task,
)
from airflow.sdk.exceptions import AirflowFailException

from include.sis_sync import notifications, pipeline
from include.sis_sync.config import Portal, PortalConfigError
from include.sis_sync.links import airflow_run_url
from include.sis_sync.lms.db import SchemaOutOfDate, url_from_connection
from include.sis_sync.providers import registry
from include.sis_sync.runs import AWAITING_APPROVAL, RunClosed, RunNotCommittable, update_run
from include.sis_sync.validation import SnapshotInvalid

LMS_CONN_ID = "lms_db"
# Commits queue here: SQLite has one writer, and a 1M-student commit outlasts its busy timeout.
LMS_WRITES_POOL = "sis_sync_lms_writes"
UI_BASE_URL_VARIABLE = "sis_sync_ui_base_url"
START_DATE = datetime(2026, 1, 1)
# Errors a retry cannot fix: bad input, refused or missing input, an unmigrated database;
# each provider adds its own (bad credentials, a broken drop, a read that lost records).
PERMANENT = (
    pipeline.SourceRefused,
    pipeline.InputMissing,
    SnapshotInvalid,
    PortalConfigError,
    SchemaOutOfDate,
)
# A stage or commit refused because the run is decided or ended: recorded on the run already.
REFUSALS = (RunClosed, RunNotCommittable)
log = logging.getLogger(__name__)
RUN_TYPES = {"scheduled": "scheduled", "backfill": "backfill", "asset_triggered": "scheduled"}

DOC = """
### SIS sync of portal **{name}** (`{id}`)

Keeps the LMS portal's organizations, terms, courses, users, sections and enrollments in step
with its SIS ({provider}). Stages: start (per-portal lock) → wait_for_drop (file drops) →
extract → transform → validate_snapshot (Great Expectations) → diff (staged actions) →
validate_changes (guards) → gate → commit, or await_approval → commit → report.

A decision stays decided: only a recorded Approve (from the portal's approvers, when it names
them) or an allowed auto-commit makes a run committable; clearing or marking tasks never
does. The run's outcome shows as this DAG run's note.

* auto-commit: **{auto_commit}**; approval timeout {timeout} h; guards: archives over
  {guards.archive_percent} % and {guards.archive_min_count} records, updates over
  {guards.update_percent} % and {guards.update_min_count} records.
* Trigger params: `mode`, `auto_commit`, `schools`, `allow_mass_archive`, `drop_date`, `replay`.
"""


def lms_url() -> str:
    """The LMS database URL from the Airflow connection ``lms_db`` (inside a task)."""
    return url_of(BaseHook.get_connection(LMS_CONN_ID))


def url_of(conn: Any) -> str:
    """A SQLAlchemy URL from an Airflow connection object."""
    return url_from_connection(
        conn.conn_type,
        conn.host,
        login=conn.login,
        password=conn.password,
        port=conn.port,
        schema=conn.schema,
        extra=conn.extra,
    )


def run_context(portal: Portal, context: dict[str, Any]) -> pipeline.RunContext:
    """The plain run context of a task, from Airflow's."""
    dag_run = context["dag_run"]
    run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
    return pipeline.RunContext(
        portal=portal,
        lms_url=lms_url(),
        dag_id=dag_run.dag_id,
        airflow_run_id=dag_run.run_id,
        run_type=RUN_TYPES.get(run_type, "manual"),
        logical_date=dag_run.logical_date,
        params=dict(context["params"]),
        triggered_by=getattr(dag_run, "triggering_user_name", None),
        client=portal.source_provider().open_client(portal.source),
        airflow_run_alive=functools.partial(airflow_run_alive, context["ti"]),
    )


def airflow_run_alive(ti: Any, dag_id: str, run_id: str) -> bool | None:
    """Whether Airflow still has the run ``run_id`` queued or running (a deleted run is not);
    None when Airflow cannot say, so a lock is never taken over on a guess."""
    try:
        return ti.get_dr_count(dag_id=dag_id, run_ids=[run_id], states=["queued", "running"]) > 0
    except Exception:  # the lock then waits for the run to end, as before
        log.warning("cannot read the state of Airflow run %s of %s", run_id, dag_id, exc_info=True)
        return None


def api_pool(portal: Portal) -> str:
    """The pool of the portal's API token (portals sharing a token share its pool)."""
    return portal.source.pool or "default_pool"


def lms_asset(portal: Portal) -> Asset:
    """The portal's LMS rows as an Airflow Asset: each committed sync updates it, so
    downstream DAGs may run after one (``schedule=[Asset("sis_sync://<portal>/lms")]``)."""
    return Asset(f"sis_sync://{portal.id}/lms", group="sis_sync")


def ui_base() -> str:
    """The Airflow UI's address (the ``sis_sync_ui_base_url`` variable), or "" for links
    relative to the UI."""
    return str(Variable.get(UI_BASE_URL_VARIABLE, default=None) or "").rstrip("/")


def run_link(context: dict[str, Any]) -> str | None:
    """The run's page in the Airflow UI, when the ``sis_sync_ui_base_url`` variable is set."""
    base = ui_base()
    if not base:
        return None
    dag_run = context["dag_run"]
    return airflow_run_url(dag_run.dag_id, dag_run.run_id, base)


def stage(func: Callable[..., Any]) -> Callable[..., Any]:
    """Record a stage's error on the run's row; permanent errors fail without retries."""

    @functools.wraps(func)
    def wrapper(ctx: pipeline.RunContext, run_id: int, *args: Any) -> Any:
        try:
            return func(ctx, run_id, *args)
        except REFUSALS as exc:
            raise AirflowFailException(str(exc)) from exc
        except (*PERMANENT, *registry.permanent_errors()) as exc:
            update_run(ctx.engine, run_id, error=f"{func.__name__}: {exc}")
            raise AirflowFailException(str(exc)) from exc
        except Exception as exc:
            update_run(ctx.engine, run_id, error=f"{func.__name__}: {type(exc).__name__}: {exc}")
            raise

    return wrapper


def answered_at(value: Any) -> datetime | None:
    """The answer's time from the HITL event (a datetime, or ISO text once serialised)."""
    if value is None or isinstance(value, datetime):
        return value
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class WaitingNotifier(BaseNotifier):
    """Tells the portal's admins that a sync waits for them, when its approval step starts
    waiting (the HITL operator calls its notifiers then)."""

    template_fields = ()

    def __init__(self, portal: Portal) -> None:
        super().__init__()
        self.portal = portal

    def notify(self, context: Any) -> None:
        sync_id = context["ti"].xcom_pull(task_ids="start")
        ctx = run_context(self.portal, context)
        notifications.notify(ctx.engine, self.portal, sync_id, AWAITING_APPROVAL, ui_base())


class SyncApprovalOperator(ApprovalOperator):
    """The approval step, which also writes the answer to the run's row the moment it comes,
    so the history says who approved or rejected, or that nobody answered in time."""

    def __init__(self, *, portal: Portal, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.portal = portal

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" not in event:
            sync_id = context["ti"].xcom_pull(task_ids="start")
            user = event.get("responded_by_user") or {}
            pipeline.record_approval(
                run_context(self.portal, context),
                sync_id,
                list(event.get("chosen_options") or []),
                user.get("name") or user.get("id"),
                answered_at(event.get("responded_at")),
            )
        return super().execute_complete(context=context, event=event)


def params_for(portal: Portal) -> dict[str, Param]:
    params = _common_params(portal)
    if portal.source_provider().supports_since:
        params["since"] = Param(
            None,
            type=["null", "string"],
            format="date-time",
            description=f"Quick sync of what {portal.source_provider().label} changed from this "
            "date-time instead of from the last committed sync; mode full reads everything",
        )
    return params


def _common_params(portal: Portal) -> dict[str, Param]:
    return {
        "mode": Param(
            portal.scheduled_mode,
            enum=["full", "quick"],
            description="full: every record, diffed against the LMS; quick: what changed since "
            "the last committed sync (CSV drops: the manifest decides)",
        ),
        "auto_commit": Param(
            portal.auto_commit,
            type="boolean",
            description="Commit without approval when no guard trips",
        ),
        "schools": Param(
            [],
            type="array",
            items={"type": "string"},
            description="SIS ids of the schools to sync (empty: all the portal's schools)",
        ),
        "allow_mass_archive": Param(
            False,
            type="boolean",
            description="Let an auto-commit run through even when a guard trips (recorded)",
        ),
        "drop_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="File drops: the drop to read (default: the logical date's for "
            "scheduled and backfill runs, the newest for manual runs)",
        ),
        "replay": Param(
            False,
            type="boolean",
            description="File drops: allow a drop older than the newest one committed",
        ),
    }


def build_dag(portal: Portal) -> DAG:
    """The sync DAG of one portal."""
    schedule = (
        CronTriggerTimetable(portal.schedule, timezone=portal.timezone) if portal.schedule else None
    )
    with DAG(
        dag_id=portal.dag_id,
        description=f"SIS sync of portal {portal.name}",
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["sis-sync", portal.provider, f"portal:{portal.id}"],
        doc_md=DOC.format(
            name=portal.name,
            id=portal.id,
            provider=portal.source_provider().describe(portal.source),
            auto_commit=portal.auto_commit,
            timeout=portal.approval_timeout_hours,
            guards=portal.guards,
        ),
        default_args={"owner": portal.owner, "retries": 2, "retry_delay": timedelta(seconds=30)},
        params=params_for(portal),
    ) as dag:

        @task.sensor(
            task_id="start",
            poke_interval=30,
            mode="reschedule",
            timeout=timedelta(hours=portal.approval_timeout_hours + 6).total_seconds(),
        )
        def start(**context: Any) -> PokeReturnValue:
            """Open the run and take the portal's lock; wait while another sync holds it."""
            opened = pipeline.start(run_context(portal, context))
            return PokeReturnValue(is_done=opened["locked_by"] is None, xcom_value=opened["run_id"])

        provider = portal.source_provider()
        wait = provider.input_wait(portal.source)

        @task.sensor(
            task_id="wait_for_drop",
            poke_interval=wait.poke_seconds if wait else 60,
            mode="reschedule",
            # a backstop only: the poke itself ends the wait after wait_hours, saying why
            timeout=timedelta(hours=(wait.wait_hours if wait else 0) + 1).total_seconds(),
            retries=0,
        )
        def wait_for_drop(sync_id: int, **context: Any) -> bool:
            """Scheduled runs of a file-drop portal wait for a late drop, holding no slot."""
            return stage(pipeline.wait_for_input)(run_context(portal, context), sync_id)

        def prepare_task(func: Callable[..., dict[str, Any]]) -> Any:
            """One preparing stage as a task; it takes the stage before's summary so that the
            tasks run in :data:`pipeline.PREPARE`'s order."""

            def run(sync_id: int, summary: dict[str, Any] | None = None, **context: Any) -> Any:
                return stage(func)(run_context(portal, context), sync_id)

            pool = api_pool(portal) if func is pipeline.extract else None
            return task(run, task_id=func.__name__, doc_md=func.__doc__, pool=pool)

        @task
        def validate_changes(
            sync_id: int, summary: dict[str, Any], **context: Any
        ) -> dict[str, Any]:
            """Evaluate the guards; the approval text says which tripped."""
            ctx = run_context(portal, context)
            checks = stage(pipeline.validate_changes)(ctx, sync_id)
            checks["body"] = pipeline.approval_body(
                ctx, sync_id, checks["tripped"], run_link(context), ui_base=ui_base()
            )
            return checks

        @task.branch
        def gate(sync_id: int, checks: dict[str, Any], **context: Any) -> str:
            """Straight to commit on auto-commit with the guards passed; else wait for a human."""
            return stage(pipeline.gate)(run_context(portal, context), sync_id, checks["tripped"])

        await_approval = SyncApprovalOperator(
            portal=portal,
            task_id="await_approval",
            subject=f"Apply SIS changes to portal {portal.name}?",
            body="{{ ti.xcom_pull(task_ids='validate_changes')['body'] }}",
            defaults="Reject",
            response_timeout=timedelta(hours=portal.approval_timeout_hours),
            assigned_users=[{"id": a, "name": a} for a in portal.approvers] or None,
            notifiers=[WaitingNotifier(portal)],
            retries=0,
        )

        @task(
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
            retries=1,
            pool=LMS_WRITES_POOL,
            outlets=[lms_asset(portal)],
        )
        def commit(sync_id: int, **context: Any) -> dict[str, Any]:
            """Apply the selected actions, the statuses and the checkpoint in one transaction."""
            return stage(pipeline.commit)(run_context(portal, context), sync_id)

        @task(trigger_rule=TriggerRule.ALL_DONE, retries=1)
        def report(sync_id: int | None, **context: Any) -> dict[str, Any]:
            """Write the final status and the report; fail the run when the sync failed."""
            if sync_id is None:
                raise AirflowFailException("the run never started: see the start task's log")
            ctx = run_context(portal, context)
            result = pipeline.finish(ctx, sync_id)
            print(result["text"])
            notifications.notify(ctx.engine, portal, sync_id, result["status"], ui_base(), context)
            if result["status"] in ("failed", "refused"):
                raise AirflowFailException(f"sync {result['status']}: {result['error']}")
            if result["refusals"]:
                latest = result["refusals"][-1]["detail"]
                raise AirflowFailException(f"sync {result['status']}, then refused: {latest}")
            return {k: v for k, v in result.items() if k != "text"}

        sync_id = start()
        extract, *later = pipeline.PREPARE
        summary = prepare_task(extract)(sync_id)
        if wait is not None:
            wait_for_drop(sync_id) >> summary
        for func in later:
            summary = prepare_task(func)(sync_id, summary)
        checks = validate_changes(sync_id, summary)
        route = gate(sync_id, checks)
        committed = commit(sync_id)
        route >> [await_approval, committed]
        await_approval >> committed
        committed >> report(sync_id)
    return dag


class BrokenPortalFiles(DAG):
    """Stands for the portal files that failed to load: Airflow shows its error as an import
    error of the DAG file, while every valid portal's DAG still loads beside it."""

    def validate(self) -> None:
        raise PortalConfigError(self.description or "broken portal files")


def broken_portals_dag(errors: list[PortalConfigError]) -> DAG:
    return BrokenPortalFiles(
        dag_id="sis_sync__broken_portal_files",
        description="\n".join(str(e) for e in errors),
        schedule=None,
        start_date=START_DATE,
    )
