"""End-to-end fixtures: Airflow's metadata database, a portal with its drops and LMS, and a
responder that answers the approval step through Airflow's REST API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_portal


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[None]:
    """Fresh Airflow metadata tables on the session's throw-away SQLite file."""
    from airflow.utils import db

    db.resetdb()
    yield


@dataclass
class PortalUnderTest:
    """A portal file, its drops folder and its own LMS database."""

    portal_id: str
    drops: Path
    lms_url: str

    @property
    def dag_id(self) -> str:
        return f"sis_sync__{self.portal_id}"

    def dag(self) -> Any:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag()
        dag = bag.get_dag(self.dag_id)
        assert dag is not None, bag.import_errors
        return dag

    def run(self, **conf: Any) -> Any:
        """One bounded dag.test run with the given trigger params."""
        return self.dag().test(run_conf=conf)


@pytest.fixture
def make_portal(
    airflow_db: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Any]:
    """Write a portal file (overrides as keyword arguments) with drops under tmp_path and a
    fresh LMS database behind the ``lms_db`` connection: SQLite, or PostgreSQL when the
    portal is made with ``lms="postgres"``."""
    import json
    import os
    import uuid

    import sqlalchemy as sa

    from include.sis_sync.lms.db import engine_for, migrate
    from tests.conftest import POSTGRES_URL, TEMPLATE

    created: list[str] = []
    monkeypatch.setenv("SIS_SYNC_DATA_URL", str(tmp_path / "runs"))

    def lms_database(kind: str) -> str:
        if kind == "sqlite":
            path = tmp_path / "lms.db"
            monkeypatch.setenv(
                "AIRFLOW_CONN_LMS_DB", json.dumps({"conn_type": "sqlite", "host": str(path)})
            )
            url = f"sqlite:///{path}"
            migrate(url)
            return url
        admin = request.getfixturevalue("postgres_admin")
        name = f"lms_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        created.append(name)
        server = sa.make_url(POSTGRES_URL)
        conn_json = {
            "conn_type": "postgres",
            "host": server.host,
            "port": server.port,
            "login": server.username,
            "schema": name,
        }
        monkeypatch.setenv("AIRFLOW_CONN_LMS_DB", json.dumps(conn_json))
        return server.set(database=name).render_as_string(hide_password=False)

    def make(portal_id: str, lms: str = "sqlite", **overrides: Any) -> PortalUnderTest:
        drops = tmp_path / "drops"
        overrides.setdefault("source", {"provider": "oneroster_csv", "path": f"{drops}/{{date}}"})
        write_portal(Path(os.environ["SIS_SYNC_PORTALS_DIR"]), id=portal_id, **overrides)
        return PortalUnderTest(portal_id, drops, lms_database(lms))

    yield make
    for name in created:
        admin = request.getfixturevalue("postgres_admin")
        engine_for(
            sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        ).dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Responder:
    """Answers the approval step of a DAG from a thread, as an admin would in the UI: with an
    option ("Approve", "Reject"), or by marking the waiting task with a state ("success"),
    which any user with edit rights on the DAG can do."""

    client: Any
    dag_id: str
    option: str
    mark: str | None = None
    seen_bodies: list[str] = field(default_factory=list)
    answered: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def loop(self, deadline_seconds: float = 240) -> None:
        deadline = time.monotonic() + deadline_seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            response = self.client.get(
                f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails",
                params={"response_received": False},
            )
            # Only a request whose task has parked: the request row is written before the
            # step's notifiers run (a mail), and dag.test misses an answer given before then.
            pending = [
                h
                for h in response.json().get("hitl_details", [])
                if h["task_instance"]["task_id"] == "await_approval"
                and h["task_instance"]["state"] == "awaiting_input"
            ]
            if pending:
                detail = pending[0]
                self.seen_bodies.append(detail.get("body") or "")
                run_id = detail["task_instance"]["dag_run_id"]
                task = f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances/await_approval"
                if self.mark:
                    answer = self.client.patch(task, json={"new_state": self.mark})
                else:
                    answer = self.client.patch(
                        f"{task}/-1/hitlDetails",
                        json={"chosen_options": [self.option], "params_input": {}},
                    )
                assert answer.status_code == 200, answer.text
                self.answered.set()
                return
            time.sleep(0.5)


@pytest.fixture
def api_client(airflow_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Airflow's REST API in-process, on the same metadata database as dag.test."""
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    purge_cached_app()
    with TestClient(create_app(apps="core")) as client:
        yield client
    purge_cached_app()


@pytest.fixture
def respond(api_client: Any) -> Iterator[Any]:
    """``respond(dag_id, "Approve"|"Reject")`` starts a responder thread for the next run;
    ``respond(dag_id, mark="success")`` marks the waiting approval task instead."""
    responders: list[Responder] = []

    def start(dag_id: str, option: str = "", mark: str | None = None) -> Responder:
        responder = Responder(api_client, dag_id, option, mark)
        threading.Thread(target=responder.loop, daemon=True).start()
        responders.append(responder)
        return responder

    yield start
    for responder in responders:
        responder.stop.set()
