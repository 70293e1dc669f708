"""Secrets and student data, searched for in every artefact of real DAG runs.

Each API portal runs under dag.test with its real Airflow connection (Clever's token,
OneRoster's client secret over OAuth 2 and over OAuth 1.0a), once with the right secret and
once with a wrong one. Then the secrets, as written and base64-encoded (OAuth 2 client
credentials travel as Basic auth), are searched for in: the task logs printed by the runs
and every file under the Airflow home (logs, the metadata database with its XComs and
rendered fields), the LMS database, the run data (Parquet cells and JSON), the reports and
the errors. The task logs are also searched for the feed's names and emails: logs carry
counts and SIS keys only.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from include.sis_sync.lms.db import engine_for
from include.sis_sync.report import build_report
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.clever import CleverSimulator, clever_data_from_district
from include.sis_sync.simulators.oneroster import OneRosterServer, oneroster_data_from_district
from tests.helpers import run_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
CLIENT = "secrets-client"


def _forms(*secrets: str) -> list[str]:
    """Each secret as written, base64-encoded, and inside a Basic auth pair."""
    forms = []
    for secret in secrets:
        forms += [secret, base64.b64encode(secret.encode()).decode()]
        forms.append(base64.b64encode(f"{CLIENT}:{secret}".encode()).decode())
    return forms


def _files_text(root: Path) -> Iterator[tuple[Path, str]]:
    """Every file under ``root`` as text: Parquet files by their cells (compressed pages
    would hide a raw byte search), everything else as its bytes."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            yield path, json.dumps(pq.read_table(path).to_pylist(), default=str)
        else:
            yield path, path.read_bytes().decode("utf-8", errors="replace")


def _lms_text(url: str) -> str:
    """Every row of every table of the LMS database, as text."""
    engine = engine_for(url)
    parts = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
            parts.append(json.dumps([list(r) for r in rows], default=str))
    return "\n".join(parts)


def _artefacts(portal: Any, printed: str) -> dict[str, str]:
    """Where a secret or a student's data could have gone, by name."""
    found = {"task logs printed by the runs": printed}
    for path, text in _files_text(Path(os.environ["AIRFLOW_HOME"])):
        found[str(path)] = text
    for path, text in _files_text(Path(os.environ["SIS_SYNC_DATA_URL"])):
        found[str(path)] = text
    found["LMS database"] = _lms_text(portal.lms_url)
    for row in run_rows(portal.lms_url):
        report = build_report(engine_for(portal.lms_url), row["id"])
        found[f"report of sync {row['id']}"] = json.dumps(report, default=str)
        found[f"error of sync {row['id']}"] = str(row["error"])
    return found


def _leaks(artefacts: dict[str, str], needles: list[str]) -> list[str]:
    """Where each needle was found (the needle itself is a test's throw-away secret)."""
    return [
        f"{needle!r} in {where}"
        for where, text in artefacts.items()
        for needle in needles
        if needle in text
    ]


def _personal(users: list[dict[str, str]]) -> list[str]:
    """Emails and full names of the feed's people."""
    out = set()
    for user in users:
        if user.get("email"):
            out.add(user["email"])
        out.add(f"{user['given']} {user['family']}")
    return sorted(out)


def _connection(monkeypatch: pytest.MonkeyPatch, name: str, base_url: str, **fields: Any) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    conn = {"conn_type": "http", "host": host, "port": int(port), "schema": "http", **fields}
    monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps(conn))


def _run_twice(portal: Any, output: Any, set_secret: Any) -> str:
    """A run with the right secret, then one with a wrong one; returns their task logs
    (what they printed, and what they logged)."""
    capfd, caplog = output
    caplog.set_level(logging.INFO)
    set_secret(right=True)
    assert portal.run().state == "success"
    set_secret(right=False)
    assert portal.run().state == "failed"
    out, err = capfd.readouterr()
    return out + err + caplog.text


def test_the_clever_token_and_students_stay_out_of_every_artefact(
    make_portal: Any,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    token, wrong = "clever-token-Zq8vN3kL", "clever-wrong-Yp2mR7"
    data = clever_data_from_district(generate_district("demo"))
    with CleverSimulator(data, token=token) as server:
        portal = make_portal(
            "secret_clever",
            source={
                "provider": "clever",
                "connection_id": "secret_clever",
                "district_id": data.district["id"],
            },
            auto_commit=True,
        )

        def set_secret(right: bool) -> None:
            _connection(
                monkeypatch, "secret_clever", server.base_url, password=token if right else wrong
            )

        printed = _run_twice(portal, (capfd, caplog), set_secret)
        people = [
            {
                "email": u.get("email"),
                "given": u["name"]["first"],
                "family": u["name"]["last"],
            }
            for u in server.records("users").values()
        ]
    artefacts = _artefacts(portal, printed)
    assert not _leaks(artefacts, _forms(token, wrong))
    assert not _leaks({"task logs": printed}, _personal(people))
    # the search finds what is there: the LMS holds the people, by design
    assert len(_leaks({"LMS": artefacts["LMS database"]}, _personal(people))) > 100
    assert "validate_snapshot: {" in printed  # the task logs were captured


@pytest.mark.parametrize("auth", ["oauth2", "oauth1"])
def test_the_oneroster_secret_and_students_stay_out_of_every_artefact(
    make_portal: Any,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    auth: str,
) -> None:
    secret, wrong = f"or-secret-{auth}-Hk4sW9", f"or-wrong-{auth}-Bt6cJ1"
    data = oneroster_data_from_district(generate_district("demo"))
    with OneRosterServer(data, client_id=CLIENT, client_secret=secret, auth=auth) as server:
        portal = make_portal(
            f"secret_or_{auth}",
            source={"provider": "oneroster_rest", "connection_id": f"secret_or_{auth}"},
            auto_commit=True,
        )

        def set_secret(right: bool) -> None:
            _connection(
                monkeypatch,
                f"secret_or_{auth}",
                server.base_url,
                login=CLIENT,
                password=secret if right else wrong,
                extra={"token_url": server.token_url, "auth": auth},
            )

        printed = _run_twice(portal, (capfd, caplog), set_secret)
        people = [
            {"email": u.get("email"), "given": u["givenName"], "family": u["familyName"]}
            for u in server.objects("users")
        ]
    artefacts = _artefacts(portal, printed)
    assert not _leaks(artefacts, _forms(secret, wrong))
    assert not _leaks({"task logs": printed}, _personal(people))
    # the search finds what is there: the LMS holds the people, by design
    assert len(_leaks({"LMS": artefacts["LMS database"]}, _personal(people))) > 100
    assert "validate_snapshot: {" in printed  # the task logs were captured
