"""The admin pages' routes, mounted by Airflow's API server under ``/sis-sync``.

Airflow does not protect a plugin's routes: every route here depends on Airflow's own access
checks for the portal's DAG (read for pages; edit for selections and Enable/Disable; the
approval's edit right for Commit and Reject; run creation for Sync now), taken from the path's
``dag_id`` by the auth manager, never from role names. Posts also pass the form check
(``csrf``). The routes read through ``include.sis_sync.queries`` and render ``views``; writes
go through ``staging`` (the selection) and through Airflow itself (``airflow_side``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.api_fastapi.logging.decorators import action_logging
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import FormData

from include.sis_sync import queries
from include.sis_sync.config import Portal
from include.sis_sync.diff import ACTIONS
from include.sis_sync.links import ADMIN_ROOT as ROOT
from include.sis_sync.links import airflow_run_url, report_url
from include.sis_sync.plugin import airflow_side, browse_routes, csrf
from include.sis_sync.plugin.common import (
    Read,
    lms_engine,
    portal_of,
    render_page,
    user_key,
    valid_portals,
)
from include.sis_sync.plugin.views import render
from include.sis_sync.report import build_report, decision_line, ordered_labels
from include.sis_sync.runs import AWAITING_APPROVAL, RunClosed
from include.sis_sync.staging import SELECTABLE, save_page_selection, set_selected_where

log = logging.getLogger(__name__)
ENTITY_TITLES = {
    "organizations": "organizations",
    "terms": "terms",
    "courses": "courses",
    "users": "users",
    "user_organizations": "user-organizations",
    "sections": "sections",
    "enrollments": "enrollments",
}
SHOWN_ACTION_STATUS = {
    "staged": "staged",
    "applied": "applied",
    "not_selected": "skipped: unticked",
    "skipped": "skipped: see warning",
}

app = FastAPI(title="SIS sync admin", docs_url=None, redoc_url=None, openapi_url=None)
app.include_router(browse_routes.router)

Edit = Depends(requires_access_dag("PUT"))
Decide = Depends(requires_access_dag("PUT", DagAccessEntity.HITL_DETAIL))
Trigger = Depends(requires_access_dag("POST", DagAccessEntity.RUN))


# --------------------------------------------------------------------------------------------
# What every route needs
# --------------------------------------------------------------------------------------------


def _run(engine: sa.Engine, portal: Portal, run_id: int) -> dict[str, Any]:
    run = queries.find_run(engine, run_id)
    if run is None or run["portal_id"] != portal.id:
        raise HTTPException(404, f"portal {portal.id} has no sync {run_id}")
    return run


async def _checked_form(request: Request, user: GetUserDep) -> FormData:
    """The posted form, once its origin and its token are checked."""
    if not csrf.origin_ok(request.headers.get("origin"), request.headers.get("host")):
        raise HTTPException(403, "refused: the form was posted from another site")
    form = await request.form()
    if not csrf.token_ok(str(user.get_id()), form.get(csrf.FIELD)):  # type: ignore[arg-type]
        raise HTTPException(403, "refused: the form's token is missing or wrong; reload the page")
    return form


CheckedForm = Annotated[FormData, Depends(_checked_form)]


def _allowed(user: Any, dag_id: str, method: str, entity: DagAccessEntity | None = None) -> bool:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().is_authorized_dag(
        method=method,  # type: ignore[arg-type]
        access_entity=entity,
        details=DagDetails(id=dag_id),
        user=user,
    )


def _may_decide(user: Any, portal: Portal) -> bool:
    """Edit rights on the approval, and, when the portal names approvers, being one."""
    if not _allowed(user, portal.dag_id, "PUT", DagAccessEntity.HITL_DETAIL):
        return False
    return not portal.approvers or user_key(user) in portal.approvers


def _back(url: str, message: str, *, error: bool = False) -> RedirectResponse:
    """Post, redirect, get: the page shows what the post did."""
    joiner = "&" if "?" in url else "?"
    query = urlencode({"msg": message, **({"error": "1"} if error else {})})
    return RedirectResponse(f"{url}{joiner}{query}", status_code=303)


@app.exception_handler(HTTPException)
async def _error_page(request: Request, exc: HTTPException) -> HTMLResponse:
    """Errors as a readable page inside the Airflow UI (still with their status code)."""
    body = render("error.html", root=ROOT, status=exc.status_code, message=str(exc.detail))
    return HTMLResponse(body, status_code=exc.status_code, headers=exc.headers)


# --------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------


@app.get("/", response_class=HTMLResponse)
def portals_page(request: Request, user: GetUserDep, session: SessionDep) -> HTMLResponse:
    """Every portal the user may read, with its last sync and a badge when one waits."""
    portals = [p for p in valid_portals().values() if _allowed(user, p.dag_id, "GET")]
    engine = lms_engine()
    ids = [p.id for p in portals]
    latest, waiting = queries.latest_runs(engine, ids), queries.waiting_runs(engine, ids)
    dags = airflow_side.dag_states(session, [p.dag_id for p in portals])
    rows = [
        {
            "id": p.id,
            "dag_id": p.dag_id,
            "name": p.name,
            "provider": p.provider,
            "schedule": p.schedule,
            "auto_commit": p.auto_commit,
            "dag": dags[p.dag_id],
            "last": latest.get(p.id),
            "waiting": waiting.get(p.id),
        }
        for p in sorted(portals, key=lambda p: p.name.lower())
    ]
    return render_page("portals.html", request, user, portals=rows)


@app.get("/portals/{dag_id}", response_class=HTMLResponse, dependencies=[Read])
def status_page(
    dag_id: str, request: Request, user: GetUserDep, session: SessionDep
) -> HTMLResponse:
    portal, engine = portal_of(dag_id), lms_engine()
    last = queries.last_decided_run(engine, portal.id)
    return render_page(
        "status.html",
        request,
        user,
        portal=portal,
        dag_id=dag_id,
        dag=airflow_side.dag_states(session, [dag_id])[dag_id],
        in_flight=queries.in_flight_runs(engine, portal.id),
        last=last,
        last_decided_line=decision_line(last) if last else None,
        last_counts=_count_rows(last["counts"]) if last else [],
        actions=ACTIONS,
        schools=queries.schools(engine, portal.id),
        since_allowed=portal.source_provider().supports_since,
        can_edit=_allowed(user, dag_id, "PUT"),
        can_trigger=_allowed(user, dag_id, "POST", DagAccessEntity.RUN),
        can_decide=_may_decide(user, portal),
        started=_started_run(request, dag_id),
    )


def _started_run(request: Request, dag_id: str) -> dict[str, str] | None:
    """The run that Sync now just started, with its page in Airflow."""
    run_id = request.query_params.get("started")
    return {"id": run_id, "url": airflow_run_url(dag_id, run_id)} if run_id else None


@app.get("/portals/{dag_id}/history", response_class=HTMLResponse, dependencies=[Read])
def history_page(
    dag_id: str,
    request: Request,
    user: GetUserDep,
    after: int | None = None,
    before: int | None = None,
) -> HTMLResponse:
    portal = portal_of(dag_id)
    page = queries.history(lms_engine(), portal.id, after=after, before=before)
    return render_page("history.html", request, user, portal=portal, dag_id=dag_id, page=page)


@app.get("/portals/{dag_id}/runs/{run_id}", response_class=HTMLResponse, dependencies=[Read])
def report_page(
    dag_id: str,
    run_id: int,
    request: Request,
    user: GetUserDep,
    session: SessionDep,
    wafter: int | None = None,
    wbefore: int | None = None,
) -> HTMLResponse:
    portal, engine = portal_of(dag_id), lms_engine()
    run = _run(engine, portal, run_id)
    report = build_report(engine, run_id)
    answer = airflow_side.approval(session, dag_id, run["airflow_run_id"])
    waiting = run["status"] == AWAITING_APPROVAL and answer is not None and answer.waiting
    return render_page(
        "report.html",
        request,
        user,
        portal=portal,
        dag_id=dag_id,
        run=run,
        report=report,
        counts=_count_rows(report["counts"]),
        actions=ACTIONS,
        warnings=queries.warnings_page(engine, run_id, after=wafter, before=wbefore),
        warning_total=sum(w["count"] for w in report["warnings"]),
        answered=", ".join(answer.chosen) + f" by {answer.by}"
        if answer and answer.answered
        else None,
        decide=waiting and _may_decide(user, portal),
        airflow_run_url=airflow_run_url(dag_id, run["airflow_run_id"]),
    )


@app.get(
    "/portals/{dag_id}/runs/{run_id}/actions", response_class=HTMLResponse, dependencies=[Read]
)
def actions_page(
    dag_id: str,
    run_id: int,
    request: Request,
    user: GetUserDep,
    session: SessionDep,
    entity: str,
    action: str,
    kind: str | None = None,
    school: str | None = None,
    q: str | None = None,
    after: str | None = None,
    before: str | None = None,
) -> HTMLResponse:
    portal, engine = portal_of(dag_id), lms_engine()
    run = _run(engine, portal, run_id)
    flt = _filter(entity, action, kind, school, q, request.query_params.get("in", "key"))
    page = queries.action_page(engine, run_id, flt, after=after or None, before=before or None)
    editable, reason = _selection_open(session, run)
    answer = airflow_side.approval(session, dag_id, run["airflow_run_id"])
    schools = queries.schools(engine, portal.id)
    title = ENTITY_TITLES[entity] + (f" ({kind})" if kind else "") + f": {action}"
    return render_page(
        "actions.html",
        request,
        user,
        portal=portal,
        dag_id=dag_id,
        run=run,
        flt=flt,
        title=title,
        page=page,
        counted=queries.count_actions(engine, run_id, flt),
        links=queries.action_links(engine, portal.id, entity, page.rows),
        kinds=queries.action_kinds(engine, run_id, entity, action) if entity == "users" else [],
        schools=schools,
        school_names=queries.school_names(engine, portal.id, run_id),
        has_names=entity not in ("user_organizations", "enrollments"),
        editable=editable and _allowed(user, dag_id, "PUT"),
        closed_reason=reason,
        decide=bool(answer and answer.waiting) and _may_decide(user, portal),
        filter_fields=_filter_fields(flt),
        position={"after": after, "before": before},
        shown_action_status=SHOWN_ACTION_STATUS,
    )


@app.get("/airflow-runs/{dag_id}/{airflow_run_id}", dependencies=[Read])
def airflow_run_report(dag_id: str, airflow_run_id: str) -> RedirectResponse:
    """From a DAG run's page in Airflow to its sync's report (its newest attempt)."""
    from include.sis_sync.runs import run_of_airflow_run

    portal_of(dag_id)
    run_id = run_of_airflow_run(lms_engine(), dag_id, airflow_run_id)
    if run_id is None:
        raise HTTPException(404, f"DAG run {airflow_run_id} has not opened a sync (yet)")
    return RedirectResponse(report_url(dag_id, run_id), status_code=303)


# --------------------------------------------------------------------------------------------
# Changes
# --------------------------------------------------------------------------------------------


@app.post(
    "/portals/{dag_id}/runs/{run_id}/selection",
    dependencies=[Edit, Depends(action_logging("sis_sync_selection"))],
)
def save_selection(
    dag_id: str,
    run_id: int,
    user: GetUserDep,
    session: SessionDep,
    form: CheckedForm,
) -> RedirectResponse:
    """Save the ticks of the page shown, or tick or untick the whole filtered list; with
    ``commit`` save the page and answer Approve, with ``reject`` answer Reject."""
    portal, engine = portal_of(dag_id), lms_engine()
    run = _run(engine, portal, run_id)
    flt = _filter(
        str(form.get("entity", "")),
        str(form.get("action", "")),
        _text(form.get("kind")),
        _text(form.get("school")),
        _text(form.get("q")),
        str(form.get("in") or "key"),
    )
    back = f"{ROOT}/portals/{dag_id}/runs/{run_id}/actions?" + urlencode(
        {
            **_filter_fields(flt),
            "after": form.get("after") or "",
            "before": form.get("before") or "",
        }
    )
    op = str(form.get("op") or "save")
    if op == "reject":
        return _decide(session, user, portal, run, "Reject", back)
    open_, reason = _selection_open(session, run)
    if not open_:
        raise HTTPException(409, f"refused: {reason}")
    try:
        if op in ("tick_all", "untick_all"):
            n = set_selected_where(engine, run_id, flt.clause(run_id), selected=op == "tick_all")
            message = f"{'Ticked' if op == 'tick_all' else 'Unticked'} {n} action(s)."
        else:
            shown = _ids(form.getlist("shown"))
            ticked = set(_ids(form.getlist("ticked"))) & set(shown)
            save_page_selection(engine, run_id, shown, ticked)
            message = f"Selection saved: {len(ticked)} of {len(shown)} shown action(s) ticked."
    except RunClosed as exc:
        raise HTTPException(409, f"refused: {exc}") from exc
    if op == "commit":
        return _decide(session, user, portal, run, "Approve", back, saved=message)
    return _back(back, message)


@app.post(
    "/portals/{dag_id}/runs/{run_id}/decision",
    dependencies=[Decide, Depends(action_logging("sis_sync_decision"))],
)
def decide(
    dag_id: str,
    run_id: int,
    user: GetUserDep,
    session: SessionDep,
    form: CheckedForm,
) -> RedirectResponse:
    """Commit (Approve) or Reject a sync that waits, answering its approval in Airflow."""
    portal, engine = portal_of(dag_id), lms_engine()
    run = _run(engine, portal, run_id)
    option = str(form.get("answer") or "")
    if option not in ("Approve", "Reject"):
        raise HTTPException(400, "the answer must be Approve (commit) or Reject")
    return _decide(session, user, portal, run, option, report_url(dag_id, run_id))


def _decide(
    session: Any,
    user: Any,
    portal: Portal,
    run: dict[str, Any],
    option: str,
    back: str,
    saved: str = "",
) -> RedirectResponse:
    if not _may_decide(user, portal):
        raise HTTPException(
            403, f"{user_key(user)} may not commit or reject syncs of portal {portal.id}"
        )
    waiting = airflow_side.approval(session, portal.dag_id, run["airflow_run_id"])
    if run["status"] != AWAITING_APPROVAL or waiting is None or not waiting.waiting:
        state = "an answer was already given" if waiting and waiting.answered else run["status"]
        raise HTTPException(409, f"refused: sync {run['id']} does not wait for approval ({state})")
    airflow_side.answer(session, user, portal.dag_id, run["airflow_run_id"], option)
    done = (
        "Commit asked: the sync applies the ticked actions"
        if option == "Approve"
        else ("Rejected: nothing is applied")
    )
    return _back(back, f"{saved} {done}.".strip())


@app.post(
    "/portals/{dag_id}/sync",
    dependencies=[Trigger, Depends(action_logging("sis_sync_sync_now"))],
)
def sync_now(
    dag_id: str,
    request: Request,
    user: GetUserDep,
    session: SessionDep,
    form: CheckedForm,
) -> RedirectResponse:
    """Trigger the portal's DAG with the form's params (schools picked by name)."""
    portal = portal_of(dag_id)
    back = f"{ROOT}/portals/{dag_id}"
    if airflow_side.dag_states(session, [dag_id])[dag_id].paused:
        return _back(back, "The portal is disabled: enable it first, then sync.", error=True)
    conf = _sync_conf(portal, form)
    run_id = airflow_side.trigger(session, request, user, dag_id, conf)
    return _back(f"{back}?{urlencode({'started': run_id})}", f"Sync started: Airflow run {run_id}.")


@app.post(
    "/portals/{dag_id}/paused",
    dependencies=[Edit, Depends(action_logging("sis_sync_pause"))],
)
def pause(dag_id: str, session: SessionDep, form: CheckedForm) -> RedirectResponse:
    """Disable (pause) or enable (unpause) the portal's DAG."""
    portal_of(dag_id)
    paused = str(form.get("paused")) == "true"
    airflow_side.set_paused(session, dag_id, paused)
    state = "disabled: nothing runs until it is enabled" if paused else "enabled"
    return _back(f"{ROOT}/portals/{dag_id}", f"Portal {state}.")


# --------------------------------------------------------------------------------------------
# Helpers of the routes
# --------------------------------------------------------------------------------------------


def _filter(
    entity: str,
    action: str,
    kind: str | None,
    school: str | None,
    search: str | None,
    search_in: str,
) -> queries.ActionFilter:
    try:
        return queries.ActionFilter(
            entity, action, kind or None, school or None, search or None, search_in
        )
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc


def _filter_fields(flt: queries.ActionFilter) -> dict[str, str]:
    fields = {"entity": flt.entity, "action": flt.action, "kind": flt.kind or ""}
    fields |= {"school": flt.school or "", "q": flt.search or "", "in": flt.search_in}
    return {k: v for k, v in fields.items() if v}


def _selection_open(session: Any, run: dict[str, Any]) -> tuple[bool, str]:
    """Whether the run's selection may still change, and if not why."""
    if run["status"] not in SELECTABLE:
        return False, f"This sync is {run['shown_status']}: its selection can no longer change."
    answer = airflow_side.approval(session, run["dag_id"], run["airflow_run_id"])
    if answer is not None and answer.answered:
        return False, (
            f"An answer ({', '.join(answer.chosen)} by {answer.by}) was already given: the "
            "selection can no longer change."
        )
    return True, ""


def _count_rows(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Counts per entity label (users per role) in the model's order, with their filter."""
    rows = []
    for label in ordered_labels(counts):
        values = counts[label]
        if not any(values.get(a, 0) for a in ACTIONS):
            continue
        entity, _, kind = label.partition(" (")
        rows.append(
            {
                "label": ENTITY_TITLES.get(entity, entity) + (f" ({kind}" if kind else ""),
                "entity": entity,
                "kind": kind.rstrip(")") or None,
                "per_action": values,
            }
        )
    return rows


def _sync_conf(portal: Portal, form: FormData) -> dict[str, Any]:
    """The run's params from the Sync now form: schools must be the portal's own."""
    mode = str(form.get("mode") or portal.scheduled_mode)
    if mode not in ("full", "quick"):
        raise HTTPException(400, "mode must be full or quick")
    known = {s["sis_key"] for s in queries.schools(lms_engine(), portal.id)}
    schools = [str(s) for s in form.getlist("schools")]
    unknown = sorted(set(schools) - known)
    if unknown:
        raise HTTPException(400, f"not schools of portal {portal.id}: {', '.join(unknown)}")
    conf: dict[str, Any] = {
        "mode": mode,
        "schools": schools,
        "auto_commit": str(form.get("auto_commit")) == "true",
    }
    since = _text(form.get("since"))
    if since and portal.source_provider().supports_since:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError as exc:
            raise HTTPException(400, f"since: {since!r} is not a date and time") from exc
        conf["since"] = moment.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return conf


def _ids(values: list[Any]) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError as exc:
        raise HTTPException(400, "action ids must be numbers") from exc


def _text(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None
