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
def make_portal(airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write a portal file (overrides as keyword arguments) with drops under tmp_path and a
    fresh LMS database behind the ``lms_db`` connection."""
    import json
    import os

    from include.sis_sync.lms.db import migrate

    lms_path = tmp_path / "lms.db"
    url = f"sqlite:///{lms_path}"
    migrate(url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_LMS_DB", json.dumps({"conn_type": "sqlite", "host": str(lms_path)})
    )
    monkeypatch.setenv("SIS_SYNC_DATA_URL", str(tmp_path / "runs"))

    def make(portal_id: str, **overrides: Any) -> PortalUnderTest:
        drops = tmp_path / "drops"
        overrides.setdefault("source", {"path": f"{drops}/{{date}}"})
        write_portal(Path(os.environ["SIS_SYNC_PORTALS_DIR"]), id=portal_id, **overrides)
        return PortalUnderTest(portal_id, drops, url)

    return make


@dataclass
class Responder:
    """Answers the approval step of a DAG from a thread, as an admin would in the UI."""

    client: Any
    dag_id: str
    option: str
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
            pending = [
                h
                for h in response.json().get("hitl_details", [])
                if h["task_instance"]["task_id"] == "await_approval"
            ]
            if pending:
                detail = pending[0]
                self.seen_bodies.append(detail.get("body") or "")
                run_id = detail["task_instance"]["dag_run_id"]
                answer = self.client.patch(
                    f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances/"
                    "await_approval/-1/hitlDetails",
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
    """``respond(dag_id, "Approve"|"Reject")`` starts a responder thread for the next run."""
    responders: list[Responder] = []

    def start(dag_id: str, option: str) -> Responder:
        responder = Responder(api_client, dag_id, option)
        threading.Thread(target=responder.loop, daemon=True).start()
        responders.append(responder)
        return responder

    yield start
    for responder in responders:
        responder.stop.set()
