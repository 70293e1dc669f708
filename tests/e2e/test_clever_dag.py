"""The Clever portal's DAG end to end under dag.test, against the local Clever server."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from airflow.utils.state import DagRunState

from include.sis_sync.lms.db import engine_for
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.clever import CleverSimulator, clever_data_from_district

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
TOKEN = "e2e-district-token"


def test_clever_portal_full_then_quick_sync(make_portal, monkeypatch) -> None:
    data = clever_data_from_district(generate_district("demo"))
    with CleverSimulator(data, token=TOKEN) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        monkeypatch.setenv(
            "AIRFLOW_CONN_CLEVER_E2E",
            json.dumps(
                {
                    "conn_type": "http",
                    "host": host,
                    "port": int(port),
                    "schema": "http",
                    "password": TOKEN,
                }
            ),
        )
        portal = make_portal(
            "clever_e2e",
            provider="clever",
            source=None,
            clever={"connection_id": "clever_e2e", "district_id": data.district["id"]},
            auto_commit=True,
            scheduled_mode="quick",
        )
        first = portal.run()
        assert first.state == DagRunState.SUCCESS
        student = next(u for u in server.records("users").values() if "student" in u["roles"])
        server.update_user(student["id"], {"email": "changed@example.org"})
        server.delete_user(
            next(
                u
                for u in server.records("users").values()
                if "student" in u["roles"] and u["id"] != student["id"]
            )["id"]
        )
        second = portal.run()
        assert second.state == DagRunState.SUCCESS
        assert all(r.get("path", "").startswith("/v3.0") for r in server.requests)
    with engine_for(portal.lms_url).connect() as conn:
        runs = conn.execute(
            sa.text("SELECT status, ran_as, checkpoint FROM sis_sync_runs ORDER BY id")
        ).all()
        email = conn.execute(
            sa.text("SELECT email FROM lms_users WHERE sis_key = :k"), {"k": student["id"]}
        ).scalar()
        archived = conn.execute(
            sa.text("SELECT count(*) FROM lms_users WHERE archived_at IS NOT NULL")
        ).scalar()
    assert [(status, ran_as) for status, ran_as, _ in runs] == [
        ("committed", "full"),
        ("committed", "quick"),
    ]
    assert runs[1][2] != runs[0][2]  # the checkpoint moved to the newest event
    assert email == "changed@example.org"
    assert archived == 1
