"""Guards: a change set that archives or updates too much never auto-commits.

Per kind (users by primary role, sections, enrollments, organizations) the archives a sync
proposes are counted against that kind's active records in the sync's scope, portal-wide and
per school; updates likewise. A guard trips when both the percent and the count thresholds are
passed, and an archive guard also whenever a sync would archive every active record of its kind
(in a school or portal-wide), however few: losing a whole kind is never routine. A guard never
fails a task: it only decides whether a human must approve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from include.sis_sync import model
from include.sis_sync.config import Guards
from include.sis_sync.diff import ARCHIVE, UPDATE, kind_of, school_of
from include.sis_sync.transform import Scope, in_scope

GUARDED = ("users", "sections", "enrollments", "organizations")


@dataclass
class GuardResult:
    """One guard evaluation: what was counted, against what, and whether it tripped."""

    action: str  # archive | update
    kind: str  # e.g. users:student, sections
    school: str | None  # None: portal-wide
    count: int
    active: int
    percent: float
    tripped: bool

    @property
    def every_one(self) -> bool:
        """Archives of every active record of the kind, where there are any."""
        return self.action == ARCHIVE and self.active > 0 and self.count >= self.active

    def describe(self) -> str:
        where = f"school {self.school}" if self.school else "portal-wide"
        every = ": every active one" if self.every_one else ""
        return (
            f"{self.action}s of {self.kind} ({where}): {self.count} of {self.active} active "
            f"({self.percent:.1f} %){every}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kind_column(frame: pd.DataFrame, entity_column: str, kind_column: str) -> pd.Series:
    """``users:<role>`` for users, the entity name for the rest."""
    entity = frame[entity_column].astype("string")
    kind = frame[kind_column].astype("string").fillna("unknown")
    return entity.mask(entity == "users", "users:" + kind)


def evaluate(actions: pd.DataFrame, active: pd.DataFrame, guards: Guards) -> list[GuardResult]:
    """Evaluate every guard.

    Both frames have ``entity``, ``kind`` (users' primary role) and ``school_key`` (and
    ``actions`` an ``action``): one row per record, or one per group with its count in ``n``.
    ``active`` describes the active LMS records in scope.
    """
    results: list[GuardResult] = []
    base = _weighted(active)
    moved = _weighted(actions)
    rules = (
        (ARCHIVE, guards.archive_percent, guards.archive_min_count),
        (UPDATE, guards.update_percent, guards.update_min_count),
    )
    for action, percent, minimum in rules:
        proposed = moved[moved["action"] == action]
        results += _tally(proposed, base, action, percent, minimum, by_school=False)
        results += _tally(proposed, base, action, percent, minimum, by_school=True)
    return results


def _weighted(frame: pd.DataFrame) -> pd.DataFrame:
    """The guarded rows, with their guard kind and a count ``n`` (1 per row unless given)."""
    out = frame[frame["entity"].isin(GUARDED)].copy()
    out["guard_kind"] = _kind_column(out, "entity", "kind")
    if "n" not in out.columns:
        out["n"] = 1
    return out


def _tally(
    proposed: pd.DataFrame,
    base: pd.DataFrame,
    action: str,
    percent: float,
    minimum: int,
    *,
    by_school: bool,
) -> list[GuardResult]:
    keys = ["guard_kind", "school_key"] if by_school else ["guard_kind"]
    counts = proposed.groupby(keys, dropna=False)["n"].sum()
    totals = base.groupby(keys, dropna=False)["n"].sum()
    results = []
    for key, count in counts.items():
        kind, school = (
            (key if by_school else (key, None)) if isinstance(key, tuple) else (key, None)
        )
        if by_school and (school is None or pd.isna(school)):
            continue
        total = int(totals.get(key, 0))
        share = 100.0 * count / total if total else 100.0
        result = GuardResult(
            action,
            str(kind),
            str(school) if by_school else None,
            int(count),
            total,
            round(share, 2),
            count > minimum and share > percent,
        )
        result.tripped = result.tripped or result.every_one
        results.append(result)
    return results


def active_base(current: Mapping[str, pd.DataFrame], scope: Scope) -> pd.DataFrame:
    """The guards' base: active LMS records in scope, counted per entity, kind and school."""
    parts = []
    for name in GUARDED:
        frame = current.get(name)
        if frame is None or frame.empty:
            continue
        entity = model.BY_NAME[name]
        frame = frame[frame["active"] & in_scope(frame, entity, scope.organizations)]
        parts.append(
            pd.DataFrame(
                {
                    "entity": name,
                    "kind": kind_of(frame, entity),
                    "school_key": school_of(frame, entity),
                }
            )
        )
    if not parts:
        return pd.DataFrame(
            {
                "entity": pd.Series(dtype="string"),
                "kind": pd.Series(dtype="string"),
                "school_key": pd.Series(dtype="string"),
                "n": pd.Series(dtype="int64"),
            }
        )
    rows = pd.concat(parts, ignore_index=True)
    return rows.groupby(["entity", "kind", "school_key"], dropna=False).size().reset_index(name="n")


def tripped(results: list[GuardResult]) -> list[GuardResult]:
    return [r for r in results if r.tripped]


def combine_bases(bases: list[pd.DataFrame]) -> pd.DataFrame:
    """One guards' base from the bases of parts of the LMS (entities, or key buckets of one)."""
    bases = [b for b in bases if len(b)]
    if len(bases) <= 1:
        return bases[0] if bases else active_base({}, Scope(None, None, None))
    rows = pd.concat(bases, ignore_index=True)
    by = ["entity", "kind", "school_key"]
    return rows.groupby(by, dropna=False)["n"].sum().reset_index()
