"""The Clever portal's DAG end to end under dag.test, against the local Clever server."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from airflow.utils.state import DagRunState

from include.sis_sync.lms.db import engine_for
from include.sis_sync.report import build_report
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.clever import (
    CleverData,
    CleverSimulator,
    clever_data_from_district,
)
from tests.helpers import active_keys, run_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
TOKEN = "e2e-district-token"


def clever_portal(make_portal, monkeypatch, server: CleverSimulator, data: CleverData):
    """An auto-committing Clever portal reading ``server`` through an Airflow connection."""
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
    return make_portal(
        "clever_e2e",
        source={
            "provider": "clever",
            "connection_id": "clever_e2e",
            "district_id": data.district["id"],
        },
        auto_commit=True,
        scheduled_mode="quick",
    )


def test_clever_portal_full_then_quick_sync(make_portal, monkeypatch) -> None:
    data = clever_data_from_district(generate_district("demo"))
    with CleverSimulator(data, token=TOKEN) as server:
        portal = clever_portal(make_portal, monkeypatch, server, data)
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


def test_a_district_sharing_no_terms_or_courses_syncs_through_the_dag(
    make_portal, monkeypatch
) -> None:
    """Terms and courses are optional Clever data types: a district may share neither."""
    data = clever_data_from_district(generate_district("demo")).without_terms_or_courses()
    with CleverSimulator(data, token=TOKEN) as server:
        portal = clever_portal(make_portal, monkeypatch, server, data)
        assert portal.run().state == DagRunState.SUCCESS
    assert active_keys(portal.lms_url, "lms_sections") == set(data.sections)
    enrolled = {
        f"{s['id']}:{u}" for s in data.sections.values() for u in s["students"] + s["teachers"]
    }
    assert len(active_keys(portal.lms_url, "lms_enrollments")) >= len(enrolled) > 0
    assert active_keys(portal.lms_url, "lms_terms") == active_keys(portal.lms_url, "lms_courses")
    assert active_keys(portal.lms_url, "lms_terms") == set()
    (run,) = run_rows(portal.lms_url)
    assert run["status"] == "committed"
    report = build_report(engine_for(portal.lms_url), run["id"])
    lines = [w["message"] for w in report["warnings"] if w["kind"] == "sent_none"]
    assert any("the SIS sent no terms" in line for line in lines)
    assert any("the SIS sent no courses" in line for line in lines)
