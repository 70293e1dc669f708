"""Twenty portals at once on the production-shaped deployment (scripts/cluster.py).

PostgreSQL for Airflow's metadata and the LMS, Redis as the Celery broker, two Celery workers
in folders of their own, run data, CSV drops and task logs in a local S3 server. Eight portals
read CSV drops from the object store, six share one Clever token (and so one pool), six read a
OneRoster REST server. All are triggered at once, four of them twice; then every claim of the
deployment is checked against Airflow's metadata and the LMS, and each portal's LMS rows
against a single-process sync of the same data.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa
import yaml

from include.sis_sync import pipeline
from include.sis_sync.config import Portal
from include.sis_sync.lms.db import engine_for, migrate
from include.sis_sync.sample.generator import PRESETS, generate_district, write_drop
from include.sis_sync.simulators.clever import CleverSimulator, clever_data_from_district
from include.sis_sync.simulators.oneroster import OneRosterServer, oneroster_data_from_district
from tests.e2e.standalone import ROOT, Standalone, wait_until
from tests.helpers import portal_dict, run_whole_sync
from tests.object_store import ObjectStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

CSV, CLEVER, ONEROSTER = 8, 6, 6
TWICE = ("csv_1", "csv_2", "clever_1", "oneroster_1")
TOKEN, CLIENT, SECRET = "shared-district-token", "shared-client", "shared-client-secret"
POOLS = {"shared_clever_token": 2, "shared_oneroster_client": 2}
TABLES = (
    "lms_organizations",
    "lms_terms",
    "lms_courses",
    "lms_sections",
    "lms_users",
    "lms_user_organizations",
    "lms_enrollments",
)
NOT_CONTENT = {"id", "created_at", "updated_at", "last_sync_run_id", "archived_at"}


@dataclass
class Deployment:
    root: Path
    state: dict[str, Any]
    api: Standalone

    def url(self, database: str) -> str:
        return f"{self.state['postgres_url']}/{database}"

    def store(self) -> ObjectStore:
        return ObjectStore(self.state["s3"]["url"])


def _cluster(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cluster.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def sources() -> Iterator[dict[str, Any]]:
    """The two API servers (their data made once) and the CSV portals' districts."""
    api_district = generate_district("demo")
    clever = clever_data_from_district(api_district)
    with (
        CleverSimulator(clever, token=TOKEN) as clever_server,
        OneRosterServer(
            oneroster_data_from_district(api_district), client_id=CLIENT, client_secret=SECRET
        ) as oneroster_server,
    ):
        yield {
            "clever": clever_server,
            "district_id": clever.district["id"],
            "oneroster": oneroster_server,
            "csv": {f"csv_{n}": generate_district(_spec(seed=100 + n)) for n in range(1, CSV + 1)},
        }


def _spec(seed: int) -> Any:
    return replace(PRESETS["demo"], seed=seed)


def _connections(sources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    clever_host, clever_port = sources["clever"].base_url.removeprefix("http://").split(":")
    roster = sources["oneroster"]
    roster_host, roster_port = roster.base_url.removeprefix("http://").split(":")
    return {
        "shared_clever": {
            "conn_type": "http",
            "host": clever_host,
            "port": int(clever_port),
            "schema": "http",
            "password": TOKEN,
        },
        "shared_oneroster": {
            "conn_type": "http",
            "host": roster_host,
            "port": int(roster_port),
            "schema": "http",
            "login": CLIENT,
            "password": SECRET,
            "extra": {"token_url": roster.token_url, "auth": "oauth2"},
        },
    }


def _portals(sources: dict[str, Any]) -> list[dict[str, Any]]:
    portals = [
        portal_dict(
            id=name,
            name=f"CSV district {name}",
            source={
                "provider": "oneroster_csv",
                "path": f"s3://sis-sync/drops/{name}/{{date}}",
                "conn_id": "sis_sync_store",
            },
        )
        for name in sources["csv"]
    ]
    portals += [
        portal_dict(
            id=f"clever_{n}",
            name=f"Clever portal {n}",
            source={
                "provider": "clever",
                "connection_id": "shared_clever",
                "district_id": sources["district_id"],
                "pool": "shared_clever_token",
                "page_limit": 100,
            },
        )
        for n in range(1, CLEVER + 1)
    ]
    portals += [
        portal_dict(
            id=f"oneroster_{n}",
            name=f"OneRoster portal {n}",
            source={
                "provider": "oneroster_rest",
                "connection_id": "shared_oneroster",
                "pool": "shared_oneroster_client",
                "page_limit": 100,
            },
        )
        for n in range(1, ONEROSTER + 1)
    ]
    return portals


def _settings(connections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Astro-format settings: the API servers' connections and the shared token pools."""
    rows = []
    for conn_id, c in connections.items():
        row = {f"conn_{k}": v for k, v in c.items() if k != "conn_type"}
        rows.append({"conn_id": conn_id, "conn_type": c["conn_type"], **row})
    pools = [{"pool_name": name, "pool_slot": slots} for name, slots in POOLS.items()]
    return {"airflow": {"connections": rows, "pools": pools}}


@pytest.fixture(scope="module")
def deployment(
    sources: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("cluster")
    portals = work / "portals"
    portals.mkdir()
    for portal in _portals(sources):
        (portals / f"{portal['id']}.yaml").write_text(yaml.safe_dump(portal))
    settings = work / "settings.yaml"
    settings.write_text(yaml.safe_dump(_settings(_connections(sources))))
    root = work / "deployment"
    args = ["--root", str(root), "start", "--portals", str(portals), "--settings", str(settings)]
    started = _cluster(*args, timeout=420)
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-5000:]
        state = json.loads((root / "cluster.json").read_text())
        home = root / "control" / "home"
        api = Standalone(home, {}, state["ports"]["api"])
        api.client.headers["Authorization"] = f"Bearer {api.token('admin')}"
        deployment = Deployment(root, state, api)
        _upload_drops(deployment, sources["csv"], work / "drops")
        yield deployment
    finally:
        stopped = _cluster("--root", str(root), "stop", timeout=300)
        assert stopped.returncode == 0, stopped.stderr[-3000:]


def _upload_drops(deployment: Deployment, districts: dict[str, Any], local: Path) -> None:
    for name, district in districts.items():
        write_drop(district, local / name / "2026-09-01")
    deployment.store().upload_folder(local, "sis-sync", "drops")


def _run_all(deployment: Deployment, dag_ids: list[str]) -> dict[str, list[str]]:
    """Unpause every portal's DAG, then trigger them all at once (four of them twice)."""
    api = deployment.api
    for dag_id in dag_ids:
        api.wait_for_dag(dag_id, timeout=240)
    for dag_id in dag_ids:
        api.request_retrying("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    triggered: dict[str, list[str]] = defaultdict(list)
    for dag_id in dag_ids:
        triggered[dag_id].append(api.trigger(dag_id))
    for portal_id in TWICE:
        dag_id = f"sis_sync__{portal_id}"
        triggered[dag_id].append(api.trigger(dag_id))
    pending = {(dag_id, run_id) for dag_id, run_ids in triggered.items() for run_id in run_ids}

    def all_ended() -> bool:
        _assert_running(deployment)
        for dag_id, run_id in sorted(pending):
            run = api.dag_run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                assert run["state"] == "success", api.failed_task_logs(dag_id, run_id)
                pending.discard((dag_id, run_id))
        return not pending

    wait_until("every run to end", all_ended, timeout=1000, interval=5)
    return triggered


def _assert_running(deployment: Deployment) -> None:
    """Every piece of the deployment still runs: a crash fails the test at once, with its log."""
    for name, pid in deployment.state["processes"].items():
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            log = (deployment.root / "logs" / f"{name}.log").read_text(errors="replace")
            pytest.fail(f"{name} of the deployment died:\n{log[-5000:]}")


def test_twenty_portals_sync_at_once_across_two_workers(
    deployment: Deployment, sources: dict[str, Any], tmp_path: Path, monkeypatch
) -> None:
    portal_ids = [p["id"] for p in _portals(sources)]
    dag_ids = [f"sis_sync__{p}" for p in portal_ids]
    started = time.monotonic()
    triggered = _run_all(deployment, dag_ids)
    print(f"20 portals, 24 runs: all succeeded in {time.monotonic() - started:.0f} s")

    airflow = engine_for(deployment.url("airflow"))
    lms = deployment.url("lms")
    tasks = _task_instances(airflow)
    _every_sync_committed_once(lms, triggered)
    _no_portal_ran_two_syncs_at_once(airflow, dag_ids)
    _token_pools_never_exceeded(tasks)
    _runs_spread_over_both_workers(deployment, tasks)
    _same_rows_as_a_single_process_run(deployment, sources, portal_ids, tmp_path, monkeypatch)


def _task_instances(airflow: sa.Engine) -> list[dict[str, Any]]:
    query = (
        "SELECT dag_id, run_id, task_id, try_number, state, pool, hostname, start_date, end_date"
        " FROM task_instance WHERE dag_id LIKE 'sis_sync__%'"
    )
    with airflow.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(query)).mappings()]


def _every_sync_committed_once(lms: str, triggered: dict[str, list[str]]) -> None:
    with engine_for(lms).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT portal_id, status, airflow_run_id FROM sis_sync_runs ORDER BY id")
        ).all()
        adds = conn.execute(
            sa.text(
                "SELECT r.portal_id, a.sis_key, count(*) FROM sis_sync_actions a"
                " JOIN sis_sync_runs r ON r.id = a.run_id"
                " WHERE a.action = 'add' AND a.status = 'applied' AND a.entity = 'users'"
                " GROUP BY r.portal_id, a.sis_key HAVING count(*) > 1"
            )
        ).all()
    by_portal: dict[str, list[str]] = defaultdict(list)
    for portal_id, status, airflow_run_id in rows:
        assert status == "committed", (portal_id, airflow_run_id, status)
        by_portal[f"sis_sync__{portal_id}"].append(airflow_run_id)
    assert {d: sorted(r) for d, r in by_portal.items()} == {
        d: sorted(r) for d, r in triggered.items()
    }
    assert adds == []  # no user was added twice: the second syncs changed nothing


def _no_portal_ran_two_syncs_at_once(airflow: sa.Engine, dag_ids: list[str]) -> None:
    with airflow.connect() as conn:
        runs = conn.execute(
            sa.text(
                "SELECT dag_id, start_date, end_date FROM dag_run WHERE dag_id LIKE 'sis_sync__%'"
                " ORDER BY dag_id, start_date"
            )
        ).all()
    by_dag: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    for dag_id, start, end in runs:
        by_dag[dag_id].append((start, end))
    assert sorted(by_dag) == sorted(dag_ids)
    for dag_id, spans in by_dag.items():
        for (_, first_end), (second_start, _) in itertools.pairwise(spans):
            assert first_end <= second_start, f"{dag_id}: two runs overlapped"


def _most_at_once(spans: list[tuple[Any, Any]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def _token_pools_never_exceeded(tasks: list[dict[str, Any]]) -> None:
    for pool, slots in POOLS.items():
        spans = [(t["start_date"], t["end_date"]) for t in tasks if t["pool"] == pool]
        assert len(spans) >= min(CLEVER, ONEROSTER), pool  # every extract of its portals
        most = _most_at_once(spans)
        print(f"pool {pool}: {len(spans)} tasks, at most {most} at once (limit {slots})")
        assert 1 <= most <= slots


def _runs_spread_over_both_workers(deployment: Deployment, tasks: list[dict[str, Any]]) -> None:
    ran = [t for t in tasks if t["state"] == "success" and t["hostname"]]
    assert len(ran) >= len(tasks) // 2  # skipped tasks (no approval needed) ran nowhere
    hosts = {t["hostname"] for t in ran}
    assert hosts == {"worker-1", "worker-2"}
    per_run: dict[tuple[str, str], set[str]] = defaultdict(set)
    for t in ran:
        per_run[(t["dag_id"], t["run_id"])].add(t["hostname"])
    spread = [run for run, names in per_run.items() if len(names) > 1]
    print(f"{len(spread)} of {len(per_run)} runs ran on both workers")
    assert spread
    # Each worker's task logs are in the object store, and the UI (its API) shows them.
    for host in sorted(hosts):
        t = next(t for t in ran if t["hostname"] == host and t["task_id"] == "start")
        log = deployment.api.task_log(t["dag_id"], t["run_id"], "start", t["try_number"])
        assert "started (lock taken)" in log, log[-2000:]
    assert any(k.startswith("logs/") for k in deployment.store().keys("sis-sync", "logs/"))


def _same_rows_as_a_single_process_run(
    deployment: Deployment,
    sources: dict[str, Any],
    portal_ids: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each portal synced again, in this process, into a fresh LMS: the same rows."""
    store = deployment.store()
    connections = {**_connections(sources), "sis_sync_store": json.loads(store.connection())}
    for conn_id, conn in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    monkeypatch.setenv("SIS_SYNC_DATA_URL", str(tmp_path / "runs"))
    admin = sa.create_engine(deployment.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE lms_reference")
    reference = deployment.url("lms_reference")
    migrate(reference)
    for raw in _portals(sources):
        portal = Portal.model_validate(raw)
        ctx = pipeline.RunContext(
            portal=portal,
            lms_url=reference,
            dag_id=f"sis_sync__{portal.id}",
            airflow_run_id="single-process",
            run_type="manual",
            params={},
            client=portal.source_provider().open_client(portal.source),
        )
        report = run_whole_sync(ctx)
        assert report["status"] == "committed", report
    for portal_id in portal_ids:
        assert _content(deployment.url("lms"), portal_id) == _content(reference, portal_id), (
            portal_id
        )


def _content(url: str, portal_id: str) -> dict[str, list[tuple]]:
    """A portal's LMS rows without ids, times and run numbers, archived as a flag."""
    out = {}
    with engine_for(url).connect() as conn:
        for table in TABLES:
            columns = [
                c["name"]
                for c in sa.inspect(conn).get_columns(table)
                if c["name"] not in NOT_CONTENT
            ]
            select = ", ".join(f'"{name}"' for name in columns) + ", archived_at IS NOT NULL"
            rows = conn.execute(
                sa.text(f"SELECT {select} FROM {table} WHERE portal_id = :p ORDER BY sis_key"),
                {"p": portal_id},
            ).all()
            assert rows or table == "lms_terms", (portal_id, table)
            out[table] = [tuple(r) for r in rows]
    return out


def test_the_deployment_refuses_a_second_start_while_running(deployment: Deployment) -> None:
    again = _cluster("--root", str(deployment.root), "start", timeout=60)
    assert again.returncode != 0
    assert "already running" in again.stderr + again.stdout
