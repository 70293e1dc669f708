"""The local Clever server answers as Clever's published v3.0 definitions say.

Every response shape is validated with jsonschema against Clever's own Swagger 2.0 files
(``shared/reference/specs/clever-v3.0.yml`` and ``clever-v3.0-events.yml``). Swagger's
``x-nullable: true`` becomes "or null", and the record definitions (User, Section...) are made
closed, so the simulator cannot invent fields the spec does not declare; envelopes stay open
(real Clever adds ``uri`` to list items and ``previous_attributes`` inside event data).
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
import yaml
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from include.sis_sync.sample.generator import generate_district, next_day
from include.sis_sync.simulators.clever import (
    BASE_TIME,
    CleverData,
    CleverSimulator,
    clever_data_from_district,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT.parent / "shared" / "reference" / "specs"
TOKEN = "sim-secret-token-123"
HEX24 = re.compile(r"^[0-9a-f]{24}$")
LIST_DEFINITIONS = {
    "districts": "DistrictsResponse",
    "schools": "SchoolsResponse",
    "users": "UsersResponse",
    "sections": "SectionsResponse",
    "terms": "TermsResponse",
    "courses": "CoursesResponse",
}
ITEM_DEFINITIONS = {
    k: v.removesuffix("sResponse") + "Response" for k, v in LIST_DEFINITIONS.items()
}
# Definitions of records (closed in the tests); envelopes, events and errors stay open.
OPEN_DEFINITIONS = {"Event", "Link", "BadRequest", "NotFound", "InternalError"}


# --------------------------------------------------------------------------------------------
# Clever's definitions as JSON Schema
# --------------------------------------------------------------------------------------------


def _nullable(node: Any) -> Any:
    """Swagger 2.0 ``x-nullable: true`` as JSON Schema: the schema, or null."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _nullable(value) for key, value in node.items()}
    if converted.pop("x-nullable", False):
        return {"anyOf": [{"type": "null"}, converted]}
    return converted


@cache
def _spec(name: str) -> dict[str, Any]:
    path = SPECS / name
    if not path.exists():
        pytest.fail(f"Clever's definitions are missing: {path} (CI keeps them there)")
    document = yaml.safe_load(path.read_text())
    definitions = _nullable(document["definitions"])
    for key, schema in definitions.items():
        record = not key.endswith(("Response", "Object")) and "." not in key
        if record and key not in OPEN_DEFINITIONS and "properties" in schema:
            schema["additionalProperties"] = False
    return {**document, "definitions": definitions}


@cache
def _validator(spec_name: str, definition: str) -> Draft4Validator:
    document = _spec(spec_name)
    assert definition in document["definitions"], f"{definition} not in {spec_name}"
    uri = f"urn:clever:{spec_name}"
    registry = Registry().with_resource(
        uri, Resource.from_contents(document, default_specification=DRAFT4)
    )
    return Draft4Validator({"$ref": f"{uri}#/definitions/{definition}"}, registry=registry)


def assert_valid(instance: Any, definition: str, spec_name: str = "clever-v3.0.yml") -> None:
    errors = sorted(_validator(spec_name, definition).iter_errors(instance), key=str)
    details = "\n".join(f"- {list(e.absolute_path)}: {e.message}" for e in errors[:10])
    assert not errors, f"{len(errors)} error(s) against {definition}:\n{details}"


def assert_valid_event(event: dict[str, Any]) -> None:
    """An event validates as its ``type`` (Swagger's discriminator) and as ``Event``."""
    assert_valid(event, "Event", "clever-v3.0-events.yml")
    assert_valid(event, event["type"], "clever-v3.0-events.yml")


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sim(data: CleverData):
    with CleverSimulator(data, TOKEN) as simulator:
        yield simulator


@pytest.fixture
def http() -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    yield session
    session.close()


def get(http: requests.Session, sim: CleverSimulator, uri: str, **params: Any):
    return http.get(sim.base_url + uri, params=params or None, timeout=10)


def follow(http: requests.Session, sim: CleverSimulator, uri: str) -> list[dict[str, Any]]:
    """Every page of a list, following next links; each page is returned whole."""
    pages = []
    while uri:
        response = get(http, sim, uri)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        uri = next((ln["uri"] for ln in pages[-1]["links"] if ln["rel"] == "next"), None)
        assert len(pages) < 1000
    return pages


def link(page: dict[str, Any], rel: str) -> str | None:
    return next((ln["uri"] for ln in page["links"] if ln["rel"] == rel), None)


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def test_conversion_is_deterministic_and_complete():
    district = generate_district("demo")
    first = clever_data_from_district(district)
    assert first == clever_data_from_district(district)
    users = district.users
    assert len(first.users) == len(users)
    assert len(first.schools) == (district.orgs["type"] == "school").sum()
    assert len(first.sections) == len(district.classes)
    assert len(first.terms) == len(district.academic_sessions)
    assert len(first.courses) == len(district.courses)
    every_id = [first.district["id"], *first.schools, *first.users, *first.sections]
    assert all(HEX24.match(i) for i in every_id)
    assert len(set(every_id)) == len(every_id)
    assert all(int(i[:8], 16) == BASE_TIME for i in every_id)
    # sis_id lives inside the role object and is the OneRoster sourcedId.
    for key in users["sourcedId"]:
        user = first.users[first.ids[key]]
        assert "sis_id" not in user
        role = next(iter(user["roles"].values()))
        assert role.get("sis_id", role.get("staff_id", key)) == key


def test_conversion_roles_grades_and_membership():
    district = generate_district("demo")
    data = clever_data_from_district(district, multi_role=3)
    roles = [frozenset(u["roles"]) for u in data.users.values()]
    assert roles.count(frozenset({"teacher", "staff"})) == 3
    assert roles.count(frozenset({"student"})) == (district.users["role"] == "student").sum()
    assert frozenset({"district_admin"}) in roles  # the district-level administrator
    grades = {
        u["roles"]["student"]["grade"] for u in data.users.values() if "student" in u["roles"]
    }
    assert grades <= {"Kindergarten", *map(str, range(1, 14))}
    # Membership: the section arrays hold exactly the enrollments.
    enrollments = district.enrollments
    for _, row in enrollments.sample(50, random_state=1).iterrows():
        section = data.sections[data.ids[row["classSourcedId"]]]
        key = "students" if row["role"] == "student" else "teachers"
        assert data.ids[row["userSourcedId"]] in section[key]
    total = sum(len(s["students"]) + len(s["teachers"]) for s in data.sections.values())
    assert total == len(enrollments)
    primaries = enrollments[enrollments["primary"] == "true"]
    for _, row in primaries.iterrows():
        section = data.sections[data.ids[row["classSourcedId"]]]
        assert section["teacher"] == data.ids[row["userSourcedId"]] == section["teachers"][0]
    # A full-year class (two semesters) gets the school-year term.
    year = data.ids["ses-000001"]
    full_year = district.classes["termSourcedIds"].str.contains(",")
    for key in district.classes.loc[full_year, "sourcedId"]:
        assert data.sections[data.ids[key]]["term_id"] == year


# --------------------------------------------------------------------------------------------
# Shapes against Clever's definitions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", sorted(LIST_DEFINITIONS))
def test_list_pages_validate_against_clevers_definitions(sim, http, data, resource):
    response = get(http, sim, f"/v3.0/{resource}", limit=10000)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    page = response.json()
    assert_valid(page, LIST_DEFINITIONS[resource])
    expected = data.resources()[resource]
    assert [row["data"]["id"] for row in page["data"]] == sorted(expected)
    for row in page["data"]:
        assert row["uri"] == f"/v3.0/{resource}/{row['data']['id']}"
    assert link(page, "next") is None and link(page, "prev") is None
    assert link(page, "self") == f"/v3.0/{resource}?limit=10000"


@pytest.mark.parametrize("resource", sorted(LIST_DEFINITIONS))
def test_items_validate_and_unknown_ids_are_404(sim, http, data, resource):
    record_id = sorted(data.resources()[resource])[0]
    response = get(http, sim, f"/v3.0/{resource}/{record_id}")
    assert response.status_code == 200
    assert_valid(response.json(), ITEM_DEFINITIONS[resource])
    assert response.json()["data"] == data.resources()[resource][record_id]
    missing = get(http, sim, f"/v3.0/{resource}/{'0' * 24}")
    assert missing.status_code == 404
    assert_valid(missing.json(), "NotFound")
    assert missing.json()["message"]


def test_every_role_validates_including_contacts_and_multi_role(sim, http, data):
    page = get(http, sim, "/v3.0/users", limit=10000).json()
    assert_valid(page, "UsersResponse")
    held = {role for row in page["data"] for role in row["data"]["roles"]}
    assert held == {"student", "teacher", "staff", "district_admin", "contact"}
    contact = next(r["data"] for r in page["data"] if "contact" in r["data"]["roles"])
    assert contact["name"]["first"] is None and contact["name"]["last"]


def test_the_schema_check_itself_catches_departures(sim, http):
    """Guard the guard: invented fields, bad enums and wrong types fail validation."""
    page = get(http, sim, "/v3.0/users", limit=3).json()
    for tamper in (
        lambda p: p["data"][0]["data"].update(sis_id="top-level sis_id is not Clever's"),
        lambda p: p["data"][0]["data"]["name"].update(first=7),
        lambda p: next(iter(p["data"][0]["data"]["roles"].values())).update(schools="x"),
        lambda p: p["links"].append({"rel": "last", "uri": "/v3.0/users"}),
    ):
        bad = copy.deepcopy(page)
        tamper(bad)
        with pytest.raises(AssertionError, match="UsersResponse"):
            assert_valid(bad, "UsersResponse")
    event = {"id": "1" * 24, "created": "x", "type": "sections.updated"}
    event["data"] = {"object": {"id": "1" * 24, "grade": "Grade 9"}}
    with pytest.raises(AssertionError):
        assert_valid_event(event)


# --------------------------------------------------------------------------------------------
# Paging and filters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resource", "limit"), [("users", 7), ("sections", 7), ("schools", 1)])
def test_paging_returns_every_id_once_with_relative_next_links(sim, http, data, resource, limit):
    pages = follow(http, sim, f"/v3.0/{resource}?limit={limit}")
    ids = [row["data"]["id"] for page in pages for row in page["data"]]
    assert ids == sorted(data.resources()[resource])
    assert len(pages) == -(-len(ids) // limit)
    for number, page in enumerate(pages):
        assert_valid(page, LIST_DEFINITIONS[resource])
        assert len(page["data"]) <= limit
        last = page["data"][-1]["data"]["id"]
        if number < len(pages) - 1:
            assert link(page, "next") == f"/v3.0/{resource}?limit={limit}&starting_after={last}"
        else:
            assert link(page, "next") is None
        first = page["data"][0]["data"]["id"]
        expected_prev = f"/v3.0/{resource}?limit={limit}&ending_before={first}"
        assert link(page, "prev") == (expected_prev if number else None)


def test_ending_before_pages_backwards(sim, http, data):
    ids = sorted(data.users)
    page = get(http, sim, "/v3.0/users", limit=5, ending_before=ids[20]).json()
    assert [row["data"]["id"] for row in page["data"]] == ids[15:20]


def test_starting_after_a_deleted_id_still_pages(sim, http, data):
    ids = sorted(data.users)
    sim.delete_user(ids[10])
    page = get(http, sim, "/v3.0/users", limit=3, starting_after=ids[10]).json()
    assert [row["data"]["id"] for row in page["data"]] == ids[11:14]


@pytest.mark.parametrize("role", ["student", "teacher", "staff", "district_admin", "contact"])
def test_role_filter(sim, http, data, role):
    expected = sorted(i for i, u in data.users.items() if role in u["roles"])
    assert expected
    pages = follow(http, sim, f"/v3.0/users?limit=7&role={role}")
    assert [row["data"]["id"] for page in pages for row in page["data"]] == expected
    for page in pages[:-1]:
        assert re.fullmatch(
            rf"/v3\.0/users\?limit=7&role={role}&starting_after=[0-9a-f]{{24}}", link(page, "next")
        )


def test_multi_role_user_listed_once_and_under_each_role(sim, http, data):
    both = [i for i, u in data.users.items() if {"teacher", "staff"} <= set(u["roles"])]
    assert len(both) == 2
    everyone = [r["data"]["id"] for r in get(http, sim, "/v3.0/users", limit=10000).json()["data"]]
    assert len(everyone) == len(set(everyone)) == len(data.users)
    for role in ("teacher", "staff"):
        page = get(http, sim, "/v3.0/users", role=role, limit=10000).json()
        assert set(both) <= {r["data"]["id"] for r in page["data"]}


def test_count_parameter(sim, http, data):
    assert get(http, sim, "/v3.0/users", count="true").json() == {"count": len(data.users)}
    students = sum("student" in u["roles"] for u in data.users.values())
    assert get(http, sim, "/v3.0/users", count="true", role="student").json()["count"] == students


# --------------------------------------------------------------------------------------------
# Errors, auth and fault injection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Bearer"}],
)
def test_requests_without_the_right_bearer_token_are_401(sim, headers):
    response = requests.get(sim.base_url + "/v3.0/users", headers=headers, timeout=10)
    assert response.status_code == 401
    assert set(response.json()) == {"message"}
    assert sim.requests[-1]["status"] == 401


def test_request_log_never_holds_the_token(sim, http):
    get(http, sim, "/v3.0/users", limit=2)
    get(http, sim, "/v3.0/sections/nope")
    assert [(r["method"], r["path"], r["query"], r["status"]) for r in sim.requests] == [
        ("GET", "/v3.0/users", {"limit": "2"}, 200),
        ("GET", "/v3.0/sections/nope", {}, 404),
    ]
    assert TOKEN not in repr(sim.requests) and TOKEN not in repr(sim)


@pytest.mark.parametrize(
    ("limit", "status"), [(10000, 200), (10001, 413), (0, 400), ("many", 400), (1, 200)]
)
def test_limit_bounds(sim, http, limit, status):
    response = get(http, sim, "/v3.0/users", limit=limit)
    assert response.status_code == status
    if status != 200:
        assert set(response.json()) == {"message"}


def test_other_errors(sim, http):
    assert get(http, sim, "/v3.0/users", role="principal").status_code == 400
    assert get(http, sim, "/v3.0/classes").status_code == 404
    assert get(http, sim, "/v2.1/users").status_code == 404
    assert get(http, sim, "/v3.0/sections/abc/users").status_code == 501
    assert http.post(sim.base_url + "/v3.0/users", json={}, timeout=10).status_code == 405


def test_fail_next_only_hits_the_matching_path_and_count(sim, http):
    sim.fail_next(503, 2, path_prefix="/users", headers={"X-Test": "1"})
    assert get(http, sim, "/v3.0/schools").status_code == 200
    first = get(http, sim, "/v3.0/users")
    assert first.status_code == 503 and first.headers["X-Test"] == "1"
    assert_valid(first.json(), "InternalError")
    assert get(http, sim, "/v3.0/users").status_code == 503
    assert get(http, sim, "/v3.0/users").status_code == 200
    sim.fail_next(401)
    assert get(http, sim, "/v3.0/terms").status_code == 401
    assert get(http, sim, "/v3.0/terms").status_code == 200


def test_rate_limit_next_answers_429_with_reset_headers(sim, http):
    sim.rate_limit_next(2, reset_in=5)
    before = time.time()
    first = get(http, sim, "/v3.0/users")
    assert first.status_code == 429 and first.content == b""
    reset = int(first.headers["X-RateLimit-Reset"])
    assert before + 4 <= reset <= time.time() + 6
    assert first.headers["Retry-After"] == "5"
    assert first.headers["X-RateLimit-Remaining"] == "0"
    assert get(http, sim, "/v3.0/courses").status_code == 429
    assert get(http, sim, "/v3.0/courses").status_code == 200


# --------------------------------------------------------------------------------------------
# Mutations and events
# --------------------------------------------------------------------------------------------


def _events(http, sim, **params) -> list[dict[str, Any]]:
    response = get(http, sim, "/v3.0/events", **params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid(body, "EventsResponse", "clever-v3.0-events.yml")
    for row in body["data"]:
        assert row["uri"] == f"/v3.0/events/{row['data']['id']}"
        assert_valid_event(row["data"])
    return [row["data"] for row in body["data"]]


def test_initial_window_is_empty(sim, http):
    assert _events(http, sim) == []
    assert sim.latest_event_id() is None


def test_mutations_emit_events_that_validate(sim, http, data):
    section_id = sorted(data.sections)[0]
    section = data.sections[section_id]
    old_students = list(section["students"])
    school = section["school"]
    new_user = {
        "name": {"first": "Nia", "last": "Okoro", "middle": ""},
        "email": "nia.okoro@example.org",
        "roles": {
            "student": {
                "sis_id": "usr-900001",
                "student_number": "900001",
                "school": school,
                "schools": [school],
                "grade": "9",
                "credentials": {"district_username": "nia.okoro"},
            }
        },
    }
    user_id = sim.add_user(new_user)
    assert HEX24.match(user_id) and user_id > max(data.users)
    sim.update_section(section_id, {"students": [*old_students, user_id]})
    sim.update_user(user_id, {"email": "nia.o@example.org"})
    leaving = old_students[0]
    sim.delete_user(leaving)
    sim.delete_section(sorted(data.sections)[1])

    events = _events(http, sim)
    assert [e["type"] for e in events] == [
        "users.created",
        "sections.updated",
        "users.updated",
        *["sections.updated"] * sum(leaving in s["students"] for s in data.sections.values()),
        "users.deleted",
        "sections.deleted",
    ]
    ids = [e["id"] for e in events]
    assert all(HEX24.match(i) for i in ids) and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["created"]) for e in events
    )
    assert sim.latest_event_id() == ids[-1]

    created, roster = events[0], events[1]
    assert (
        created["data"]["object"]["id"] == user_id and "previous_attributes" not in created["data"]
    )
    assert roster["data"]["previous_attributes"] == {"students": old_students}
    assert roster["data"]["object"]["students"] == [*old_students, user_id]
    assert events[2]["data"]["previous_attributes"] == {"email": "nia.okoro@example.org"}
    removal = events[3]
    assert leaving in removal["data"]["previous_attributes"]["students"]
    assert leaving not in removal["data"]["object"]["students"]
    deleted = events[-2]["data"]["object"]
    assert deleted["id"] == leaving and deleted["roles"] == data.users[leaving]["roles"]
    # The data follows the events.
    assert get(http, sim, f"/v3.0/users/{leaving}").status_code == 404
    assert get(http, sim, f"/v3.0/users/{user_id}").json()["data"]["email"] == "nia.o@example.org"
    single = get(http, sim, f"/v3.0/events/{ids[1]}")
    assert_valid(single.json(), "EventResponse", "clever-v3.0-events.yml")
    assert single.json()["data"] == roster


def test_update_without_change_emits_nothing(sim, data):
    user_id = sorted(data.users)[0]
    assert sim.update_user(user_id, {"email": data.users[user_id]["email"]}) == {}
    assert sim.latest_event_id() is None


def test_events_paging_starting_after_and_record_type(sim, http, data):
    for user_id in sorted(data.users)[:5]:
        sim.update_user(user_id, {"email": f"new.{user_id}@example.org"})
    sim.update_section(sorted(data.sections)[0], {"name": "Renamed"})
    all_ids = [e["id"] for e in sim.events]
    pages = follow(http, sim, "/v3.0/events?limit=2")
    assert [row["data"]["id"] for page in pages for row in page["data"]] == all_ids
    assert [e["id"] for e in _events(http, sim, starting_after=all_ids[2])] == all_ids[3:]
    assert _events(http, sim, starting_after=all_ids[-1]) == []
    only_sections = _events(http, sim, record_type="sections")
    assert [e["type"] for e in only_sections] == ["sections.updated"]
    paged = follow(http, sim, "/v3.0/events?limit=2&record_type=users")
    assert link(paged[0], "next").startswith("/v3.0/events?limit=2&record_type=users&")


def test_expired_checkpoint_is_404_and_the_window_moves(sim, http, data):
    for user_id in sorted(data.users)[:4]:
        sim.update_user(user_id, {"email": f"x.{user_id}@example.org"})
    ids = [e["id"] for e in sim.events]
    assert sim.expire_events_before(ids[2]) == 2
    assert [e["id"] for e in _events(http, sim)] == ids[2:]
    gone = get(http, sim, "/v3.0/events", starting_after=ids[0])
    assert gone.status_code == 404
    assert_valid(gone.json(), "NotFound", "clever-v3.0-events.yml")
    assert "window" in gone.json()["message"]
    assert get(http, sim, "/v3.0/events", starting_after="f" * 24).status_code == 404
    assert get(http, sim, f"/v3.0/events/{ids[0]}").status_code == 404
    assert [e["id"] for e in _events(http, sim, starting_after=ids[2])] == ids[3:]


def test_events_disabled_answer_404(data, http):
    with CleverSimulator(data, TOKEN, events_enabled=False) as sim:
        sim.update_user(sorted(data.users)[0], {"email": "changed@example.org"})
        for params in ({}, {"starting_after": sim.latest_event_id()}):
            response = get(http, sim, "/v3.0/events", **params)
            assert response.status_code == 404
            assert_valid(response.json(), "NotFound", "clever-v3.0-events.yml")
            assert "not enabled" in response.json()["message"]
        assert get(http, sim, "/v3.0/users", limit=1).status_code == 200


def test_apply_turns_the_next_day_into_events(sim, http):
    day1 = generate_district("demo")
    day2 = clever_data_from_district(next_day(day1, seed=2, add=0.03, update=0.03, archive=0.03))
    emitted = sim.apply(day2)
    events = []
    for page in follow(http, sim, "/v3.0/events?limit=10000"):
        events += [row["data"] for row in page["data"]]
    assert len(events) == emitted > 0
    for event in events:
        assert_valid_event(event)
    types = {e["type"] for e in events}
    assert {"users.created", "users.updated", "users.deleted", "sections.updated"} <= types
    served = {r["data"]["id"] for r in get(http, sim, "/v3.0/users", limit=10000).json()["data"]}
    assert served == set(day2.users)  # the fixture's contacts are gone: day2 has none


# --------------------------------------------------------------------------------------------
# Lifecycle and command line
# --------------------------------------------------------------------------------------------


def test_stop_closes_the_port(data):
    sim = CleverSimulator(data, TOKEN)
    base = sim.start()
    assert sim.start() == base
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    assert session.get(base + "/v3.0/districts", timeout=10).status_code == 200
    sim.stop()
    sim.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(base + "/v3.0/districts", timeout=5)


def test_command_line_serves_until_sigterm():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "include.sis_sync.simulators.clever", "--port", "0"]
    with subprocess.Popen(
        [*command, "--token", TOKEN],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            line = process.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+)/v3\.0", line)
            assert match, line
            assert TOKEN not in line
            response = requests.get(
                match.group(1) + "/v3.0/districts",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            assert_valid(response.json(), "DistrictsResponse")
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=15)
            assert process.returncode == 0, err
            assert TOKEN not in out + err
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
