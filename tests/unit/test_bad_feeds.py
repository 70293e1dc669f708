"""Bad feeds, attacked through every stage of a sync, on SQLite and on PostgreSQL.

Day one of the demo district is committed; day two is broken one way per test. Each must end
with a clear message naming the file, field or record (never a student's name or email), and
the LMS compared row by row is what it was, unless the test says what may change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from include.sis_sync import buckets, pipeline
from include.sis_sync.lms import commit as lms_commit
from include.sis_sync.providers.oneroster_csv import DropError
from include.sis_sync.sample.generator import District, generate_district
from include.sis_sync.validation import SnapshotInvalid
from tests.feeds import DAY1, DAY2, Feed, Outcome
from tests.helpers import run_rows

NAME, EMAIL = "Quillonette", "quillonette.zyx@example.org"


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transform, validation, the diff and the commit take a large table in parts; here the
    demo district's users and enrollments take several, so every bad feed crosses them."""
    monkeypatch.setattr(pipeline, "TRANSFORM_ROWS", 250)
    monkeypatch.setattr(lms_commit, "SNAPSHOT_ROWS", 350)
    monkeypatch.setattr(pipeline, "VALIDATE_ROWS", 400)
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 300)


@pytest.fixture
def feed(tmp_path: Path, lms_url: str, data_dir: Path) -> Feed:
    """Day one committed; one student is named ``NAME`` and mailed at ``EMAIL``."""
    feed = Feed(tmp_path, lms_url)
    feed.write(_district(), DAY1)
    first = feed.sync(DAY1)
    assert first.error is None and first.report["status"] == "committed", first.text()
    return feed


def _district() -> District:
    """The demo district, its first student named ``NAME`` and mailed at ``EMAIL``."""
    district = generate_district("demo")
    users = district.users
    first = users.index[users["role"] == "student"][0]
    users.loc[first, ["givenName", "email"]] = [NAME, EMAIL]
    return district


def _student(district: District) -> str:
    return str(district.users.loc[district.users["givenName"] == NAME, "sourcedId"].iloc[0])


def _refused(feed: Feed, before: dict[str, Any], outcome: Outcome, error: type) -> str:
    """The sync failed with ``error``, said nothing personal, staged and changed nothing."""
    assert isinstance(outcome.error, error), outcome.text()
    assert outcome.report["status"] == "failed"
    assert NAME not in outcome.text() and EMAIL not in outcome.text()
    assert feed.staged(outcome.run_id) == 0
    assert feed.lms() == before
    return str(outcome.error)


def test_duplicate_user_keys_are_refused_naming_the_key(feed: Feed) -> None:
    district = _district()
    twin = district.users[district.users["givenName"] == NAME].assign(givenName="Twin")
    district.users = pd.concat([district.users, twin], ignore_index=True)
    feed.write(district)
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), SnapshotInvalid)
    assert f"users: expect_column_values_to_be_unique(sis_key): 2 row(s): {_student(district)}" in (
        message
    )


def test_an_enrollment_key_repeated_in_another_part_is_refused_naming_it(feed: Feed) -> None:
    """Validation takes enrollments in parts; a key's uniqueness is checked over all."""
    district = _district()
    enrollments = district.enrollments
    assert len(enrollments) > 3 * pipeline.VALIDATE_ROWS
    first, last = enrollments.index[0], enrollments.index[-1]
    key = str(enrollments.loc[first, "sourcedId"])
    enrollments.loc[last, "sourcedId"] = key
    feed.write(district)
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), SnapshotInvalid)
    assert f"enrollments: expect_column_values_to_be_unique(sis_key): 2 row(s): {key}" in message


@pytest.mark.parametrize(
    ("stem", "column", "finding"),
    [
        ("users", "givenName", "users: text_contains_nul(given_name) (a NUL byte)"),
        ("classes", "title", "sections: text_contains_nul(name) (a NUL byte)"),
    ],
)
def test_a_nul_byte_is_refused_on_both_stores(
    feed: Feed, stem: str, column: str, finding: str
) -> None:
    district = _district()
    frame = district.frames()[stem]
    frame.loc[frame.index[0], column] = "Zo\x00e"
    feed.write(district)
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), SnapshotInvalid)
    assert f"{finding}: 1 row(s): {frame['sourcedId'].iloc[0]}" in message


def test_a_one_megabyte_value_is_refused_naming_field_and_record(feed: Feed) -> None:
    district = _district()
    users = district.users
    users.loc[users["givenName"] == NAME, "familyName"] = "x" * 1_000_000
    feed.write(district)
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), SnapshotInvalid)
    assert (
        "users: text_too_long(family_name) (longer than 10000 characters): "
        f"1 row(s): {_student(district)}"
    ) in message


def test_an_empty_feed_on_a_portal_with_data_is_refused(feed: Feed) -> None:
    district = _district()
    district.users = district.users.iloc[0:0]
    district.enrollments = district.enrollments.iloc[0:0]
    feed.write(district)
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), SnapshotInvalid)
    assert "users: expect_table_row_count_to_be_between: observed 0 rows" in message


def test_a_missing_required_column_names_file_and_column(feed: Feed) -> None:
    feed.write(_district())
    feed.edit(DAY2, "users", lambda text: text.replace(",familyName,", ",lastName,", 1))
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), DropError)
    assert f"{feed.folder(DAY2)}/users.csv: missing required column(s) 'familyName'" in message


def test_a_missing_required_value_names_field_and_record(feed: Feed) -> None:
    district = _district()
    district.users.loc[district.users["givenName"] == NAME, "role"] = ""
    feed.write(district)
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), SnapshotInvalid)
    assert "users: expect_column_values_to_not_be_null(role): 1 row(s)" in message
    assert _student(district) in message


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda t: t.replace(f",{NAME},", f',"{NAME},', 1), "never closed"),
        (lambda t: t.replace(f",{NAME},", f",{NAME},extra,", 1), "values where the header"),
    ],
    ids=["unbalanced_quote", "extra_value"],
)
def test_a_broken_csv_names_file_and_line_never_the_row(
    feed: Feed, damage: Callable[[str], str], said: str
) -> None:
    feed.write(_district())
    feed.edit(DAY2, "users", damage)
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), DropError)
    assert message.startswith(f"{feed.folder(DAY2)}/users.csv: line ")
    assert said in message


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_bytes_that_are_not_utf8_are_refused(feed: Feed, encoding: str) -> None:
    district = _district()
    district.users.loc[district.users["givenName"] == NAME, "familyName"] = "Müller"
    feed.write(district)
    path = feed.folder(DAY2) / "users.csv"
    path.write_bytes(path.read_text(encoding="utf-8").encode(encoding, errors="replace"))
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), DropError)
    if encoding == "utf-16":
        assert message == f"{path}: the file is UTF-16 text; OneRoster CSV files are UTF-8"
    else:
        assert message.startswith(f"{path}: line ")
        assert "not UTF-8 text (Latin-1 or another encoding?)" in message


def test_a_manifest_listing_a_missing_file_is_refused(feed: Feed) -> None:
    feed.write(_district())
    (feed.folder(DAY2) / "classes.csv").unlink()
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), DropError)
    assert "manifest.csv lists file.classes=bulk but the drop has no classes.csv" in message


def test_dates_in_a_wrong_format_are_refused(feed: Feed) -> None:
    district = _district()
    sessions = district.academic_sessions
    sessions.loc[sessions.index[0], "startDate"] = "09/01/2026"
    feed.write(district)
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), SnapshotInvalid)
    assert "terms: expect_column_values_to_match_regex(start_date)" in message
    assert str(sessions["sourcedId"].iloc[0]) in message


def test_a_zip_whose_names_climb_out_is_refused(feed: Feed) -> None:
    import zipfile

    zipped = feed.write(_district(), DAY2 + "-src")
    target = feed.folder(DAY2)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(zipped.iterdir()):
            archive.write(path, path.name)
        archive.writestr("zzz/../evil/users.csv", (zipped / "users.csv").read_text())
    before = feed.lms()
    message = _refused(feed, before, feed.sync(), DropError)
    assert "zip entry 'zzz/../evil/users.csv' climbs out of the drop's folder" in message


def test_a_drop_carrying_no_entity_is_refused_and_older_drops_stay_usable(feed: Feed) -> None:
    empty = feed.folder("2026-09-03")
    empty.mkdir(parents=True)
    (empty / "manifest.csv").write_text("propertyName,value\nmanifest.version,1.0\n")
    before = feed.lms()
    message = _refused(feed, before, feed.sync("2026-09-03"), DropError)
    assert "supplies no roster file" in message
    feed.write(_district())
    assert feed.sync(DAY2).report["status"] == "committed"  # not "older than the newest"


# --------------------------------------------------------------------------------------------
# Feeds that are well formed but would hurt: the guards hold them for a person
# --------------------------------------------------------------------------------------------


def _held(feed: Feed, before: dict[str, Any], outcome: Outcome, guard: str) -> None:
    """The sync staged its change set and waits for approval (ended unanswered here)."""
    assert outcome.error is None and outcome.gate == "await_approval", outcome.text()
    guards = json.loads(run_rows(feed.lms_url)[-1]["guard_decisions"])
    assert any(guard in f"{g['action']}:{g['kind']}:{g['school']}" for g in guards), guards
    assert feed.lms() == before


def test_a_truncated_feed_waits_for_approval(feed: Feed) -> None:
    district = _district()
    users = district.users
    students = users.index[users["role"] == "student"]
    district.users = users.drop(students[: len(students) // 2])
    feed.write(district)
    before = feed.lms()
    _held(feed, before, feed.sync(), "archive:users:student:None")


def test_a_school_vanishing_from_a_full_snapshot_waits_for_approval(feed: Feed) -> None:
    district = _district()
    school = district.orgs.loc[district.orgs["type"] == "school", "sourcedId"].iloc[0]
    district.classes = district.classes[district.classes["schoolSourcedId"] != school]
    district.enrollments = district.enrollments[district.enrollments["schoolSourcedId"] != school]
    feed.write(district)
    before = feed.lms()
    _held(feed, before, feed.sync(), f"archive:sections:{school}")


def test_all_users_moved_to_new_keys_waits_for_approval(feed: Feed) -> None:
    district = _district()
    renamed = {k: f"new-{k}" for k in district.users["sourcedId"]}
    district.users["sourcedId"] = district.users["sourcedId"].map(renamed)
    district.enrollments["userSourcedId"] = district.enrollments["userSourcedId"].map(renamed)
    feed.write(district)
    before = feed.lms()
    _held(feed, before, feed.sync(), "archive:users:student:None")


def test_every_teacher_gone_waits_however_few_they_are(feed: Feed) -> None:
    district = _district()
    teachers = district.users["role"] == "teacher"
    assert teachers.sum() <= feed.portal.guards.archive_min_count  # the count alone lets it by
    gone = set(district.users.loc[teachers, "sourcedId"])
    district.users = district.users[~teachers]
    district.enrollments = district.enrollments[~district.enrollments["userSourcedId"].isin(gone)]
    feed.write(district)
    before = feed.lms()
    _held(feed, before, feed.sync(), "archive:users:teacher:None")
    guards = json.loads(run_rows(feed.lms_url)[-1]["guard_decisions"])
    assert any(g["count"] == g["active"] == len(gone) for g in guards)


# --------------------------------------------------------------------------------------------
# References to records the feed does not carry
# --------------------------------------------------------------------------------------------


def test_an_enrollment_with_an_unknown_user_keeps_its_lms_row(feed: Feed) -> None:
    """The row is left out with a warning, and its LMS row is not archived as absent."""
    district = _district()
    enrollments = district.enrollments
    victim = enrollments.index[0]
    key = str(enrollments.loc[victim, "sourcedId"])
    enrollments.loc[victim, "userSourcedId"] = "no-such-user"
    feed.write(district)
    before = {r["sis_key"]: r for r in feed.lms()["lms_enrollments"]}
    outcome = feed.sync()
    assert outcome.report["status"] == "committed", outcome.text()
    after = {r["sis_key"]: r for r in feed.lms()["lms_enrollments"]}
    assert after[key] == before[key]  # untouched: not archived, not updated
    (warning,) = [w for w in outcome.report["warnings"] if key in w["keys"]]
    assert (warning["kind"], warning["entity"]) == ("unknown_user", "enrollments")
    assert "kept as it is" in warning["detail"]


def test_unknown_classes_and_schools_are_warnings_that_change_nothing_else(feed: Feed) -> None:
    district = _district()
    enrollments = district.enrollments
    enrollments.loc[enrollments.index[1], "classSourcedId"] = "no-such-class"
    users = district.users
    first = users.index[users["givenName"] == NAME][0]
    users.loc[first, "orgSourcedIds"] = users.loc[first, "orgSourcedIds"] + ",no-such-school"
    feed.write(district)
    before = feed.lms()
    outcome = feed.sync()
    assert outcome.report["status"] == "committed", outcome.text()
    checks = {w["kind"] for w in outcome.report["warnings"]}
    assert {"unknown_section", "unknown_organizations"} <= checks
    assert NAME not in outcome.text() and EMAIL not in outcome.text()
    assert feed.lms() == before  # the same day's data otherwise: nothing changed
