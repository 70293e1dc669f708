"""Backfill through a real Airflow: `airflow standalone` (scheduler, dag-processor, api-server on
SQLite) runs a backfill of three days of dated drops, one run at a time.

The portal reads ``<drops>/{date}`` and runs at 06:00 UTC, so each backfill run reads the drop
of its logical date (``pipeline.drop_date_for``). The test checks each run's logical date, the
drop it read, its counts, the order of the commits, and that the LMS ends as day 3 says.

No scheduled run gets in the way: the standalone runs with ``[scheduler] use_job_schedule =
False``. Otherwise unpausing the DAG (backfill runs of a paused DAG stay queued) would also
create the latest scheduled run (catchup is off: today 06:00), which would look for today's
drop, fail, and hold the portal's lock for a while.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from include.sis_sync.dag_factory import LMS_WRITES_POOL
from include.sis_sync.lms import schema
from include.sis_sync.lms.db import migrate
from include.sis_sync.sample.generator import write_demo_drops
from tests.e2e.standalone import start_standalone
from tests.helpers import write_portal

PORTAL_ID = "backfill"
DAG_ID = f"sis_sync__{PORTAL_ID}"
DATES = ("2026-09-01", "2026-09-02", "2026-09-03")
LOGICAL_DATES = [datetime(2026, 9, d, 6, 0, tzinfo=UTC) for d in (1, 2, 3)]
TERMINAL = {"success", "failed"}
ACTIONS = ("add", "update", "archive", "reactivate")


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _user_keys(drop: Path) -> set[str]:
    users = pd.read_csv(drop / "users.csv", dtype=str, keep_default_na=False)
    return set(users["sourcedId"])


def _backfill_runs(runs: list[dict]) -> list[dict]:
    return sorted((r for r in runs if r["run_type"] == "backfill"), key=lambda r: r["logical_date"])


@pytest.mark.standalone
@pytest.mark.timeout(900)
def test_backfill_runs_three_full_syncs_in_date_order(tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    write_demo_drops(drops, DATES)
    portals = tmp_path / "portals"
    portals.mkdir()
    write_portal(
        portals,
        id=PORTAL_ID,
        name="Backfill test portal",
        timezone="UTC",
        source={"provider": "oneroster_csv", "path": f"{drops}/{{date}}"},
        schedule="0 6 * * *",
        scheduled_mode="full",
        auto_commit=True,
    )
    lms_path = tmp_path / "lms.db"
    lms_url = f"sqlite:///{lms_path}"
    migrate(lms_url)
    env = {
        "SIS_SYNC_PORTALS_DIR": str(portals),
        "SIS_SYNC_DATA_URL": str(tmp_path / "runs"),
        "SIS_SYNC_DROPS_DIR": str(drops),
        "AIRFLOW_CONN_LMS_DB": json.dumps({"conn_type": "sqlite", "host": str(lms_path)}),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    }

    with start_standalone(tmp_path / "airflow", env) as af:
        # the commit task's pool, as `load-settings` creates it from airflow_settings.yaml
        pool = af.cli("pools", "set", LMS_WRITES_POOL, "1", "LMS writes")
        assert pool.returncode == 0, pool.stderr
        dag = af.wait_for_dag(DAG_ID, timeout=120)
        assert dag["is_paused"], "new DAGs start paused"
        # Whole days: the timetable's runs are at 06:00, so a to_date of midnight on
        # 2026-09-03 would leave that day's run out (`latest` is a logical date, inclusive).
        body = {
            "dag_id": DAG_ID,
            "from_date": "2026-09-01T00:00:00Z",
            "to_date": "2026-09-03T23:59:59Z",
            "run_backwards": False,
            "dag_run_conf": {},
            "reprocess_behavior": "none",
            "max_active_runs": 1,
        }
        dry = af.post("/api/v2/backfills/dry_run", json=body)
        assert dry.status_code == 200, dry.text
        planned = [_when(r["logical_date"]) for r in dry.json()["backfills"]]
        assert planned == LOGICAL_DATES

        created = af.create_backfill(body, timeout=60)
        assert created["max_active_runs"] == 1
        unpaused = af.request_retrying("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
        assert unpaused.status_code == 200, unpaused.text
        af.note(f"backfill {created['id']} created, DAG unpaused")

        def settled(runs: list[dict]) -> bool:
            backfill = _backfill_runs(runs)
            states = {r["state"] for r in backfill}
            return len(backfill) == 3 and (states <= TERMINAL or "failed" in states)

        runs = af.wait_for_runs(DAG_ID, settled, timeout=420)
        backfill = _backfill_runs(runs)
        failed = [r for r in backfill if r["state"] != "success"]
        if failed:
            logs = "\n".join(af.failed_task_logs(DAG_ID, r["dag_run_id"]) for r in failed)
            with sa.create_engine(lms_url).connect() as conn:
                rows = conn.execute(sa.select(schema.runs)).mappings().all()
            states = [(r["dag_run_id"], r["state"]) for r in failed]
            pytest.fail(
                f"backfill runs not all successful: {states}"
                f"\nLMS runs: {[dict(r) for r in rows]}\n{logs}\n{af.log_tail(60)}"
            )

    # Airflow's side: three backfill runs, nothing else, at 06:00 UTC of each day, one at a time.
    assert [r["run_type"] for r in runs] == ["backfill"] * 3, [r["dag_run_id"] for r in runs]
    assert [_when(r["logical_date"]) for r in backfill] == LOGICAL_DATES
    for earlier, later in itertools.pairwise(backfill):
        assert _when(earlier["end_date"]) <= _when(later["start_date"]), "runs overlapped"

    # The LMS's side: one committed run per day, each from its own drop, committed in order.
    engine = sa.create_engine(lms_url)
    lms_users = schema.LMS_TABLES["users"]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema.runs).order_by(schema.runs.c.id)).mappings().all()
        users = pd.DataFrame(
            conn.execute(
                sa.select(lms_users.c.sis_key, lms_users.c.archived_at).where(
                    lms_users.c.portal_id == PORTAL_ID
                )
            ).all(),
            columns=["sis_key", "archived_at"],
        )
    engine.dispose()
    assert len(rows) == 3, [dict(r) for r in rows]
    by_run_id = {r["airflow_run_id"]: r for r in rows}
    ordered = [by_run_id[r["dag_run_id"]] for r in backfill]
    assert [r["id"] for r in ordered] == sorted(r["id"] for r in rows)
    for row, day in zip(ordered, DATES, strict=True):
        assert row["trigger"] == "backfill"
        assert row["status"] == "committed", row["error"]
        assert row["ran_as"] == "full"
        assert row["source_date"] == date.fromisoformat(day)
        assert Path(row["source"]) == drops / day
        assert row["source"].endswith(day)
    committed = [r["committed_at"] for r in ordered]
    assert all(c is not None for c in committed)
    assert committed[0] < committed[1] < committed[2], committed

    keys = [_user_keys(drops / day) for day in DATES]
    counts = [json.loads(r["counts"]) for r in ordered]
    day1, day2, day3 = (c["users"] for c in counts)
    print(f"user counts per day: {day1} {day2} {day3}")
    # Day 1 only adds, everything.
    assert day1 == {"add": len(keys[0]), "update": 0, "archive": 0, "reactivate": 0}
    for entity, values in counts[0].items():
        assert values["update"] == values["archive"] == values["reactivate"] == 0, entity
    # Day 2: new, changed and gone students (9 each in the demo drops).
    assert day2["add"] == len(keys[1] - keys[0]) >= 5
    assert day2["archive"] == len(keys[0] - keys[1]) >= 5
    assert day2["update"] >= 5
    assert day2["reactivate"] == 0
    # Day 3: two students archived on day 2 come back.
    returning = keys[2] & (keys[0] - keys[1])
    assert len(returning) == 2
    assert day3["reactivate"] == 2
    assert day3["add"] == len(keys[2] - keys[0] - keys[1])
    assert day3["archive"] == len(keys[1] - keys[2])

    # The LMS ends as day 3 says: its users active, every other user archived, none deleted.
    active = set(users.loc[users["archived_at"].isna(), "sis_key"])
    archived = set(users.loc[users["archived_at"].notna(), "sis_key"])
    everyone = keys[0] | keys[1] | keys[2]
    assert active == keys[2]
    assert archived == everyone - keys[2]
    assert len(users) == len(everyone)
    assert users["sis_key"].is_unique
