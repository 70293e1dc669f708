"""SIS sync's Airflow plugin: the admin pages, and each sync's outcome as its DAG run's note.

The admin pages (``include/sis_sync/plugin``) are a FastAPI app that the API server mounts at
``/sis-sync``; a "SIS sync" entry in the navigation shows them inside the Airflow UI, and a
DAG run's page gets a "Sync report" tab.

A rejected or expired sync ends as a successful DAG run, green in the runs list like a
committed one. When a portal's DAG run ends, this listener (run by the scheduler, and by
``dag.test``) writes the sync's outcome as the run's note: committed with its counts and who
approved, rejected by whom, expired, refused or failed and why. A note an admin wrote
(not starting with "SIS sync") is left as it is.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)
DAG_PREFIX = "sis_sync__"
NOTE_LIMIT = 1000  # Airflow's dag_run_note.content


def _write_note(dag_run: Any) -> None:
    """Never raises: a listener's error must not disturb the scheduler."""
    if not str(dag_run.dag_id).startswith(DAG_PREFIX):
        return
    try:
        from include.sis_sync.lms.db import engine_for
        from include.sis_sync.report import outcome_note

        note = outcome_note(engine_for(_lms_url()), dag_run.dag_id, dag_run.run_id)
        if note:
            _save_note(dag_run, note)
    except Exception:
        log.exception("could not write the sync outcome of %s as its note", dag_run.run_id)


def _lms_url() -> str:
    """The ``lms_db`` connection's URL, looked up on a thread of its own.

    In the scheduler a listener runs inside the scheduler's database session. Looking the
    connection up in Airflow's metadata database on the same thread would use (and then close)
    that very session, detaching the scheduler's objects: the scheduler then crashes. A thread
    has a session of its own.
    """
    from concurrent.futures import ThreadPoolExecutor

    from include.sis_sync.cli import lms_url_from_env

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sis-sync-note") as pool:
        return pool.submit(lms_url_from_env).result(timeout=30)


def _save_note(dag_run: Any, note: str) -> None:
    """In the scheduler the run belongs to its session: the note joins that transaction.
    ``dag.test`` hands over a detached run: the note gets a session of its own."""
    from airflow.models.dagrun import DagRunNote
    from airflow.utils.session import create_session
    from sqlalchemy.orm import object_session

    from include.sis_sync.report import NOTE_PREFIX

    def save(session: Any) -> None:
        current = session.get(DagRunNote, dag_run.id)
        if current is None:
            current = DagRunNote(content=None)
            current.dag_run_id = dag_run.id
            session.add(current)
        if not current.content or current.content.startswith(NOTE_PREFIX):
            current.content = note[:NOTE_LIMIT]  # an admin's own note is left as it is

    session = object_session(dag_run)
    if session is not None:
        save(session)
        return
    with create_session() as own:
        save(own)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _write_note(dag_run)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _write_note(dag_run)


def _admin_app() -> Any:
    from include.sis_sync.plugin.app import app

    return app


class SisSyncPlugin(AirflowPlugin):
    name = "sis_sync"
    listeners = [sys.modules[__name__]]
    fastapi_apps = [{"app": _admin_app(), "url_prefix": "/sis-sync", "name": "SIS sync"}]
    external_views = [
        {
            "name": "SIS sync",
            "href": "sis-sync/",
            "url_route": "sis-sync",
            "destination": "nav",
        },
        {
            "name": "Sync report",
            "href": "sis-sync/airflow-runs/{DAG_ID}/{RUN_ID}",
            "url_route": "sis-sync-run",
            "destination": "dag_run",
        },
    ]
