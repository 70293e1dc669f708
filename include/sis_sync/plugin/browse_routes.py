"""The browse pages' routes: a portal's overview, schools, people and classes, each record with
its sync history (``include.sis_sync.browse``).

They only read. Each needs read access to the portal's DAG, checked by Airflow's auth manager
from the path's ``dag_id`` (``common.Read``), exactly as the review pages are.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from include.sis_sync import browse
from include.sis_sync.config import Portal
from include.sis_sync.lms import counts
from include.sis_sync.plugin.common import Read, lms_engine, portal_of, render_page
from include.sis_sync.queries import COUNT_LIMIT

router = APIRouter()
# The people lists, by the path's word: the role they show and their title.
PEOPLE = {"students": "student", "teachers": "teacher", "administrators": "administrator"}


def _nav(portal: Portal, engine: sa.Engine, current: str) -> dict[str, Any]:
    """What every browse page shows around its content: the tabs, and the school filter's
    choices (none in a single-school portal)."""
    choices = browse.school_choices(engine, portal.id)
    lists = [w for w in PEOPLE if w != "administrators" or portal.entities.administrators]
    in_lms = browse.lms_schools(engine, portal.id)
    return {
        "portal": portal,
        "dag_id": portal.dag_id,
        "current": current,
        "people_lists": lists,
        "school_choices": choices if len(choices) > 1 else [],
        "school_names": {k: r["name"] or k for k, r in in_lms.items()}
        | {c["sis_key"]: c["name"] for c in choices},
    }


def _text(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


@router.get("/portals/{dag_id}/overview", response_class=HTMLResponse, dependencies=[Read])
def overview_page(dag_id: str, request: Request, user: GetUserDep) -> HTMLResponse:
    """Counts per portal and school: active and archived in the LMS, and in the SIS's read."""
    portal, engine = portal_of(dag_id), lms_engine()
    return render_page(
        "overview.html",
        request,
        user,
        view=browse.overview(engine, portal.id),
        whats=counts.WHATS,
        **_nav(portal, engine, "overview"),
    )


@router.get("/portals/{dag_id}/schools", response_class=HTMLResponse, dependencies=[Read])
def schools_page(dag_id: str, request: Request, user: GetUserDep) -> HTMLResponse:
    portal, engine = portal_of(dag_id), lms_engine()
    rows = browse.schools(engine, portal.id)
    return render_page(
        "schools.html",
        request,
        user,
        rows=rows,
        read=rows[0] if rows else None,
        **_nav(portal, engine, "schools"),
    )


@router.get(
    "/portals/{dag_id}/schools/{sis_key:path}", response_class=HTMLResponse, dependencies=[Read]
)
def school_page(dag_id: str, sis_key: str, request: Request, user: GetUserDep) -> HTMLResponse:
    portal, engine = portal_of(dag_id), lms_engine()
    record = browse.school(engine, portal.id, sis_key)
    if record is None:
        raise HTTPException(404, f"portal {portal.id} has no school {sis_key}")
    return render_page(
        "school.html",
        request,
        user,
        school=record,
        counted=counts.read(engine, portal.id).get(sis_key, {}),
        whats=counts.WHATS,
        **_nav(portal, engine, "schools"),
    )


@router.get("/portals/{dag_id}/people/{who}", response_class=HTMLResponse, dependencies=[Read])
def people_page(
    dag_id: str,
    who: str,
    request: Request,
    user: GetUserDep,
    school: str | None = None,
    state: str = "active",
    q: str | None = None,
    after: int | None = None,
    before: int | None = None,
) -> HTMLResponse:
    """Students, teachers or administrators: filtered, searched, in name order, paged."""
    portal, engine = portal_of(dag_id), lms_engine()
    if who not in PEOPLE:
        raise HTTPException(404, f"no list of {who}: {', '.join(PEOPLE)}")
    try:
        flt = browse.PeopleFilter(PEOPLE[who], state, _text(school), _text(q))
        page = browse.people_page(engine, portal.id, flt, after=after, before=before)
    except (ValueError, LookupError) as exc:
        raise HTTPException(400, str(exc)) from exc
    return render_page(
        "people.html",
        request,
        user,
        who=who,
        flt=flt,
        page=page,
        total=browse.count_people(engine, portal.id, flt),
        count_limit=COUNT_LIMIT,
        fields={"school": flt.school, "state": flt.state, "q": flt.search},
        **_nav(portal, engine, who),
    )


@router.get(
    "/portals/{dag_id}/person/{sis_key:path}", response_class=HTMLResponse, dependencies=[Read]
)
def person_page(dag_id: str, sis_key: str, request: Request, user: GetUserDep) -> HTMLResponse:
    """A person's fields, schools, classes and sync history."""
    portal, engine = portal_of(dag_id), lms_engine()
    record = browse.person(engine, portal.id, sis_key)
    if record is None:
        raise HTTPException(404, f"portal {portal.id} has no person {sis_key} in the LMS")
    listed = next((w for w, role in PEOPLE.items() if role == record["role"]), None)
    return render_page(
        "person.html",
        request,
        user,
        person=record,
        fields=browse.PERSON_FIELDS,
        **_nav(portal, engine, listed or "students"),
    )


@router.get("/portals/{dag_id}/classes", response_class=HTMLResponse, dependencies=[Read])
def classes_page(
    dag_id: str,
    request: Request,
    user: GetUserDep,
    school: str | None = None,
    term: str | None = None,
    course: str | None = None,
    state: str = "active",
    q: str | None = None,
    after: int | None = None,
    before: int | None = None,
) -> HTMLResponse:
    """Classes (Clever's sections): filtered by school, term and course, searched, paged."""
    portal, engine = portal_of(dag_id), lms_engine()
    try:
        flt = browse.ClassFilter(state, _text(school), _text(term), _text(course), _text(q))
        page = browse.class_page(engine, portal.id, flt, after=after, before=before)
    except (ValueError, LookupError) as exc:
        raise HTTPException(400, str(exc)) from exc
    return render_page(
        "classes.html",
        request,
        user,
        flt=flt,
        page=page,
        total=browse.count_classes(engine, portal.id, flt),
        count_limit=COUNT_LIMIT,
        choices=browse.class_choices(engine, portal.id, flt.school),
        fields={
            "school": flt.school,
            "term": flt.term,
            "course": flt.course,
            "state": flt.state,
            "q": flt.search,
        },
        **_nav(portal, engine, "classes"),
    )


@router.get(
    "/portals/{dag_id}/class/{sis_key:path}", response_class=HTMLResponse, dependencies=[Read]
)
def class_page(dag_id: str, sis_key: str, request: Request, user: GetUserDep) -> HTMLResponse:
    """A class's fields, teachers, students and sync history."""
    portal, engine = portal_of(dag_id), lms_engine()
    record = browse.class_record(engine, portal.id, sis_key)
    if record is None:
        raise HTTPException(404, f"portal {portal.id} has no class {sis_key} in the LMS")
    return render_page(
        "class.html",
        request,
        user,
        section=record,
        fields=browse.CLASS_FIELDS,
        **_nav(portal, engine, "classes"),
    )
