"""Commit: selected actions only, dependencies, archive not delete, all or nothing, idempotent."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from include.sis_sync.lms.commit import lms_snapshot
from include.sis_sync.lms.db import engine_for
from include.sis_sync.staging import (
    RunNotCommittable,
    get_run,
    read_warnings,
    set_selected,
    update_run,
)
from tests.helpers import commit, district, run_diff, stage, sync


def _action_ids(lms_url: str, run_id: int, entity: str, key: str) -> list[int]:
    with engine_for(lms_url).connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT id FROM sis_sync_actions WHERE run_id = :r AND entity = :e "
                    "AND sis_key = :k"
                ),
                {"r": run_id, "e": entity, "k": key},
            ).scalars()
        )


def _statuses(lms_url: str, run_id: int) -> dict[tuple[str, str], str]:
    with engine_for(lms_url).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT entity, sis_key, status FROM sis_sync_actions WHERE run_id = :r"),
            {"r": run_id},
        )
        return {(e, k): s for e, k, s in rows}


def _active_keys(lms_url: str, table: str) -> set[str]:
    with engine_for(lms_url).connect() as conn:
        return set(
            conn.execute(
                sa.text(f"SELECT sis_key FROM {table} WHERE archived_at IS NULL")
            ).scalars()
        )


def test_commit_applies_only_selected_actions(lms_url: str) -> None:
    frames = district(students={"s1": "sch-a", "s2": "sch-a"})
    change_set, scoped = run_diff(lms_url, frames)
    run_id = stage(lms_url, change_set)
    set_selected(engine_for(lms_url), run_id, _action_ids(lms_url, run_id, "users", "s2"), False)
    result = commit(lms_url, run_id, scoped)
    assert _active_keys(lms_url, "lms_users") == {"s1"}
    assert result.not_selected == 1
    statuses = _statuses(lms_url, run_id)
    assert statuses[("users", "s1")] == "applied"
    assert statuses[("users", "s2")] == "not_selected"
    assert get_run(engine_for(lms_url), run_id)["status"] == "committed"


def test_action_whose_dependency_was_unticked_is_skipped_with_a_warning(lms_url: str) -> None:
    frames = district(
        students={"s1": "sch-a"}, sections={"c1": "sch-a"}, enrollments=[("c1", "s1")]
    )
    change_set, scoped = run_diff(lms_url, frames)
    run_id = stage(lms_url, change_set)
    set_selected(engine_for(lms_url), run_id, _action_ids(lms_url, run_id, "sections", "c1"), False)
    result = commit(lms_url, run_id, scoped)
    assert result.skipped == 1
    assert _active_keys(lms_url, "lms_enrollments") == set()
    assert _statuses(lms_url, run_id)[("enrollments", "c1:s1")] == "skipped"
    warnings = read_warnings(engine_for(lms_url), run_id)
    assert [w["kind"] for w in warnings] == ["dependency_not_selected"]
    assert "section c1" in warnings[0]["message"] and warnings[0]["action_id"] is not None


def test_archive_never_deletes(lms_url: str) -> None:
    sync(
        lms_url,
        district(
            students={"s1": "sch-a", "s2": "sch-a"},
            sections={"c1": "sch-a"},
            enrollments=[("c1", "s1")],
        ),
    )
    before = lms_snapshot(engine_for(lms_url))
    sync(lms_url, district(students={}, sections={}))
    after = lms_snapshot(engine_for(lms_url))
    for table, rows in before.items():
        assert [r["id"] for r in after[table]] == [r["id"] for r in rows], table
        assert all(
            r["archived_at"] is not None
            for r in after[table]
            if table != "lms_terms" and table != "lms_courses" and table != "lms_organizations"
        )
    assert _active_keys(lms_url, "lms_users") == set()


FAILING_INSERT = {
    "sqlite": [
        "CREATE TRIGGER boom BEFORE INSERT ON lms_enrollments WHEN NEW.sis_key = 'c1:s3' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN IF NEW.sis_key = 'c1:s3' THEN "
        "RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER boom BEFORE INSERT ON lms_enrollments FOR EACH ROW EXECUTE FUNCTION boom()",
    ],
}


def test_failure_inside_a_bulk_statement_leaves_every_row_as_it_was(lms_url: str) -> None:
    sync(
        lms_url,
        district(
            students={"s1": "sch-a", "s2": "sch-a"},
            sections={"c1": "sch-a"},
            enrollments=[("c1", "s1")],
        ),
    )
    later = district(
        students={"s1": "sch-b", "s3": "sch-a"},
        sections={"c1": "sch-a"},
        enrollments=[("c1", "s1"), ("c1", "s3")],
    )
    change_set, scoped = run_diff(lms_url, later)
    run_id = stage(lms_url, change_set)
    engine = engine_for(lms_url)
    # The last statement of the commit's LMS work (enrollment inserts) fails half-way.
    with engine.begin() as conn:
        for statement in FAILING_INSERT[engine.dialect.name]:
            conn.exec_driver_sql(statement)
    before = lms_snapshot(engine)
    statuses_before = _statuses(lms_url, run_id)
    with pytest.raises(sa.exc.DBAPIError, match="injected failure"):
        commit(lms_url, run_id, scoped)
    assert lms_snapshot(engine) == before  # row by row, every column
    assert _statuses(lms_url, run_id) == statuses_before
    assert get_run(engine, run_id)["status"] == "staged"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER boom ON lms_enrollments"
            if engine.dialect.name == "postgresql"
            else "DROP TRIGGER boom"
        )
    commit(lms_url, run_id, scoped)  # the retry applies everything
    assert _active_keys(lms_url, "lms_users") == {"s1", "s3"}


def test_second_commit_of_the_same_run_changes_nothing(lms_url: str) -> None:
    frames = district(students={"s1": "sch-a"})
    change_set, scoped = run_diff(lms_url, frames)
    run_id = stage(lms_url, change_set)
    commit(lms_url, run_id, scoped)
    before = lms_snapshot(engine_for(lms_url))
    again = commit(lms_url, run_id, scoped)
    assert again.already_committed
    assert lms_snapshot(engine_for(lms_url)) == before


@pytest.mark.parametrize("status", ["rejected", "expired", "failed"])
def test_ended_run_can_never_be_committed(lms_url: str, status: str) -> None:
    change_set, scoped = run_diff(lms_url, district(students={"s1": "sch-a"}))
    run_id = stage(lms_url, change_set)
    update_run(engine_for(lms_url), run_id, status=status)
    with pytest.raises(RunNotCommittable, match=status):
        commit(lms_url, run_id, scoped)
    assert _active_keys(lms_url, "lms_users") == set()


def test_commit_writes_checkpoint_only_for_runs_over_all_schools(lms_url: str) -> None:
    _, full_run = sync(lms_url, district(students={"s1": "sch-a"}))
    _, subset_run = sync(lms_url, district(students={"s1": "sch-a"}), run_schools=["sch-a"])
    engine = engine_for(lms_url)
    assert get_run(engine, full_run)["checkpoint"] == "x"
    assert get_run(engine, subset_run)["checkpoint"] is None


def test_report_counts_what_was_applied_and_names_unticked_actions(lms_url: str) -> None:
    from include.sis_sync.report import build_report

    change_set, scoped = run_diff(lms_url, district(students={"s1": "sch-a", "s2": "sch-b"}))
    run_id = stage(lms_url, change_set)
    set_selected(engine_for(lms_url), run_id, _action_ids(lms_url, run_id, "users", "s2"), False)
    commit(lms_url, run_id, scoped)
    report = build_report(engine_for(lms_url), run_id)
    assert report["status"] == "committed"
    assert report["counts"]["users (student)"]["add"] == 1
    assert report["not_selected"] == 1
    assert "not selected by the approver: 1 action(s)" in report["text"]
    assert "Family s" not in report["text"]  # no personal data in the report
