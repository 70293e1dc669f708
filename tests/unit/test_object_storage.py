"""Run data and CSV drops on a real local S3-compatible server, read as the local ones are."""

from __future__ import annotations

import time
import types
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from include.sis_sync import rundata, storage
from include.sis_sync.providers.oneroster_csv import (
    DropError,
    DropLimits,
    list_drops,
    locate_drop,
    read_drop,
)
from include.sis_sync.rundata import RunData, purge_expired
from tests.helpers import write_csv_drop
from tests.object_store import ObjectStore, object_store_server
from tests.unit.test_oneroster_csv import ALL_FILES, zip_folder

pytestmark = pytest.mark.timeout(120)
CONN = "sis_sync_store"


@pytest.fixture(scope="module")
def server() -> Iterator[ObjectStore]:
    with object_store_server() as running:
        yield running


@pytest.fixture
def bucket(server: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, reachable through the Airflow connection ``sis_sync_store``."""
    name = f"b-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=name)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", server.connection())
    return name


def test_drops_in_a_bucket_are_found_by_date_and_read_like_local_ones(
    server: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    local = write_csv_drop(tmp_path / "upload" / "2026-09-01", ALL_FILES)
    (tmp_path / "zips").mkdir()
    zip_folder(local, tmp_path / "zips" / "2026-09-03.zip")
    server.upload_folder(tmp_path / "upload", bucket, "district")
    server.upload_folder(tmp_path / "zips", bucket, "zipped")
    folders, zips = f"s3://{bucket}/district/{{date}}", f"s3://{bucket}/zipped/{{date}}.zip"

    assert list(list_drops(folders, CONN)) == [date(2026, 9, 1)]
    path, day = locate_drop(zips, None, CONN)
    assert (path, str(day)) == (f"s3://{bucket}/zipped/2026-09-03.zip", "2026-09-03")

    expected = read_drop(str(local))
    from_folder = read_drop(f"s3://{bucket}/district/2026-09-01", _limits())
    from_zip = read_drop(path, _limits())
    for drop in (from_folder, from_zip):
        assert drop.modes == expected.modes
        for stem, table in expected.tables.items():
            assert drop.tables[stem].equals(table), stem


def test_a_missing_drop_in_a_bucket_is_named(bucket: str) -> None:
    with pytest.raises(DropError, match=rf"s3://{bucket}/nowhere/\{{date\}}: no drop found"):
        locate_drop(f"s3://{bucket}/nowhere/{{date}}", None, CONN)
    with pytest.raises(DropError, match=rf"s3://{bucket}/undated: the portal's drop path does"):
        locate_drop(f"s3://{bucket}/undated", None, CONN)


def test_run_data_round_trips_and_a_retry_starts_its_stage_afresh(
    server: ObjectStore, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIS_SYNC_DATA_URL", f"s3://{bucket}/runs")
    monkeypatch.setenv("SIS_SYNC_DATA_CONN_ID", CONN)
    data = RunData.for_run("p1", 7, "k")
    frame = pd.DataFrame({"sis_key": ["a", None], "n": [1, 2]}).astype({"sis_key": "string"})

    data.write_frames("canonical", {"users": frame, "orgs": frame.head(1)})
    data.write_frames("canonical", {"users": frame})  # a retried task's stage replaces all
    data.write_json("findings", [{"field": "email"}])

    data.write_frames("raw", {})  # a quick sync that found no changes: an empty stage
    assert server.keys(bucket, "runs/") == [
        "runs/p1/run_7_k/canonical/_tables.json",
        "runs/p1/run_7_k/canonical/users.parquet",
        "runs/p1/run_7_k/findings.json",
        "runs/p1/run_7_k/raw/_tables.json",
    ]
    assert data.read_frames("raw") == {}
    pd.testing.assert_frame_equal(data.read_frames("canonical")["users"], frame)
    assert list(data.lazy_frames("canonical")) == ["users"]
    assert data.read_json("findings") == [{"field": "email"}]
    with pytest.raises(FileNotFoundError, match=rf"^s3://{bucket}/runs/p1/run_7_k/scoped: no"):
        data.read_frames("scoped")


def test_purge_deletes_only_run_folders_past_retention(
    server: ObjectStore, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = storage.location(f"s3://{bucket}/runs", CONN)
    for run_id in (1, 2):
        RunData("p1", run_id, root, "k").write_json("extract", {})
    RunData("p2", 1, root, "k").write_json("extract", {})

    assert purge_expired("p1", 1, root) == 0
    later = time.time() + 2 * 86400
    monkeypatch.setattr(rundata, "time", types.SimpleNamespace(time=lambda: later))
    assert purge_expired("p1", 1, root) == 2
    assert server.keys(bucket, "runs/") == ["runs/p2/run_1_k/extract.json"]
    assert purge_expired("p3", 1, root) == 0


def _limits() -> DropLimits:
    return DropLimits(conn_id=CONN)
