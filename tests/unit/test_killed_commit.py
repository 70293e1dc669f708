"""A commit killed by SIGKILL (no exception, no clean-up) at random points, on SQLite and on
PostgreSQL: after every kill the LMS is exactly as before, and the retried commit applies the
change set exactly once.

The change set is the first sync of a district of 10,000 students (about 90,000 rows). Its
commit is timed once on a scratch copy of the database; each trial then kills a fresh commit
process at a random moment inside that time.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.sis_sync import pipeline
from include.sis_sync.lms.db import engine_for
from include.sis_sync.runs import APPROVED, COMMITTED, get_run
from include.sis_sync.sample.generator import generate_district
from tests.feeds import DAY1, Feed, python_process
from tests.helpers import approve

pytestmark = pytest.mark.timeout(900)
TRIALS = 10
CHILD = """
import sys
from include.sis_sync import pipeline
from include.sis_sync.config import Portal
portal = Portal.model_validate_json(sys.argv[1])
ctx = pipeline.RunContext(portal=portal, lms_url=sys.argv[2], dag_id="d", airflow_run_id="r",
                          run_type="manual")
print("ready", flush=True)
pipeline.commit(ctx, int(sys.argv[3]))
print("done", flush=True)
"""


def _commit_process(feed: Feed, lms_url: str, run_id: int) -> subprocess.Popen[str]:
    """A commit in its own process, as a task's; returns once it is about to commit."""
    process = python_process(CHILD, feed.portal.model_dump_json(), lms_url, str(run_id))
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _scratch_copy(lms_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A copy of the LMS database, to time a commit on without touching the real one."""
    engine_for(lms_url).dispose()
    url = sa.make_url(lms_url)
    if url.get_backend_name() == "sqlite":
        copy = tmp_path / "scratch.db"
        shutil.copy(url.database, copy)
        return f"sqlite:///{copy}"
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    name = f"{url.database}_scratch"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {url.database}")
    request.addfinalizer(lambda: _drop(admin, name))
    return url.set(database=name).render_as_string(hide_password=False)


def _drop(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _state(feed: Feed, run_id: int) -> tuple[dict[str, Any], str]:
    return feed.lms(), get_run(engine_for(feed.lms_url), run_id)["status"]


def test_a_killed_commit_leaves_the_lms_as_before_and_the_retry_commits_once(
    tmp_path: Path, lms_url: str, data_dir: Path, request: pytest.FixtureRequest
) -> None:
    feed = Feed(tmp_path, lms_url, auto_commit=False)
    feed.write(generate_district("small"), DAY1)
    ctx = feed.context(DAY1)
    run_id = pipeline.start(ctx)["run_id"]
    for stage in pipeline.PREPARE:
        stage(ctx, run_id)
    assert pipeline.gate(ctx, run_id, pipeline.validate_changes(ctx, run_id)["tripped"]) != "commit"
    approve(lms_url, run_id)
    before = _state(feed, run_id)
    assert before[1] == APPROVED and not before[0]["lms_users"]

    scratch = _scratch_copy(lms_url, request, tmp_path)
    timing = _commit_process(feed, scratch, run_id)
    started = time.monotonic()
    assert timing.stdout is not None and timing.stdout.readline().strip() == "done"
    seconds = time.monotonic() - started  # to the commit's end, not the process's
    assert timing.wait(timeout=600) == 0
    print(f"commit of run {run_id} on {sa.make_url(lms_url).get_backend_name()}: {seconds:.2f} s")
    rng = random.Random(20261207)
    killed_mid_commit = 0
    for trial in range(TRIALS):
        process = _commit_process(feed, lms_url, run_id)
        time.sleep(rng.uniform(0.02, 0.6) * seconds)  # a commit varies by a few tenths
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        engine_for(lms_url).dispose()  # the dead process's connection is gone; so are ours
        assert _state(feed, run_id) == before, f"trial {trial}: the LMS changed"
        killed_mid_commit += process.returncode == -signal.SIGKILL
    assert killed_mid_commit == TRIALS, "every kill must land before the commit finished"

    retry = _commit_process(feed, lms_url, run_id)
    assert retry.wait(timeout=600) == 0
    lms, status = _state(feed, run_id)
    assert status == COMMITTED
    added = sum(len(rows) for rows in lms.values())
    with engine_for(lms_url).connect() as conn:
        staged = conn.execute(
            sa.text("SELECT count(*) FROM sis_sync_actions WHERE run_id = :r AND action = 'add'"),
            {"r": run_id},
        ).scalar_one()
    assert added == staged > 80_000  # every add applied once: no row twice, none missing
    again = _commit_process(feed, lms_url, run_id)
    assert again.wait(timeout=600) == 0
    assert _state(feed, run_id) == (lms, COMMITTED)  # a further retry applies nothing
