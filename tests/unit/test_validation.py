"""Snapshot validation: fatal GX findings name keys only; reference checks and oddities warn."""

from __future__ import annotations

import pandas as pd
import pytest

from include.sis_sync.validation import (
    SnapshotInvalid,
    check_oddities,
    check_references,
    run_suites,
)
from tests.helpers import ALL_BULK, canonical, district


def _fatal(frames) -> dict[str, tuple[int, list[str]]]:
    return {f"{f.entity}:{f.check}": (f.count, f.sis_keys) for f in run_suites(frames, ALL_BULK)}


def test_clean_snapshot_has_no_finding() -> None:
    frames = district(
        students={"s1": "sch-a"}, sections={"c1": "sch-a"}, enrollments=[("c1", "s1")]
    )
    assert run_suites(frames, ALL_BULK) == []


def test_duplicate_and_missing_keys_and_fields_are_fatal_and_named_by_key() -> None:
    frames = district(students={"s1": "sch-a", "s2": "sch-a"})
    users = frames["users"].copy()
    users.loc[1, "sis_key"] = "s1"  # duplicate key
    users.loc[0, "role"] = "wizard"  # outside the vocabulary
    users.loc[0, "email"] = "secret.person@example.org"
    frames["users"] = users
    found = _fatal(frames)
    assert found["users:expect_column_values_to_be_unique(sis_key)"] == (2, ["s1"])
    assert found["users:expect_column_values_to_be_in_set(role)"] == (1, ["s1"])
    with pytest.raises(SnapshotInvalid) as error:
        raise SnapshotInvalid(run_suites(frames, ALL_BULK))
    assert "secret.person" not in str(error.value) and "wizard" not in str(error.value)


def test_empty_frame_of_a_complete_feed_is_fatal_but_not_of_a_delta() -> None:
    frames = district(students={})
    assert "users:expect_table_row_count_to_be_between" in _fatal(frames)
    modes = {
        **ALL_BULK,
        "users": "delta",
        "user_organizations": "delta",
        "sections": "delta",
        "enrollments": "delta",
    }
    assert not [f for f in run_suites(frames, modes) if f.entity == "users"]


def test_bad_dates_are_fatal() -> None:
    frames = district()
    terms = frames["terms"].copy()
    terms.loc[0, "start_date"] = "15/08/2026"
    frames["terms"] = terms
    assert _fatal(frames)["terms:expect_column_values_to_match_regex(start_date)"] == (1, ["fall"])


def test_references_to_records_the_feed_lacks_become_warnings() -> None:
    frames = district(
        students={"s1": "sch-a,sch-x"},
        sections={"c1": "sch-a"},
        enrollments=[("c1", "s1"), ("c1", "ghost"), ("nowhere", "s1")],
    )
    sections = frames["sections"].copy()
    sections.loc[0, "course_key"] = "no-such-course"
    frames["sections"] = sections
    cleaned, findings = check_references(frames, {})
    by_check = {f.check: f for f in findings}
    assert set(by_check) == {
        "unknown_user",
        "unknown_section",
        "unknown_course_key",
        "unknown_organizations",
    }
    assert by_check["unknown_user"].sis_keys == ["c1:ghost"]
    assert by_check["unknown_section"].sis_keys == ["nowhere:s1"]
    assert list(cleaned["enrollments"]["sis_key"]) == ["c1:s1"]
    assert pd.isna(cleaned["sections"].loc[0, "course_key"])
    assert cleaned["users"].loc[0, "organizations"] == "sch-a"


def test_delta_reference_to_a_record_already_in_the_lms_is_fine() -> None:
    enrollments = canonical(
        "enrollments", [{"sis_key": "e1", "section_key": "c9", "user_key": "s9", "role": "student"}]
    )
    _, findings = check_references(
        {"enrollments": enrollments},
        {"sections": pd.Index(["c9"]), "users": pd.Index(["s9"])},
    )
    assert findings == []


def test_oddities_warn_without_dropping() -> None:
    frames = district(
        students={"s1": "sch-a", "s2": "sch-a"},
        sections={"c1": "sch-a"},
        enrollments=[("c1", "s1")],
    )
    users = frames["users"].copy()
    users["email"] = "same@example.org"
    frames["users"] = users
    enrollments = frames["enrollments"].copy()
    enrollments.loc[0, "role"] = "teacher"
    frames["enrollments"] = enrollments
    found = {f.check: f.sis_keys for f in check_oddities(frames)}
    assert found == {"email_already_used": ["s1", "s2"], "role_conflict": ["c1:s1"]}


def test_uniqueness_over_parts_counts_only_keys_whose_hash_repeats() -> None:
    """Keys are remembered as hashes: a repeated hash sends the test back to the keys, and
    only equal keys (not merely equal hashes) are reported."""
    import numpy as np

    from include.sis_sync.validation import _key_hashes, _repeated_keys

    parts = [pd.Series(["e1", "e2"], dtype="string"), pd.Series(["e3", "e1"], dtype="string")]
    hashes = [_key_hashes(p) for p in parts]
    repeated = _repeated_keys(hashes, lambda: iter(parts))
    assert repeated.field("values").to_pylist() == ["e1"]
    assert repeated.field("counts").to_pylist() == [2]

    def never_read() -> list[pd.Series]:
        raise AssertionError("unique hashes need no second read")

    distinct = [pd.Series(["e1", "e2"], dtype="string"), pd.Series(["e3"], dtype="string")]
    assert len(_repeated_keys([_key_hashes(p) for p in distinct], never_read)) == 0
    # e3 given e1's hash (a collision): the keys are read again and nothing is reported
    first = _key_hashes(distinct[0])
    collided = [first, np.array([first[0]], dtype=np.uint64)]
    assert len(_repeated_keys(collided, lambda: iter(distinct))) == 0
