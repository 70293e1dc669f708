"""What every admin page route needs: the portal of a path's DAG id, the LMS's engine, the
signed-in user's key, the read-access dependency and rendering a page."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from include.sis_sync.config import Portal, load_portals
from include.sis_sync.links import ADMIN_ROOT as ROOT
from include.sis_sync.plugin import csrf
from include.sis_sync.plugin.views import render

# Airflow's own check of read access to the path's DAG (per DAG with an auth manager that
# has per-DAG permissions, such as FAB's; all or nothing with the simple auth manager).
Read = Depends(requires_access_dag("GET"))


def valid_portals() -> dict[str, Portal]:
    """The valid portal files, by DAG id (read per request: files change without a restart)."""
    valid, _errors = load_portals()
    return {p.dag_id: p for p in valid}


def portal_of(dag_id: str) -> Portal:
    portal = valid_portals().get(dag_id)
    if portal is None:
        raise HTTPException(404, f"no portal has the DAG {dag_id}")
    return portal


def lms_engine() -> sa.Engine:
    from include.sis_sync.cli import lms_url_from_env
    from include.sis_sync.lms.db import engine_for

    return engine_for(lms_url_from_env())


def user_key(user: Any) -> str:
    return str(user.get_id())


def render_page(template: str, request: Request, user: Any, **values: Any) -> HTMLResponse:
    flash = request.query_params.get("msg")
    return HTMLResponse(
        render(
            template,
            root=ROOT,
            user=user,
            csrf=csrf.token_for(user_key(user)),
            flash=flash,
            flash_error=request.query_params.get("error") == "1",
            **values,
        )
    )
