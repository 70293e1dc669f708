"""Staging: the per-portal lock, run rows and checkpoints."""

from __future__ import annotations

from datetime import date

from include.sis_sync.lms.db import engine_for
from include.sis_sync.staging import (
    RunRequest,
    acquire_lock,
    last_committed,
    open_run,
    release_lock,
    update_run,
)


def _open(url: str, run: str, portal: str = "p1", schools: list[str] | None = None) -> int:
    return open_run(
        engine_for(url),
        RunRequest(
            portal, f"sis_sync__{portal}", run, "full", "manual", "admin", schools, True, False
        ),
    )


def test_second_sync_of_a_portal_waits_for_the_first(lms_url: str) -> None:
    engine = engine_for(lms_url)
    first, second = _open(lms_url, "a"), _open(lms_url, "b")
    assert acquire_lock(engine, "p1", first) is None
    assert acquire_lock(engine, "p1", second) == first
    assert acquire_lock(engine, "p1", first) is None  # a retried start keeps its lock
    update_run(engine, first, status="awaiting_approval")
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
    update_run(engine, crashed, status="failed")  # ended without releasing
    assert acquire_lock(engine, "p1", next_run) is None


def test_retried_start_reuses_the_run_row(lms_url: str) -> None:
    assert _open(lms_url, "same") == _open(lms_url, "same")


def test_checkpoint_and_newest_drop_come_from_committed_runs_only(lms_url: str) -> None:
    engine = engine_for(lms_url)
    full = _open(lms_url, "a")
    update_run(
        engine,
        full,
        status="committed",
        checkpoint="2026-09-01",
        source_date=date(2026, 9, 1),
        ran_as="full",
    )
    rejected = _open(lms_url, "b")
    update_run(
        engine, rejected, status="rejected", checkpoint="2026-09-05", source_date=date(2026, 9, 5)
    )
    subset = _open(lms_url, "c", schools=["sch-a"])
    update_run(engine, subset, status="committed", source_date=date(2026, 9, 2))
    seen = last_committed(engine, "p1")
    assert seen["checkpoint"] == "2026-09-01"
    assert seen["newest_drop"] == date(2026, 9, 2)
    assert last_committed(engine, "other")["newest_drop"] is None
