"""The OneRoster REST client over real HTTP against the local OneRoster server (demo district).

Waits go through an injected ``sleep`` that only records, so retries cost no time.
"""

from __future__ import annotations

import copy
import logging
import socket
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
import requests

from include.sis_sync.providers.oneroster_rest import (
    API_PATH,
    COLLECTIONS,
    OneRosterAuthError,
    OneRosterClient,
    OneRosterError,
    OneRosterPagingError,
    modified_since_filter,
)
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.oneroster import (
    OneRosterData,
    OneRosterServer,
    oneroster_data_from_district,
)

pytestmark = pytest.mark.timeout(60)

CLIENT_ID = "client-test-id"
SECRET = "cl1ent-secret+/&= with spaces"
CORE_SCOPE = "https://purl.imsglobal.org/spec/or/v1p1/scope/roster-core.readonly"


@cache
def _demo_data() -> OneRosterData:
    return oneroster_data_from_district(generate_district("demo"))


@pytest.fixture
def data() -> OneRosterData:
    return copy.deepcopy(_demo_data())


class Sleeps(list):
    """An injected sleep: records each wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def serve(data: OneRosterData, **kw: Any) -> OneRosterServer:
    kw.setdefault("client_id", CLIENT_ID)
    kw.setdefault("client_secret", SECRET)
    return OneRosterServer(data, **kw)


def connect(server: OneRosterServer, sleeps: Sleeps, **kw: Any) -> OneRosterClient:
    kw.setdefault("auth", server.auth)
    kw.setdefault("limit", 50)
    kw.setdefault("timeout", 10)
    secret = kw.pop("secret", SECRET)
    return OneRosterClient(server.base_url, CLIENT_ID, secret, sleep=sleeps, **kw)


@pytest.fixture
def srv(data):
    with serve(data) as server:
        yield server


@pytest.fixture
def client(srv, sleeps):
    with connect(srv, sleeps) as c:
        yield c


def calls(server: OneRosterServer, name: str) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["path"] == f"{API_PATH}/{name}"]


def read(client: OneRosterClient, name: str, **kw: Any) -> list[dict[str, Any]]:
    return list(client.collection(name, **kw))


def assert_all_once(rows: list[dict[str, Any]], server: OneRosterServer, name: str) -> None:
    assert [r["sourcedId"] for r in rows] == [o["sourcedId"] for o in server.objects(name)]
    assert rows == server.objects(name)


# --------------------------------------------------------------------------------------------
# Paging
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COLLECTIONS)
def test_every_collection_is_read_once(client, srv, name):
    rows = read(client, name)
    assert_all_once(rows, srv, name)
    assert len(calls(srv, name)) == max(1, -(-len(rows) // 50))  # X-Total-Count: no extra call
    assert [c["query"]["offset"] for c in calls(srv, name)] == [
        str(i * 50) for i in range(len(calls(srv, name)))
    ]


@pytest.mark.parametrize(
    ("style", "limit", "requests_made"),
    [
        ("total", 50, 7),  # 322 users: stops when X-Total-Count rows are read
        ("link", 50, 7),  # stops at the page without rel="next"
        ("short", 50, 7),  # stops at the short 7th page (22 rows)
        ("empty", 46, 8),  # 322 = 7 x 46: the last page is full, the 8th is empty
        ("total", 46, 7),
        ("link", 46, 7),
    ],
)
def test_paging_styles_end_correctly(data, sleeps, style, limit, requests_made):
    with serve(data, paging=style) as server, connect(server, sleeps, limit=limit) as client:
        rows = read(client, "users")
        assert_all_once(rows, server, "users")
        made = calls(server, "users")
        assert len(made) == requests_made
        assert {c["query"]["limit"] for c in made} == {str(limit)}
        if style == "empty":
            assert made[-1]["query"]["offset"] == "322"


@pytest.mark.parametrize("style", ["total", "link", "short", "empty"])
@pytest.mark.parametrize("ignore", [True, 30])
def test_server_ignoring_limit_is_followed_without_gaps_or_duplicates(
    data, sleeps, caplog, style, ignore
):
    with (
        serve(data, paging=style, ignore_limit=ignore) as server,
        connect(server, sleeps, limit=7) as client,
        caplog.at_level(logging.WARNING),
    ):
        rows = read(client, "users")
        assert_all_once(rows, server, "users")
        offsets = [int(c["query"]["offset"]) for c in calls(server, "users")]
        if ignore is True:
            assert offsets[:1] == [0] and len(offsets) <= 2
        else:
            assert offsets[:11] == list(range(0, 322, 30))
            assert len(offsets) <= 12
        assert "following the server's page size" in caplog.text


@pytest.mark.parametrize("style", ["total", "link", "short", "empty"])
def test_server_repeating_pages_fails_clearly(data, sleeps, style):
    with (
        serve(data, paging=style, repeat_pages=True) as server,
        connect(server, sleeps, limit=20) as client,
    ):
        rows = []
        with pytest.raises(OneRosterPagingError, match="ignore offset") as caught:
            rows.extend(client.collection("users"))
        assert len(rows) == 20
        assert len(calls(server, "users")) == 2
        assert caught.value.path == f"{API_PATH}/users"


def test_a_row_added_mid_read_is_caught_by_the_total_check(client, srv):
    iterator = client.collection("users")
    first = [next(iterator) for _ in range(50)]
    srv.add("users", {**first[0], "sourcedId": "usr-000000"})  # sorts first: shifts the list
    with pytest.raises(OneRosterPagingError, match="X-Total-Count 323"):
        list(iterator)


def test_a_small_collection_in_one_page(client, srv):
    assert [o["sourcedId"] for o in client.orgs()] == ["org-000001", "org-000002", "org-000003"]
    assert len(calls(srv, "orgs")) == 1


def test_unknown_collection_is_refused(client):
    with pytest.raises(ValueError, match="unknown collection"):
        read(client, "demographics")


# --------------------------------------------------------------------------------------------
# OAuth 2 client credentials
# --------------------------------------------------------------------------------------------


def token_calls(server: OneRosterServer) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["path"] == "/oauth/token"]


def test_one_token_serves_the_whole_sync(srv, sleeps):
    with connect(srv, sleeps, scope=CORE_SCOPE) as client:
        for name in COLLECTIONS:
            read(client, name)
    assert srv.tokens_issued == 1
    assert token_calls(srv)[0]["auth"] == "basic" and token_calls(srv)[0]["status"] == 200
    assert {r["auth"] for r in srv.requests if r["path"].startswith(API_PATH)} == {"bearer"}


def test_token_expiring_mid_sync_is_refreshed_once(client, srv):
    iterator = client.collection("enrollments")
    rows = [next(iterator) for _ in range(120)]
    srv.expire_tokens()
    rows.extend(iterator)
    assert_all_once(rows, srv, "enrollments")
    assert srv.tokens_issued == 2
    statuses = [c["status"] for c in calls(srv, "enrollments")]
    assert statuses.count(401) == 1
    assert statuses[statuses.index(401) + 1] == 200


def test_token_is_renewed_before_it_expires(data, sleeps):
    now = [1_000_000.0]
    with serve(data, token_ttl=600) as server:
        with connect(server, sleeps, clock=lambda: now[0]) as client:
            read(client, "orgs")
            now[0] += 500  # within expires_in minus the margin: the cached token is used
            read(client, "orgs")
            assert server.tokens_issued == 1
            now[0] += 50  # past 600 - 60: renewed before the request, no 401
            read(client, "orgs")
        assert server.tokens_issued == 2
        assert {c["status"] for c in calls(server, "orgs")} == {200}


def test_refused_fresh_token_fails_after_one_refresh(client, srv):
    srv.fail_next(401, 2, "/users")
    with pytest.raises(OneRosterAuthError, match="freshly issued access token") as caught:
        read(client, "users")
    assert caught.value.status == 401 and caught.value.path == f"{API_PATH}/users"
    assert srv.tokens_issued == 2
    assert SECRET not in str(caught.value)


def test_wrong_secret_fails_clearly_without_the_secret(srv, sleeps):
    wrong = "definitely-the-wrong-secret"
    with connect(srv, sleeps, secret=wrong) as client, pytest.raises(OneRosterAuthError) as caught:
        read(client, "users")
    message = str(caught.value)
    assert "token endpoint" in message and CLIENT_ID in message and "invalid_client" in message
    assert srv.token_url in message
    assert wrong not in message and SECRET not in message and wrong not in repr(client)
    assert caught.value.status == 401
    assert len(token_calls(srv)) == 1 and not calls(srv, "users") and sleeps == []


def test_unknown_scope_is_an_auth_error(srv, sleeps):
    client = connect(srv, sleeps, scope="https://example.org/other.scope")
    with client, pytest.raises(OneRosterAuthError, match="invalid_scope"):
        read(client, "orgs")


def test_token_endpoint_outage_is_retried(srv, sleeps):
    srv.fail_next(503, 2, "/oauth/token")
    with connect(srv, sleeps, backoff=0.5) as client:
        assert len(read(client, "orgs")) == 3
    assert sleeps == [0.5, 1.0]
    assert [c["status"] for c in token_calls(srv)] == [503, 503, 200]


def test_explicit_token_url_and_api_suffix(srv, sleeps):
    with OneRosterClient(
        srv.api_url + "/",
        CLIENT_ID,
        SECRET,
        token_url=srv.token_url,
        limit=1000,
        sleep=sleeps,
        timeout=10,
    ) as client:
        assert client.base_url == srv.base_url
        assert len(read(client, "users")) == 322


# --------------------------------------------------------------------------------------------
# OAuth 1.0a
# --------------------------------------------------------------------------------------------


@pytest.fixture
def srv1(data):
    with serve(data, auth="oauth1") as server:
        yield server


@pytest.mark.parametrize("style", ["total", "empty"])
def test_oauth1_signed_sync_reads_everything(data, sleeps, style):
    with serve(data, auth="oauth1", paging=style) as server:
        with connect(server, sleeps, limit=70) as client:
            assert_all_once(read(client, "enrollments"), server, "enrollments")
            rows = read(client, "users", filter="role='teacher' AND status='active'")
        assert len(rows) == 20
        assert {r["auth"] for r in server.requests} == {"oauth1"}
        assert {r["status"] for r in server.requests} == {200}
        assert not token_calls(server)


def test_oauth1_wrong_secret_fails_clearly_without_the_secret(srv1, sleeps):
    wrong = "wrong-oauth1-secret"
    with connect(srv1, sleeps, secret=wrong) as client, pytest.raises(OneRosterAuthError) as caught:
        read(client, "orgs")
    message = str(caught.value)
    assert "OAuth 1.0a signature" in message and CLIENT_ID in message
    assert wrong not in message and SECRET not in message
    assert len(srv1.requests) == 1 and sleeps == []


def test_oauth1_retries_are_signed_afresh(srv1, sleeps):
    srv1.rate_limit_next(1, retry_after=3)
    srv1.fail_next(502, 1)
    with connect(srv1, sleeps) as client:
        assert len(read(client, "classes")) == 40
    assert [c["status"] for c in calls(srv1, "classes")][:3] == [429, 502, 200]
    assert sleeps == [3.0, 2.0]


# --------------------------------------------------------------------------------------------
# Retries and errors
# --------------------------------------------------------------------------------------------


def test_rate_limit_then_success(client, srv, sleeps):
    srv.rate_limit_next(2, retry_after=4, path_prefix="/users")
    assert_all_once(read(client, "users"), srv, "users")
    assert sleeps == [4.0, 4.0]
    assert [c["status"] for c in calls(srv, "users")][:3] == [429, 429, 200]


def test_server_errors_then_success(client, srv, sleeps):
    srv.fail_next(500, 1, "/enrollments")
    srv.fail_next(503, 1, "/enrollments")
    assert_all_once(read(client, "enrollments"), srv, "enrollments")
    assert sleeps == [1.0, 2.0]


def test_retries_are_bounded(srv, sleeps):
    srv.fail_next(503, 10, "/orgs")
    client = connect(srv, sleeps, max_retries=2)
    with (
        client,
        pytest.raises(OneRosterError, match=r"HTTP 503 for GET \S*/orgs on all 3") as caught,
    ):
        read(client, "orgs")
    assert caught.value.status == 503 and len(sleeps) == 2
    assert caught.value.code == "internal_server_error"


def test_client_errors_name_method_path_status_and_imsx(client, srv, sleeps):
    with pytest.raises(OneRosterError) as caught:
        read(client, "users", filter="shoeSize>'9'")
    message = str(caught.value)
    assert "GET /ims/oneroster/v1p1/users" in message and "HTTP 400" in message
    assert "invalid_filter_field" in message and "shoeSize" in message
    assert not isinstance(caught.value, OneRosterAuthError)
    assert (caught.value.status, caught.value.method, caught.value.code) == (
        400,
        "GET",
        "invalid_filter_field",
    )
    assert len(calls(srv, "users")) == 1 and sleeps == []
    srv.fail_next(403, 1, "/classes")
    with pytest.raises(OneRosterAuthError, match="HTTP 403 forbidden"):
        read(client, "classes")


def test_unreachable_server_is_retried_then_named(sleeps):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OneRosterClient(
        f"http://127.0.0.1:{port}",
        CLIENT_ID,
        SECRET,
        auth="oauth1",
        max_retries=2,
        sleep=sleeps,
        timeout=5,
    )
    with client, pytest.raises(OneRosterError, match="could not reach") as caught:
        read(client, "orgs")
    assert len(sleeps) == 2 and SECRET not in str(caught.value)


def test_constructor_checks():
    with pytest.raises(ValueError):
        OneRosterClient("http://x", CLIENT_ID, "")
    with pytest.raises(ValueError):
        OneRosterClient("ftp://x", CLIENT_ID, SECRET)
    with pytest.raises(ValueError):
        OneRosterClient("http://x", CLIENT_ID, SECRET, auth="basic")
    with pytest.raises(ValueError):
        OneRosterClient("http://x", CLIENT_ID, SECRET, limit=0)
    client = OneRosterClient("https://sis.example.org/district/", CLIENT_ID, SECRET)
    assert client.api_url == "https://sis.example.org/district/ims/oneroster/v1p1"
    assert client.token_url == "https://sis.example.org/district/oauth/token"
    assert SECRET not in repr(client)
    client.close()


# --------------------------------------------------------------------------------------------
# Deltas
# --------------------------------------------------------------------------------------------


def test_modified_since_filter_text():
    moment = datetime(2026, 9, 1, 6, 30, tzinfo=UTC)
    assert modified_since_filter(moment) == "dateLastModified>'2026-09-01T06:30:00Z'"
    assert modified_since_filter("2026-09-01", inclusive=True) == "dateLastModified>='2026-09-01'"


def test_delta_by_date_last_modified_returns_changed_and_deleted_rows(client, srv):
    checkpoint = datetime(2027, 1, 1, tzinfo=UTC)
    srv.clock = lambda: checkpoint.timestamp() + 3600
    srv.update("users", "usr-000010", {"familyName": "Changed"})
    srv.mark_deleted("users", "usr-000011")
    template = {k: v for k, v in srv.objects("users")[0].items() if k != "dateLastModified"}
    srv.add("users", {**template, "sourcedId": "usr-700000", "username": "new"})
    srv.mark_deleted("enrollments", "enr-0000005")
    since = modified_since_filter(checkpoint)
    users = read(client, "users", filter=since)
    assert [(u["sourcedId"], u["status"]) for u in users] == [
        ("usr-000010", "active"),
        ("usr-000011", "tobedeleted"),
        ("usr-700000", "active"),
    ]
    assert users[0]["familyName"] == "Changed"
    enrollments = read(client, "enrollments", filter=since)
    assert [(e["sourcedId"], e["status"]) for e in enrollments] == [("enr-0000005", "tobedeleted")]
    assert read(client, "classes", filter=since) == []
    assert len(read(client, "users")) == 323


def test_the_pipeline_filter_form_is_accepted(client, srv):
    srv.clock = lambda: datetime(2027, 1, 2, tzinfo=UTC).timestamp()
    srv.update("classes", "cls-000001", {"title": "Renamed"})
    rows = read(client, "classes", filter="dateLastModified>'2027-01-01T23:50:00Z'")
    assert [r["title"] for r in rows] == ["Renamed"]


def test_requests_session_can_be_supplied(srv, sleeps):
    session = requests.Session()
    with OneRosterClient(
        srv.base_url, CLIENT_ID, SECRET, session=session, sleep=sleeps, timeout=10
    ) as client:
        assert len(read(client, "orgs")) == 3
    # The caller's session is left open for the caller to close.
    assert session.get(srv.token_url, timeout=10).status_code == 405
    session.close()
