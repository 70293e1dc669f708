"""What the SIS said of its schools in its last complete read, kept as a small summary.

The browse pages list the schools the SIS sends, whether the portal syncs them, and how many
users and sections each had in that read. Run data holds the snapshot only until retention
deletes it, so the diff stage keeps this summary in ``sis_sync_schools``: one row per school
(or other organization) of the portal, replaced by each read that carries organizations
completely. A quick sync (organizations as a delta or absent) leaves it as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import sqlalchemy as sa

from include.sis_sync import model
from include.sis_sync.lms import schema
from include.sis_sync.lms.bulk import insert_frame
from include.sis_sync.lms.db import write_transaction
from include.sis_sync.runs import now


def summarise(frames: Mapping[str, pd.DataFrame], synced: frozenset[str] | None) -> pd.DataFrame:
    """One row per organization of the read: its fields, whether the portal syncs it (None:
    every school), and its active users and sections in the read."""
    orgs = frames[model.ORGANIZATIONS.name]
    orgs = orgs[orgs["sis_status"] == model.ACTIVE]
    users_per_org = _count(frames.get(model.USERS.name), "organizations", split=True)
    sections_per_org = _count(frames.get(model.SECTIONS.name), "organization_key", split=False)
    is_school = orgs["kind"] == "school"
    synced_flag = is_school if synced is None else is_school & orgs["sis_key"].isin(list(synced))
    return pd.DataFrame(
        {
            "sis_key": orgs["sis_key"],
            "name": orgs["name"],
            "kind": orgs["kind"],
            "parent_key": orgs["parent_key"],
            "school_number": orgs["school_number"],
            "synced": synced_flag.astype(bool),
            "users": orgs["sis_key"].map(users_per_org).fillna(0).astype("int64"),
            "sections": orgs["sis_key"].map(sections_per_org).fillna(0).astype("int64"),
        }
    ).reset_index(drop=True)


def _count(frame: pd.DataFrame | None, column: str, *, split: bool) -> pd.Series:
    """Active rows per organization key (a comma list counts once per organization)."""
    if frame is None or frame.empty:
        return pd.Series(dtype="int64")
    keys = frame.loc[frame["sis_status"] == model.ACTIVE, column]
    if split:
        keys = keys.str.split(",").explode()
    return keys.dropna().value_counts()


def write(engine: sa.Engine, portal_id: str, run_id: int, summary: pd.DataFrame) -> None:
    """Replace the portal's summary with this read's, in one transaction."""
    table = schema.schools
    with write_transaction(engine) as conn:
        conn.execute(sa.delete(table).where(table.c.portal_id == portal_id))
        insert_frame(
            conn,
            table.name,
            summary,
            {"portal_id": portal_id, "run_id": run_id, "read_at": now()},
        )


def read(engine: sa.Engine, portal_id: str) -> list[dict[str, Any]]:
    """The portal's schools as the SIS last sent them, by name."""
    table = schema.schools
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table).where(table.c.portal_id == portal_id).order_by(table.c.name)
        ).mappings()
        return [dict(r) for r in rows]
