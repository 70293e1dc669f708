"""DAG integrity: every portal file gives a DAG of the right shape; a broken file gives a
clear import error and hides none of the others."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from include.sis_sync.config import DEFAULT_PORTALS_DIR, load_portals
from tests.helpers import write_portal

SHAPE = {
    "start": {"extract"},
    "extract": {"transform"},
    "transform": {"validate_snapshot"},
    "validate_snapshot": {"diff"},
    "diff": {"validate_changes"},
    "validate_changes": {"gate"},
    "gate": {"await_approval", "commit"},
    "await_approval": {"commit"},
    "commit": {"report"},
    "report": set(),
}


@pytest.fixture
def shipped_portals(monkeypatch: pytest.MonkeyPatch) -> DagBag:
    monkeypatch.setenv("SIS_SYNC_PORTALS_DIR", str(DEFAULT_PORTALS_DIR))
    return DagBag()


def test_shipped_portal_files_load_without_import_errors(shipped_portals: DagBag) -> None:
    assert shipped_portals.import_errors == {}
    portals, errors = load_portals(DEFAULT_PORTALS_DIR)
    assert errors == []
    assert {p.dag_id for p in portals} <= set(shipped_portals.dag_ids)
    assert {"sis_sync__demo", "sis_sync__clever_demo"} <= set(shipped_portals.dag_ids)


def test_each_portal_dag_has_the_sync_shape(shipped_portals: DagBag) -> None:
    for dag_id in shipped_portals.dag_ids:
        dag = shipped_portals.dags[dag_id]
        edges = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
        # every task reads the run id that start opens, so start also feeds them all
        assert edges.pop("start") >= SHAPE["start"]
        # file-drop portals wait for a late drop before reading it; API portals do not
        waits = edges.pop("wait_for_drop", None)
        assert waits == ({"extract"} if "oneroster_csv" in dag.tags else None), dag_id
        assert edges == {k: v for k, v in SHAPE.items() if k != "start"}, dag_id
        assert dag.max_active_runs == 1
        assert "sis-sync" in dag.tags and dag.doc_md
        expected = {"mode", "auto_commit", "schools", "allow_mass_archive", "drop_date", "replay"}
        if "clever" in dag.tags or "oneroster_rest" in dag.tags:
            expected.add("since")  # a quick sync from a chosen date-time
        assert set(dag.params.keys()) == expected
        assert dag.get_task("extract").retries >= 1
        assert dag.get_task("await_approval").retries == 0
        if waits:
            sensor = dag.get_task("wait_for_drop")
            assert sensor.mode == "reschedule"  # holds no worker slot while it waits


def test_portal_settings_reach_the_dag(shipped_portals: DagBag) -> None:
    dag = shipped_portals.dags["sis_sync__demo"]
    assert dag.params["auto_commit"] is True  # the demo portal auto-commits
    approval = dag.get_task("await_approval")
    assert approval.response_timeout.total_seconds() == 24 * 3600
    assert approval.defaults == ["Reject"]


def test_broken_portal_file_is_an_import_error_that_hides_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_portal(tmp_path, id="good_one")
    write_portal(tmp_path, id="good_two")
    write_portal(tmp_path, id="broken", guards={"archive_percent": 250})
    (tmp_path / "not_yaml.yaml").write_text("id: [unclosed\n")
    monkeypatch.setenv("SIS_SYNC_PORTALS_DIR", str(tmp_path))
    bag = DagBag()
    assert {"sis_sync__good_one", "sis_sync__good_two"} <= set(bag.dag_ids)
    assert "sis_sync__broken" not in bag.dag_ids
    (message,) = bag.import_errors.values()
    assert f"{tmp_path / 'broken.yaml'}: field 'guards.archive_percent'" in message
    assert f"{tmp_path / 'not_yaml.yaml'}: not valid YAML" in message
