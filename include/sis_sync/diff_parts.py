"""The diff stage in bounded memory: entity by entity, and a large entity key bucket by bucket.

``diff.diff_snapshot`` diffs frames held in memory; a million-student district would hold the
whole LMS and the whole snapshot at once (6.5 GB). This driver runs the same steps
(``diff.diff_part``) on one part at a time: each entity's snapshot rows and LMS rows are
spilled to local Parquet files by key bucket (``buckets``), enough buckets that each holds
about ``BUCKET_ROWS`` rows, and diffed bucket by bucket. A key lands in the same bucket on both
sides, so a bucket's diff sees every row of its keys and nothing else. What a later entity
needs of an earlier one travels as keys (``diff.Carried``): archived users and sections for
the cascades, the parents a delta lists, the sections outside the school year. Uniqueness
and references were checked over the whole snapshot by validation, before this stage.

The actions are spilled too, and read back in parts by the staging write, so an initial sync's
eight million adds are never one frame either.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from include.sis_sync import guards, model
from include.sis_sync.buckets import BucketFiles, bucket_count
from include.sis_sync.context import log
from include.sis_sync.diff import ACTION_COLUMNS, DiffInput, carried_for, diff_part, kept_out
from include.sis_sync.lms.store import count_current, iter_current, read_current
from include.sis_sync.rundata import RunData, StageWriter
from include.sis_sync.school_summary import enrollments_per_org
from include.sis_sync.transform import Scope, restrict_frame, restrict_users

READ_ROWS = 250_000  # rows per read of the snapshot or the LMS
ACTION_SCHEMA = pa.schema(
    [(c, pa.int64() if c == "lms_id" else pa.large_string()) for c in ACTION_COLUMNS]
)


@dataclass
class Source:
    """Where the diff reads: the run's validated snapshot and the portal's LMS rows."""

    data: RunData
    conn: sa.Connection
    portal_id: str
    provider: str
    stage: str = "validated"

    def carries(self, entity: model.Entity) -> bool:
        return entity.name in self.data.lazy_frames(self.stage)

    def snapshot(
        self, entity: model.Entity, columns: list[str] | None = None
    ) -> Iterator[pd.DataFrame]:
        return self.data.iter_frames(self.stage, entity.name, READ_ROWS, columns)

    def snapshot_rows(self, entity: model.Entity) -> int:
        return self.data.row_count(self.stage, entity.name)

    def lms(self, entity: model.Entity) -> Iterator[pd.DataFrame]:
        return iter_current(self.conn, self.portal_id, self.provider, entity, chunk=READ_ROWS)

    def lms_rows(self, entity: model.Entity) -> int:
        return count_current(self.conn, self.portal_id, self.provider, entity)


@dataclass
class Outcome:
    """What the streamed diff leaves besides the staged actions."""

    actions: BucketFiles
    outside_school_year: pd.Series = field(default_factory=lambda: pd.Series(dtype="string"))
    outsiders: list[pd.Series] = field(default_factory=list)  # users kept for an enrollment
    active_lms: dict[str, int] = field(default_factory=dict)  # active LMS rows per entity
    guard_bases: list[pd.DataFrame] = field(default_factory=list)
    enrollments_per_org: list[pd.Series] = field(default_factory=list)
    enrollments_active: int = 0

    def action_parts(self, rows: int = READ_ROWS) -> Iterator[pd.DataFrame]:
        """The staged actions, read back in frames of about ``rows`` rows."""
        return self.actions.iter_bucket(0, rows)

    def guards_base(self) -> pd.DataFrame:
        return guards.combine_bases(self.guard_bases)

    def enrollment_counts(self) -> pd.Series:
        """Active enrollments per organization of the read (unrestricted), for the summary."""
        parts = [p for p in self.enrollments_per_org if len(p)]
        if not parts:
            return pd.Series(dtype="int64")
        return pd.concat(parts).groupby(level=0).sum()


def diff_in_parts(source: Source, diff_in: DiffInput, scoped: StageWriter, folder: Path) -> Outcome:
    """Diff every entity part by part; the restricted snapshot goes to ``scoped`` and the
    actions to a spill file under ``folder`` (see :class:`Outcome`)."""
    outcome = Outcome(BucketFiles(folder, "actions", 1, schema=ACTION_SCHEMA))
    carried = carried_for(diff_in)
    memberships = _memberships(source, diff_in)
    wanted: pd.Series | None = None
    spilled: dict[str, BucketFiles] = {}
    if source.carries(model.ENROLLMENTS):
        # first, so the users step knows which out-of-scope users an enrollment needs
        spilled["enrollments"], wanted = _spill_enrollments(
            source, diff_in, scoped, folder, outcome
        )
    for entity in model.ENTITIES:
        started = time.perf_counter()
        lms = _spill_lms(source, entity, diff_in.scope, folder, outcome, spilled.get(entity.name))
        read = time.perf_counter() - started
        snapshot = spilled.get(entity.name)
        if snapshot is None and source.carries(entity):
            snapshot = _spill_snapshot(source, entity, diff_in.scope, wanted, scoped, lms, outcome)
        for bucket in range(lms.buckets):
            rows = None  # the feed does not carry the entity
            if snapshot is not None:
                rows = snapshot.read(bucket)
                rows = model.empty_frame(entity) if rows is None else rows
            current = lms.read(bucket)
            mine = _empty_current(entity) if current is None else current
            part_in = replace(diff_in, current={**memberships, entity.name: mine})
            outcome.actions.add(diff_part(entity, rows, part_in, carried))
        for files in (lms, snapshot):
            if files is not None:
                files.remove()
        seconds = time.perf_counter() - started
        log.info(
            "diff %s: %d LMS rows, %d bucket(s), %.1f s (LMS read %.1f s)",
            entity.name,
            lms.rows,
            lms.buckets,
            seconds,
            read,
        )
    outcome.actions.close()
    outcome.outside_school_year = kept_out(carried)
    return outcome


def _spill_snapshot(
    source: Source,
    entity: model.Entity,
    scope: Scope,
    wanted: pd.Series | None,
    scoped: StageWriter,
    lms: BucketFiles,
    outcome: Outcome,
) -> BucketFiles:
    """The entity's snapshot rows within the scope into bucket files matching ``lms``, and
    into the run's scoped stage (which the commit reads); users an in-scope enrollment
    names (``wanted``) are kept even outside the scope."""
    snapshot = BucketFiles(lms.folder, f"{entity.name}.snapshot", lms.buckets)
    for part in source.snapshot(entity):
        if entity is model.USERS:
            part, outsiders = restrict_users(part, scope, wanted)
            outcome.outsiders.append(outsiders)
        else:
            part = restrict_frame(entity, part, scope)
        scoped.write(entity.name, part)
        snapshot.add(part)
    snapshot.close()
    return snapshot


def _memberships(source: Source, diff_in: DiffInput) -> dict[str, pd.DataFrame]:
    """Every user's LMS memberships, which a run over some schools needs to tell which users
    it may archive (those whose every school it covers)."""
    if diff_in.scope.portal_wide:
        return {}
    entity = model.USER_ORGANIZATIONS
    current = read_current(source.conn, source.portal_id, source.provider, entity)
    return {entity.name: current}


def _spill_lms(
    source: Source,
    entity: model.Entity,
    scope: Scope,
    folder: Path,
    outcome: Outcome,
    snapshot: BucketFiles | None,
) -> BucketFiles:
    """The entity's LMS rows into bucket files (as many buckets as the snapshot's, when it
    was spilled first), counting what the guards and the report need on the way."""
    buckets = (
        snapshot.buckets
        if snapshot is not None
        else bucket_count(max(source.snapshot_rows(entity), source.lms_rows(entity)))
    )
    lms = BucketFiles(folder, f"{entity.name}.lms", buckets)
    active = 0
    for part in source.lms(entity):
        active += int(part["active"].sum())
        outcome.guard_bases.append(guards.active_base({entity.name: part}, scope))
        lms.add(part)
    lms.close()
    outcome.active_lms[entity.name] = active
    return lms


def _spill_enrollments(
    source: Source, diff_in: DiffInput, scoped: StageWriter, folder: Path, outcome: Outcome
) -> tuple[BucketFiles, pd.Series | None]:
    """The snapshot's enrollments into bucket files, restricted to the scope, counted per
    school for the summary on the way; with the users the scoped enrollments name (a run
    over some schools keeps those users even when their own school is outside it)."""
    entity = model.ENROLLMENTS
    sections = source.data.read_columns(
        source.stage, model.SECTIONS.name, ["sis_key", "organization_key"]
    )
    buckets = bucket_count(max(source.snapshot_rows(entity), source.lms_rows(entity)))
    spilled = BucketFiles(folder, f"{entity.name}.snapshot", buckets)
    wanted: list[pd.Series] = []
    for part in source.snapshot(entity):
        outcome.enrollments_per_org.append(enrollments_per_org(part, sections))
        outcome.enrollments_active += int((part["sis_status"] == model.ACTIVE).sum())
        part = restrict_frame(entity, part, diff_in.scope)
        scoped.write(entity.name, part)
        spilled.add(part)
        if not diff_in.scope.portal_wide:
            wanted.append(part["user_key"].drop_duplicates())
    spilled.close()
    users = pd.concat(wanted, ignore_index=True).drop_duplicates() if wanted else None
    return spilled, users


def _empty_current(entity: model.Entity) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "id": pd.Series(dtype="Int64"),
            "sis_key": pd.Series(dtype="string"),
            "active": pd.Series(dtype=bool),
        }
    )
    for f in entity.fields:
        frame[f] = pd.Series(dtype="string")
    return frame
