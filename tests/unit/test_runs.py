"""A sync's row: attempts, status moves from named statuses only, decisions recorded with who
and when, and the portal's lock with its take-over rules."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.sis_sync import runs
from include.sis_sync.lms.db import engine_for
from include.sis_sync.runs import RunRequest, acquire_lock, open_run, release_lock
from include.sis_sync.staging import last_committed, set_selected
from tests.helpers import district, run_diff, set_status, stage


def _open(url: str, run: str, portal: str = "p1", schools: list[str] | None = None) -> int:
    return open_run(
        engine_for(url),
        RunRequest(
            portal, f"sis_sync__{portal}", run, "full", "manual", "admin", schools, True, False
        ),
    )


def _events(url: str, run_id: int) -> list[tuple[str, str | None]]:
    return [(e["event"], e["actor"]) for e in runs.read_events(engine_for(url), run_id)]


def test_second_sync_of_a_portal_waits_for_the_first(lms_url: str) -> None:
    engine = engine_for(lms_url)
    first, second = _open(lms_url, "a"), _open(lms_url, "b")
    assert acquire_lock(engine, "p1", first) is None
    assert acquire_lock(engine, "p1", second) == first
    assert acquire_lock(engine, "p1", first) is None  # a retried start keeps its lock
    set_status(lms_url, first, "awaiting_approval")
    assert acquire_lock(engine, "p1", second) == first  # waiting for approval still holds it
    release_lock(engine, "p1", first)
    assert acquire_lock(engine, "p1", second) is None


def test_other_portals_are_not_blocked(lms_url: str) -> None:
    engine = engine_for(lms_url)
    assert acquire_lock(engine, "p1", _open(lms_url, "a", "p1")) is None
    assert acquire_lock(engine, "p2", _open(lms_url, "b", "p2")) is None


def test_lock_left_by_an_ended_run_is_taken_over(lms_url: str) -> None:
    engine = engine_for(lms_url)
    crashed, next_run = _open(lms_url, "a"), _open(lms_url, "b")
    acquire_lock(engine, "p1", crashed)
    set_status(lms_url, crashed, "failed")  # ended without releasing
    assert acquire_lock(engine, "p1", next_run) is None


def test_lock_of_a_run_airflow_no_longer_runs_is_taken_over(lms_url: str) -> None:
    """A sync waiting for approval whose Airflow run was marked failed or deleted: its lock
    goes to the next sync, and it is closed as failed, saying why."""
    engine = engine_for(lms_url)
    stuck, next_run = _open(lms_url, "stuck"), _open(lms_url, "next")
    acquire_lock(engine, "p1", stuck)
    set_status(lms_url, stuck, "awaiting_approval")
    asked: list[tuple[str, str]] = []

    def alive(dag_id: str, run_id: str) -> bool:
        asked.append((dag_id, run_id))
        return run_id != "stuck"

    assert acquire_lock(engine, "p1", next_run, lambda d, r: None) == stuck  # unknown: wait
    assert acquire_lock(engine, "p1", next_run, lambda d, r: True) == stuck  # alive: wait
    assert acquire_lock(engine, "p1", next_run, alive) is None
    assert asked == [("sis_sync__p1", "stuck")]
    row = runs.get_run(engine, stuck)
    assert row["status"] == "failed"
    assert "Airflow run stuck is no longer running" in row["error"]
    assert f"sync {next_run} took the portal's lock over" in row["error"]
    assert _events(lms_url, stuck) == [("lock_taken_over", None)]


def test_operator_releases_a_lock_by_hand(lms_url: str) -> None:
    engine = engine_for(lms_url)
    held = _open(lms_url, "held")
    acquire_lock(engine, "p1", held)
    set_status(lms_url, held, "awaiting_approval")
    released = runs.force_unlock(engine, "p1", "ops")
    assert released is not None and released["run_id"] == held
    assert runs.lock_holder(engine, "p1") is None
    assert runs.get_run(engine, held)["status"] == "failed"
    assert _events(lms_url, held) == [("lock_released", "ops")]
    assert runs.force_unlock(engine, "p1", "ops") is None


def test_retried_start_reuses_the_run_row(lms_url: str) -> None:
    assert _open(lms_url, "same") == _open(lms_url, "same")


def test_a_cleared_dag_run_is_a_new_sync_and_the_old_one_ends(lms_url: str) -> None:
    """The whole DAG run cleared and run again: a new row (attempt 2); the earlier attempt,
    left waiting for approval, ends failed and keeps its history."""
    engine = engine_for(lms_url)
    first = _open(lms_url, "r")
    runs.enter_stage(engine, first, "extract")
    set_status(lms_url, first, "awaiting_approval")
    second = _open(lms_url, "r")
    assert second != first
    assert runs.get_run(engine, second)["attempt"] == 2
    old = runs.get_run(engine, first)
    assert old["status"] == "failed"
    assert f"runs again as sync {second}" in old["error"]
    committed = _open(lms_url, "c")
    runs.enter_stage(engine, committed, "extract")
    set_status(lms_url, committed, "committed")
    again = _open(lms_url, "c")
    assert runs.get_run(engine, committed)["status"] == "committed"  # ended runs stay
    assert runs.get_run(engine, again)["attempt"] == 2


@pytest.mark.parametrize("status", ["awaiting_approval", "approved", "committed", "rejected"])
def test_stages_do_not_run_again_once_the_change_set_is_put_to_a_decision(
    lms_url: str, status: str
) -> None:
    engine = engine_for(lms_url)
    run_id = _open(lms_url, "x")
    set_status(lms_url, run_id, status)
    with pytest.raises(runs.RunClosed, match=f"while the sync was {status}"):
        runs.enter_stage(engine, run_id, "diff")
    assert runs.get_run(engine, run_id)["status"] == status
    assert _events(lms_url, run_id) == [("stage_refused", None)]


def test_update_run_never_changes_a_status(lms_url: str) -> None:
    with pytest.raises(ValueError, match=r"runs\.move"):
        runs.update_run(engine_for(lms_url), _open(lms_url, "x"), status="committed")


@pytest.mark.parametrize(
    ("approve", "by", "approvers", "status", "decided_by"),
    [
        (True, "amy", [], "approved", "amy"),
        (True, "amy", ["amy", "ben"], "approved", "amy"),
        (False, "ben", [], "rejected", "ben"),
        (False, None, [], "expired", None),
        (True, "eve", ["amy"], "refused", None),
    ],
)
def test_answers_are_recorded_with_who_and_when(
    lms_url: str, approve: bool, by: str | None, approvers: list[str], status: str, decided_by
) -> None:
    engine = engine_for(lms_url)
    run_id = _open(lms_url, "x")
    set_status(lms_url, run_id, "awaiting_approval")
    assert runs.record_answer(engine, run_id, approve, by, approvers) == status
    row = runs.get_run(engine, run_id)
    assert (row["status"], row["decided_by"]) == (status, decided_by)
    assert row["decided_at"] is not None
    (event,) = runs.read_events(engine, run_id)
    assert event["actor"] == by
    if status == "refused":
        assert "eve, who is not among the portal's approvers (amy)" in row["error"]


@pytest.mark.parametrize("status", ["expired", "rejected", "committed", "refused", "failed"])
def test_an_answer_to_an_ended_run_changes_nothing(lms_url: str, status: str) -> None:
    engine = engine_for(lms_url)
    run_id = _open(lms_url, "x")
    set_status(lms_url, run_id, status)
    assert runs.record_answer(engine, run_id, True, "amy") == status
    assert runs.get_run(engine, run_id)["status"] == status
    assert _events(lms_url, run_id) == [("answer_ignored", "amy")]


def test_selection_changes_only_before_the_decision(lms_url: str) -> None:
    engine = engine_for(lms_url)
    change_set, _ = run_diff(lms_url, district(students={"s1": "sch-a"}))
    run_id = stage(lms_url, change_set, approve=False)
    with engine.connect() as conn:
        ids = list(
            conn.execute(
                sa.text("SELECT id FROM sis_sync_actions WHERE run_id = :r"), {"r": run_id}
            )
            .scalars()
            .all()
        )
    assert set_selected(engine, run_id, ids, False) == len(ids)  # staged
    set_status(lms_url, run_id, "awaiting_approval")
    assert set_selected(engine, run_id, ids, True) == len(ids)
    for decided in ("approved", "committed", "expired"):
        set_status(lms_url, run_id, decided)
        with pytest.raises(runs.RunClosed, match=decided):
            set_selected(engine, run_id, ids, False)


def test_checkpoint_and_newest_drop_come_from_committed_runs_only(lms_url: str) -> None:
    engine = engine_for(lms_url)
    full = _open(lms_url, "a")
    set_status(
        lms_url,
        full,
        "committed",
        checkpoint="2026-09-01",
        source_date=date(2026, 9, 1),
        ran_as="full",
    )
    rejected = _open(lms_url, "b")
    set_status(lms_url, rejected, "rejected", checkpoint="2026-09-05", source_date=date(2026, 9, 5))
    subset = _open(lms_url, "c", schools=["sch-a"])
    set_status(lms_url, subset, "committed", source_date=date(2026, 9, 2))
    seen = last_committed(engine, "p1")
    assert seen["checkpoint"] == "2026-09-01"
    assert seen["newest_drop"] == date(2026, 9, 2)
    assert last_committed(engine, "other")["newest_drop"] is None


def test_unlock_command_shows_then_releases_a_lock(
    lms_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from include.sis_sync.cli import main

    engine = engine_for(lms_url)
    held = _open(lms_url, "held")
    acquire_lock(engine, "p1", held)
    assert main(["unlock", "p1", "--url", lms_url]) == 0
    assert f"portal p1 is locked by sync {held}" in capsys.readouterr().out
    assert runs.lock_holder(engine, "p1") is not None  # only shown
    assert main(["unlock", "p1", "--by", "ops", "--url", lms_url]) == 0
    assert f"released by ops: sync {held} can never be committed now" in capsys.readouterr().out
    assert runs.lock_holder(engine, "p1") is None
    assert main(["unlock", "p1", "--url", lms_url]) == 0
    assert "portal p1 is not locked" in capsys.readouterr().out


def test_a_stage_that_goes_on_moves_an_earlier_tries_error_to_the_history(lms_url: str) -> None:
    engine = engine_for(lms_url)
    run_id = _open(lms_url, "run-1")
    runs.update_run(engine, run_id, error="extract: ConnectionError: the SIS hung up")
    runs.enter_stage(engine, run_id, "extract")  # the retry
    assert runs.get_run(engine, run_id)["error"] is None
    with engine.connect() as conn:
        events = conn.execute(
            sa.text("SELECT event, detail FROM sis_sync_run_events WHERE run_id = :r"),
            {"r": run_id},
        ).all()
    assert events == [("earlier_try_failed", "extract: ConnectionError: the SIS hung up")]


def test_run_data_is_keyed_per_run_and_a_stage_is_written_afresh(
    lms_url: str, data_dir: Path
) -> None:
    import pyarrow as pa

    from include.sis_sync.rundata import RunData

    engine = engine_for(lms_url)
    key = runs.get_run(engine, _open(lms_url, "run-1"))["data_key"]
    assert key and len(key) == 32
    first = RunData.for_run("p1", 1, key)
    again = RunData.for_run("p1", 1, "another-database")  # the same run id elsewhere
    assert first.folder != again.folder
    table = pa.table({"sis_key": ["u1"]})
    first.write_tables("raw", {"users": table, "enrollments": table})
    first.write_tables("raw", {"users": table})  # a retry whose feed has no enrollments
    assert sorted(first.read_frames("raw")) == ["users"]
