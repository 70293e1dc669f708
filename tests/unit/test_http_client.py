"""The HTTP base both SIS clients share (``providers/http.py``), over real HTTP on 127.0.0.1.

OAuth 1.0a signing is checked against RFC 5849's own example; credentials, non-JSON answers
and rate-limit waits against the local Clever and OneRoster servers (a small forwarding server
in front of them cuts a JSON body short). Waits go through an injected ``sleep`` that records.
"""

from __future__ import annotations

import copy
import email.utils
import threading
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from oauthlib.oauth1.rfc5849 import signature as oauth1_signature

from include.sis_sync.providers.clever import CleverAuthError, CleverClient, CleverError
from include.sis_sync.providers.errors import SISAuthError
from include.sis_sync.providers.http import (
    MAX_BACKOFF,
    MAX_RATE_LIMIT_WAIT,
    backoff_wait,
    oauth1_signer,
    rate_limit_wait,
)
from include.sis_sync.providers.oneroster_rest import (
    API_PATH,
    OneRosterAuthError,
    OneRosterClient,
    OneRosterError,
)
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.clever import CleverData, CleverSimulator
from include.sis_sync.simulators.oneroster import (
    OneRosterData,
    OneRosterServer,
    oneroster_data_from_district,
)

pytestmark = pytest.mark.timeout(60)

TOKEN = "clever-district-token-4711"
CLIENT_ID = "http-test-client"
SECRET = "http+secret/with&odd chars"
NOW = 1_900_000_000.0


class Sleeps(list):
    """An injected sleep: records each wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class CountingSession(requests.Session):
    """A real session that keeps every request it sends (to count them, read their headers)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        return super().send(request, **kwargs)


@cache
def _oneroster_data() -> OneRosterData:
    return oneroster_data_from_district(generate_district("demo"))


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def clever(data: CleverData) -> Iterator[CleverSimulator]:
    with CleverSimulator(data, TOKEN) as simulator:
        yield simulator


def oneroster(**kw: Any) -> OneRosterServer:
    kw.setdefault("client_id", CLIENT_ID)
    kw.setdefault("client_secret", SECRET)
    return OneRosterServer(copy.deepcopy(_oneroster_data()), **kw)


class CuttingServer:
    """A real HTTP server on 127.0.0.1 that passes every request on to ``upstream`` and cuts
    the body of a 200 under ``cut_prefix`` in half: valid JSON broken mid-way, as a dropped
    connection behind a load balancer or a buggy gateway delivers it. Keeps the whole bodies
    it cut in ``cut``."""

    def __init__(self, upstream: str, cut_prefix: str) -> None:
        self.upstream = upstream
        self.cut_prefix = cut_prefix
        self.cut: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                answer = requests.request(
                    self.command,
                    outer.upstream + self.path,
                    headers=headers,
                    data=body,
                    timeout=10,
                    allow_redirects=False,
                )
                content = answer.content
                if answer.status_code == 200 and urlsplit(self.path).path.startswith(
                    outer.cut_prefix
                ):
                    outer.cut.append(content)
                    content = content[: len(content) // 2]
                self.send_response(answer.status_code)
                for name in ("Content-Type", "X-Total-Count", "Link"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(content)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CuttingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# OAuth 1.0a signing
# --------------------------------------------------------------------------------------------


def _oauth_fields(header: str | bytes) -> dict[str, str]:
    """The ``oauth_*`` parameters of an ``Authorization: OAuth`` header, decoded."""
    text = header.decode() if isinstance(header, bytes) else header
    params = oauth1_signature.collect_parameters(
        headers={"Authorization": text}, exclude_oauth_signature=False
    )
    return dict(params)


def _signed_header(auth: Any, url: str) -> dict[str, str]:
    prepared = requests.Request("GET", url, auth=auth).prepare()
    return _oauth_fields(prepared.headers["Authorization"])


def test_oauth1_signature_equals_the_rfc_5849_example():
    """RFC 5849 section 1.2, the photo request. Its ``oauth_timestamp`` is 137131202 (137131201
    is the token request's, with another nonce), and it sends no ``oauth_version``: with both,
    oauthlib's own signature functions give the published value too (checked below)."""
    url = "http://photos.example.net/photos?file=vacation.jpg&size=original"
    expected = "MdpQcU8iPSUjWoN/UDMsK2sui9I="
    oauth = [
        ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
        ("oauth_token", "nnch734d00sl2jdk"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "137131202"),
        ("oauth_nonce", "chapoH"),
    ]
    query = oauth1_signature.collect_parameters(uri_query=urlsplit(url).query)
    base = oauth1_signature.signature_base_string(
        "GET",
        oauth1_signature.base_string_uri(url),
        oauth1_signature.normalize_parameters(oauth + query),
    )
    client = SimpleNamespace(
        client_secret="kd94hf93k423kf44", resource_owner_secret="pfkkdhi9sl3r4s00"
    )
    assert oauth1_signature.sign_hmac_sha1_with_client(base, client) == expected

    signer = oauth1_signer(
        "dpf43f3p2l4k3l03",
        "kd94hf93k423kf44",
        token="nnch734d00sl2jdk",
        token_secret="pfkkdhi9sl3r4s00",
        signature_method="HMAC-SHA1",
        version=None,
        nonce="chapoH",
        timestamp="137131202",
    )
    fields = _signed_header(signer, url)
    assert fields["oauth_signature"] == expected
    assert {k: v for k, v in fields.items() if k != "oauth_signature"} == dict(oauth)


def test_oauth1_signer_defaults_hmac_sha256_fresh_nonce_and_the_injected_clock():
    signer = oauth1_signer(CLIENT_ID, SECRET, clock=lambda: NOW + 0.7)
    url = "http://127.0.0.1:9/ims/oneroster/v1p1/users?limit=5&filter=role%3D%27student%27"
    first, second = _signed_header(signer, url), _signed_header(signer, url)
    assert first["oauth_signature_method"] == "HMAC-SHA256"
    assert first["oauth_consumer_key"] == CLIENT_ID and "oauth_token" not in first
    assert first["oauth_version"] == "1.0"
    assert first["oauth_timestamp"] == second["oauth_timestamp"] == str(int(NOW))
    assert first["oauth_nonce"] != second["oauth_nonce"]
    signed = type("Signed", (), {})()
    signed.uri = urlsplit(url)._replace(query="").geturl()
    signed.http_method = "GET"
    signed.signature = first["oauth_signature"]
    signed.params = [
        *oauth1_signature.collect_parameters(uri_query=urlsplit(url).query),
        *((k, v) for k, v in first.items() if k != "oauth_signature"),
    ]
    assert oauth1_signature.verify_hmac_sha256(signed, client_secret=SECRET)


def test_oneroster_oauth1_retries_are_signed_afresh_with_the_clients_clock(sleeps):
    session = CountingSession()
    with (
        oneroster(auth="oauth1", auth_clock=lambda: NOW) as server,
        OneRosterClient(
            server.base_url,
            CLIENT_ID,
            SECRET,
            auth="oauth1",
            session=session,
            sleep=sleeps,
            clock=lambda: NOW,
            timeout=10,
        ) as client,
    ):
        server.rate_limit_next(1, retry_after=2)
        assert len(list(client.orgs())) == 3
    fields = [_oauth_fields(r.headers["Authorization"]) for r in session.sent]
    assert len(fields) == 2 and sleeps == [2.0]
    assert {f["oauth_timestamp"] for f in fields} == {str(int(NOW))}
    assert fields[0]["oauth_nonce"] != fields[1]["oauth_nonce"]
    assert {f["oauth_signature_method"] for f in fields} == {"HMAC-SHA256"}
    assert [r["status"] for r in server.requests] == [429, 200]


# --------------------------------------------------------------------------------------------
# Wrong credentials: the auth error after exactly one request
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["oauth2", "oauth1"])
def test_wrong_oneroster_secret_fails_after_one_request(sleeps, auth):
    session = CountingSession()
    wrong = "not-the-" + SECRET
    with (
        oneroster(auth=auth) as server,
        OneRosterClient(
            server.base_url, CLIENT_ID, wrong, auth=auth, session=session, sleep=sleeps
        ) as client,
        pytest.raises(OneRosterAuthError) as caught,
    ):
        list(client.users())
    assert isinstance(caught.value, SISAuthError) and caught.value.status == 401
    assert len(session.sent) == 1 and len(server.requests) == 1 and sleeps == []
    assert wrong not in str(caught.value) and SECRET not in str(caught.value)


def test_oneroster_403_on_an_api_call_is_not_retried_nor_refreshed(sleeps):
    session = CountingSession()
    with (
        oneroster() as server,
        OneRosterClient(
            server.base_url, CLIENT_ID, SECRET, session=session, sleep=sleeps
        ) as client,
    ):
        server.fail_next(403, 5, "/users")
        with pytest.raises(OneRosterAuthError, match="HTTP 403") as caught:
            list(client.users())
        assert isinstance(caught.value, SISAuthError)
        assert [(r["path"], r["status"]) for r in server.requests] == [
            ("/oauth/token", 200),
            (f"{API_PATH}/users", 403),
        ]
        assert server.tokens_issued == 1 and sleeps == []


def test_token_endpoint_refusing_the_scope_is_an_auth_error_at_once(sleeps):
    with (
        oneroster() as server,
        OneRosterClient(
            server.base_url, CLIENT_ID, SECRET, scope="other.scope", sleep=sleeps
        ) as client,
        pytest.raises(OneRosterAuthError, match="HTTP 400 invalid_scope"),
    ):
        list(client.orgs())
    assert len(server.requests) == 1 and sleeps == []


def test_wrong_clever_token_fails_after_one_request(clever, sleeps):
    session = CountingSession()
    wrong = "revoked-" + TOKEN
    client = CleverClient(clever.base_url, wrong, session=session, sleep=sleeps)
    with pytest.raises(CleverAuthError) as caught:
        list(client.users())
    assert isinstance(caught.value, SISAuthError) and isinstance(caught.value, CleverError)
    assert caught.value.status == 401
    assert len(session.sent) == 1 and len(clever.requests) == 1 and sleeps == []
    assert wrong not in str(caught.value)
    clever.fail_next(403, 3)
    with pytest.raises(CleverAuthError, match="HTTP 403"):
        CleverClient(clever.base_url, TOKEN, sleep=sleeps).get_record("users", "x")
    assert len(clever.requests) == 2 and sleeps == []


# --------------------------------------------------------------------------------------------
# A 200 that is not JSON: say what came back, never the body
# --------------------------------------------------------------------------------------------


def _assert_says_what_came_back(message: str, cut: bytes, provider: str, path: str) -> None:
    half = len(cut) // 2
    assert f"{provider} answered GET {path}: HTTP 200 with Content-Type application/json" in (
        message
    )
    assert f": {half} bytes that are not valid JSON (" in message
    assert "line 1 column" in message
    assert "token" not in message  # not blamed on the credentials
    body = cut[:half].decode()
    # No piece of the body: its last 20 characters, or any longer quoted value (names, ids,
    # e-mail addresses, links) in it.
    assert body[-20:] not in message
    values = {v for v in body.split('"')[1::2] if len(v) >= 10}
    assert values and not [v for v in values if v in message]


def test_clever_non_json_200_says_status_type_size_and_complaint(clever, sleeps):
    with CuttingServer(clever.base_url, "/v3.0/users") as cutting:
        client = CleverClient(cutting.base_url, TOKEN, limit=50, sleep=sleeps, timeout=10)
        with pytest.raises(CleverError) as caught:
            list(client.users())
        assert len(list(client.schools())) == 2  # the rest of the API passes untouched
    message = str(caught.value)
    _assert_says_what_came_back(message, cutting.cut[0], "Clever", "/v3.0/users")
    assert not isinstance(caught.value, CleverAuthError) and caught.value.status == 200
    assert TOKEN not in message and sleeps == []


def test_oneroster_non_json_200_says_status_type_size_and_complaint(sleeps):
    with (
        oneroster() as server,
        CuttingServer(server.base_url, f"{API_PATH}/users") as cutting,
        OneRosterClient(cutting.base_url, CLIENT_ID, SECRET, limit=40, sleep=sleeps) as client,
    ):
        with pytest.raises(OneRosterError) as caught:
            list(client.users())
        assert len(list(client.orgs())) == 3
    message = str(caught.value)
    _assert_says_what_came_back(message, cutting.cut[0], "OneRoster", f"{API_PATH}/users")
    assert caught.value.status == 200 and SECRET not in message


def test_oneroster_token_endpoint_non_json_200_is_named(sleeps):
    with (
        oneroster() as server,
        CuttingServer(server.base_url, "/oauth/token") as cutting,
        OneRosterClient(cutting.base_url, CLIENT_ID, SECRET, sleep=sleeps) as client,
        pytest.raises(OneRosterError) as caught,
    ):
        list(client.orgs())
    message = str(caught.value)
    assert "OneRoster answered POST /oauth/token: HTTP 200 with Content-Type" in message
    assert "bytes that are not valid JSON" in message
    token = cutting.cut[0].decode().split('"access_token":"')[1].split('"')[0]
    assert token[: len(token) // 2] not in message and SECRET not in message


# --------------------------------------------------------------------------------------------
# The shared retry wait
# --------------------------------------------------------------------------------------------


def _date(moment: float) -> str:
    return email.utils.formatdate(moment, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "attempt", "expected"),
    [
        ({"X-RateLimit-Reset": str(int(NOW + 30)), "Retry-After": "7"}, 0, 30.0),
        ({"X-RateLimit-Reset": str(int(NOW - 5)), "Retry-After": "7"}, 0, 7.0),  # reset past
        ({"X-RateLimit-Reset": "soon", "Retry-After": "7"}, 0, 7.0),
        ({"Retry-After": "7"}, 3, 7.0),
        ({"Retry-After": "0"}, 3, 0.0),
        ({"Retry-After": _date(NOW + 45)}, 0, 45.0),
        ({"Retry-After": _date(NOW - 45)}, 2, 4.0),  # a date past: the backoff
        ({"Retry-After": "later"}, 1, 2.0),
        ({}, 2, 4.0),
        ({"X-RateLimit-Reset": str(int(NOW + 3600))}, 0, MAX_RATE_LIMIT_WAIT),
        ({"Retry-After": "900"}, 0, MAX_RATE_LIMIT_WAIT),
        ({"Retry-After": _date(NOW + 900)}, 0, MAX_RATE_LIMIT_WAIT),
        ({}, 10, MAX_BACKOFF),
    ],
)
def test_rate_limit_wait(headers, attempt, expected):
    got = rate_limit_wait(
        requests.structures.CaseInsensitiveDict(headers), attempt=attempt, backoff=1.0, now=NOW
    )
    assert got == pytest.approx(expected)


def test_backoff_doubles_and_is_capped():
    assert [backoff_wait(0.5, n) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_wait(1.0, 6) == backoff_wait(1.0, 30) == MAX_BACKOFF


def test_clever_rate_limit_waits_through_the_client(clever, sleeps):
    client = CleverClient(clever.base_url, TOKEN, sleep=sleeps, clock=lambda: NOW)
    clever.fail_next(429, path_prefix="/schools", headers={"Retry-After": _date(NOW + 45)})
    clever.fail_next(429, path_prefix="/terms", headers={"X-RateLimit-Reset": str(int(NOW + 600))})
    clever.fail_next(503, 2, path_prefix="/courses")
    assert len(list(client.schools())) == 2
    list(client.terms())
    list(client.courses())
    assert sleeps == [45.0, MAX_RATE_LIMIT_WAIT, 1.0, 2.0]


def test_oneroster_rate_limit_waits_through_the_client(sleeps):
    with (
        oneroster() as server,
        OneRosterClient(
            server.base_url, CLIENT_ID, SECRET, sleep=sleeps, clock=lambda: NOW
        ) as client,
    ):
        server.fail_next(429, 1, "/orgs", headers={"Retry-After": _date(NOW + 30)})
        server.fail_next(429, 1, "/courses", headers={"X-RateLimit-Reset": str(int(NOW + 9))})
        server.fail_next(429, 1, "/classes", headers={"Retry-After": "3600"})
        list(client.orgs())
        list(client.courses())
        list(client.classes())
    assert sleeps == [30.0, 9.0, MAX_RATE_LIMIT_WAIT]


def test_retries_run_out_with_the_last_answer_named(clever, sleeps):
    clever.rate_limit_next(4, reset_in=5, path_prefix="/schools")
    client = CleverClient(clever.base_url, TOKEN, max_retries=3, sleep=sleeps)
    with pytest.raises(CleverError, match=r"rate limited \(429\) for GET /v3.0/schools on all 4"):
        list(client.schools())
    assert len(sleeps) == 3 and all(0 < s <= 6 for s in sleeps)


# --------------------------------------------------------------------------------------------
# One Clever record by id
# --------------------------------------------------------------------------------------------


def test_clever_get_record(clever, data, sleeps):
    client = CleverClient(clever.base_url, TOKEN, sleep=sleeps)
    user_id = sorted(data.users)[3]
    assert client.get_record("users", user_id) == data.users[user_id]
    school_id = sorted(data.schools)[0]
    assert client.get_record("schools", school_id) == data.schools[school_id]
    assert client.get_record("users", "0" * 24) is None
    assert client.get_record("sections", "no/such id") is None
    assert [r["path"] for r in clever.requests] == [
        f"/v3.0/users/{user_id}",
        f"/v3.0/schools/{school_id}",
        "/v3.0/users/" + "0" * 24,
        "/v3.0/sections/no%2Fsuch%20id",
    ]
    with pytest.raises(ValueError):
        client.get_record("../users", user_id)
    clever.fail_next(500, 1, path_prefix="/users")
    assert client.get_record("users", user_id) == data.users[user_id]
    assert sleeps == [1.0]
