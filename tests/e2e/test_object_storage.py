"""Run data and CSV drops in object storage: whole syncs against a real local S3 server.

Nothing of a run may touch a local folder: the local data folders are replaced by plain files,
so any write under them fails, and the test checks that its own folder gained nothing but the
LMS database.
"""

from __future__ import annotations

import shutil
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.utils.state import DagRunState

from include.sis_sync import rundata
from include.sis_sync.sample.generator import generate_district, next_day, write_drop
from tests.helpers import active_keys, run_rows
from tests.object_store import ObjectStore, object_store_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
PORTAL = "s3portal"
DAYS = ("2026-09-01", "2026-09-02")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    with object_store_server() as server:
        client = server.client()
        for bucket in ("runs", "drops"):
            client.create_bucket(Bucket=bucket)
        monkeypatch.setenv("AIRFLOW_CONN_SIS_SYNC_STORE", server.connection())
        yield server


def _block_local_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put files where the local run-data folders would be: a write there cannot succeed."""
    for blocked in (tmp_path / "runs", tmp_path / "default-runs"):
        blocked.write_text("not a folder: run data must go to object storage\n")
    monkeypatch.setattr(rundata, "DEFAULT_DATA_DIR", tmp_path / "default-runs")
    monkeypatch.setenv("SIS_SYNC_DATA_URL", "s3://runs/sis-sync")
    monkeypatch.setenv("SIS_SYNC_DATA_CONN_ID", "sis_sync_store")


def _upload_drops(store: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two days of drops written locally elsewhere, uploaded, and the local copies removed."""
    day1 = generate_district("demo")
    districts = {DAYS[0]: day1, DAYS[1]: next_day(day1, seed=3, add=0.02, archive=0.02)}
    upload = tmp_path_factory.mktemp("upload")
    for day, district in districts.items():
        write_drop(district, upload / day)
    store.upload_folder(upload, "drops", PORTAL)
    shutil.rmtree(upload)
    return districts


def test_a_sync_keeps_run_data_and_reads_drops_in_object_storage_then_purges_them(
    make_portal, store: ObjectStore, tmp_path: Path, tmp_path_factory, monkeypatch
) -> None:
    portal = make_portal(
        PORTAL,
        auto_commit=True,
        retention_days=1,
        source={
            "provider": "oneroster_csv",
            "path": f"s3://drops/{PORTAL}/{{date}}",
            "conn_id": "sis_sync_store",
        },
    )
    _block_local_folders(tmp_path, monkeypatch)
    districts = _upload_drops(store, tmp_path_factory)
    before = {p.name for p in tmp_path.iterdir()}

    assert portal.run(drop_date=DAYS[0]).state == DagRunState.SUCCESS

    (run,) = run_rows(portal.lms_url)
    assert run["status"] == "committed", run["error"]
    assert run["source"] == f"s3://drops/{PORTAL}/{DAYS[0]}"
    folder = f"sis-sync/{PORTAL}/run_{run['id']}_{run['data_key']}/"
    stored = {key.removeprefix(folder) for key in store.keys("runs", folder)}
    assert {"raw/users.parquet", "canonical/users.parquet", "scoped/enrollments.parquet"} <= stored
    assert "extract.json" in stored
    users = districts[DAYS[0]].users
    assert set(users["sourcedId"]) == active_keys(portal.lms_url, "lms_users")
    assert {p.name for p in tmp_path.iterdir()} - before <= {"lms.db-wal", "lms.db-shm"}
    assert (tmp_path / "runs").is_file() and (tmp_path / "default-runs").is_file()

    # Three days later the first run's data is past the portal's one-day retention: the next
    # sync's last task deletes it from the store.
    later = time.time() + 3 * 86400
    monkeypatch.setattr(rundata, "time", types.SimpleNamespace(time=lambda: later))
    assert portal.run(drop_date=DAYS[1]).state == DagRunState.SUCCESS
    assert [r["status"] for r in run_rows(portal.lms_url)] == ["committed", "committed"]
    assert store.keys("runs", folder) == []
    assert store.keys("runs", f"sis-sync/{PORTAL}/") == []
    assert store.keys("drops", f"{PORTAL}/{DAYS[1]}/")  # drops are the SIS's: never purged
