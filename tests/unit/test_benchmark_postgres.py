"""The scale benchmark's small preset on PostgreSQL: both syncs complete through the stage
functions, their results say which store they measured, and the LMS holds what day 2's drop
holds (the large preset is run by hand; its results are in ``benchmarks/results``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[2]


def test_the_small_preset_syncs_into_postgresql(postgres_admin: sa.Engine, tmp_path: Path) -> None:
    out, work = tmp_path / "results", tmp_path / "work"
    command = [sys.executable, "-m", "benchmarks.run_sync", "--preset", "small"]
    command += ["--postgres", str(POSTGRES_URL), "--out", str(out), "--work", str(work), "--keep"]
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=800, check=False
        )
        assert done.returncode == 0, done.stderr[-4000:]
        result = json.loads((out / "small-postgresql.json").read_text())
        assert (result["status"], result["store"]) == ("complete", "postgresql")
        assert result["machine"]["postgresql"]
        assert "## small (postgresql)" in (out / "README.md").read_text()
        day2 = result["rows"]["day2"]
        lms = sa.make_url(str(POSTGRES_URL)).set(database="sis_sync_bench_small")
        engine = sa.create_engine(lms.render_as_string(hide_password=False))
        with engine.connect() as conn:
            students, enrollments = (
                conn.exec_driver_sql(
                    f"SELECT count(*) FROM {table} WHERE archived_at IS NULL{extra}"
                ).scalar()
                for table, extra in (
                    ("lms_users", " AND role = 'student'"),
                    ("lms_enrollments", ""),
                )
            )
        engine.dispose()
        assert (students, enrollments) == (day2["students"], day2["enrollments"])
    finally:
        with postgres_admin.connect() as conn:
            conn.exec_driver_sql("DROP DATABASE IF EXISTS sis_sync_bench_small WITH (FORCE)")
