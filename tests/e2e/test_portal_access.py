"""Per-portal access with an auth manager that has per-DAG permissions: Airflow's API server
with the FAB auth manager, a role that may read one portal's DAG only, and the admin pages.

The reader sees her portal's pages and is refused (403) every page of the other portal, which
the portals list does not show her either; an anonymous request is refused (401); an Admin
reads both. With the simple auth manager there is no per-DAG permission: a user reads every
portal or none (README, "Portal admins").
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from include.sis_sync.lms.db import migrate
from tests.e2e.standalone import VENV_BIN, Standalone, start_api_server, sync_env
from tests.helpers import write_portal

pytestmark = [pytest.mark.standalone, pytest.mark.timeout(600)]
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
USERS = {"rita": "rita-secret-1", "boss": "boss-secret-1"}
PAGES = ("", "/overview", "/schools", "/people/students", "/people/teachers", "/classes")


def _roles_and_users(server: Standalone) -> None:
    """Rita may read the alpha portal's DAG only; boss is an Admin. In one Python process
    (the CLI would take a few seconds per command), before the server starts, so that no
    permission cache holds an older state."""
    script = textwrap.dedent(
        f"""
        from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

        with get_application_builder() as builder:
            sm = builder.sm
            role = sm.find_role("alpha_reader") or sm.add_role("alpha_reader")
            sm.add_permission_to_role(role, sm.create_permission("can_read", "DAG:sis_sync__alpha"))
            sm.add_user("rita", "Rita", "Reader", "rita@example.org", role,
                        password={USERS["rita"]!r})
            sm.add_user("boss", "Boss", "Admin", "boss@example.org", sm.find_role("Admin"),
                        password={USERS["boss"]!r})
        """
    )
    done = subprocess.run(
        [str(VENV_BIN / "python"), "-c", script],
        env=server.env,
        cwd=server.home,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@dataclass
class Access:
    server: Standalone
    clients: dict[str, httpx.Client]


@pytest.fixture(scope="module")
def access(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Access]:
    root = tmp_path_factory.mktemp("access")
    (root / "portals").mkdir()
    for portal in ("alpha", "beta"):
        source = {"provider": "oneroster_csv", "path": f"{root}/drops/{portal}/{{date}}"}
        write_portal(root / "portals", id=portal, name=f"Portal {portal}", source=source)
    migrate(f"sqlite:///{root / 'lms.db'}")
    env = sync_env(root, AIRFLOW__CORE__AUTH_MANAGER=FAB, AIRFLOW__FAB__CACHE_TTL="1")
    with start_api_server(root / "airflow", env, prepare=_roles_and_users) as server:
        clients = {}
        for user, password in USERS.items():
            response = server.client.post(
                "/auth/token", json={"username": user, "password": password}
            )
            assert response.status_code in (200, 201), response.text
            token = response.json()["access_token"]
            clients[user] = httpx.Client(
                base_url=server.base_url, timeout=60, cookies={"_token": token}
            )
        yield Access(server, clients)
        for client in clients.values():
            client.close()


def _status(access: Access, user: str | None, path: str) -> int:
    if user is None:
        return httpx.get(f"{access.server.base_url}{path}", timeout=60).status_code
    return access.clients[user].get(path).status_code


@pytest.mark.parametrize("page", PAGES)
def test_a_reader_of_one_portal_is_refused_the_other(access: Access, page: str) -> None:
    alpha, beta = (f"/sis-sync/portals/sis_sync__{p}{page}" for p in ("alpha", "beta"))
    assert _status(access, None, alpha) == 401
    assert _status(access, "rita", alpha) == 200
    assert _status(access, "rita", beta) == 403
    assert (_status(access, "boss", alpha), _status(access, "boss", beta)) == (200, 200)


def test_the_portals_list_shows_only_the_portals_a_user_may_read(access: Access) -> None:
    mine = access.clients["rita"].get("/sis-sync/").text
    everyone = access.clients["boss"].get("/sis-sync/").text
    assert "Portal alpha" in mine and "Portal beta" not in mine
    assert "Portal alpha" in everyone and "Portal beta" in everyone
    # Airflow's own REST API agrees: she may not read the other DAG's runs
    refused = access.clients["rita"].get("/api/v2/dags/sis_sync__beta/dagRuns")
    assert refused.status_code in (403, 404), json.dumps(refused.json())[:500]
