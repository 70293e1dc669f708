"""OneRoster REST syncs through the pipeline's stages, over real HTTP to the local server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from include.sis_sync import pipeline
from include.sis_sync.config import Portal
from include.sis_sync.lms.db import engine_for
from include.sis_sync.providers.oneroster_rest import OneRosterAuthError, OneRosterClient
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.oneroster import OneRosterServer, oneroster_data_from_district
from tests.helpers import active_keys, run_whole_sync

pytestmark = pytest.mark.timeout(120)
CLIENT, SECRET = "test-client", "test-client-secret"


@pytest.fixture(params=["oauth2", "oauth1"])
def server(request: pytest.FixtureRequest) -> Iterator[OneRosterServer]:
    data = oneroster_data_from_district(generate_district("demo"))
    with OneRosterServer(data, client_id=CLIENT, client_secret=SECRET, auth=request.param) as s:
        yield s


class Syncer:
    """Runs whole syncs of one OneRoster REST portal, as the DAG's tasks would."""

    def __init__(self, server: OneRosterServer, lms_url: str, secret: str = SECRET, **portal: Any):
        self.server, self.lms_url, self.secret = server, lms_url, secret
        data: dict[str, Any] = {
            "id": "rest_test",
            "name": "REST test",
            "source": {
                "provider": "oneroster_rest",
                "connection_id": "rest_test",
                "page_limit": 50,
            },
            "auto_commit": True,
            "scheduled_mode": "quick",
        }
        data.update(portal)
        self.portal = Portal.model_validate(data)
        self.runs = 0

    def sync(self, **params: Any) -> dict[str, Any]:
        self.runs += 1
        ctx = pipeline.RunContext(
            portal=self.portal,
            lms_url=self.lms_url,
            dag_id="sis_sync__rest_test",
            airflow_run_id=f"run-{self.runs}",
            run_type="manual",
            params={"allow_mass_archive": True, **params},
            client=lambda: OneRosterClient(
                self.server.base_url,
                CLIENT,
                self.secret,
                auth=self.server.auth,
                limit=50,
                backoff=0.01,
            ),
        )
        return run_whole_sync(ctx)

    def active(self, table: str) -> set[str]:
        return active_keys(self.lms_url, table)


def _students(server: OneRosterServer) -> list[dict[str, Any]]:
    return [u for u in server.objects("users") if u["role"] == "student"]


def test_full_then_quick_sync_with_tobedeleted_rows(server: OneRosterServer, lms_url: str) -> None:
    syncer = Syncer(server, lms_url)
    first = syncer.sync()
    assert first["status"] == "committed" and first["ran_as"] == "full"
    assert syncer.active("lms_users") == {u["sourcedId"] for u in server.objects("users")}
    students = _students(server)
    server.update("users", students[0]["sourcedId"], {"familyName": "Renamed"})
    server.mark_deleted("users", students[1]["sourcedId"])
    second = syncer.sync()
    assert second["ran_as"] == "quick"
    assert "dateLastModified>" in second["extract"]["filter"]
    assert second["extract"]["rows"]["users"] == 2  # only what changed
    counts = second["counts"]["users (student)"]
    assert (counts["update"], counts["archive"], counts["add"]) == (1, 1, 0)
    assert students[1]["sourcedId"] not in syncer.active("lms_users")
    assert students[2]["sourcedId"] in syncer.active("lms_users")  # absent from a delta: kept


def test_wrong_secret_fails_clearly_and_stages_nothing(
    server: OneRosterServer, lms_url: str
) -> None:
    with pytest.raises(OneRosterAuthError) as error:
        Syncer(server, lms_url, secret="not-the-secret").sync()
    assert "not-the-secret" not in str(error.value)
    with engine_for(lms_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sis_sync_actions")).scalar() == 0
        assert conn.execute(sa.text("SELECT status FROM sis_sync_runs")).scalar() == "failed"


def test_server_ignoring_limit_still_gives_every_row_once(
    server: OneRosterServer, lms_url: str
) -> None:
    server.ignore_limit = True
    syncer = Syncer(server, lms_url)
    syncer.sync()
    assert syncer.active("lms_enrollments") == {
        e["sourcedId"] for e in server.objects("enrollments")
    }


def test_organizations_are_created_with_their_hierarchy(
    server: OneRosterServer, lms_url: str
) -> None:
    school = next(o for o in server.objects("orgs") if o["type"] == "school")
    server.add(
        "orgs",
        {
            "sourcedId": "dep-maths",
            "status": "active",
            "name": "Maths",
            "type": "department",
            "parent": {"sourcedId": school["sourcedId"], "type": "org"},
        },
    )
    syncer = Syncer(server, lms_url)
    syncer.sync()
    with engine_for(lms_url).connect() as conn:
        rows = dict(
            conn.execute(sa.text("SELECT sis_key, parent_key FROM lms_organizations")).all()
        )
    district = next(o for o in server.objects("orgs") if o["type"] == "district")
    assert rows["dep-maths"] == school["sourcedId"]
    assert rows[school["sourcedId"]] == district["sourcedId"]
    assert rows[district["sourcedId"]] is None


def test_classes_outside_the_school_year_are_not_added(
    server: OneRosterServer, lms_url: str
) -> None:
    syncer = Syncer(server, lms_url, school_year={"start": "2027-08-15", "end": "2028-06-30"})
    report = syncer.sync()
    assert syncer.active("lms_sections") == set()
    assert syncer.active("lms_enrollments") == set()
    (warning,) = [w for w in report["warnings"] if w["kind"] == "outside_school_year"]
    assert warning["count"] == 40 and "40 record(s)" in warning["message"]


def test_a_subset_of_schools_touches_only_them(server: OneRosterServer, lms_url: str) -> None:
    schools = sorted(o["sourcedId"] for o in server.objects("orgs") if o["type"] == "school")
    syncer = Syncer(server, lms_url)
    syncer.sync(schools=[schools[0]])
    sections = {
        c["sourcedId"] for c in server.objects("classes") if c["school"]["sourcedId"] == schools[0]
    }
    assert syncer.active("lms_sections") == sections
    with engine_for(lms_url).connect() as conn:
        checkpoint = conn.execute(sa.text("SELECT checkpoint FROM sis_sync_runs")).scalar()
    assert checkpoint is None  # a subset run never moves the checkpoint
