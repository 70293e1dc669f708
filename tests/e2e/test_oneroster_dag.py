"""The OneRoster REST portal's DAG end to end under dag.test, against the local server."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from airflow.utils.state import DagRunState

from include.sis_sync.lms.db import engine_for
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.oneroster import OneRosterServer, oneroster_data_from_district
from tests.helpers import run_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
CLIENT, SECRET = "e2e-client", "e2e-client-secret"


def oneroster_portal(make_portal, monkeypatch, server: OneRosterServer, secret: str = SECRET):
    """An auto-committing OneRoster REST portal reading ``server`` through a connection."""
    host, port = server.base_url.removeprefix("http://").split(":")
    monkeypatch.setenv(
        "AIRFLOW_CONN_ONEROSTER_E2E",
        json.dumps(
            {
                "conn_type": "http",
                "host": host,
                "port": int(port),
                "schema": "http",
                "login": CLIENT,
                "password": secret,
                "extra": {"token_url": server.token_url, "auth": "oauth2"},
            }
        ),
    )
    return make_portal(
        "oneroster_e2e",
        source={"provider": "oneroster_rest", "connection_id": "oneroster_e2e"},
        auto_commit=True,
        scheduled_mode="quick",
    )


def test_oneroster_portal_full_then_quick_sync(make_portal, monkeypatch) -> None:
    data = oneroster_data_from_district(generate_district("demo"))
    with OneRosterServer(data, client_id=CLIENT, client_secret=SECRET) as server:
        portal = oneroster_portal(make_portal, monkeypatch, server)
        assert portal.run().state == DagRunState.SUCCESS
        student = next(u for u in server.objects("users") if u["role"] == "student")
        server.mark_deleted("users", student["sourcedId"])
        assert portal.run().state == DagRunState.SUCCESS
        assert all(SECRET not in json.dumps(r) for r in server.requests)
    with engine_for(portal.lms_url).connect() as conn:
        runs = conn.execute(sa.text("SELECT status, ran_as FROM sis_sync_runs ORDER BY id")).all()
        archived = (
            conn.execute(sa.text("SELECT sis_key FROM lms_users WHERE archived_at IS NOT NULL"))
            .scalars()
            .all()
        )
    assert [tuple(r) for r in runs] == [("committed", "full"), ("committed", "quick")]
    assert archived == [student["sourcedId"]]


def test_a_wrong_client_secret_fails_extract_once_without_retries(make_portal, monkeypatch) -> None:
    """Airflow does not retry what a retry cannot fix: one token request, one failed try."""
    data = oneroster_data_from_district(generate_district("demo"))
    with OneRosterServer(data, client_id=CLIENT, client_secret=SECRET) as server:
        portal = oneroster_portal(make_portal, monkeypatch, server, secret="not-the-secret")
        run = portal.run()
        token_requests = [r for r in server.requests if r.get("path") == "/oauth/token"]
    assert run.state == DagRunState.FAILED
    extract = run.get_task_instance("extract")
    assert (extract.state, extract.try_number) == ("failed", 1)
    assert len(token_requests) == 1
    (row,) = run_rows(portal.lms_url)
    assert row["status"] == "failed" and "refused client id" in row["error"]
    assert "not-the-secret" not in row["error"]
