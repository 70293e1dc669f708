"""Commit: selected actions only, dependencies, archive not delete, all or nothing, idempotent."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from include.sis_sync.lms.commit import lms_snapshot
from include.sis_sync.lms.db import engine_for
from include.sis_sync.runs import RunNotCommittable, get_run, read_events
from include.sis_sync.staging import read_warnings, set_selected
from tests.helpers import approve, commit, district, run_diff, set_status, stage, sync


def stage_lock(lms_url: str, run_id: int) -> None:
    from include.sis_sync.runs import acquire_lock

    assert acquire_lock(engine_for(lms_url), "p1", run_id) is None


def untick(lms_url: str, run_id: int, entity: str, *keys: str) -> None:
    """Untick actions of a run waiting for approval, as an admin does before approving."""
    ids = [i for key in keys for i in _action_ids(lms_url, run_id, entity, key)]
    assert set_selected(engine_for(lms_url), run_id, ids, False) == len(ids)


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
    run_id = stage(lms_url, change_set, approve=False)
    untick(lms_url, run_id, "users", "s2")
    approve(lms_url, run_id)
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
    run_id = stage(lms_url, change_set, approve=False)
    untick(lms_url, run_id, "sections", "c1")
    approve(lms_url, run_id)
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


def _lms_rows(lms_url: str, portal_id: str) -> dict[str, list[tuple]]:
    """A portal's LMS rows without ids and times: what two commits can be compared by."""
    wanted = ("id", "portal_id", "created_at", "updated_at", "archived_at", "last_sync_run_id")
    return {
        table: sorted(
            (
                *sorted((k, str(v)) for k, v in row.items() if k not in wanted),
                ("archived", row["archived_at"] is not None),
            )
            for row in rows
        )
        for table, rows in lms_snapshot(engine_for(lms_url), portal_id).items()
    }


def test_a_commit_applied_part_by_part_leaves_what_one_part_does(lms_url: str) -> None:
    """Day 2 of one district in two portals, committed in parts of two rows and in one
    part: adds, an update, archives and unticked actions (a section add whose enrollments are
    then skipped, a user archive that keeps her enrollments) leave the same rows and
    statuses."""
    day1 = district(
        students={"s1": "sch-a", "s2": "sch-a", "s3": "sch-b"},
        sections={"c1": "sch-a", "c2": "sch-b"},
        enrollments=[("c1", "s1"), ("c1", "s2"), ("c2", "s3")],
    )
    day2 = district(
        students={"s2": "sch-a", "s3": "sch-a,sch-b", "s4": "sch-a"},
        sections={"c1": "sch-a", "c2": "sch-b", "c3": "sch-a"},
        enrollments=[("c1", "s2"), ("c2", "s3"), ("c3", "s2"), ("c3", "s4"), ("c1", "s4")],
    )
    statuses = {}
    for portal_id, rows in (("p1", 2), ("p2", 10_000)):
        sync(lms_url, day1, portal_id=portal_id)
        change_set, scoped = run_diff(lms_url, day2, portal_id=portal_id)
        run_id = stage(lms_url, change_set, portal_id=portal_id, approve=False)
        untick(lms_url, run_id, "sections", "c3")
        untick(lms_url, run_id, "users", "s1")
        approve(lms_url, run_id)
        commit(lms_url, run_id, scoped, portal_id=portal_id, snapshot_rows=rows)
        statuses[portal_id] = _statuses(lms_url, run_id)
    assert statuses["p1"] == statuses["p2"]
    assert statuses["p1"][("enrollments", "c3:s4")] == "skipped"
    assert statuses["p1"][("enrollments", "c1:s1")] == "skipped"
    assert statuses["p1"][("enrollments", "c1:s4")] == "applied"
    assert _lms_rows(lms_url, "p1") == _lms_rows(lms_url, "p2")


def test_an_action_whose_row_the_snapshot_lacks_stops_the_commit_naming_it(
    lms_url: str,
) -> None:
    frames = district(students={"s1": "sch-a", "s2": "sch-a", "s3": "sch-a"})
    change_set, scoped = run_diff(lms_url, frames)
    run_id = stage(lms_url, change_set)
    users = scoped["users"]
    scoped = {**scoped, "users": users[users["sis_key"] != "s2"]}
    with pytest.raises(RuntimeError, match=r"1 users actions name keys .* first s2"):
        commit(lms_url, run_id, scoped, snapshot_rows=1)
    assert _active_keys(lms_url, "lms_users") == set()
    assert get_run(engine_for(lms_url), run_id)["status"] == "approved"


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
    assert get_run(engine, run_id)["status"] == "approved"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER boom ON lms_enrollments"
            if engine.dialect.name == "postgresql"
            else "DROP TRIGGER boom"
        )
    stage_lock(lms_url, run_id)  # the failed attempt's finish released it; a retry holds it
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


@pytest.mark.parametrize("status", ["rejected", "expired", "failed", "refused"])
def test_ended_run_can_never_be_committed(lms_url: str, status: str) -> None:
    change_set, scoped = run_diff(lms_url, district(students={"s1": "sch-a"}))
    run_id = stage(lms_url, change_set)
    set_status(lms_url, run_id, status)
    with pytest.raises(RunNotCommittable, match=status):
        commit(lms_url, run_id, scoped)
    assert _active_keys(lms_url, "lms_users") == set()
    assert get_run(engine_for(lms_url), run_id)["status"] == status  # a decided run stays
    (event,) = read_events(engine_for(lms_url), run_id)
    assert event["event"] == "commit_refused"


@pytest.mark.parametrize("status", ["awaiting_approval", "staged", "running"])
def test_run_nobody_approved_is_refused(lms_url: str, status: str) -> None:
    """A task marked success in Airflow is not an approval: the commit refuses, and a run
    never decided becomes refused."""
    change_set, scoped = run_diff(lms_url, district(students={"s1": "sch-a"}))
    run_id = stage(lms_url, change_set, approve=False)
    set_status(lms_url, run_id, status)
    before = lms_snapshot(engine_for(lms_url))
    with pytest.raises(RunNotCommittable, match="commit refused"):
        commit(lms_url, run_id, scoped)
    assert lms_snapshot(engine_for(lms_url)) == before
    row = get_run(engine_for(lms_url), run_id)
    assert row["status"] == "refused"
    assert row["error"].startswith("commit refused: ")


def test_run_superseded_by_a_newer_commit_is_refused(lms_url: str) -> None:
    """An approved change set goes stale once a newer sync of the portal committed."""
    change_set, scoped = run_diff(lms_url, district(students={"s1": "sch-a"}))
    old = stage(lms_url, change_set)
    engine = engine_for(lms_url)
    from include.sis_sync.runs import release_lock

    release_lock(engine, "p1", old)  # e.g. released by hand while it waited
    sync(lms_url, district(students={"s2": "sch-a"}))
    stage_lock(lms_url, old)
    with pytest.raises(RunNotCommittable, match="committed after it"):
        commit(lms_url, old, scoped)
    assert _active_keys(lms_url, "lms_users") == {"s2"}
    assert get_run(engine, old)["status"] == "refused"


def test_approved_run_that_lost_its_lock_is_refused(lms_url: str) -> None:
    change_set, scoped = run_diff(lms_url, district(students={"s1": "sch-a"}))
    run_id = stage(lms_url, change_set)
    from include.sis_sync.runs import release_lock

    release_lock(engine_for(lms_url), "p1", run_id)
    with pytest.raises(RunNotCommittable, match="no longer holds the portal's lock"):
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
    run_id = stage(lms_url, change_set, approve=False)
    untick(lms_url, run_id, "users", "s2")
    approve(lms_url, run_id)
    commit(lms_url, run_id, scoped)
    report = build_report(engine_for(lms_url), run_id)
    assert report["status"] == "committed"
    assert report["counts"]["users (student)"]["add"] == 1
    assert report["not_selected"] == 1
    assert "not selected by the approver: 1 action(s)" in report["text"]
    assert "Family s" not in report["text"]  # no personal data in the report


def _cascade_district(students: dict[str, str], enrollments: list[tuple[str, str]]) -> dict:
    return district(
        students=students, sections={"c1": "sch-a", "c2": "sch-a"}, enrollments=enrollments
    )


def test_unticked_user_archive_keeps_her_memberships_and_enrollments(lms_url: str) -> None:
    """A full drop without s1 and without her enrollments: unticking her archive keeps her
    membership and enrollments too (skipped, saying why); the others' archives apply."""
    sync(
        lms_url,
        _cascade_district(
            {"s1": "sch-a", "s2": "sch-a"}, [("c1", "s1"), ("c2", "s1"), ("c1", "s2")]
        ),
    )
    change_set, scoped = run_diff(lms_url, _cascade_district({}, []))
    run_id = stage(lms_url, change_set, approve=False)
    untick(lms_url, run_id, "users", "s1")
    approve(lms_url, run_id)
    result = commit(lms_url, run_id, scoped)
    assert _active_keys(lms_url, "lms_users") == {"s1"}
    assert _active_keys(lms_url, "lms_user_organizations") == {"s1:sch-a"}
    assert _active_keys(lms_url, "lms_enrollments") == {"c1:s1", "c2:s1"}
    statuses = _statuses(lms_url, run_id)
    assert statuses[("users", "s1")] == "not_selected"
    for key in ("s1:sch-a",):
        assert statuses[("user_organizations", key)] == "skipped"
    for key in ("c1:s1", "c2:s1"):
        assert statuses[("enrollments", key)] == "skipped"
    assert statuses[("users", "s2")] == statuses[("enrollments", "c1:s2")] == "applied"
    assert result.skipped == 3
    kept = [
        w
        for w in read_warnings(engine_for(lms_url), run_id)
        if w["kind"] == "parent_archive_unticked"
    ]
    assert len(kept) == 3 and all(w["action_id"] is not None for w in kept)
    assert "the archive of its user s1 was unticked, so it stays active" in kept[0]["message"]


def test_enrollment_of_an_unticked_user_in_a_ticked_section_archive_is_archived(
    lms_url: str,
) -> None:
    """An enrollment explained by both its user's and its section's archive is kept only when
    both are unticked."""
    sync(lms_url, _cascade_district({"s1": "sch-a"}, [("c1", "s1"), ("c2", "s1")]))
    frames = district(students={}, sections={"c2": "sch-a"}, enrollments=[])
    change_set, scoped = run_diff(lms_url, frames)  # s1 and c1 leave; c2 stays
    run_id = stage(lms_url, change_set, approve=False)
    untick(lms_url, run_id, "users", "s1")
    approve(lms_url, run_id)
    commit(lms_url, run_id, scoped)
    assert _active_keys(lms_url, "lms_users") == {"s1"}
    assert _active_keys(lms_url, "lms_sections") == {"c2"}
    # c1 is archived (its archive stays ticked), so is s1's enrollment in it; in c2 she stays
    assert _active_keys(lms_url, "lms_enrollments") == {"c2:s1"}
    statuses = _statuses(lms_url, run_id)
    assert statuses[("enrollments", "c1:s1")] == "applied"
    assert statuses[("enrollments", "c2:s1")] == "skipped"


def test_unticked_section_archive_keeps_its_enrollments(lms_url: str) -> None:
    sync(
        lms_url,
        _cascade_district(
            {"s1": "sch-a", "s2": "sch-a"}, [("c1", "s1"), ("c1", "s2"), ("c2", "s1")]
        ),
    )
    frames = _cascade_district({"s1": "sch-a", "s2": "sch-a"}, [("c2", "s1")])
    frames["sections"] = frames["sections"][frames["sections"]["sis_key"] == "c2"]
    change_set, scoped = run_diff(lms_url, frames)  # c1 leaves with its enrollments
    run_id = stage(lms_url, change_set, approve=False)
    untick(lms_url, run_id, "sections", "c1")
    approve(lms_url, run_id)
    commit(lms_url, run_id, scoped)
    assert _active_keys(lms_url, "lms_sections") == {"c1", "c2"}
    assert _active_keys(lms_url, "lms_enrollments") == {"c1:s1", "c1:s2", "c2:s1"}
    statuses = _statuses(lms_url, run_id)
    assert statuses[("enrollments", "c1:s1")] == statuses[("enrollments", "c1:s2")] == "skipped"


def test_enrollment_archive_without_an_archived_parent_is_not_linked(lms_url: str) -> None:
    """A real unenrollment (user and section stay) is archived on its own."""
    sync(lms_url, _cascade_district({"s1": "sch-a"}, [("c1", "s1"), ("c2", "s1")]))
    change_set, _ = run_diff(lms_url, _cascade_district({"s1": "sch-a"}, [("c2", "s1")]))
    archived = change_set.actions[change_set.actions["action"] == "archive"]
    assert archived["sis_key"].tolist() == ["c1:s1"]
    assert archived["parent_user_key"].isna().all() and archived["parent_section_key"].isna().all()


def _committer(lms_url: str, barrier, jobs, out) -> None:
    """A process that commits each run it is given once the other racer is ready too."""
    from include.sis_sync.lms.commit import CommitTarget, commit_run

    engine = engine_for(lms_url)
    while (job := jobs.get(timeout=300)) is not None:
        run_id, portal_id, frames = job
        barrier.wait(timeout=60)
        try:
            target = CommitTarget(portal_id, "oneroster")
            result = commit_run(engine, run_id, frames, target, checkpoint="x")
            out.put("already committed" if result.already_committed else "applied")
        except Exception as exc:  # reported to the test, which fails on it
            out.put(f"error: {type(exc).__name__}: {exc}")


def test_two_commits_of_one_run_apply_it_once(lms_url: str) -> None:
    """A retried commit beside a cleared one, in two processes released by one barrier, with
    only updates and archives (no insert whose unique key would stop the loser): exactly one
    applies, the other finds the run already committed. Ten trials."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(2), context.Queue()
    queues = [context.Queue(), context.Queue()]
    racers = [
        context.Process(target=_committer, args=(lms_url, barrier, jobs, out), daemon=True)
        for jobs in queues
    ]
    for racer in racers:
        racer.start()
    students = {f"s{i}": "sch-a" for i in range(40)}
    try:
        for trial in range(10):
            portal = f"race{trial}"
            sync(lms_url, district(students=students), portal_id=portal)
            later = district(students={k: "sch-a" for k in list(students)[:30]})  # 10 leave
            later["users"] = later["users"].assign(given_name=f"Renamed {trial}")  # 30 change
            change_set, scoped = run_diff(lms_url, later, portal_id=portal)
            assert set(change_set.actions["action"]) == {"update", "archive"}
            run_id = stage(lms_url, change_set, portal_id=portal)
            for jobs in queues:
                jobs.put((run_id, portal, scoped))
            outcomes = sorted(out.get(timeout=120) for _ in racers)
            assert outcomes == ["already committed", "applied"], f"trial {trial}: {outcomes}"
            with engine_for(lms_url).connect() as conn:
                stamps = conn.execute(
                    sa.text(
                        "SELECT count(DISTINCT updated_at) FROM lms_users "
                        "WHERE portal_id = :p AND last_sync_run_id = :r"
                    ),
                    {"p": portal, "r": run_id},
                ).scalar()
            assert stamps == 1, "the run's rows were written by more than one commit"
    finally:
        for jobs in queues:
            jobs.put(None)
        for racer in racers:
            racer.join(timeout=30)
            if racer.is_alive():
                racer.kill()


@pytest.mark.parametrize("status", [None, "applied", "not_selected", "skipped"])
def test_counts_kept_on_the_run_equal_counting_its_actions(lms_url: str, status: str) -> None:
    """The report reads the counts staging and the commit keep on the run's row (one row for
    millions of actions): they must be what counting the actions says, status by status."""
    from include.sis_sync.report import _counted_over_actions, action_counts

    sync(lms_url, _cascade_district({"s1": "sch-a", "s2": "sch-a"}, [("c1", "s1")]))
    change_set, scoped = run_diff(
        lms_url, _cascade_district({"s2": "sch-a", "s3": "sch-b"}, [("c2", "s3")])
    )
    run_id = stage(lms_url, change_set, approve=False)
    untick(lms_url, run_id, "users", "s1")  # keeps her membership and enrollment: skipped
    engine = engine_for(lms_url)
    assert action_counts(engine, run_id, status) == _counted_over_actions(engine, run_id, status)
    approve(lms_url, run_id)
    commit(lms_url, run_id, scoped)
    kept = action_counts(engine, run_id, status)
    assert kept == _counted_over_actions(engine, run_id, status)
    if status == "skipped":
        assert sum(n for per in kept.values() for n in per.values()) == 2


def test_retention_forgets_staged_personal_values_but_keeps_what_changed(lms_url: str) -> None:
    from datetime import timedelta

    from include.sis_sync.runs import now
    from include.sis_sync.staging import purge_personal_values

    engine = engine_for(lms_url)
    sync(lms_url, district(students={"u1": "sch-a", "u2": "sch-a"}))
    day2 = district(students={"u1": "sch-a", "u2": "sch-a"})
    day2["users"].loc[day2["users"]["sis_key"] == "u1", "email"] = "new.mail@example.org"
    _, old = sync(lms_url, day2)
    _, recent = sync(lms_url, district(students={"u1": "sch-a"}))
    set_status(lms_url, old, "committed", finished_at=now() - timedelta(days=31))

    def staged(run_id: int) -> list[tuple]:
        with engine.connect() as conn:
            query = (
                "SELECT entity, action, sis_key, kind, status, changes, label "
                "FROM sis_sync_actions WHERE run_id = :r ORDER BY id"
            )
            return [tuple(r) for r in conn.execute(sa.text(query), {"r": run_id})]

    before_old, before_recent = staged(old), staged(recent)
    (update,) = [r for r in before_old if r[1] == "update"]
    assert "new.mail@example.org" in update[5] and update[6]  # values and a name, for now

    assert purge_personal_values(engine, "p1", retention_days=30) == 1
    after = staged(old)
    assert [r[:5] for r in after] == [r[:5] for r in before_old]  # what happened stays
    (update,) = [r for r in after if r[1] == "update"]
    assert json.loads(update[5]) == {"email": None}  # "email changed", the values gone
    assert all(r[6] is None for r in after if r[0] == "users")
    assert staged(recent) == before_recent  # within retention: untouched
    assert get_run(engine, old)["purged_at"] is not None
    assert purge_personal_values(engine, "p1", retention_days=30) == 0  # once is enough
