"""Whole syncs through Airflow's dag.test: auto-commit, approval, guards and replays.

Every run that may stop at the approval step has a responder thread answering it through the
REST API, and every test is bounded by a timeout: nothing here can hang.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pandas as pd
import pytest
import sqlalchemy as sa
from airflow.utils.state import DagRunState

from include.sis_sync.lms.db import engine_for
from include.sis_sync.sample.generator import (
    generate_district,
    next_day,
    write_delta_drop,
    write_drop,
)
from tests.helpers import dag_run_note, lms_rows, run_rows, write_mass_archive_drops

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _archived(url: str, run_id: int, entity: str) -> set[str]:
    with engine_for(url).connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT sis_key FROM sis_sync_actions WHERE run_id = :r AND entity = :e "
                    "AND action = 'archive' AND status = 'applied'"
                ),
                {"r": run_id, "e": entity},
            ).scalars()
        )


@pytest.mark.parametrize("lms", ["sqlite", "postgres"])
def test_bulk_then_delta_drop_with_auto_commit(make_portal, lms: str) -> None:
    portal = make_portal(f"bulkdelta_{lms}", lms=lms, auto_commit=True)
    day1 = generate_district("demo")
    day2 = next_day(day1, seed=7, add=0.02, update=0.02, archive=0.02)
    write_drop(day1, portal.drops / "2026-09-01")
    write_delta_drop(day1, day2, portal.drops / "2026-09-02", last_modified="2026-09-02T06:00:00Z")

    first = portal.run(drop_date="2026-09-01")
    assert first.state == DagRunState.SUCCESS
    second = portal.run(drop_date="2026-09-02")
    assert second.state == DagRunState.SUCCESS

    runs = run_rows(portal.lms_url)
    assert [r["status"] for r in runs] == ["committed", "committed"]
    assert [r["ran_as"] for r in runs] == ["full", "quick"]
    delta_users = pd.read_csv(portal.drops / "2026-09-02" / "users.csv", dtype=str)
    delta_enrollments = pd.read_csv(portal.drops / "2026-09-02" / "enrollments.csv", dtype=str)
    deleted_users = set(delta_users.loc[delta_users["status"] == "tobedeleted", "sourcedId"])
    deleted_enrollments = set(
        delta_enrollments.loc[delta_enrollments["status"] == "tobedeleted", "sourcedId"]
    )
    assert deleted_users  # the delta does delete somebody
    # only the tobedeleted rows were archived: absent rows of a delta are unchanged
    assert _archived(portal.lms_url, runs[1]["id"], "users") == deleted_users
    assert _archived(portal.lms_url, runs[1]["id"], "enrollments") == deleted_enrollments
    assert runs[1]["checkpoint"] == "2026-09-02"


def test_approval_approved_commits(make_portal, respond, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_SIS_SYNC_UI_BASE_URL", "http://airflow.example:8080/")
    portal = make_portal("approved", auto_commit=False, approvers=[])
    write_drop(generate_district("demo"), portal.drops / "2026-09-01")
    responder = respond(portal.dag_id, "Approve")
    run = portal.run()
    assert responder.answered.is_set()
    assert run.state == DagRunState.SUCCESS
    assert run.get_task_instance("commit").state == "success"
    (row,) = run_rows(portal.lms_url)
    assert row["status"] == "committed"
    assert row["decided_by"] == "Anonymous"
    assert row["decision"] == "approval"
    assert "| users (student) | 300 |" in responder.seen_bodies[0]
    run_page = f"http://airflow.example:8080/dags/{portal.dag_id}/runs/{quote(run.run_id, safe='')}"
    assert f"[The run in Airflow]({run_page})" in responder.seen_bodies[0]


def test_approval_rejected_changes_nothing(make_portal, respond) -> None:
    portal = make_portal("rejected", auto_commit=False)
    write_drop(generate_district("demo"), portal.drops / "2026-09-01")
    before = lms_rows(portal.lms_url)
    responder = respond(portal.dag_id, "Reject")
    run = portal.run()
    assert responder.answered.is_set()
    assert run.get_task_instance("commit").state == "skipped"
    (row,) = run_rows(portal.lms_url)
    assert row["status"] == "rejected"
    assert row["decided_by"] == "Anonymous" and row["decided_at"] is not None  # who, when
    assert lms_rows(portal.lms_url) == before
    # the runs list shows the outcome: the green DAG run's note says it was rejected
    assert dag_run_note(run).startswith(f"SIS sync {row['id']}: REJECTED · Rejected by Anonymous")
    with engine_for(portal.lms_url).connect() as conn:
        applied = conn.execute(
            sa.text("SELECT count(*) FROM sis_sync_actions WHERE status = 'applied'")
        ).scalar()
        locks = conn.execute(sa.text("SELECT count(*) FROM sis_sync_locks")).scalar()
    assert applied == 0
    assert locks == 0  # the lock is released for the next sync


def test_mass_archive_waits_for_approval_even_with_auto_commit(make_portal, respond) -> None:
    portal = make_portal("massarchive", auto_commit=True)
    write_mass_archive_drops(portal.drops)
    assert portal.run(drop_date="2026-09-01").state == DagRunState.SUCCESS
    before = lms_rows(portal.lms_url)
    responder = respond(portal.dag_id, "Reject")
    run = portal.run(drop_date="2026-09-02")
    assert responder.answered.is_set(), "the run never asked for approval"
    body = responder.seen_bodies[0]
    assert "Guards tripped" in body
    assert "archives of users:student (portal-wide): 150 of 300 active (50.0 %)" in body
    assert run.get_task_instance("commit").state == "skipped"
    assert lms_rows(portal.lms_url) == before
    runs = run_rows(portal.lms_url)
    assert runs[-1]["status"] == "rejected"
    trips = json.loads(runs[-1]["guard_decisions"])
    assert {t["kind"] for t in trips} >= {"users:student", "enrollments"}


def test_mass_archive_goes_through_with_allow_mass_archive(make_portal) -> None:
    portal = make_portal("massallowed", auto_commit=True)
    write_mass_archive_drops(portal.drops)
    assert portal.run(drop_date="2026-09-01").state == DagRunState.SUCCESS
    run = portal.run(drop_date="2026-09-02", allow_mass_archive=True)
    assert run.state == DagRunState.SUCCESS
    assert run.get_task_instance("await_approval").state == "skipped"
    last = run_rows(portal.lms_url)[-1]
    assert last["status"] == "committed"
    assert last["decision"] == "auto_commit_guards_overridden"
    assert last["allow_mass_archive"]
    assert len(_archived(portal.lms_url, last["id"], "users")) == 150


def test_replayed_old_drop_is_refused(make_portal) -> None:
    portal = make_portal("replay", auto_commit=True)
    day1 = generate_district("demo")
    write_drop(day1, portal.drops / "2026-09-01")
    write_drop(next_day(day1, seed=3), portal.drops / "2026-09-02")
    assert portal.run(drop_date="2026-09-02").state == DagRunState.SUCCESS
    before = lms_rows(portal.lms_url)

    refused = portal.run(drop_date="2026-09-01")
    assert refused.state == DagRunState.FAILED
    assert refused.get_task_instance("extract").state == "failed"
    last = run_rows(portal.lms_url)[-1]
    assert last["status"] == "refused"
    assert "older than the newest drop already committed (2026-09-02)" in last["error"]
    assert lms_rows(portal.lms_url) == before

    replayed = portal.run(drop_date="2026-09-01", replay=True)
    assert replayed.state == DagRunState.SUCCESS
    assert run_rows(portal.lms_url)[-1]["status"] == "committed"


def test_bad_drop_fails_clearly_and_stages_nothing(make_portal) -> None:
    portal = make_portal("baddrop", auto_commit=True)
    folder = write_drop(generate_district("demo"), portal.drops / "2026-09-01")
    users = (folder / "users.csv").read_text().replace("role,", "rolle,", 1)
    (folder / "users.csv").write_text(users)
    run = portal.run()
    assert run.state == DagRunState.FAILED
    (row,) = run_rows(portal.lms_url)
    assert row["status"] == "failed"
    assert "users.csv" in row["error"] and "'role'" in row["error"]
    with engine_for(portal.lms_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sis_sync_actions")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM lms_users")).scalar() == 0
