"""The local OneRoster 1.1 REST server, over real HTTP on 127.0.0.1 (demo district).

OAuth 1.0a requests here are signed by oauthlib's own client, so the server's verification is
checked against an implementation other than the project's client.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import requests
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA1, SIGNATURE_HMAC_SHA256, Client

from include.sis_sync.sample.generator import generate_district, next_day
from include.sis_sync.simulators.oneroster import (
    API_PREFIX,
    BASE_STAMP,
    COLLECTIONS,
    DEFAULT_SCOPE,
    SINGULAR,
    OneRosterData,
    OneRosterServer,
    oneroster_data_from_district,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "server-test-client"
SECRET = "s3rver+secret/with&odd chars"
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
CORE_SCOPE = "https://purl.imsglobal.org/spec/or/v1p1/scope/roster-core.readonly"


@cache
def demo_district():
    return generate_district("demo")


@cache
def _demo_data() -> OneRosterData:
    return oneroster_data_from_district(demo_district())


@pytest.fixture
def data() -> OneRosterData:
    return copy.deepcopy(_demo_data())


def serve(data: OneRosterData, **kw: Any) -> OneRosterServer:
    kw.setdefault("client_id", CLIENT_ID)
    kw.setdefault("client_secret", SECRET)
    return OneRosterServer(data, **kw)


@pytest.fixture
def srv(data):
    with serve(data) as server:
        yield server


def token_for(server: OneRosterServer, **form: str) -> str:
    response = requests.post(
        server.token_url,
        data={"grant_type": "client_credentials", **form},
        auth=(CLIENT_ID, SECRET),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.fixture
def http(srv):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token_for(srv)}"
    yield session
    session.close()


def get(http: requests.Session, server: OneRosterServer, path: str, **params: Any):
    return http.get(server.api_url + path, params=params or None, timeout=10)


def code_minor(body: dict[str, Any]) -> str:
    return body["imsx_CodeMinor"]["imsx_codeMinorField"][0]["imsx_codeMinorFieldValue"]


def assert_imsx(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["imsx_codeMajor"] == "failure"
    assert body["imsx_severity"] == "error"
    assert body["imsx_description"]
    assert code_minor(body) == code
    return body


def all_pages(http, server, path, limit, **params) -> list[requests.Response]:
    """Pages at offsets 0, limit, 2*limit... up to and including the first empty one."""
    pages, offset = [], 0
    while True:
        response = get(http, server, path, limit=limit, offset=offset, **params)
        assert response.status_code == 200, response.text
        pages.append(response)
        if not response.json()[path.strip("/")]:
            return pages
        offset += limit
        assert len(pages) < 500


def guid_refs(obj: Any) -> list[dict[str, Any]]:
    if isinstance(obj, dict):
        found = [obj] if set(obj) == {"href", "sourcedId", "type"} else []
        return found + [ref for value in obj.values() for ref in guid_refs(value)]
    if isinstance(obj, list):
        return [ref for value in obj for ref in guid_refs(value)]
    return []


# --------------------------------------------------------------------------------------------
# The district as OneRoster objects
# --------------------------------------------------------------------------------------------


def test_conversion_keeps_every_row_and_the_base_fields(data):
    frames = demo_district().frames()
    for name, objects in data.collections().items():
        assert list(objects) == sorted(frames[name]["sourcedId"]), name
        for key, obj in objects.items():
            assert obj["sourcedId"] == key
            assert obj["status"] == "active"
            assert obj["dateLastModified"] == BASE_STAMP
            assert ISO_Z.match(obj["dateLastModified"])
            assert "password" not in obj


def test_conversion_shapes_follow_oneroster_1_1(data):
    user = data.users["usr-000001"]
    assert user["orgs"] == [
        {"href": f"{API_PREFIX}/orgs/org-000003", "sourcedId": "org-000003", "type": "org"}
    ]
    assert user["grades"] == ["08"]
    assert user["enabledUser"] is True
    assert user["userIds"] == [{"type": "SIS", "identifier": "100000001"}]
    assert user["role"] == "student" and user["username"] == "liam.king1"
    cls = data.classes["cls-000002"]
    assert cls["course"]["type"] == "course" and cls["course"]["sourcedId"] == "crs-000002"
    assert cls["school"] == {
        "href": f"{API_PREFIX}/orgs/org-000002",
        "sourcedId": "org-000002",
        "type": "org",
    }
    assert [t["sourcedId"] for t in cls["terms"]] == ["ses-000002", "ses-000003"]
    assert {t["type"] for t in cls["terms"]} == {"academicSession"}
    assert cls["periods"] == ["4"] and cls["grades"] == ["09"]
    assert cls["subjects"] == ["English Language Arts"]
    enrollment = data.enrollments["enr-0000001"]
    assert {enrollment[k]["type"] for k in ("user", "class", "school")} == {"user", "class", "org"}
    assert enrollment["role"] == "teacher" and enrollment["primary"] is True
    assert enrollment["beginDate"] == "2026-08-15"
    year, fall = data.academic_sessions["ses-000001"], data.academic_sessions["ses-000002"]
    assert year["type"] == "schoolYear" and "parent" not in year
    assert [c["sourcedId"] for c in year["children"]] == ["ses-000002", "ses-000003"]
    assert fall["parent"]["sourcedId"] == "ses-000001" and fall["schoolYear"] == "2027"
    assert (fall["startDate"], fall["endDate"]) == ("2026-08-15", "2026-12-20")
    district, school = data.orgs["org-000001"], data.orgs["org-000002"]
    assert district["type"] == "district" and "parent" not in district
    assert school["parent"]["sourcedId"] == "org-000001" and school["identifier"] == "101"
    assert [c["sourcedId"] for c in district["children"]] == ["org-000002", "org-000003"]
    course = data.courses["crs-000001"]
    assert course["org"]["sourcedId"] == "org-000002"
    assert course["schoolYear"]["sourcedId"] == "ses-000001"


def test_string_booleans_as_classlink_sends_them():
    data = oneroster_data_from_district(demo_district(), string_booleans=True)
    assert data.users["usr-000001"]["enabledUser"] == "true"
    assert data.enrollments["enr-0000001"]["primary"] == "true"


# --------------------------------------------------------------------------------------------
# Collections, items, envelopes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COLLECTIONS)
def test_collection_envelope_and_absolute_guidrefs(http, srv, data, name):
    response = get(http, srv, f"/{name}", limit=5000)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == [name]
    rows = body[name]
    assert [r["sourcedId"] for r in rows] == sorted(data.collections()[name])
    refs = guid_refs(rows)
    assert refs, "every collection of the demo names other objects"
    plural = {singular: name for name, singular in SINGULAR.items()}
    for ref in refs:
        assert ref["href"] == f"{srv.api_url}/{plural[ref['type']]}/{ref['sourcedId']}"
    # A GUIDRef's href is the item endpoint of the object it names.
    target = http.get(refs[-1]["href"], timeout=10)
    assert target.status_code == 200
    (singular,) = target.json()
    assert target.json()[singular]["sourcedId"] == refs[-1]["sourcedId"]


def test_item_endpoints_use_the_singular_key(http, srv):
    for name, singular in SINGULAR.items():
        first = srv.objects(name)[0]
        response = get(http, srv, f"/{name}/{first['sourcedId']}")
        assert response.json() == {singular: first}
    assert_imsx(get(http, srv, "/users/usr-999999"), 404, "unknownobject")
    assert_imsx(get(http, srv, "/nothing"), 404, "unknownobject")


def test_subset_endpoints(http, srv, data):
    schools = get(http, srv, "/schools").json()["orgs"]
    assert [o["sourcedId"] for o in schools] == ["org-000002", "org-000003"]
    students = get(http, srv, "/students", limit=1000).json()["users"]
    teachers = get(http, srv, "/teachers", limit=1000).json()["users"]
    assert len(students) == 300 and {u["role"] for u in students} == {"student"}
    assert len(teachers) == 20 and {u["role"] for u in teachers} == {"teacher"}


def test_read_only(http, srv):
    response = http.post(srv.api_url + "/users", json={}, timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"


# --------------------------------------------------------------------------------------------
# Paging
# --------------------------------------------------------------------------------------------


def links(response: requests.Response) -> dict[str, dict[str, str]]:
    """rel -> query of each Link URL."""
    out = {}
    for url, rel in re.findall(r'<([^>]*)>; rel="([^"]+)"', response.headers.get("Link", "")):
        query = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))
        out[rel] = {"url": url.split("?", 1)[0], **query}
    return out


def test_total_paging_sends_count_and_links(http, srv):
    pages = all_pages(http, srv, "/users", 50, filter="role='student'")
    rows = [r for p in pages for r in p.json()["users"]]
    assert len(rows) == 300 and len({r["sourcedId"] for r in rows}) == 300
    assert [len(p.json()["users"]) for p in pages] == [50] * 6 + [0]
    assert {p.headers["X-Total-Count"] for p in pages} == {"300"}
    first, second, last = links(pages[0]), links(pages[1]), links(pages[5])
    assert first["next"]["offset"] == "50" and first["next"]["limit"] == "50"
    assert first["next"]["filter"] == "role%3D%27student%27"
    assert first["next"]["url"] == srv.api_url + "/users"
    assert first["last"]["offset"] == "250" and "prev" not in first
    assert second["prev"]["offset"] == "0"
    assert "next" not in last and last["last"]["offset"] == "250"


def test_link_paging_sends_links_only(data):
    with serve(data, paging="link") as server:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token_for(server)}"
        pages = all_pages(session, server, "/classes", 15)
        assert [len(p.json()["classes"]) for p in pages] == [15, 15, 10, 0]
        assert all("X-Total-Count" not in p.headers for p in pages)
        assert "next" in links(pages[1]) and "next" not in links(pages[2])
        session.close()


@pytest.mark.parametrize("style", ["short", "empty"])
def test_headerless_paging(data, style):
    with serve(data, paging=style) as server:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token_for(server)}"
        # 40 classes: limit 15 ends on a short page, limit 10 on a full one then an empty one.
        short = all_pages(session, server, "/classes", 15)
        full = all_pages(session, server, "/classes", 10)
        assert [len(p.json()["classes"]) for p in short] == [15, 15, 10, 0]
        assert [len(p.json()["classes"]) for p in full] == [10, 10, 10, 10, 0]
        for page in short + full:
            assert "X-Total-Count" not in page.headers and "Link" not in page.headers
        session.close()


def test_default_limit_and_bad_paging_parameters(http, srv):
    assert len(get(http, srv, "/users").json()["users"]) == 100
    assert_imsx(get(http, srv, "/users", limit="many"), 400, "invaliddata")
    assert_imsx(get(http, srv, "/users", limit=0), 400, "invaliddata")
    assert_imsx(get(http, srv, "/users", offset=-1), 400, "invaliddata")


def test_ignore_limit_sends_every_row_or_its_own_page_size(http, srv):
    srv.ignore_limit = True
    page = get(http, srv, "/users", limit=10, offset=300).json()["users"]
    assert [u["sourcedId"] for u in page] == [u["sourcedId"] for u in srv.objects("users")[300:]]
    assert len(get(http, srv, "/users", limit=10).json()["users"]) == 322
    srv.ignore_limit = 30
    assert len(get(http, srv, "/users", limit=10, offset=20).json()["users"]) == 30
    assert len(get(http, srv, "/users", limit=10, offset=300).json()["users"]) == 22


def test_repeat_pages_ignores_offset(http, srv):
    srv.repeat_pages = True
    first = get(http, srv, "/users", limit=10).json()["users"]
    again = get(http, srv, "/users", limit=10, offset=10).json()["users"]
    assert first == again and first[0]["sourcedId"] == "usr-000001"


def test_sort_order_and_fields(http, srv):
    rows = get(http, srv, "/users", sort="familyName", orderBy="desc", limit=1000).json()["users"]
    names = [r["familyName"] for r in rows]
    assert names == sorted(names, reverse=True)
    rows = get(http, srv, "/orgs", fields="sourcedId,name").json()["orgs"]
    assert rows[0] == {"sourcedId": "org-000001", "name": "Sample Unified School District"}
    assert_imsx(get(http, srv, "/orgs", fields="nope"), 400, "invalid_selection_field")
    assert_imsx(get(http, srv, "/orgs", sort="nope"), 400, "invaliddata")


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


def ids(response: requests.Response, name: str) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["sourcedId"] for r in response.json()[name]]


def test_filters_on_date_last_modified_and_status(http, srv):
    srv.clock = lambda: 1_800_000_000.0  # 2027-01-15
    srv.update("users", "usr-000002", {"givenName": "Renata"})
    srv.mark_deleted("users", "usr-000003")
    changed = get(http, srv, "/users", filter="dateLastModified>'2026-08-01T00:00:00Z'")
    assert ids(changed, "users") == ["usr-000002", "usr-000003"]
    assert len(ids(get(http, srv, "/users", filter="dateLastModified>='2026-08-01'", limit=999),
                   "users")) == 322  # fmt: skip
    assert ids(get(http, srv, "/users", filter="dateLastModified>'2026-08-01'"), "users") == [
        "usr-000002",
        "usr-000003",
    ]
    active = get(http, srv, "/users", filter="status='active'", limit=1000)
    assert len(ids(active, "users")) == 321
    both = "dateLastModified>'2026-08-01T00:00:00.000Z' AND status='active'"
    assert ids(get(http, srv, "/users", filter=both), "users") == ["usr-000002"]
    either = "status='tobedeleted' OR givenName='Renata'"
    assert ids(get(http, srv, "/users", filter=either), "users") == ["usr-000002", "usr-000003"]
    contains = get(http, srv, "/orgs", filter="name~'high'")
    assert ids(contains, "orgs") == ["org-000002"]
    counted = get(http, srv, "/users", filter="status='tobedeleted'")
    assert counted.headers["X-Total-Count"] == "1"


@pytest.mark.parametrize(
    "bad",
    [
        "nonsense",
        "shoeSize='42'",
        "status=active",
        "dateLastModified>'yesterday'",
        "status='active' AND role='student' AND grades='09'",
        "status='active' AND role='student' OR role='teacher'",
        "orgs='org-000002'",
    ],
)
def test_bad_filters_are_400_invalid_filter_field(http, srv, bad):
    assert_imsx(get(http, srv, "/users", filter=bad), 400, "invalid_filter_field")


# --------------------------------------------------------------------------------------------
# OAuth 2 client credentials
# --------------------------------------------------------------------------------------------


def test_token_endpoint_issues_bearer_tokens(srv):
    response = requests.post(
        srv.token_url,
        data={"grant_type": "client_credentials", "scope": CORE_SCOPE},
        auth=(CLIENT_ID, SECRET),
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert body["scope"] == CORE_SCOPE and body["access_token"]
    assert response.headers["Cache-Control"] == "no-store"
    unscoped = requests.post(
        srv.token_url,
        data={"grant_type": "client_credentials"},
        auth=(CLIENT_ID, SECRET),
        timeout=10,
    ).json()
    assert set(unscoped["scope"].split()) == set(DEFAULT_SCOPE.split())
    assert srv.tokens_issued == 2


@pytest.mark.parametrize(
    ("auth", "form", "status", "error"),
    [
        ((CLIENT_ID, "wrong"), {"grant_type": "client_credentials"}, 401, "invalid_client"),
        (("someone-else", SECRET), {"grant_type": "client_credentials"}, 401, "invalid_client"),
        (None, {"grant_type": "client_credentials"}, 401, "invalid_client"),
        ((CLIENT_ID, SECRET), {"grant_type": "password"}, 400, "unsupported_grant_type"),
        ((CLIENT_ID, SECRET), {"grant_type": "client_credentials", "scope": "x"}, 400,
         "invalid_scope"),
    ],
)  # fmt: skip
def test_token_endpoint_refusals(srv, auth, form, status, error):
    response = requests.post(srv.token_url, data=form, auth=auth, timeout=10)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert SECRET not in response.text
    assert srv.tokens_issued == 0


def test_bearer_token_is_required_and_checked(srv):
    assert_imsx(requests.get(srv.api_url + "/orgs", timeout=10), 401, "unauthorisedrequest")
    unknown = requests.get(
        srv.api_url + "/orgs", headers={"Authorization": "Bearer made-up"}, timeout=10
    )
    assert_imsx(unknown, 401, "unauthorisedrequest")
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    token = token_for(srv)
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(srv.api_url + "/orgs", headers=headers, timeout=10).status_code == 200
    assert srv.expire_tokens() == 1
    expired = requests.get(srv.api_url + "/orgs", headers=headers, timeout=10)
    assert_imsx(expired, 401, "unauthorisedrequest")
    fresh = {"Authorization": f"Bearer {token_for(srv)}"}
    assert requests.get(srv.api_url + "/orgs", headers=fresh, timeout=10).status_code == 200


def test_tokens_expire_after_their_ttl(data):
    now = [1_000.0]
    with serve(data, token_ttl=60, auth_clock=lambda: now[0]) as server:
        headers = {"Authorization": f"Bearer {token_for(server)}"}
        now[0] += 59
        assert (
            requests.get(server.api_url + "/orgs", headers=headers, timeout=10).status_code == 200
        )
        now[0] += 2
        assert (
            requests.get(server.api_url + "/orgs", headers=headers, timeout=10).status_code == 401
        )


def test_request_log_holds_no_secret_or_token(srv, http):
    token = http.headers["Authorization"].split()[1]
    get(http, srv, "/users", limit=3)
    form = {"grant_type": "client_credentials"}
    requests.post(srv.token_url, data=form, auth=("x", SECRET), timeout=10)
    logged = repr(srv.requests)
    assert SECRET not in logged and token not in logged
    assert [r["auth"] for r in srv.requests] == ["basic", "bearer", "basic"]
    assert srv.requests[1] == {
        "method": "GET",
        "path": f"{API_PREFIX}/users",
        "query": {"limit": "3"},
        "status": 200,
        "auth": "bearer",
    }


# --------------------------------------------------------------------------------------------
# OAuth 1.0a HMAC-SHA256, verified with oauthlib
# --------------------------------------------------------------------------------------------


@pytest.fixture
def srv1(data):
    with serve(data, auth="oauth1") as server:
        yield server


def signed(url: str, secret: str = SECRET, method=SIGNATURE_HMAC_SHA256, **kw: Any):
    client = Client(CLIENT_ID, client_secret=secret, signature_method=method, **kw)
    uri, headers, _ = client.sign(url, http_method="GET")
    return uri, headers


def test_oauth1_request_signed_by_oauthlib_is_accepted(srv1):
    url = srv1.api_url + "/users?limit=5&offset=10&filter=role%3D%27teacher%27"
    uri, headers = signed(url)
    assert headers["Authorization"].startswith("OAuth ")
    response = requests.get(uri, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert len(response.json()["users"]) == 5
    assert response.json()["users"][0]["role"] == "teacher"
    assert srv1.requests[-1]["auth"] == "oauth1"
    assert SECRET not in repr(srv1.requests)


def test_oauth1_signature_in_the_query_is_accepted(srv1):
    client = Client(
        CLIENT_ID,
        client_secret=SECRET,
        signature_method=SIGNATURE_HMAC_SHA256,
        signature_type="QUERY",
    )
    uri, headers, _ = client.sign(srv1.api_url + "/orgs?limit=2", http_method="GET")
    response = requests.get(uri, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert "oauth_signature" not in srv1.requests[-1]["query"]


def test_oauth1_tampered_request_is_refused(srv1):
    uri, headers = signed(srv1.api_url + "/users?limit=5")
    response = requests.get(uri.replace("limit=5", "limit=500"), headers=headers, timeout=10)
    body = assert_imsx(response, 401, "unauthorisedrequest")
    assert "signature" in body["imsx_description"]


def test_oauth1_wrong_secret_is_refused(srv1):
    uri, headers = signed(srv1.api_url + "/orgs", secret="not-the-secret")
    assert_imsx(requests.get(uri, headers=headers, timeout=10), 401, "unauthorisedrequest")


def test_oauth1_nonce_is_used_once(srv1):
    uri, headers = signed(srv1.api_url + "/orgs")
    assert requests.get(uri, headers=headers, timeout=10).status_code == 200
    again = requests.get(uri, headers=headers, timeout=10)
    body = assert_imsx(again, 401, "unauthorisedrequest")
    assert "nonce" in body["imsx_description"]


def test_oauth1_stale_timestamp_is_refused(srv1):
    uri, headers = signed(srv1.api_url + "/orgs", timestamp=str(int(time.time()) - 3600))
    body = assert_imsx(requests.get(uri, headers=headers, timeout=10), 401, "unauthorisedrequest")
    assert "timestamp" in body["imsx_description"]


def test_oauth1_other_methods_and_credentials_are_refused(srv1):
    uri, headers = signed(srv1.api_url + "/orgs", method=SIGNATURE_HMAC_SHA1)
    assert requests.get(uri, headers=headers, timeout=10).status_code == 401
    bearer = {"Authorization": "Bearer anything"}
    assert requests.get(srv1.api_url + "/orgs", headers=bearer, timeout=10).status_code == 401
    assert requests.get(srv1.api_url + "/orgs", timeout=10).status_code == 401
    other = Client("another-key", client_secret=SECRET, signature_method=SIGNATURE_HMAC_SHA256)
    uri, headers, _ = other.sign(srv1.api_url + "/orgs", http_method="GET")
    assert requests.get(uri, headers=headers, timeout=10).status_code == 401
    token = requests.post(
        srv1.token_url,
        data={"grant_type": "client_credentials"},
        auth=(CLIENT_ID, SECRET),
        timeout=10,
    )
    assert token.status_code == 404


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


def test_fail_next_by_path_prefix(http, srv):
    srv.fail_next(503, 2, "/users")
    assert get(http, srv, "/orgs").status_code == 200
    assert_imsx(get(http, srv, "/users"), 503, "internal_server_error")
    assert_imsx(get(http, srv, "/users/usr-000001"), 503, "internal_server_error")
    assert get(http, srv, "/users").status_code == 200
    srv.fail_next(400, 1, "/oauth/token")
    assert requests.post(srv.token_url, auth=(CLIENT_ID, SECRET), timeout=10).status_code == 400
    srv.fail_next(500)
    srv.clear_faults()
    assert get(http, srv, "/orgs").status_code == 200


def test_rate_limit_next(http, srv):
    srv.rate_limit_next(2, retry_after=7)
    first = get(http, srv, "/orgs")
    assert_imsx(first, 429, "server_busy")
    assert first.headers["Retry-After"] == "7"
    assert get(http, srv, "/orgs").status_code == 429
    assert get(http, srv, "/orgs").status_code == 200


# --------------------------------------------------------------------------------------------
# Changes between syncs
# --------------------------------------------------------------------------------------------


def test_update_add_mark_deleted_and_remove_stamp_the_clock(http, srv):
    srv.clock = lambda: 1_800_000_000.0
    updated = srv.update("users", "usr-000001", {"email": "new@example.org"})
    assert updated["email"] == "new@example.org"
    assert updated["dateLastModified"] == "2027-01-15T08:00:00.000Z"
    srv.clock = lambda: 1_800_000_060.0
    srv.add(
        "users",
        {
            "sourcedId": "usr-900000",
            "username": "new.student",
            "givenName": "New",
            "familyName": "Student",
            "role": "student",
            "enabledUser": True,
            "orgs": [{"href": f"{API_PREFIX}/orgs/org-000002", "sourcedId": "org-000002",
                      "type": "org"}],
        },
    )  # fmt: skip
    deleted = srv.mark_deleted("enrollments", "enr-0000001")
    assert deleted["status"] == "tobedeleted"
    # The clock did not move: the next stamp is still later than the last one.
    assert deleted["dateLastModified"] == "2027-01-15T08:01:00.001Z"
    served = get(http, srv, "/users/usr-900000").json()["user"]
    assert served["status"] == "active" and served["dateLastModified"].startswith("2027-01-15")
    assert served["orgs"][0]["href"] == f"{srv.api_url}/orgs/org-000002"
    delta = get(http, srv, "/enrollments", filter="dateLastModified>'2027-01-01T00:00:00Z'")
    assert [(r["sourcedId"], r["status"]) for r in delta.json()["enrollments"]] == [
        ("enr-0000001", "tobedeleted")
    ]
    srv.remove("users", "usr-000002")
    assert get(http, srv, "/users/usr-000002").status_code == 404
    with pytest.raises(KeyError):
        srv.update("users", "usr-000002", {"email": "x"})
    with pytest.raises(ValueError):
        srv.add("users", {"sourcedId": "usr-000001"})
    with pytest.raises(ValueError):
        srv.update("users", "usr-000001", {"sourcedId": "other"})
    with pytest.raises(ValueError):
        srv.get("people", "usr-000001")


def test_apply_next_day(srv):
    later = next_day(demo_district(), seed=2, add=0.03, update=0.03, archive=0.03)
    srv.clock = lambda: 1_800_000_000.0
    counts = srv.apply(oneroster_data_from_district(later))
    assert counts["added"] >= 9 and counts["deleted"] >= 9 and counts["updated"] >= 9
    gone = set(demo_district().users["sourcedId"]) - set(later.users["sourcedId"])
    users = {u["sourcedId"]: u for u in srv.objects("users")}
    assert {k for k, u in users.items() if u["status"] == "tobedeleted"} == gone
    assert set(users) == set(demo_district().users["sourcedId"]) | set(later.users["sourcedId"])
    changed = [u for u in users.values() if u["dateLastModified"] != BASE_STAMP]
    assert all(u["dateLastModified"] >= "2027-01-15T08:00:00.000Z" for u in changed)
    assert srv.apply(oneroster_data_from_district(later)) == {
        "added": 0,
        "updated": 0,
        "deleted": 0,
    }


# --------------------------------------------------------------------------------------------
# Lifecycle and command line
# --------------------------------------------------------------------------------------------


def test_stop_is_idempotent_and_closes_the_port(data):
    server = serve(data)
    base = server.start()
    assert server.start() == base
    server.stop()
    server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.post(base + "/oauth/token", timeout=5)


def test_constructor_checks(data):
    with pytest.raises(ValueError):
        OneRosterServer(data, client_id="a", client_secret="")
    with pytest.raises(ValueError):
        serve(data, auth="basic")
    with pytest.raises(ValueError):
        serve(data, paging="cursor")


def test_command_line_serves_until_sigterm():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "include.sis_sync.simulators.oneroster", "--port", "0"]
    with subprocess.Popen(
        [*command, "--client-id", CLIENT_ID, "--client-secret", SECRET],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            line = process.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+)/ims/oneroster/v1p1", line)
            assert match, line
            assert SECRET not in line
            base = match.group(1)
            token = requests.post(
                base + "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(CLIENT_ID, SECRET),
                timeout=10,
            ).json()["access_token"]
            response = requests.get(
                base + API_PREFIX + "/orgs",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert [o["sourcedId"] for o in response.json()["orgs"]] == [
                "org-000001",
                "org-000002",
                "org-000003",
            ]
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=15)
            assert process.returncode == 0, err
            assert SECRET not in out + err
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
