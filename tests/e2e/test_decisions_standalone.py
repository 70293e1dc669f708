"""Decisions that stay decided, against a real `airflow standalone`: the scheduler enforces the
approval timeout, Airflow's REST API clears and marks tasks as the UI's buttons do, and the
scheduler's listener writes each outcome as the DAG run's note.

- An expired sync, then its ``await_approval`` cleared and approved: the commit refuses, the
  LMS is unchanged row by row, the sync stays expired and the refusal is in the report.
- The same for a rejected sync, and for a sync superseded by a newer committed one.
- A scheduled run of a file-drop portal whose drop is late waits for it (holding no worker
  slot) and syncs it once it comes; one whose drop never comes ends with a clear message.

One standalone serves every test of this module; each test has its own portal and LMS file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from include.sis_sync.dag_factory import LMS_WRITES_POOL
from include.sis_sync.lms.commit import lms_snapshot
from include.sis_sync.lms.db import engine_for, migrate
from include.sis_sync.report import build_report
from include.sis_sync.sample.generator import District, generate_district, next_day, write_drop
from tests.e2e.standalone import (
    Standalone,
    ready_to_sync,
    start_standalone,
    sync_env,
    wait_until,
)
from tests.helpers import run_rows, write_portal

pytestmark = [pytest.mark.standalone, pytest.mark.timeout(600)]

PORTALS: dict[str, dict[str, Any]] = {
    "expiring": {"approval_timeout_hours": 0.005},  # 18 s
    "rejecting": {},
    "superseded": {},
    "rerun": {"auto_commit": True},
    "late_drop": {
        "schedule": "* * * * *",
        "auto_commit": True,
        # Pokes far enough apart: when a poke ends and the next is queued before the
        # scheduler reads the first one's end, Airflow 3.3 marks the sensor failed.
        "source_wait": {"wait_hours": 0.25, "poke_seconds": 15},
    },
    "no_drop": {
        "schedule": "* * * * *",
        "auto_commit": True,
        "source_wait": {"wait_hours": 0.01, "poke_seconds": 15},  # 36 s
    },
}


@dataclass
class Setup:
    af: Standalone
    root: Path

    def drops(self, portal: str) -> Path:
        return self.root / "drops" / portal

    def lms_url(self, portal: str) -> str:
        return f"sqlite:///{self.root / 'lms.db'}"

    def dag_id(self, portal: str) -> str:
        return f"sis_sync__{portal}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("decisions")
    portals = root / "portals"
    portals.mkdir()
    for portal, settings in PORTALS.items():
        settings = dict(settings)
        wait = settings.pop("source_wait", {})
        write_portal(
            portals,
            id=portal,
            name=f"{portal} portal",
            source={
                "provider": "oneroster_csv",
                "path": f"{root / 'drops' / portal}/{{date}}",
                **wait,
            },
            auto_commit=settings.pop("auto_commit", False),
            **settings,
        )
    lms = root / "lms.db"
    migrate(f"sqlite:///{lms}")
    # the scheduler looks for expired approvals this often (15 s by default)
    env = sync_env(root, AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL="3")
    with start_standalone(root / "airflow", env) as af:
        ready_to_sync(af, [f"sis_sync__{portal}" for portal in PORTALS], LMS_WRITES_POOL)
        yield Setup(af, root)


def _days(setup: Setup, portal: str) -> tuple[District, District]:
    """Day 1 of the demo district and a day 2 with additions, changes and departures."""
    day1 = generate_district("demo")
    write_drop(day1, setup.drops(portal) / "2026-09-01")
    return day1, next_day(day1, seed=5, add=0.02, update=0.03, archive=0.03)


def _sync(setup: Setup, portal: str, **conf: Any) -> tuple[str, dict[str, Any]]:
    """Trigger a manual run and wait for it; returns its id and its sync row."""
    af, dag_id = setup.af, setup.dag_id(portal)
    run_id = af.trigger(dag_id, conf)
    af.wait_for_run(dag_id, run_id)
    return run_id, _row(setup, portal, run_id)


def _row(setup: Setup, portal: str, run_id: str) -> dict[str, Any]:
    rows = [
        r
        for r in run_rows(setup.lms_url(portal))
        if r["portal_id"] == portal and r["airflow_run_id"] == run_id
    ]
    return max(rows, key=lambda r: r["attempt"])


def _lms(setup: Setup, portal: str) -> dict[str, list[dict[str, Any]]]:
    return lms_snapshot(engine_for(setup.lms_url(portal)), portal)


def _approve_again(setup: Setup, portal: str, run_id: str) -> dict[str, Any]:
    """Clear the ended run's approval step, as its Clear button does, then Approve the new
    request it opens; wait for the run to end again. Returns the DAG run."""
    af, dag_id = setup.af, setup.dag_id(portal)
    # The scheduler finishes an ended run's bookkeeping (the listener writes the note) a
    # moment after the run shows its state; a clear in that moment can be overwritten.
    wait_until(
        f"the note of {run_id}",
        lambda: (af.dag_run(dag_id, run_id)["note"] or "").startswith("SIS sync"),
        timeout=60,
    )
    af.clear(dag_id, run_id, ["await_approval"])
    request = af.pending_approval(dag_id, run_id)
    assert request["task_instance"]["dag_run_id"] == run_id
    af.answer(dag_id, run_id, "Approve")
    # commit was cleared too: a final state now is this round's
    af.wait_for_task(dag_id, run_id, "commit", ("success", "failed", "skipped"))
    run = af.wait_for_run(dag_id, run_id)
    states = {t["task_id"]: t["state"] for t in af.task_instances(dag_id, run_id)}
    af.note(f"{run_id} after Approve: {run['state']} {states}")
    return run


def _assert_refused_later(setup: Setup, portal: str, run_id: str, status: str, why: str) -> None:
    row = _row(setup, portal, run_id)
    assert row["status"] == status  # a decided sync stays as it ended
    report = build_report(engine_for(setup.lms_url(portal)), row["id"])
    events = [r["event"] for r in report["refusals"]]
    assert events == ["answer_ignored", "commit_refused"], report["refusals"]
    refused = report["refusals"][-1]["detail"]
    assert refused.startswith("commit refused: ") and why in refused, refused
    assert "REFUSED at" in report["text"]
    note = setup.af.dag_run(setup.dag_id(portal), run_id)["note"] or ""
    assert note.startswith(f"SIS sync {row['id']}: {status.upper()}") and "then refused" in note


def test_expired_sync_cleared_and_approved_is_never_committed(setup: Setup) -> None:
    portal, af = "expiring", setup.af
    _, day2 = _days(setup, portal)
    _, first = _sync(setup, portal, auto_commit=True)
    assert first["status"] == "committed"
    write_drop(day2, setup.drops(portal) / "2026-09-02")
    run_id = af.trigger(setup.dag_id(portal))
    run = af.wait_for_run(setup.dag_id(portal), run_id, timeout=240)
    expired = _row(setup, portal, run_id)
    assert run["state"] == "success"
    assert expired["status"] == "expired"
    assert expired["decided_by"] is None and expired["decided_at"] is not None
    assert (run["note"] or "").startswith(f"SIS sync {expired['id']}: EXPIRED · Expired at")
    before = _lms(setup, portal)

    again = _approve_again(setup, portal, run_id)
    assert again["state"] == "failed"  # the refused attempt shows red
    assert af.task_state(setup.dag_id(portal), run_id, "commit") == "failed"
    assert _lms(setup, portal) == before  # row by row, every column
    _assert_refused_later(setup, portal, run_id, "expired", "its approval expired at")


def test_rejected_sync_cleared_and_approved_is_never_committed(setup: Setup) -> None:
    portal, af = "rejecting", setup.af
    _, day2 = _days(setup, portal)
    _sync(setup, portal, auto_commit=True)
    write_drop(day2, setup.drops(portal) / "2026-09-02")
    run_id = af.trigger(setup.dag_id(portal))
    af.pending_approval(setup.dag_id(portal), run_id)
    af.answer(setup.dag_id(portal), run_id, "Reject")
    assert af.wait_for_run(setup.dag_id(portal), run_id)["state"] == "success"
    rejected = _row(setup, portal, run_id)
    assert (rejected["status"], rejected["decided_by"]) == ("rejected", "Anonymous")
    before = _lms(setup, portal)

    assert _approve_again(setup, portal, run_id)["state"] == "failed"
    assert _lms(setup, portal) == before
    _assert_refused_later(setup, portal, run_id, "rejected", "it was rejected by Anonymous")


def test_sync_superseded_by_a_newer_commit_is_never_committed(setup: Setup) -> None:
    """Sync A waits for approval; its DAG run is marked failed; sync B takes the lock over
    and commits a later drop. A's change set is stale: approving A afterwards applies
    nothing."""
    portal, af, dag_id = "superseded", setup.af, setup.dag_id("superseded")
    _, day2 = _days(setup, portal)
    _sync(setup, portal, auto_commit=True)
    write_drop(day2, setup.drops(portal) / "2026-09-02")
    stale = af.trigger(dag_id)
    af.pending_approval(dag_id, stale)
    af.set_run_state(dag_id, stale, "failed")
    write_drop(next_day(day2, seed=9), setup.drops(portal) / "2026-09-03")
    _, newer = _sync(setup, portal, auto_commit=True)
    assert newer["status"] == "committed" and str(newer["source_date"]) == "2026-09-03"
    assert _row(setup, portal, stale)["status"] == "failed"  # its lock was taken over
    before = _lms(setup, portal)

    assert _approve_again(setup, portal, stale)["state"] == "failed"
    assert _lms(setup, portal) == before
    _assert_refused_later(
        setup, portal, stale, "failed", f"sync {newer['id']} of the portal committed after it"
    )


def test_a_whole_dag_run_cleared_is_a_new_sync_with_its_own_row(setup: Setup) -> None:
    """Clearing a committed DAG run from its first task runs a fresh sync (attempt 2: its own
    extract, diff and decision); the history keeps the first attempt as it ended."""
    portal, af, dag_id = "rerun", setup.af, setup.dag_id("rerun")
    _days(setup, portal)
    run_id, first = _sync(setup, portal)
    assert (first["status"], first["attempt"]) == ("committed", 1)
    wait_until(
        f"the note of {run_id}",
        lambda: (af.dag_run(dag_id, run_id)["note"] or "").startswith("SIS sync"),
        timeout=60,
    )
    af.clear(dag_id, run_id, ["start"])
    af.wait_for_task(dag_id, run_id, "report", ("success", "failed"))
    assert af.wait_for_run(dag_id, run_id)["state"] == "success"
    second = _row(setup, portal, run_id)
    assert (second["attempt"], second["status"]) == (2, "committed")
    assert second["id"] != first["id"]
    counts = json.loads(second["counts"])
    assert all(n == 0 for per_action in counts.values() for n in per_action.values())
    again = [r for r in run_rows(setup.lms_url(portal)) if r["id"] == first["id"]]
    assert again == [first]  # the first attempt, exactly as it ended


def _scheduled_run(setup: Setup, portal: str) -> dict[str, Any]:
    """The first scheduled run of a portal that runs every minute. (The DAG stays unpaused:
    a paused DAG's running runs stop too. Later runs queue behind it, one at a time.)"""
    af, dag_id = setup.af, setup.dag_id(portal)
    runs = af.wait_for_runs(
        dag_id, lambda runs: any(r["run_type"] == "scheduled" for r in runs), timeout=150
    )
    return min((r for r in runs if r["run_type"] == "scheduled"), key=lambda r: r["logical_date"])


def _drop_date(run: dict[str, Any]) -> str:
    return datetime.fromisoformat(run["logical_date"]).date().isoformat()  # the portal is UTC


def test_a_late_drop_is_waited_for_then_synced(setup: Setup) -> None:
    portal, af, dag_id = "late_drop", setup.af, setup.dag_id("late_drop")
    run = _scheduled_run(setup, portal)
    run_id = run["dag_run_id"]
    # waiting between looks, the sensor holds no worker slot
    af.wait_for_task(dag_id, run_id, "wait_for_drop", ("up_for_reschedule",), timeout=180)
    assert af.task_state(dag_id, run_id, "extract") in (None, "scheduled", "queued")
    write_drop(generate_district("demo"), setup.drops(portal) / _drop_date(run))
    assert af.wait_for_run(dag_id, run_id, timeout=300)["state"] == "success"
    row = _row(setup, portal, run_id)
    assert row["status"] == "committed"
    assert row["trigger"] == "scheduled"
    assert str(row["source_date"]) == _drop_date(run)


def test_a_drop_that_never_comes_ends_the_run_with_a_clear_message(setup: Setup) -> None:
    portal, af, dag_id = "no_drop", setup.af, setup.dag_id("no_drop")
    run = _scheduled_run(setup, portal)
    run_id = run["dag_run_id"]
    assert af.wait_for_run(dag_id, run_id, timeout=300)["state"] == "failed"
    assert af.task_state(dag_id, run_id, "wait_for_drop") == "failed"
    row = _row(setup, portal, run_id)
    assert row["status"] == "failed"
    expected = setup.drops(portal) / _drop_date(run)
    assert f"{expected}: no drop for {_drop_date(run)} after waiting 0.01 h" in row["error"]
    assert row["stage"] == "wait_for_drop"
