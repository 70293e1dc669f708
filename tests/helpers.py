"""Small builders shared by tests: hand-written drops, portals and pipeline runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

MANIFEST_FILES = ("academicSessions", "classes", "courses", "enrollments", "orgs", "users")


def write_csv_drop(
    folder: Path,
    files: Mapping[str, str],
    modes: Mapping[str, str] | None = None,
    *,
    manifest: str | None = None,
) -> Path:
    """Write a drop from CSV texts keyed by file stem; the manifest lists them as ``modes``
    say (default bulk for the given files, absent for the rest)."""
    folder.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        modes = dict(modes or {})
        lines = ["propertyName,value", "manifest.version,1.0", "oneroster.version,1.1"]
        for stem in MANIFEST_FILES:
            lines.append(f"file.{stem},{modes.get(stem, 'bulk' if stem in files else 'absent')}")
        manifest = "\n".join(lines) + "\n"
    (folder / "manifest.csv").write_text(manifest)
    for stem, text in files.items():
        (folder / f"{stem}.csv").write_bytes(
            text.encode("utf-8") if isinstance(text, str) else text
        )
    return folder


def portal_dict(**overrides: Any) -> dict[str, Any]:
    """A valid portal definition, changed by ``overrides``."""
    portal: dict[str, Any] = {
        "id": "testportal",
        "name": "Test portal",
        "timezone": "UTC",
        "source": {"provider": "oneroster_csv", "path": "testportal/{date}"},
        "auto_commit": True,
    }
    portal.update(overrides)
    return portal


def write_portal(folder: Path, **overrides: Any) -> Path:
    data = portal_dict(**overrides)
    path = folder / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------------------------
# Canonical frames and syncs without files or Airflow
# --------------------------------------------------------------------------------------------


def canonical(entity_name: str, rows: list[dict[str, Any]]) -> Any:
    """A canonical frame from dicts (missing fields null)."""
    import pandas as pd

    from include.sis_sync import model

    entity = model.BY_NAME[entity_name]
    return model.conform(pd.DataFrame(rows, columns=entity.columns), entity)


def district(
    *,
    students: dict[str, str] | None = None,
    sections: dict[str, str] | None = None,
    enrollments: list[tuple[str, str]] | None = None,
    schools: tuple[str, ...] = ("sch-a", "sch-b"),
) -> dict[str, Any]:
    """A small snapshot: a district, schools, one term, one course per school, and
    ``students`` (key -> comma list of schools), ``sections`` (key -> school) and
    ``enrollments`` ((section, user) pairs, student role)."""
    from include.sis_sync.transform import derive_user_organizations

    students = students or {}
    sections = sections or {}
    orgs = [{"sis_key": "dist", "name": "District", "kind": "district"}] + [
        {"sis_key": s, "name": f"School {s}", "kind": "school", "parent_key": "dist"}
        for s in schools
    ]
    users = canonical(
        "users",
        [
            {
                "sis_key": k,
                "role": "student",
                "roles": "student",
                "given_name": "Given",
                "family_name": f"Family {k}",
                "username": k,
                "organizations": orgs_of,
            }
            for k, orgs_of in students.items()
        ],
    )
    return {
        "organizations": canonical("organizations", orgs),
        "terms": canonical(
            "terms",
            [
                {
                    "sis_key": "fall",
                    "name": "Fall",
                    "kind": "semester",
                    "start_date": "2026-08-15",
                    "end_date": "2026-12-20",
                }
            ],
        ),
        "courses": canonical(
            "courses",
            [{"sis_key": f"crs-{s}", "title": "Math", "organization_key": s} for s in schools],
        ),
        "users": users,
        "user_organizations": derive_user_organizations(users),
        "sections": canonical(
            "sections",
            [
                {
                    "sis_key": k,
                    "name": f"Section {k}",
                    "organization_key": s,
                    "course_key": f"crs-{s}",
                    "term_keys": "fall",
                }
                for k, s in sections.items()
            ],
        ),
        "enrollments": canonical(
            "enrollments",
            [
                {
                    "sis_key": f"{sec}:{usr}",
                    "section_key": sec,
                    "user_key": usr,
                    "organization_key": sections.get(sec),
                    "role": "student",
                    "primary": "false",
                }
                for sec, usr in (enrollments or [])
            ],
        ),
    }


def _all_bulk() -> dict[str, str]:
    from include.sis_sync import model

    return {entity.name: "bulk" for entity in model.ENTITIES}


ALL_BULK = _all_bulk()


def run_diff(
    lms_url: str,
    frames: dict[str, Any],
    *,
    modes: dict[str, str] | None = None,
    portal_schools: frozenset[str] | None = None,
    run_schools: list[str] | None = None,
    portal_id: str = "p1",
    school_year: tuple[str, str] | None = None,
    bucket_rows: int | None = 10_000,
) -> Any:
    """Diff ``frames`` against the LMS as the pipeline's diff stage does (entity by entity, in
    key buckets of about ``bucket_rows`` rows: one bucket for a small roster unless asked for
    a few rows per bucket); with ``bucket_rows=None``, in memory (``diff_snapshot``). Returns
    (change set, scoped frames)."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from include.sis_sync import buckets, model
    from include.sis_sync.diff import ACTION_COLUMNS, ChangeSet, DiffInput, diff_snapshot
    from include.sis_sync.diff_parts import Source, diff_in_parts
    from include.sis_sync.lms.db import engine_for
    from include.sis_sync.lms.store import read_all_current, read_current
    from include.sis_sync.rundata import RunData
    from include.sis_sync.transform import build_scope, restrict

    with engine_for(lms_url).connect() as conn:
        current = read_current(conn, portal_id, "oneroster", model.ORGANIZATIONS)
    orgs = pd.concat(
        [
            frames["organizations"][["sis_key", "kind", "parent_key"]],
            current[["sis_key", "kind", "parent_key"]],
        ]
    ).drop_duplicates("sis_key")
    scope = build_scope(orgs, portal_schools, run_schools)
    diff_in = DiffInput(modes=modes or ALL_BULK, current={}, scope=scope, school_year=school_year)
    if bucket_rows is None:
        with engine_for(lms_url).connect() as conn:
            diff_in.current = read_all_current(conn, portal_id, "oneroster")
        scoped, _ = restrict(frames, scope)
        return diff_snapshot(scoped, diff_in), scoped
    kept = buckets.BUCKET_ROWS
    buckets.BUCKET_ROWS = bucket_rows
    try:
        with tempfile.TemporaryDirectory() as root:
            data = RunData(portal_id, 1, Path(root))
            data.write_frames("validated", frames)
            with (
                buckets.scratch() as folder,
                engine_for(lms_url).connect() as conn,
                data.stage_writer("scoped") as writer,
            ):
                outcome = diff_in_parts(
                    Source(data, conn, portal_id, "oneroster"), diff_in, writer, folder
                )
                parts = list(outcome.action_parts())
            scoped = data.read_frames("scoped")
    finally:
        buckets.BUCKET_ROWS = kept
    actions = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=ACTION_COLUMNS)
    return ChangeSet(actions, outside_school_year=outcome.outside_school_year), scoped


_RUNS = {"n": 0}


def stage(
    lms_url: str,
    change_set: Any,
    *,
    portal_id: str = "p1",
    schools: list[str] | None = None,
    approve: bool = True,
) -> int:
    """Open a run, take the portal's lock and stage a change set; approved (as the gate's
    auto-commit does) unless ``approve`` is False. Returns the run id."""
    from include.sis_sync.lms.db import engine_for
    from include.sis_sync.runs import APPROVED, STAGED, RunRequest, acquire_lock, move, open_run
    from include.sis_sync.staging import write_change_set

    engine = engine_for(lms_url)
    _RUNS["n"] += 1
    run_id = open_run(
        engine,
        RunRequest(
            portal_id,
            "sis_sync__test",
            f"run-{_RUNS['n']}",
            "full",
            "manual",
            None,
            schools,
            True,
            False,
        ),
    )
    assert acquire_lock(engine, portal_id, run_id) is None, "the portal is locked"
    write_change_set(engine, run_id, portal_id, [change_set.actions], [])
    if approve:
        assert move(engine, run_id, APPROVED, allowed_from=(STAGED,), decision="auto_commit")
    return run_id


def approve(lms_url: str, run_id: int, by: str = "admin") -> None:
    """Answer a staged run's approval with Approve, as the approval step records it."""
    from include.sis_sync.lms.db import engine_for
    from include.sis_sync.runs import AWAITING_APPROVAL, STAGED, move, record_answer

    engine = engine_for(lms_url)
    move(engine, run_id, AWAITING_APPROVAL, allowed_from=(STAGED,), decision="approval")
    assert record_answer(engine, run_id, True, by) == "approved"


def commit(
    lms_url: str,
    run_id: int,
    frames: dict[str, Any],
    *,
    portal_id: str = "p1",
    snapshot_rows: int = 2,
) -> Any:
    """Commit the run as the pipeline does, its snapshot read from the run's Parquet files in
    parts of ``snapshot_rows`` rows (an entity of more rows is applied part by part), then
    release the portal's lock (as ``finish``)."""
    import tempfile
    from pathlib import Path

    from include.sis_sync.lms import commit as lms_commit
    from include.sis_sync.lms.db import engine_for
    from include.sis_sync.rundata import RunData
    from include.sis_sync.runs import release_lock

    engine = engine_for(lms_url)
    kept = lms_commit.SNAPSHOT_ROWS
    lms_commit.SNAPSHOT_ROWS = snapshot_rows
    try:
        with tempfile.TemporaryDirectory() as root:
            data = RunData(portal_id, run_id, Path(root))
            data.write_frames("scoped", frames)
            target = lms_commit.CommitTarget(portal_id, "oneroster")
            return lms_commit.commit_run(
                engine, run_id, data.lazy_frames("scoped"), target, checkpoint="x"
            )
    finally:
        lms_commit.SNAPSHOT_ROWS = kept
        release_lock(engine, portal_id, run_id)


def sync(lms_url: str, frames: dict[str, Any], **kwargs: Any) -> tuple[Any, int]:
    """Diff, stage and commit in one go; returns (change set, run id)."""
    portal_id = kwargs.get("portal_id", "p1")
    change_set, scoped = run_diff(lms_url, frames, **kwargs)
    run_id = stage(lms_url, change_set, portal_id=portal_id, schools=kwargs.get("run_schools"))
    commit(lms_url, run_id, scoped, portal_id=portal_id)
    return change_set, run_id


def actions_of(change_set: Any, entity: str) -> dict[str, str]:
    """``{sis_key: action}`` of one entity."""
    frame = change_set.actions
    frame = frame[frame["entity"] == entity]
    return dict(zip(frame["sis_key"], frame["action"], strict=True))


def run_whole_sync(ctx: Any) -> dict[str, Any]:
    """Every stage of one auto-committed sync, as the DAG's tasks run them; returns the
    report with the extract's summary under ``extract``. The run is finished either way."""
    from include.sis_sync import pipeline

    run_id = pipeline.start(ctx)["run_id"]
    try:
        extracted, *_ = [stage(ctx, run_id) for stage in pipeline.PREPARE]
        checks = pipeline.validate_changes(ctx, run_id)
        assert pipeline.gate(ctx, run_id, checks["tripped"]) == "commit"
        pipeline.commit(ctx, run_id)
    finally:
        report = pipeline.finish(ctx, run_id)
    report["extract"] = extracted
    return report


def active_keys(lms_url: str, table: str) -> set[str]:
    """The ``sis_key``s of an LMS table's active rows."""
    import sqlalchemy as sa

    from include.sis_sync.lms.db import engine_for

    with engine_for(lms_url).connect() as conn:
        query = f"SELECT sis_key FROM {table} WHERE archived_at IS NULL"
        return set(conn.execute(sa.text(query)).scalars())


def set_status(lms_url: str, run_id: int, status: str, **values: Any) -> None:
    """Put a run in a status directly, as a test's set-up (the code moves it by rules)."""
    import sqlalchemy as sa

    from include.sis_sync.lms import schema
    from include.sis_sync.lms.db import engine_for

    with engine_for(lms_url).begin() as conn:
        conn.execute(
            sa.update(schema.runs).where(schema.runs.c.id == run_id).values(status=status, **values)
        )


def run_rows(url: str) -> list[dict[str, Any]]:
    """Every row of ``sis_sync_runs``, oldest first."""
    import sqlalchemy as sa

    from include.sis_sync.lms.db import engine_for

    with engine_for(url).connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM sis_sync_runs ORDER BY id")).mappings()
        return [dict(r) for r in rows]


def lms_rows(url: str) -> dict[str, list[tuple]]:
    """Every LMS row (id, key, archived, updated) per table, to compare before and after."""
    import sqlalchemy as sa

    from include.sis_sync.lms.db import engine_for

    out = {}
    with engine_for(url).connect() as conn:
        for table in ("lms_users", "lms_sections", "lms_enrollments", "lms_user_organizations"):
            out[table] = list(
                conn.execute(
                    sa.text(f"SELECT id, sis_key, archived_at, updated_at FROM {table} ORDER BY id")
                )
            )
    return out


def write_mass_archive_drops(drops: Path) -> None:
    """Two daily drops of the demo district; half the students are gone from the second."""
    from include.sis_sync.sample.generator import generate_district, write_drop

    day1 = generate_district("demo")
    write_drop(day1, drops / "2026-09-01")
    users = day1.users
    students = users[users["role"] == "student"]["sourcedId"]
    leaving = set(students.iloc[: len(students) // 2])
    day1.users = users[~users["sourcedId"].isin(leaving)]
    day1.enrollments = day1.enrollments[~day1.enrollments["userSourcedId"].isin(leaving)]
    write_drop(day1, drops / "2026-09-02")


def dag_run_note(run: Any) -> str:
    """The note of a DAG run as Airflow's metadata database holds it."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        stored = session.get(DagRun, run.id)
        return str(stored.note or "")
