"""Decisions that stay decided, attacked through Airflow itself (dag.test and its REST API):
a waiting approval marked success, auto-commit asked by someone who may not approve, a run
killed while it waits, and warnings that name their actions.

Every run that may wait for approval has a responder thread, and every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from airflow.utils.state import DagRunState

from include.sis_sync.lms.db import engine_for
from include.sis_sync.runs import read_events
from include.sis_sync.sample.generator import generate_district, write_drop
from tests.helpers import lms_rows, run_rows, write_mass_archive_drops

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
ROOT = Path(__file__).resolve().parents[2]


def test_approval_marked_success_in_airflow_commits_nothing(make_portal, respond) -> None:
    """Half the students gone: the guards trip and the run waits. Marking the waiting task
    success (what any user with edit rights may do) lets the commit task run, but the commit
    refuses: no Approve is recorded. The LMS is unchanged and the run says why."""
    portal = make_portal("marked", auto_commit=True)
    write_mass_archive_drops(portal.drops)
    assert portal.run(drop_date="2026-09-01").state == DagRunState.SUCCESS
    before = lms_rows(portal.lms_url)
    marker = respond(portal.dag_id, mark="success")
    run = portal.run(drop_date="2026-09-02")
    assert marker.answered.is_set(), "the run never waited for approval"
    assert run.get_task_instance("await_approval").state == "success"
    assert run.get_task_instance("commit").state == "failed"
    assert run.state == DagRunState.FAILED
    assert lms_rows(portal.lms_url) == before
    last = run_rows(portal.lms_url)[-1]
    assert last["status"] == "refused"
    assert last["decided_by"] is None
    assert "no Approve is recorded for it" in last["error"]
    events = [e["event"] for e in read_events(engine_for(portal.lms_url), last["id"])]
    assert events == ["commit_refused"]
    with engine_for(portal.lms_url).connect() as conn:
        applied = conn.execute(
            sa.text(
                "SELECT count(*) FROM sis_sync_actions WHERE run_id = :r AND status = 'applied'"
            ),
            {"r": last["id"]},
        ).scalar()
    assert applied == 0


def test_auto_commit_asked_by_someone_outside_the_approvers_waits(make_portal, respond) -> None:
    """dag.test runs are triggered by "dag_test": not among this portal's approvers, so its
    auto_commit param is ignored, the run waits and its approval text says why."""
    portal = make_portal("gated", auto_commit=False, approvers=["principal", "Anonymous"])
    write_drop(generate_district("demo"), portal.drops / "2026-09-01")
    responder = respond(portal.dag_id, "Approve")
    run = portal.run(auto_commit=True, allow_mass_archive=True)
    assert responder.answered.is_set(), "auto_commit from a non-approver went through"
    body = responder.seen_bodies[0]
    assert (
        "auto_commit=true and allow_mass_archive=true asked by dag_test, who is not among the "
        "portal's approvers" in body
    )
    assert run.state == DagRunState.SUCCESS
    (row,) = run_rows(portal.lms_url)
    assert (row["status"], row["decision"], row["decided_by"]) == (
        "committed",
        "approval",
        "Anonymous",
    )
    events = [e["event"] for e in read_events(engine_for(portal.lms_url), row["id"])]
    assert events == ["switches_ignored", "approved"]


def test_auto_commit_asked_by_an_approver_goes_through(make_portal) -> None:
    portal = make_portal("trusted", auto_commit=False, approvers=["dag_test"])
    write_drop(generate_district("demo"), portal.drops / "2026-09-01")
    run = portal.run(auto_commit=True)
    assert run.state == DagRunState.SUCCESS
    assert run.get_task_instance("await_approval").state == "skipped"
    (row,) = run_rows(portal.lms_url)
    assert (row["status"], row["decision"]) == ("committed", "auto_commit")


def _wait_for_status(url: str, status: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = run_rows(url) if Path(url.removeprefix("sqlite:///")).exists() else []
        if rows and rows[-1]["status"] == status:
            return rows[-1]
        time.sleep(1)
    raise AssertionError(f"no run reached {status} in {timeout} s: {rows}")


def test_a_run_killed_while_awaiting_approval_frees_the_portal(make_portal, api_client) -> None:
    """`airflow dags test` killed while its run waits for approval leaves the portal locked
    by a run nothing drives. Once Airflow no longer runs it (here: marked failed), the next
    sync takes the lock over and runs; the killed one ends failed, saying why."""
    portal = make_portal("killed", auto_commit=False)
    write_drop(generate_district("demo"), portal.drops / "2026-09-01")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    airflow = str(Path(sys.executable).with_name("airflow"))
    process = subprocess.Popen(
        [airflow, "dags", "test", portal.dag_id],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        stuck = _wait_for_status(portal.lms_url, "awaiting_approval", timeout=180)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    runs = api_client.get(f"/api/v2/dags/{portal.dag_id}/dagRuns").json()["dag_runs"]
    (killed,) = [r for r in runs if r["dag_run_id"] == stuck["airflow_run_id"]]
    assert killed["state"] == "running"  # nothing will ever move it on
    marked = api_client.patch(
        f"/api/v2/dags/{portal.dag_id}/dagRuns/{killed['dag_run_id']}", json={"state": "failed"}
    )
    assert marked.status_code == 200, marked.text

    run = portal.run(auto_commit=True)
    assert run.state == DagRunState.SUCCESS
    old, new = run_rows(portal.lms_url)
    assert new["status"] == "committed"
    assert old["status"] == "failed"
    assert "is no longer running" in old["error"]
    assert f"sync {new['id']} took the portal's lock over" in old["error"]


def test_every_duplicate_email_is_one_warning_naming_its_action(make_portal) -> None:
    portal = make_portal("emails", auto_commit=True)
    district = generate_district("demo")
    students = district.users.index[district.users["role"] == "student"][:25]
    district.users.loc[students, "email"] = "shared@example.org"
    write_drop(district, portal.drops / "2026-09-01")
    assert portal.run().state == DagRunState.SUCCESS
    (row,) = run_rows(portal.lms_url)
    with engine_for(portal.lms_url).connect() as conn:
        warnings = conn.execute(
            sa.text(
                "SELECT w.sis_key, w.action_id, w.message, a.sis_key AS action_key, a.action "
                "FROM sis_sync_warnings w LEFT JOIN sis_sync_actions a ON a.id = w.action_id "
                "WHERE w.run_id = :r AND w.kind = 'email_already_used'"
            ),
            {"r": row["id"]},
        ).all()
    assert len(warnings) == 25
    assert {w.sis_key for w in warnings} == set(district.users.loc[students, "sourcedId"])
    assert all(w.action_id is not None and w.action_key == w.sis_key for w in warnings)
    assert {w.action for w in warnings} == {"add"}
    assert not any("shared@example.org" in w.message for w in warnings)  # never the email
