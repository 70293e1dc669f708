"""Faults, attacked: an API read that dies mid-way and is retried, the LMS database refusing
connections for a while, and two runs of one portal started at the same moment."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.sis_sync import pipeline
from include.sis_sync.config import Portal
from include.sis_sync.lms.db import LMSUnavailable, engine_for
from include.sis_sync.providers.clever import CleverClient
from include.sis_sync.providers.oneroster_rest import OneRosterClient
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.clever import CleverSimulator, clever_data_from_district
from include.sis_sync.simulators.oneroster import OneRosterServer, oneroster_data_from_district
from tests.feeds import DAY1, DAY2, Feed, python_process
from tests.helpers import run_rows

pytestmark = pytest.mark.timeout(300)

# --------------------------------------------------------------------------------------------
# An API read that dies on a later page and is retried
# --------------------------------------------------------------------------------------------


@contextmanager
def _clever() -> Iterator[tuple[Any, dict[str, Any], Callable[[], Any], str]]:
    data = clever_data_from_district(generate_district("demo"))
    with CleverSimulator(data, token="t") as sim:
        source = {
            "provider": "clever",
            "connection_id": "c",
            "district_id": next(iter(sim.records("districts"))),
            "page_limit": 50,
        }
        yield (
            sim,
            source,
            lambda: CleverClient(sim.base_url, "t", backoff=0.01, limit=50),
            "/v3.0/sections",
        )


@contextmanager
def _oneroster() -> Iterator[tuple[Any, dict[str, Any], Callable[[], Any], str]]:
    data = oneroster_data_from_district(generate_district("demo"))
    with OneRosterServer(data, client_id="c", client_secret="s") as server:
        source = {"provider": "oneroster_rest", "connection_id": "c", "page_limit": 50}

        def client() -> OneRosterClient:
            return OneRosterClient(
                server.base_url, "c", "s", auth=server.auth, limit=50, backoff=0.01
            )

        yield server, source, client, "/classes"


def _context(lms_url: str, portal: str, source: dict[str, Any], client: Any) -> Any:
    return pipeline.RunContext(
        portal=Portal.model_validate(
            {"id": portal, "name": portal, "source": source, "auto_commit": True}
        ),
        lms_url=lms_url,
        dag_id=f"sis_sync__{portal}",
        airflow_run_id="run-1",
        run_type="manual",
        params={"mode": "full"},
        client=client,
    )


def _staged(lms_url: str, run_id: int) -> set[tuple[str, str, str]]:
    with engine_for(lms_url).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT entity, sis_key, action FROM sis_sync_actions WHERE run_id = :r"),
            {"r": run_id},
        )
        return {tuple(r) for r in rows}


@pytest.mark.parametrize("api", [_clever, _oneroster], ids=["clever", "oneroster_rest"])
def test_an_extract_that_dies_mid_read_and_is_retried_stages_what_a_clean_run_does(
    api: Any, lms_url: str, data_dir: Path
) -> None:
    with api() as (server, source, client, later_resource):
        clean = _context(lms_url, "clean", source, client)
        clean_run = pipeline.start(clean)["run_id"]
        for stage in pipeline.PREPARE:
            stage(clean, clean_run)

        broken = _context(lms_url, "broken", source, client)
        run_id = pipeline.start(broken)["run_id"]
        server.fail_next(500, 1000, path_prefix=later_resource)  # for ever, as far as it knows
        with pytest.raises(Exception) as died:
            pipeline.extract(broken, run_id)
        assert "500" in str(died.value)
        assert any(r["status"] == 200 for r in server.requests)  # it died after pages read
        server.clear_faults()
        for stage in pipeline.PREPARE:  # the task's retry, then the rest
            stage(broken, run_id)
        assert _staged(lms_url, run_id) == _staged(lms_url, clean_run)
        assert len(_staged(lms_url, run_id)) > 1000


# --------------------------------------------------------------------------------------------
# The LMS database refusing connections for a while
# --------------------------------------------------------------------------------------------


class Gate:
    """A TCP port in front of the PostgreSQL server: closed (refusing connections) until
    opened, then forwarding every connection to the server; closed again, it cuts them."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def close(self) -> None:
        for s in [self._listener, *self._sockets]:
            if s is not None:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept; close alone does not
                with suppress(OSError):
                    s.close()
        self._listener, self._sockets = None, []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with suppress(OSError):
            target.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("lms_url", ["postgres"], indirect=True)
def test_the_lms_refusing_connections_for_a_while_is_waited_out_then_fails_clearly(
    tmp_path: Path, lms_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = Feed(tmp_path, lms_url)
    direct.write(generate_district("demo"), DAY1)
    assert direct.sync(DAY1).report["status"] == "committed"
    url = sa.make_url(lms_url)
    gate = Gate((url.host or "127.0.0.1", url.port or 5432))
    gated = Feed(tmp_path, url.set(port=gate.port).render_as_string(hide_password=False))
    gated.write(generate_district("demo"), DAY2)
    monkeypatch.setenv("SIS_SYNC_LMS_CONNECT_SECONDS", "30")
    threading.Timer(2.0, gate.open).start()  # the database is back two seconds later
    started = time.monotonic()
    try:
        outcome = gated.sync(DAY2)
        assert outcome.report["status"] == "committed", outcome.text()
        assert time.monotonic() - started >= 2.0

        before = direct.lms()
        gate.close()
        engine_for(gated.lms_url).dispose()
        monkeypatch.setenv("SIS_SYNC_LMS_CONNECT_SECONDS", "2")
        with pytest.raises(LMSUnavailable) as refused:
            gated.sync(DAY2)
        assert str(refused.value).startswith(f"the LMS database at 127.0.0.1:{gate.port}/")
        assert "refused connections for 2 s (SIS_SYNC_LMS_CONNECT_SECONDS)" in str(refused.value)
        assert url.password is None or url.password not in str(refused.value)
        assert direct.lms() == before  # nothing half-applied
    finally:
        gate.close()


# --------------------------------------------------------------------------------------------
# Two runs of one portal started at the same moment
# --------------------------------------------------------------------------------------------

RACER = """
import json, sys, time
from pathlib import Path
from include.sis_sync import pipeline
from include.sis_sync.config import Portal
portal = Portal.model_validate_json(sys.argv[1])
ctx = pipeline.RunContext(portal=portal, lms_url=sys.argv[2], dag_id="d",
                          airflow_run_id=sys.argv[3], run_type="manual",
                          params={"drop_date": sys.argv[5]})
go = Path(sys.argv[4])
while not go.exists():
    time.sleep(0.005)
started = pipeline.start(ctx)
print(json.dumps(started), flush=True)
run_id = started["run_id"]
if started["locked_by"] is None:
    for stage in pipeline.PREPARE:
        stage(ctx, run_id)
    pipeline.gate(ctx, run_id, pipeline.validate_changes(ctx, run_id)["tripped"])
    pipeline.commit(ctx, run_id)
    pipeline.finish(ctx, run_id)
"""


def test_two_runs_started_at_once_one_proceeds_and_nothing_applies_twice(
    tmp_path: Path, lms_url: str, data_dir: Path
) -> None:
    feed = Feed(tmp_path, lms_url)
    feed.write(generate_district("demo"), DAY1)
    go = tmp_path / "go"
    portal = feed.portal.model_dump_json()
    racers = [python_process(RACER, portal, lms_url, f"race-{i}", str(go), DAY1) for i in (1, 2)]
    time.sleep(3)  # both imported and waiting at the barrier
    go.touch()
    results = []
    for racer in racers:
        out, _ = racer.communicate(timeout=240)
        assert racer.returncode == 0
        results.append(json.loads(out.splitlines()[0]))
    winners = [r for r in results if r["locked_by"] is None]
    (loser,) = [r for r in results if r["locked_by"] is not None]
    assert len(winners) == 1 and loser["locked_by"] == winners[0]["run_id"]
    after_winner = feed.lms()
    assert after_winner["lms_users"]  # the winner committed

    # The loser's start sensor pokes again once the winner is done: it proceeds, finds the
    # LMS already holding the drop, and applies nothing.
    rows = {r["id"]: r for r in run_rows(lms_url)}
    ctx = replace(
        feed.context(DAY1), dag_id="d", airflow_run_id=rows[loser["run_id"]]["airflow_run_id"]
    )
    again = pipeline.start(ctx)
    assert again == {"run_id": loser["run_id"], "locked_by": None}
    for stage in pipeline.PREPARE:
        stage(ctx, again["run_id"])
    assert _staged(lms_url, again["run_id"]) == set()
    pipeline.finish(ctx, again["run_id"])
    assert feed.lms() == after_winner
    keys = [r["sis_key"] for r in after_winner["lms_users"]]
    assert len(keys) == len(set(keys))  # every user once
