"""The admin pages' routes against a real `airflow standalone` whose simple auth manager signs
in four users: ``admin``; ``amy`` (op, the one approver of portal ``restricted``); ``eve``
(user: may edit DAGs, is no approver of ``restricted``); ``vera`` (viewer: read only).

Every request goes over HTTP to the API server that mounts the plugin, with the UI's cookie:
anonymous requests get 401, a viewer 403 on every change, forms from another origin or
without their token 403; an editor saves a selection that the commit then respects, commits
and rejects by answering the very approval request Airflow shows, and starts a sync.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from include.sis_sync.dag_factory import LMS_WRITES_POOL
from include.sis_sync.lms.db import engine_for, migrate
from include.sis_sync.sample.generator import generate_district, write_drop
from tests.e2e.standalone import (
    Standalone,
    ready_to_sync,
    signed_in_users,
    start_standalone,
    sync_env,
    wait_until,
)
from tests.helpers import run_rows, write_portal

pytestmark = [pytest.mark.standalone, pytest.mark.timeout(900)]

USERS = "admin:admin,amy:op,eve:user,vera:viewer"
PORTALS: dict[str, dict[str, Any]] = {
    "review": {},
    "restricted": {"approvers": ["amy"]},
    "escaping": {},
    "triggered": {},
}
NASTY_NAME = '<script>alert("x")</script> O\'Brien & Zoë'


@dataclass
class Setup:
    af: Standalone
    root: Path
    clients: dict[str | None, httpx.Client]

    def lms_url(self) -> str:
        return f"sqlite:///{self.root / 'lms.db'}"

    def as_(self, user: str | None) -> httpx.Client:
        return self.clients[user]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("admin_pages")
    portals = root / "portals"
    portals.mkdir()
    for portal, settings in PORTALS.items():
        write_portal(
            portals,
            id=portal,
            name=f"{portal.title()} portal",
            source={"provider": "oneroster_csv", "path": f"{root / 'drops' / portal}/{{date}}"},
            auto_commit=False,
            **settings,
        )
        district = generate_district("demo")
        if portal == "escaping":
            district.users.loc[district.users.index[0], "givenName"] = NASTY_NAME
        write_drop(district, root / "drops" / portal / "2026-09-01")
    lms = root / "lms.db"
    migrate(f"sqlite:///{lms}")
    with start_standalone(root / "airflow", sync_env(root, **signed_in_users(USERS))) as af:
        ready_to_sync(af, [f"sis_sync__{portal}" for portal in PORTALS], LMS_WRITES_POOL)
        clients = {user: af.client_as(user) for user in ("admin", "amy", "eve", "vera")}
        clients[None] = af.client_as(None)
        try:
            yield Setup(af, root, clients)
        finally:
            for client in clients.values():
                client.close()


def _waiting_sync(setup: Setup, portal: str) -> tuple[str, int]:
    """Trigger a sync that waits for approval; returns its Airflow run id and sync id."""
    dag_id = f"sis_sync__{portal}"
    run_id = setup.af.trigger(dag_id, {"auto_commit": False})
    setup.af.pending_approval(dag_id, run_id)
    (row,) = [r for r in run_rows(setup.lms_url()) if r["airflow_run_id"] == run_id]
    assert row["status"] == "awaiting_approval"
    return run_id, row["id"]


@pytest.fixture(scope="module")
def review(setup: Setup) -> tuple[str, int]:
    """One sync of portal ``review`` waiting for approval, for the tests that read it, attack
    its forms, and finally commit it."""
    return _waiting_sync(setup, "review")


def _token(page: str) -> str:
    match = re.search(r'name="csrf_token" (?:value|content)="([0-9a-f]+)"', page)
    assert match, "the page carries no form token"
    return match.group(1)


def _form_token(setup: Setup, user: str, path: str) -> str:
    response = setup.as_(user).get(path)
    assert response.status_code == 200, response.text
    return _token(response.text)


def _post(setup: Setup, user: str | None, path: str, data: dict[str, Any], **kw: Any) -> Any:
    return setup.as_(user).post(path, data=data, follow_redirects=False, **kw)


def _sync_row(setup: Setup, sync_id: int) -> dict[str, Any]:
    (row,) = [r for r in run_rows(setup.lms_url()) if r["id"] == sync_id]
    return row


def test_anonymous_requests_are_refused(setup: Setup) -> None:
    for path in ("/sis-sync/", "/sis-sync/portals/sis_sync__review"):
        assert setup.as_(None).get(path).status_code == 401
    response = _post(setup, None, "/sis-sync/portals/sis_sync__review/paused", {"paused": "true"})
    assert response.status_code == 401


def test_pages_list_portals_and_a_viewer_may_change_nothing(
    setup: Setup, review: tuple[str, int]
) -> None:
    run_id, sync_id = review
    base = "/sis-sync/portals/sis_sync__review"
    home = setup.as_("vera").get("/sis-sync/")
    assert home.status_code == 200
    assert "Review portal" in home.text and "waits for approval" in home.text
    for path in (
        base,
        f"{base}/history",
        f"{base}/runs/{sync_id}",
        f"{base}/runs/{sync_id}/actions?entity=users&action=add",
    ):
        assert setup.as_("vera").get(path).status_code == 200, path
    # a DAG run's "Sync report" tab, and the approval's text in Required Actions, lead here
    views = {
        v["name"]: v
        for p in setup.af.get("/api/v2/plugins").json()["plugins"]
        for v in p["external_views"]
    }
    assert views["SIS sync"]["destination"] == "nav"
    assert views["Sync report"]["destination"] == "dag_run"
    tab = setup.as_("vera").get(
        f"/sis-sync/airflow-runs/sis_sync__review/{run_id}", follow_redirects=False
    )
    assert tab.headers["location"] == f"{base}/runs/{sync_id}"
    detail = setup.af.get(
        f"/api/v2/dags/sis_sync__review/dagRuns/{run_id}/taskInstances/await_approval/-1/hitlDetails"
    ).json()
    assert f"({base}/runs/{sync_id})" in detail["body"]
    report = setup.as_("vera").get(f"{base}/runs/{sync_id}").text
    # each count opens its action list: users per role, the count as the link's text
    assert re.search(r'entity=users&amp;action=add&amp;kind=student">[1-9]\d*</a>', report)
    token = _form_token(setup, "vera", base)
    refused = {
        f"{base}/paused": {"paused": "true"},
        f"{base}/sync": {"mode": "full"},
        f"{base}/runs/{sync_id}/decision": {"answer": "Approve"},
        f"{base}/runs/{sync_id}/selection": {
            "entity": "users",
            "action": "add",
            "op": "untick_all",
        },
    }
    for path, data in refused.items():
        response = _post(setup, "vera", path, {**data, "csrf_token": token})
        assert response.status_code == 403, (path, response.status_code, response.text)
    assert _sync_row(setup, sync_id)["status"] == "awaiting_approval"
    assert setup.af.dag_run("sis_sync__review", run_id)["state"] == "running"


def test_forms_from_another_site_or_without_their_token_are_refused(
    setup: Setup, review: tuple[str, int]
) -> None:
    sync_id = review[1]
    base = f"/sis-sync/portals/sis_sync__review/runs/{sync_id}"
    data = {"entity": "users", "action": "add", "op": "untick_all"}
    token = _form_token(setup, "eve", base)
    foreign = _post(
        setup,
        "eve",
        f"{base}/selection",
        {**data, "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403 and "another site" in foreign.text
    missing = _post(setup, "eve", f"{base}/selection", data)
    assert missing.status_code == 403 and "token" in missing.text
    others = _post(setup, "eve", f"{base}/selection", {**data, "csrf_token": "0" * 64})
    assert others.status_code == 403
    whole = engine_for(setup.lms_url())
    with whole.connect() as conn:
        unticked = conn.exec_driver_sql(
            "SELECT count(*) FROM sis_sync_actions WHERE run_id = ? AND NOT selected",
            (sync_id,),
        ).scalar()
    assert unticked == 0


def test_a_saved_selection_is_what_the_commit_applies(
    setup: Setup, review: tuple[str, int]
) -> None:
    run_id, sync_id = review
    base = f"/sis-sync/portals/sis_sync__review/runs/{sync_id}"
    page = setup.as_("eve").get(f"{base}/actions", params={"entity": "users", "action": "add"})
    shown = re.findall(r'name="shown" value="(\d+)"', page.text)
    assert len(shown) == 50
    keep_out = shown[0]
    saved = _post(
        setup,
        "eve",
        f"{base}/selection",
        {
            "csrf_token": _token(page.text),
            "entity": "users",
            "action": "add",
            "op": "save",
            "shown": shown,
            "ticked": shown[1:],
        },
    )
    assert saved.status_code == 303, saved.text
    assert "49 of 50" in httpx.URL(saved.headers["location"]).params["msg"]
    committed = _post(
        setup,
        "eve",
        f"{base}/decision",
        {"csrf_token": _token(page.text), "answer": "Approve"},
    )
    assert committed.status_code == 303, committed.text
    assert setup.af.wait_for_run("sis_sync__review", run_id)["state"] == "success"
    assert _sync_row(setup, sync_id)["status"] == "committed"
    assert _sync_row(setup, sync_id)["decided_by"] == "eve"
    with engine_for(setup.lms_url()).connect() as conn:
        status, key = conn.exec_driver_sql(
            "SELECT status, sis_key FROM sis_sync_actions WHERE id = ?", (int(keep_out),)
        ).one()
        in_lms = conn.exec_driver_sql(
            "SELECT count(*) FROM lms_users WHERE portal_id = 'review' AND sis_key = ?", (key,)
        ).scalar()
    assert status == "not_selected" and in_lms == 0
    report = setup.as_("vera").get(base)
    assert "Committed" in report.text and "approved by eve" in report.text
    # Airflow records who answered, as it does for its own Required Actions page
    detail = setup.af.get(
        f"/api/v2/dags/sis_sync__review/dagRuns/{run_id}/taskInstances/await_approval/-1/hitlDetails"
    ).json()
    assert detail["responded_by_user"]["id"] == "eve"


def test_only_a_portal_approver_commits_and_a_late_selection_is_refused(setup: Setup) -> None:
    run_id, sync_id = _waiting_sync(setup, "restricted")
    base = f"/sis-sync/portals/sis_sync__restricted/runs/{sync_id}"
    token = _form_token(setup, "eve", base)
    refused = _post(setup, "eve", f"{base}/decision", {"csrf_token": token, "answer": "Approve"})
    assert refused.status_code == 403 and "may not commit" in refused.text
    # Disabled, the DAG does not resume the run after the answer: the window between an
    # Approve and its commit stays open for the selection that follows.
    setup.af.request_retrying(
        "PATCH", "/api/v2/dags/sis_sync__restricted", json={"is_paused": True}
    )
    amy = _form_token(setup, "amy", base)
    approved = _post(setup, "amy", f"{base}/decision", {"csrf_token": amy, "answer": "Approve"})
    assert approved.status_code == 303, approved.text
    late = _post(
        setup,
        "eve",
        f"{base}/selection",
        {"csrf_token": token, "entity": "users", "action": "add", "op": "untick_all"},
    )
    assert late.status_code == 409 and "already given" in late.text
    setup.af.request_retrying(
        "PATCH", "/api/v2/dags/sis_sync__restricted", json={"is_paused": False}
    )
    assert setup.af.wait_for_run("sis_sync__restricted", run_id)["state"] == "success"
    row = _sync_row(setup, sync_id)
    assert (row["status"], row["decided_by"]) == ("committed", "amy")


def test_reject_from_the_action_list_ends_the_sync_with_nothing_applied(setup: Setup) -> None:
    run_id, sync_id = _waiting_sync(setup, "escaping")
    base = f"/sis-sync/portals/sis_sync__escaping/runs/{sync_id}"
    page = setup.as_("eve").get(
        f"{base}/actions",
        params={"entity": "users", "action": "add", "q": "o'brien & zoë", "in": "name"},
    )
    assert page.status_code == 200
    # a name with markup, quotes, an ampersand and an accent is shown as text, never as markup
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; O&#39;Brien &amp; Zoë" in page.text
    assert page.text.count('name="shown"') == 1
    rejected = _post(
        setup,
        "eve",
        f"{base}/selection",
        {"csrf_token": _token(page.text), "entity": "users", "action": "add", "op": "reject"},
    )
    assert rejected.status_code == 303, rejected.text
    assert setup.af.wait_for_run("sis_sync__escaping", run_id)["state"] == "success"
    assert _sync_row(setup, sync_id)["status"] == "rejected"
    with engine_for(setup.lms_url()).connect() as conn:
        users = conn.exec_driver_sql(
            "SELECT count(*) FROM lms_users WHERE portal_id = 'escaping'"
        ).scalar()
    assert users == 0
    closed = _post(
        setup,
        "eve",
        f"{base}/selection",
        {"csrf_token": _token(page.text), "entity": "users", "action": "add", "op": "tick_all"},
    )
    assert closed.status_code == 409 and "rejected" in closed.text


def test_sync_now_triggers_with_the_picked_schools_and_a_disabled_portal_says_so(
    setup: Setup,
) -> None:
    base = "/sis-sync/portals/sis_sync__triggered"
    token = _form_token(setup, "eve", base)
    disabled = _post(setup, "eve", f"{base}/paused", {"csrf_token": token, "paused": "true"})
    assert disabled.status_code == 303
    assert setup.af.get("/api/v2/dags/sis_sync__triggered").json()["is_paused"] is True
    refused = _post(setup, "eve", f"{base}/sync", {"csrf_token": token, "mode": "full"})
    assert "enable it first" in httpx.URL(refused.headers["location"]).params["msg"]
    assert setup.af.dag_runs("sis_sync__triggered") == []
    _post(setup, "eve", f"{base}/paused", {"csrf_token": token, "paused": "false"})
    started = _post(
        setup, "eve", f"{base}/sync", {"csrf_token": token, "mode": "full", "auto_commit": "true"}
    )
    assert started.status_code == 303, started.text
    (run,) = wait_until(
        "the triggered run", lambda: setup.af.dag_runs("sis_sync__triggered"), timeout=60
    )
    assert run["conf"]["mode"] == "full" and run["conf"]["auto_commit"] is True
    assert run["triggering_user_name"] == "eve"
    shown = setup.as_("eve").get(started.headers["location"]).text
    assert f'href="/dags/sis_sync__triggered/runs/{quote(run["dag_run_id"], safe="")}"' in shown
    setup.af.wait_for_run("sis_sync__triggered", run["dag_run_id"])
    status = setup.as_("eve").get(base)
    assert "School" in status.text  # the schools are offered by name once the LMS has them
    names = re.findall(r'name="schools" value="([^"]+)"> ([^<]+)</label>', status.text)
    assert names and all(name.strip() for _, name in names)
    unknown = _post(
        setup, "eve", f"{base}/sync", {"csrf_token": token, "mode": "quick", "schools": "nope"}
    )
    assert unknown.status_code == 400 and "not schools of portal triggered" in unknown.text
