"""What the SIS said of its schools in its last complete read, kept as a small summary.

The browse pages list the schools the SIS sends, whether the portal syncs them, and how many
users and sections each had in that read. Run data holds the snapshot only until retention
deletes it, so the diff stage keeps this summary in ``sis_sync_schools``: one row per school
(or other organization) of the portal with its counts, replaced by each read that carries
organizations completely. A quick sync (organizations as a delta or absent) leaves it as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow.compute as pc
import sqlalchemy as sa

from include.sis_sync import model
from include.sis_sync.lms import counts, schema
from include.sis_sync.lms.bulk import insert_frame
from include.sis_sync.lms.db import write_transaction
from include.sis_sync.runs import now

ROLE_COUNTS = ("student", "teacher", "administrator")


def summarise(
    frames: Mapping[str, pd.DataFrame],
    synced: frozenset[str] | None,
    enrollments: pd.Series | None = None,
) -> pd.DataFrame:
    """One row per organization of the read: its fields, whether the portal syncs it (None:
    every school), and its active users (all, and by the main roles), sections and
    enrollments in the read (``enrollments``: counted per organization already, when the
    read's enrollments are too many to hold; see :func:`enrollments_per_org`)."""
    if enrollments is None:
        enrollments = _per_org(_enrollment_schools(frames))
    orgs = frames[model.ORGANIZATIONS.name]
    orgs = orgs[orgs["sis_status"] == model.ACTIVE]
    is_school = orgs["kind"] == "school"
    synced_flag = is_school if synced is None else is_school & orgs["sis_key"].isin(list(synced))
    memberships = _memberships(frames.get(model.USERS.name))
    counts = {
        "users": _per_org(memberships["organization_key"]),
        **{
            f"{role}s": _per_org(memberships.loc[memberships["role"] == role, "organization_key"])
            for role in ROLE_COUNTS
        },
        "sections": _per_org(_live(frames.get(model.SECTIONS.name), "organization_key")),
        "enrollments": enrollments,
    }
    summary = pd.DataFrame(
        {
            "sis_key": orgs["sis_key"],
            "name": orgs["name"],
            "kind": orgs["kind"],
            "parent_key": orgs["parent_key"],
            "school_number": orgs["school_number"],
            "synced": synced_flag.astype(bool),
        }
    )
    for column, per_org in counts.items():
        summary[column] = summary["sis_key"].map(per_org).fillna(0).astype("int64")
    return summary.reset_index(drop=True)


def _live(frame: pd.DataFrame | None, column: str) -> pd.Series:
    if frame is None or frame.empty:
        return pd.Series(dtype="string")
    return frame.loc[frame["sis_status"] == model.ACTIVE, column]


def _memberships(users: pd.DataFrame | None) -> pd.DataFrame:
    """One row per active user and organization: the organization's key and the user's role.
    Split once, by Arrow: a million users' lists split in Python took seconds per role."""
    if users is None or users.empty:
        return pd.DataFrame(
            {"organization_key": pd.Series(dtype="string"), "role": pd.Series(dtype="string")}
        )
    live = users[users["sis_status"] == model.ACTIVE]
    lists = pc.split_pattern(model.arrow_keys(live["organizations"]), ",")
    users_of = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    return pd.DataFrame(
        {
            "organization_key": pd.Series(pc.list_flatten(lists), dtype="string"),
            "role": live["role"].to_numpy()[users_of],
        }
    )


def _enrollment_schools(frames: Mapping[str, pd.DataFrame]) -> pd.Series:
    """Each active enrollment's school: its section's, else its own organization key."""
    enrollments = frames.get(model.ENROLLMENTS.name)
    if enrollments is None or enrollments.empty:
        return pd.Series(dtype="string")
    live = enrollments[enrollments["sis_status"] == model.ACTIVE]
    sections = frames.get(model.SECTIONS.name)
    school = pd.Series(pd.NA, index=live.index, dtype="string")
    if sections is not None and not sections.empty:
        by_section = sections.drop_duplicates("sis_key").set_index("sis_key")["organization_key"]
        school = live["section_key"].map(by_section).astype("string")
    return school.fillna(live["organization_key"])


def _per_org(keys: pd.Series) -> pd.Series:
    return keys.dropna().value_counts()


def enrollments_per_org(enrollments: pd.DataFrame, sections: pd.DataFrame | None) -> pd.Series:
    """Active enrollments per organization of a part of the read's enrollments: the parts'
    counts add up to what :func:`summarise` counts from the whole."""
    frames = {model.ENROLLMENTS.name: enrollments}
    if sections is not None:
        frames[model.SECTIONS.name] = sections
    return _per_org(_enrollment_schools(frames))


def totals(frames: Mapping[str, pd.DataFrame], enrollments: int | None = None) -> dict[str, int]:
    """The read's active schools, people by role, sections and enrollments (``enrollments``:
    counted already), each counted once (a person in two schools is one person)."""
    orgs = _live(frames.get(model.ORGANIZATIONS.name), "kind")
    users = _live(frames.get(model.USERS.name), "role")
    found = {
        "schools": int((orgs == "school").sum()),
        **{what: int((users == role).sum()) for what, role in counts.ROLE_OF.items()},
        "sections": len(_live(frames.get(model.SECTIONS.name), "sis_key")),
        "enrollments": len(_live(frames.get(model.ENROLLMENTS.name), "sis_key"))
        if enrollments is None
        else enrollments,
    }
    return found


def write(
    engine: sa.Engine,
    portal_id: str,
    run_id: int,
    summary: pd.DataFrame,
    read_totals: Mapping[str, int],
) -> None:
    """Replace the portal's summary and its SIS counts with this read's, in one transaction."""
    table = schema.schools
    with write_transaction(engine) as conn:
        conn.execute(sa.delete(table).where(table.c.portal_id == portal_id))
        insert_frame(
            conn,
            table.name,
            summary,
            {"portal_id": portal_id, "run_id": run_id, "read_at": now()},
        )
        counts.replace(conn, portal_id, counts.SIS, counts.sis_counts(summary, read_totals), run_id)


def read(engine: sa.Engine, portal_id: str) -> list[dict[str, Any]]:
    """The portal's schools as the SIS last sent them, by name."""
    table = schema.schools
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table).where(table.c.portal_id == portal_id).order_by(table.c.name)
        ).mappings()
        return [dict(r) for r in rows]
