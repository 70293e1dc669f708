"""Guards: per kind, per school and portal-wide, both thresholds (percent and count)."""

from __future__ import annotations

import pandas as pd
import pytest

from include.sis_sync.config import Guards
from include.sis_sync.guards import evaluate, tripped


def _active(entity: str, n: int, school: str, kind: str | None = None) -> pd.DataFrame:
    return pd.DataFrame({"entity": [entity] * n, "kind": [kind] * n, "school_key": [school] * n})


def _actions(entity: str, action: str, n: int, school: str, kind: str | None = None):
    return pd.DataFrame(
        {
            "entity": [entity] * n,
            "action": [action] * n,
            "kind": [kind] * n,
            "school_key": [school] * n,
        }
    )


def _trips(actions: pd.DataFrame, active: pd.DataFrame, guards: Guards | None = None):
    return {
        (r.action, r.kind, r.school) for r in tripped(evaluate(actions, active, guards or Guards()))
    }


@pytest.mark.parametrize(
    ("entity", "kind", "label"),
    [
        ("users", "student", "users:student"),
        ("users", "teacher", "users:teacher"),
        ("sections", None, "sections"),
        ("enrollments", None, "enrollments"),
        ("organizations", "school", "organizations"),
    ],
)
def test_each_kind_trips_past_both_thresholds(entity: str, kind: str | None, label: str) -> None:
    active = _active(entity, 100, "sch-a", kind)
    assert _trips(_actions(entity, "archive", 25, "sch-a", kind), active) == {
        ("archive", label, None),
        ("archive", label, "sch-a"),
    }


def test_percent_alone_or_count_alone_does_not_trip() -> None:
    # 15 of 100 is 15 % but only 15 records; 25 of 1000 is 25 records but only 2.5 %
    assert _trips(_actions("sections", "archive", 15, "a"), _active("sections", 100, "a")) == set()
    assert _trips(_actions("sections", "archive", 25, "a"), _active("sections", 1000, "a")) == set()


def test_one_school_trips_while_portal_wide_does_not() -> None:
    active = pd.concat(
        [_active("users", 50, "small", "student"), _active("users", 950, "big", "student")]
    )
    trips = _trips(_actions("users", "archive", 25, "small", "student"), active)
    assert trips == {("archive", "users:student", "small")}


def test_students_and_teachers_are_counted_apart() -> None:
    active = pd.concat(
        [_active("users", 1000, "a", "student"), _active("users", 60, "a", "teacher")]
    )
    trips = _trips(_actions("users", "archive", 30, "a", "teacher"), active)
    assert ("archive", "users:teacher", None) in trips
    assert not any(kind == "users:student" for _, kind, _ in trips)


def test_updates_trip_past_their_own_threshold() -> None:
    active = _active("enrollments", 100, "a")
    assert _trips(_actions("enrollments", "update", 70, "a"), active) == set()
    assert ("update", "enrollments", None) in _trips(
        _actions("enrollments", "update", 80, "a"), active
    )


def test_thresholds_come_from_the_portal() -> None:
    active = _active("sections", 100, "a")
    strict = Guards(archive_percent=1, archive_min_count=2)
    assert _trips(_actions("sections", "archive", 3, "a"), active, strict) == {
        ("archive", "sections", None),
        ("archive", "sections", "a"),
    }


def test_archiving_everything_of_an_empty_base_trips() -> None:
    """Counted against nothing active, 100 % is assumed (never a division by zero)."""
    result = evaluate(
        _actions("sections", "archive", 30, "a"), _active("sections", 0, "a"), Guards()
    )
    assert all(r.percent == 100.0 for r in result)
    assert tripped(result)
