"""A provider that exists only in this test syncs through the real DAG: adding a source is one
module and its registration (docs/providers.md), with no change to config, extract, the DAG
factory or the run context.

The provider reads a JSON file of canonical records. It shares no terms or courses, which it
declares optional: the sync goes through, and the report says the SIS sent none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pytest
from airflow.utils.state import DagRunState

from include.sis_sync import model
from include.sis_sync.config import Entities
from include.sis_sync.lms.db import engine_for
from include.sis_sync.providers import registry
from include.sis_sync.providers.base import (
    Completeness,
    ExtractRecord,
    ExtractRequest,
    ExtractResult,
    Provider,
    SourceConfig,
)
from include.sis_sync.report import build_report
from tests.helpers import active_keys, run_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
KINDS = ("organizations", "terms", "courses", "users", "sections", "enrollments")


class RosterFileSource(SourceConfig):
    provider: Literal["roster_file"]
    path: str


class RosterFileProvider(Provider):
    """Canonical records from a JSON file: ``{"users": [{...}], ...}``."""

    name = "roster_file"
    label = "Roster file (test)"
    source_model = RosterFileSource
    key_space = "roster_file"
    optional_entities = frozenset({"terms", "courses"})

    def extract(self, request: ExtractRequest) -> ExtractResult:
        path = request.ctx.portal.source.path
        records = json.loads(Path(path).read_text(encoding="utf-8"))
        tables = {
            kind: pa.Table.from_pylist(records[kind])
            if records[kind]
            else pa.table({c: pa.array([], pa.string()) for c in model.BY_NAME[kind].columns})
            for kind in KINDS
        }
        modes = {e.name: Completeness.COMPLETE for e in model.ENTITIES}
        return ExtractResult(tables=tables, modes=modes, ran_as="full", source=f"file {path}")

    def to_canonical(
        self, raw: Mapping[str, pd.DataFrame], entities: Entities, record: ExtractRecord
    ) -> dict[str, pd.DataFrame]:
        return {kind: model.conform(raw[kind], model.BY_NAME[kind]) for kind in KINDS}


@pytest.fixture
def roster_file_provider() -> Iterator[None]:
    registry.register(RosterFileProvider())
    yield
    registry.unregister("roster_file")


def roster(students: list[str]) -> dict[str, list[dict[str, Any]]]:
    """One school, a teacher, ``students`` and one section holding them all."""
    users = [
        {
            "sis_key": k,
            "role": "student",
            "roles": "student",
            "given_name": "Ana",
            "family_name": k,
            "username": k,
            "organizations": "sch",
        }
        for k in students
    ]
    users.append(
        {"sis_key": "t1", "role": "teacher", "roles": "teacher", "given_name": "Bo",
         "family_name": "Teacher", "username": "t1", "organizations": "sch"}
    )  # fmt: skip
    return {
        "organizations": [
            {"sis_key": "dist", "name": "District", "kind": "district"},
            {"sis_key": "sch", "name": "School", "kind": "school", "parent_key": "dist"},
        ],
        "terms": [],
        "courses": [],
        "users": users,
        "sections": [{"sis_key": "sec1", "name": "Math", "organization_key": "sch"}],
        "enrollments": [
            {"sis_key": f"sec1:{u['sis_key']}", "section_key": "sec1",
             "user_key": u["sis_key"], "role": u["role"], "organization_key": "sch"}
            for u in users
        ],
    }  # fmt: skip


def test_a_provider_registered_in_a_test_syncs_through_the_dag(
    make_portal: Any, roster_file_provider: None, tmp_path: Path
) -> None:
    feed = tmp_path / "roster.json"
    feed.write_text(json.dumps(roster(["s1", "s2", "s3"])))
    portal = make_portal(
        "roster_file_portal",
        source={"provider": "roster_file", "path": str(feed)},
        auto_commit=True,
        scheduled_mode="full",
    )
    dag = portal.dag()
    assert "roster_file" in dag.tags and "wait_for_drop" not in dag.task_ids

    assert portal.run().state == DagRunState.SUCCESS
    assert active_keys(portal.lms_url, "lms_users") == {"s1", "s2", "s3", "t1"}
    assert active_keys(portal.lms_url, "lms_sections") == {"sec1"}
    assert len(active_keys(portal.lms_url, "lms_enrollments")) == 4
    assert active_keys(portal.lms_url, "lms_terms") == set()

    feed.write_text(json.dumps(roster(["s1", "s2"])))
    assert portal.run().state == DagRunState.SUCCESS
    assert active_keys(portal.lms_url, "lms_users") == {"s1", "s2", "t1"}

    runs = run_rows(portal.lms_url)
    assert [r["status"] for r in runs] == ["committed", "committed"]
    assert runs[0]["source"] == f"file {feed}"
    report = build_report(engine_for(portal.lms_url), runs[1]["id"])
    sent_none = {w["entity"]: w["message"] for w in report["warnings"] if w["kind"] == "sent_none"}
    assert set(sent_none) == {"terms", "courses"}
    assert "the SIS sent no terms" in sent_none["terms"]
    assert lms_asset_events("sis_sync://roster_file_portal/lms") == ["commit", "commit"]


def lms_asset_events(uri: str) -> list[str]:
    """The tasks that updated the Airflow Asset ``uri``, oldest first."""
    import sqlalchemy as sa
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = (
            sa.select(AssetEvent.source_task_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri)
            .order_by(AssetEvent.id)
        )
        return list(session.scalars(query))
