"""Clever syncs through the pipeline's stages, over real HTTP to the local Clever server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.sis_sync import pipeline
from include.sis_sync.config import Portal
from include.sis_sync.lms.db import engine_for
from include.sis_sync.providers.clever import CleverAuthError, CleverClient
from include.sis_sync.providers.clever_extract import IncompleteRead
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.clever import CleverSimulator, clever_data_from_district
from tests.helpers import active_keys, lms_rows, run_whole_sync

TOKEN = "district-token-for-tests"


@pytest.fixture
def server() -> Iterator[CleverSimulator]:
    with CleverSimulator(clever_data_from_district(generate_district("demo")), token=TOKEN) as sim:
        yield sim


def _portal(sim: CleverSimulator, **overrides: Any) -> Portal:
    data: dict[str, Any] = {
        "id": "clever_test",
        "name": "Clever test",
        "source": {
            "provider": "clever",
            "connection_id": "clever_test",
            "district_id": next(iter(sim.records("districts"))),
        },
        "auto_commit": True,
        "scheduled_mode": "quick",
    }
    data.update(overrides)
    return Portal.model_validate(data)


class Syncer:
    """Runs whole syncs of one portal, as the DAG's tasks would."""

    def __init__(self, sim: CleverSimulator, lms_url: str, token: str = TOKEN, **portal: Any):
        self.sim, self.lms_url, self.token = sim, lms_url, token
        self.portal = _portal(sim, **portal)
        self.runs = 0

    def context(self, **params: Any) -> pipeline.RunContext:
        self.runs += 1
        return pipeline.RunContext(
            portal=self.portal,
            lms_url=self.lms_url,
            dag_id="sis_sync__clever_test",
            airflow_run_id=f"run-{self.runs}",
            run_type="manual",
            params={"allow_mass_archive": True, **params},
            client=lambda: CleverClient(
                self.sim.base_url,
                self.token,
                backoff=0.01,
                limit=self.portal.source.page_limit,
            ),
        )

    def sync(self, **params: Any) -> dict[str, Any]:
        return run_whole_sync(self.context(**params))

    def active(self, table: str) -> set[str]:
        return active_keys(self.lms_url, table)


def _counts(report: dict[str, Any], label: str) -> dict[str, int]:
    return report["counts"].get(label, {"add": 0, "update": 0, "archive": 0, "reactivate": 0})


def test_full_sync_reads_every_page_and_keeps_multi_role_users_once(
    server: CleverSimulator, lms_url: str
) -> None:
    district = next(iter(server.records("districts")))
    syncer = Syncer(
        server,
        lms_url,
        entities={"staff": True},
        source={
            "provider": "clever",
            "connection_id": "c",
            "district_id": district,
            "page_limit": 50,
        },
    )
    report = syncer.sync()
    assert report["status"] == "committed" and report["ran_as"] == "full"
    users = server.records("users")
    wanted = {k for k, u in users.items() if {"student", "teacher", "staff"} & set(u["roles"])}
    assert syncer.active("lms_users") == wanted
    both = next(k for k, u in users.items() if {"teacher", "staff"} <= set(u["roles"]))
    with engine_for(lms_url).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT role, roles FROM lms_users WHERE sis_key = :k"), {"k": both}
        ).all()
    assert rows == [("teacher", "staff,teacher")]  # one user, every role
    pages = [r for r in server.requests if r["path"] == "/v3.0/users"]
    assert len(pages) > 2  # 320 users in pages of 50, per role
    two_schools = [
        u for u in users.values() if len(u["roles"].get("student", {}).get("schools", [])) > 1
    ]
    assert two_schools, "the demo district has a student in two schools"
    member = f"{two_schools[0]['id']}:"
    assert len([k for k in syncer.active("lms_user_organizations") if k.startswith(member)]) == 2


def test_quick_sync_applies_events_and_a_replay_changes_nothing(
    server: CleverSimulator, lms_url: str
) -> None:
    syncer = Syncer(server, lms_url)
    syncer.sync()
    students = [u for u in server.records("users").values() if "student" in u["roles"]]
    renamed, leaving = students[0]["id"], students[1]["id"]
    section = next(iter(server.records("sections").values()))
    dropped = section["students"][0]
    server.update_user(renamed, {"name": {"first": "Renamed", "last": "Student", "middle": None}})
    server.delete_user(leaving)
    server.update_section(section["id"], {"students": section["students"][1:]})
    newcomer = {k: v for k, v in students[2].items() if k != "id"}
    new_user = server.add_user({**newcomer, "email": "new@example.org"})
    report = syncer.sync()
    assert report["ran_as"] == "quick"
    assert _counts(report, "users (student)") == {
        "add": 1,
        "update": 1,
        "archive": 1,
        "reactivate": 0,
    }
    assert f"{section['id']}:{dropped}:student" not in syncer.active("lms_enrollments")
    assert leaving not in syncer.active("lms_users") and new_user in syncer.active("lms_users")
    # replaying the same events (from the previous checkpoint) changes nothing
    since = report["extract"]["objects"]
    assert since["users"]["deleted"] == 1
    again = syncer.sync(since="2000-01-01T00:00:00Z")
    assert again["ran_as"] == "quick"
    assert all(sum(v.values()) == 0 for v in again["counts"].values())


def test_checkpoint_too_old_falls_back_to_a_full_sync(
    server: CleverSimulator, lms_url: str
) -> None:
    syncer = Syncer(server, lms_url)
    students = [u for u in server.records("users").values() if "student" in u["roles"]]
    server.update_user(students[0]["id"], {"email": "first@example.org"})
    syncer.sync()  # checkpoint = that event
    server.update_user(students[1]["id"], {"email": "second@example.org"})
    server.expire_events_before(server.latest_event_id())
    report = syncer.sync()
    assert report["ran_as"] == "full"
    assert any(
        w["kind"] == "ran_as_full" and "events cannot be read" in w["message"]
        for w in report["warnings"]
    )
    assert _counts(report, "users (student)")["update"] == 1


def test_wrong_token_fails_clearly_and_stages_nothing(
    server: CleverSimulator, lms_url: str
) -> None:
    syncer = Syncer(server, lms_url, token="revoked-token")
    with pytest.raises(CleverAuthError) as error:
        syncer.sync()
    assert "revoked-token" not in str(error.value) and "401" in str(error.value)
    with engine_for(lms_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sis_sync_actions")).scalar() == 0
        assert conn.execute(sa.text("SELECT status FROM sis_sync_runs")).scalar() == "failed"


def test_rate_limit_and_server_errors_are_retried(server: CleverSimulator, lms_url: str) -> None:
    server.rate_limit_next(1, reset_in=0.05)
    server.fail_next(503, 2, path_prefix="/v3.0/sections")
    report = Syncer(server, lms_url).sync()
    assert report["status"] == "committed"
    statuses = [r["status"] for r in server.requests]
    assert 429 in statuses and statuses.count(503) == 2


def test_section_naming_an_unshared_user_is_a_warning(
    server: CleverSimulator, lms_url: str
) -> None:
    section = next(iter(server.records("sections").values()))
    server.update_section(section["id"], {"students": [*section["students"], "f" * 24]})
    report = Syncer(server, lms_url).sync()
    assert report["status"] == "committed"
    unknown = [w for w in report["warnings"] if w["kind"] == "unknown_user"]
    assert unknown and f"{section['id']}:{'f' * 24}:student" in unknown[0]["message"]


def test_multi_school_portal_syncs_only_its_schools(server: CleverSimulator, lms_url: str) -> None:
    schools = sorted(server.records("schools"))
    kept = schools[0]
    syncer = Syncer(server, lms_url, schools={"mode": "multi", "mapping": {kept: "north-high"}})
    syncer.sync()
    sections = {s["id"] for s in server.records("sections").values() if s["school"] == kept}
    assert syncer.active("lms_sections") == sections
    # the other school's students left the feed: nothing outside the mapping is archived
    with engine_for(lms_url).connect() as conn:
        slug = conn.execute(
            sa.text("SELECT slug FROM lms_organizations WHERE sis_key = :k"), {"k": kept}
        ).scalar()
    assert slug == "north-high"
    report = syncer.sync(mode="full")
    assert all(v["archive"] == 0 for v in report["counts"].values())


def test_checkpoint_older_than_29_days_runs_full_and_says_so(
    server: CleverSimulator, lms_url: str
) -> None:
    syncer = Syncer(server, lms_url)
    syncer.sync()
    with engine_for(lms_url).begin() as conn:
        conn.execute(
            sa.text("UPDATE sis_sync_runs SET committed_at = :t"),
            {"t": datetime.now(UTC) - timedelta(days=29, hours=1)},
        )
    report = syncer.sync()
    assert report["ran_as"] == "full"
    (warning,) = [w for w in report["warnings"] if w["kind"] == "ran_as_full"]
    assert "29 days old" in warning["message"]


# --------------------------------------------------------------------------------------------
# A full read that lost records fails before anything is staged
# --------------------------------------------------------------------------------------------


def _failed_full_sync(syncer: Syncer) -> tuple[dict[str, Any], str]:
    """A full sync that must fail at extract: its report, and the extract's error."""
    ctx = syncer.context(mode="full")
    run_id = pipeline.start(ctx)["run_id"]
    try:
        with pytest.raises(IncompleteRead) as info:
            pipeline.extract(ctx, run_id)
    finally:
        report = pipeline.finish(ctx, run_id)
    with engine_for(syncer.lms_url).connect() as conn:
        staged = conn.execute(
            sa.text("SELECT count(*) FROM sis_sync_actions WHERE run_id = :r"), {"r": run_id}
        ).scalar()
    assert staged == 0
    assert not (ctx.data(run_id).folder / "raw").exists()
    return report, str(info.value)


@pytest.mark.parametrize(
    ("resource", "role", "page_limit"),
    [("users", "student", 40), ("sections", None, 10), ("schools", None, 1)],
)
def test_a_lost_page_fails_the_extract_and_leaves_the_lms_as_it_was(
    server: CleverSimulator,
    lms_url: str,
    data_dir: Path,
    resource: str,
    role: str | None,
    page_limit: int,
) -> None:
    district = next(iter(server.records("districts")))
    source = {"provider": "clever", "connection_id": "c", "district_id": district}
    syncer = Syncer(server, lms_url, source={**source, "page_limit": page_limit})
    assert syncer.sync()["status"] == "committed"
    before = lms_rows(lms_url)
    server.lose_next_link(resource, role=role)
    report, error = _failed_full_sync(syncer)
    assert report["status"] == "failed"
    assert f"Clever's {resource}" in error and "a page was lost" in error
    assert lms_rows(lms_url) == before


def test_a_student_missing_from_the_list_but_served_by_id_fails_the_read(
    server: CleverSimulator, lms_url: str, data_dir: Path
) -> None:
    """No paging sign and no count gives it away: the sections' member lists do."""
    section = next(s for s in server.records("sections").values() if s["students"])
    server.hide_from_lists("users", [section["students"][0]])
    report, error = _failed_full_sync(Syncer(server, lms_url))
    assert report["status"] == "failed"
    assert f"lacks user {section['students'][0]}, which Clever does return by id" in error
    assert active_keys(lms_url, "lms_users") == set()


def test_a_district_sharing_no_terms_or_courses_syncs_and_says_so(
    lms_url: str,
) -> None:
    data = clever_data_from_district(generate_district("demo")).without_terms_or_courses()
    with CleverSimulator(data, token=TOKEN) as sim:
        syncer = Syncer(sim, lms_url)
        report = syncer.sync()
        assert report["status"] == "committed"
        assert syncer.active("lms_sections") == set(sim.records("sections"))
        assert syncer.active("lms_terms") == syncer.active("lms_courses") == set()
        sent_none = {w["entity"] for w in report["warnings"] if w["kind"] == "sent_none"}
        assert sent_none == {"terms", "courses"}
