"""The Clever client over real HTTP against the local Clever server (demo district).

Waits go through an injected ``sleep`` that only records, so retries cost no time.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import pytest
import requests

from include.sis_sync.providers.clever import (
    CleverAuthError,
    CleverClient,
    CleverError,
    CleverEventsUnavailable,
)
from include.sis_sync.simulators.clever import (
    CleverData,
    CleverSimulator,
)

pytestmark = pytest.mark.timeout(60)

TOKEN = "client-secret-token-987"


@pytest.fixture
def sim(data: CleverData):
    with CleverSimulator(data, TOKEN) as simulator:
        yield simulator


class Sleeps(list):
    """An injected sleep: records each wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sim: CleverSimulator, sleeps: Sleeps):
    with CleverClient(sim.base_url, TOKEN, limit=7, sleep=sleeps, timeout=10) as c:
        yield c


def api_calls(sim: CleverSimulator, path: str) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["path"] == path]


# --------------------------------------------------------------------------------------------
# Paging
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["users", "sections", "schools", "terms", "courses"])
def test_paging_reads_every_record_once(client, sim, data, resource):
    records = list(getattr(client, resource)())
    expected = data.resources()[resource]
    assert [r["id"] for r in records] == sorted(expected)
    assert {r["id"]: r for r in records} == expected
    calls = api_calls(sim, f"/v3.0/{resource}")
    assert len(calls) == -(-len(expected) // 7)
    assert calls[0]["query"] == {"limit": "7"}
    assert all(c["query"]["limit"] == "7" for c in calls)
    assert [c["query"].get("starting_after") for c in calls[1:]] == [
        r["id"] for r in records[6::7][: len(calls) - 1]
    ]


def test_role_filter_is_kept_across_pages(client, sim, data):
    students = list(client.users(role="student"))
    assert [u["id"] for u in students] == sorted(
        i for i, u in data.users.items() if "student" in u["roles"]
    )
    assert all(c["query"]["role"] == "student" for c in api_calls(sim, "/v3.0/users"))


def test_district_and_count(client, data):
    assert client.district() == data.district
    assert client.count("users") == len(data.users)
    assert client.count("users", role="teacher") == sum(
        "teacher" in u["roles"] for u in data.users.values()
    )


def test_multi_role_users_come_back_once_with_every_role(client, data):
    users = list(client.users())
    ids = [u["id"] for u in users]
    assert len(ids) == len(set(ids)) == len(data.users)
    multi = [u for u in users if {"teacher", "staff"} <= set(u["roles"])]
    assert len(multi) == 2
    for user in multi:
        assert user["roles"]["teacher"]["sis_id"] == user["roles"]["staff"]["staff_id"]
    teachers = {u["id"] for u in client.users(role="teacher")}
    staff = {u["id"] for u in client.users(role="staff")}
    assert {u["id"] for u in multi} <= teachers & staff


def test_base_url_with_version_suffix_is_tolerated(sim, sleeps, data):
    with CleverClient(sim.base_url + "/v3.0/", TOKEN, sleep=sleeps) as client:
        assert len(list(client.schools())) == len(data.schools)
    assert api_calls(sim, "/v3.0/schools")[0]["query"] == {"limit": "10000"}


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="limit"):
        CleverClient("https://api.clever.com", TOKEN, limit=10001)
    with pytest.raises(ValueError, match="token"):
        CleverClient("https://api.clever.com", "")
    with pytest.raises(ValueError, match="http"):
        CleverClient("api.clever.com", TOKEN)


# --------------------------------------------------------------------------------------------
# Retries and failures
# --------------------------------------------------------------------------------------------


def test_rate_limit_waits_until_the_reset_header(client, sim, sleeps, data):
    sim.rate_limit_next(1, reset_in=30, path_prefix="/users")
    users = list(client.users())
    assert len(users) == len(data.users)
    assert len(sleeps) == 1 and 28 <= sleeps[0] <= 31
    assert [c["status"] for c in api_calls(sim, "/v3.0/users")][:2] == [429, 200]


def test_rate_limit_falls_back_to_retry_after(client, sim, sleeps):
    sim.fail_next(429, path_prefix="/schools", headers={"Retry-After": "7"})
    assert len(list(client.schools())) == 2
    assert sleeps == [7.0]


def test_server_errors_are_retried_with_exponential_backoff(sim, sleeps, data, caplog):
    sim.fail_next(503, 2, path_prefix="/sections")
    sim.fail_next(500, 1, path_prefix="/terms")
    client = CleverClient(sim.base_url, TOKEN, backoff=0.5, sleep=sleeps)
    with caplog.at_level(logging.WARNING):
        assert len(list(client.sections())) == len(data.sections)
        assert len(list(client.terms())) == len(data.terms)
    assert sleeps == [0.5, 1.0, 0.5]
    assert "HTTP 503" in caplog.text and TOKEN not in caplog.text


def test_retries_are_bounded(sim, sleeps):
    sim.fail_next(502, 10)
    client = CleverClient(sim.base_url, TOKEN, max_retries=3, backoff=1, sleep=sleeps)
    with pytest.raises(CleverError, match=r"HTTP 502 for GET /v3.0/users on all 4 attempts"):
        list(client.users())
    assert sleeps == [1, 2, 4]
    assert len(sim.requests) == 4


def test_connection_refused_fails_after_bounded_retries(sleeps, caplog):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = CleverClient(
        f"http://127.0.0.1:{port}", TOKEN, max_retries=2, backoff=2, sleep=sleeps, timeout=5
    )
    with caplog.at_level(logging.WARNING), pytest.raises(CleverError) as failure:
        list(client.schools())
    assert "after 3 attempts" in str(failure.value) and "GET /v3.0/schools" in str(failure.value)
    assert sleeps == [2, 4]
    assert TOKEN not in str(failure.value) and TOKEN not in caplog.text


def test_wrong_token_is_a_clear_auth_error_without_retry(sim, sleeps):
    client = CleverClient(sim.base_url, "not-the-token-" + TOKEN[::-1], sleep=sleeps)
    with pytest.raises(CleverAuthError) as failure:
        list(client.users())
    message = str(failure.value)
    assert "rejected the district token (HTTP 401) for GET /v3.0/users" in message
    assert "password" in message
    assert TOKEN[::-1] not in message and TOKEN not in message
    assert failure.value.status == 401
    assert len(sim.requests) == 1 and sleeps == []


def test_403_is_an_auth_error_too(client, sim):
    sim.fail_next(403)
    with pytest.raises(CleverAuthError, match=r"HTTP 403"):
        client.district()


@pytest.mark.parametrize(("status", "retried"), [(400, False), (404, False), (501, False)])
def test_other_client_errors_name_method_path_and_status(client, sim, sleeps, status, retried):
    sim.fail_next(status, path_prefix="/courses")
    with pytest.raises(CleverError) as failure:
        list(client.courses())
    assert f"HTTP {status} for GET /v3.0/courses" in str(failure.value)
    assert not isinstance(failure.value, CleverAuthError)
    assert failure.value.status == status and sleeps == []


def test_limit_over_the_maximum_is_reported(client):
    with pytest.raises(CleverError, match=r"HTTP 413 .*limit may not exceed 10000"):
        list(client.list("users", limit=20000))


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


def test_events_from_a_checkpoint_after_mutations(client, sim, data):
    assert client.newest_event_id() is None
    warmup = sorted(data.users)[0]
    sim.update_user(warmup, {"email": "warmup@example.org"})
    checkpoint = client.newest_event_id()
    assert checkpoint == sim.latest_event_id()

    section_id = sorted(data.sections)[0]
    old_students = data.sections[section_id]["students"]
    new_id = sim.add_user({"name": {"first": "A", "last": "B"}, "roles": {"teacher": {}}})
    sim.update_section(section_id, {"teachers": [new_id]})
    sim.update_user(new_id, {"email": "ab@example.org"})
    sim.delete_section(section_id)
    for number in range(12):  # more than one page at limit 7
        sim.update_user(sorted(data.users)[number + 1], {"email": f"n{number}@example.org"})

    events = list(client.events(checkpoint))
    types = [e["type"] for e in events]
    assert types[:4] == ["users.created", "sections.updated", "users.updated", "sections.deleted"]
    assert types[4:] == ["users.updated"] * 12
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and checkpoint < ids[0]
    assert events[0]["data"]["object"]["id"] == new_id
    assert (
        events[1]["data"]["previous_attributes"]["teachers"]
        == data.sections[section_id]["teachers"]
    )
    assert events[3]["data"]["object"]["students"] == old_students
    assert len(api_calls(sim, "/v3.0/events")) >= 3  # paged

    assert client.newest_event_id(checkpoint) == ids[-1] == sim.latest_event_id()
    assert client.newest_event_id(ids[-1]) == ids[-1]
    assert list(client.events(ids[-1])) == []
    assert [e["id"] for e in client.events(None)] == [checkpoint, *ids]
    users_only = list(client.events(checkpoint, record_types=["sections"]))
    assert [e["type"] for e in users_only] == ["sections.updated", "sections.deleted"]


def test_newest_event_id_uses_only_documented_parameters(client, sim, data):
    for user_id in sorted(data.users)[:9]:
        sim.update_user(user_id, {"email": f"e.{user_id}@example.org"})
    assert client.newest_event_id() == sim.latest_event_id()
    for call in api_calls(sim, "/v3.0/events"):
        assert set(call["query"]) <= {"limit", "starting_after"}


def test_events_disabled_raise_events_unavailable(data, sleeps):
    with CleverSimulator(data, TOKEN, events_enabled=False) as sim:
        client = CleverClient(sim.base_url, TOKEN, sleep=sleeps)
        for checkpoint in (None, "6a6d37000000000000000001"):
            with pytest.raises(CleverEventsUnavailable) as failure:
                list(client.events(checkpoint))
            assert failure.value.reason == "disabled"
            assert "Enable events" in str(failure.value)
        with pytest.raises(CleverEventsUnavailable):
            client.newest_event_id()
        assert len(list(client.schools())) == len(data.schools)  # the Data API still works


def test_checkpoint_outside_the_window_raises_events_unavailable(client, sim, data):
    for user_id in sorted(data.users)[:4]:
        sim.update_user(user_id, {"email": f"old.{user_id}@example.org"})
    ids = [e["id"] for e in sim.events]
    sim.expire_events_before(ids[2])
    with pytest.raises(CleverEventsUnavailable) as failure:
        list(client.events(ids[0]))
    assert failure.value.reason == "checkpoint_expired"
    assert ids[0] in str(failure.value) and "full sync" in str(failure.value)
    # The newest id is still found: the whole window is read instead.
    assert client.newest_event_id(ids[0]) == ids[-1]
    assert [e["id"] for e in client.events(ids[2])] == ids[3:]


# --------------------------------------------------------------------------------------------
# Defensive behaviour (a fake session stands in for odd servers)
# --------------------------------------------------------------------------------------------


class FakeSession:
    """Answers GETs from a list of (status, body, headers) and records the URLs asked."""

    def __init__(self, answers: list[tuple[int, Any, dict[str, str]]]) -> None:
        self.answers = list(answers)
        self.urls: list[str] = []
        self.headers: list[dict[str, str]] = []

    def get(self, url, params=None, headers=None, timeout=None):
        request = requests.Request("GET", url, params=params).prepare()
        self.urls.append(request.url)
        self.headers.append(dict(headers or {}))
        status, body, extra = self.answers.pop(0)
        response = requests.Response()
        response.status_code = status
        response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response.headers.update(extra)
        return response

    def close(self) -> None:
        pass


def _page(ids: list[str], next_uri: str | None) -> dict[str, Any]:
    links = [{"rel": "self", "uri": "/v3.0/users"}]
    if next_uri:
        links.append({"rel": "next", "uri": next_uri})
    rows = [{"data": {"id": i, "extra": {"x": 1}}, "uri": f"/x/{i}"} for i in ids]
    return {"data": rows, "links": links, "paging": {"unknown": True}}


def test_unknown_keys_are_tolerated_and_the_token_is_only_a_header(sleeps):
    session = FakeSession(
        [
            (200, _page(["a1", "a2"], "/v3.0/users?limit=2&starting_after=a2"), {}),
            (200, _page(["a3"], None), {}),
        ]
    )
    client = CleverClient("https://clever.test", TOKEN, limit=2, session=session, sleep=sleeps)
    assert [u["id"] for u in client.users()] == ["a1", "a2", "a3"]
    assert session.urls == [
        "https://clever.test/v3.0/users?limit=2",
        "https://clever.test/v3.0/users?limit=2&starting_after=a2",
    ]
    assert all(h["Authorization"] == f"Bearer {TOKEN}" for h in session.headers)
    assert all(TOKEN not in url for url in session.urls) and TOKEN not in repr(client)


def test_next_link_to_another_host_is_refused(sleeps):
    session = FakeSession([(200, _page(["a1"], "https://evil.test/v3.0/users?x=1"), {})])
    client = CleverClient("https://clever.test", TOKEN, session=session, sleep=sleeps)
    with pytest.raises(CleverError, match="another host"):
        list(client.users())
    assert len(session.urls) == 1


def test_paging_that_goes_backwards_or_loops_fails(sleeps):
    first = _page(["b1", "b2"], "/v3.0/users?starting_after=b2")
    backwards = FakeSession([(200, first, {}), (200, _page(["a"], None), {})])
    with pytest.raises(CleverError, match="backwards"):
        list(CleverClient("https://clever.test", TOKEN, session=backwards).users())
    looping = FakeSession(
        [(200, _page([], "/v3.0/users?limit=1"), {}), (200, _page([], "/v3.0/users?limit=1"), {})]
    )
    with pytest.raises(CleverError, match="repeated"):
        list(CleverClient("https://clever.test", TOKEN, session=looping).users())


def test_html_answer_is_explained(sleeps):
    session = FakeSession([(200, b"<html>nope</html>", {"Content-Type": "text/html"})])
    client = CleverClient("https://clever.test", TOKEN, session=session, sleep=sleeps)
    with pytest.raises(CleverError, match=r"text/html, not JSON.*district-app token"):
        list(client.schools())


def test_remaining_zero_waits_for_the_reset_before_the_next_request(sleeps):
    now = 1_900_000_000.0
    exhausted = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(now + 12))}
    session = FakeSession(
        [
            (200, _page(["a1"], "/v3.0/users?starting_after=a1"), exhausted),
            (200, _page(["a2"], None), {"X-RateLimit-Remaining": "1199"}),
        ]
    )
    client = CleverClient(
        "https://clever.test", TOKEN, session=session, sleep=sleeps, clock=lambda: now
    )
    assert [u["id"] for u in client.users()] == ["a1", "a2"]
    assert sleeps == [12.0]
