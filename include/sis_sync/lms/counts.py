"""The overview's counts: schools, people by role, sections and enrollments of a portal, for the
whole portal and per school; active and archived in the LMS, and in the SIS's last read.

Counting a million people's memberships and six million enrollments takes seconds, too long
for a page, so the counts are kept in ``sis_sync_counts``: the LMS's by every commit, in its
transaction (so they always equal the LMS's rows), and the SIS's by the diff stage of a read
that carries organizations completely (``school_summary.write``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import sqlalchemy as sa

from include.sis_sync.lms import schema
from include.sis_sync.lms.bulk import insert_frame, placeholder, read_frame
from include.sis_sync.lms.db import write_transaction
from include.sis_sync.runs import now

WHOLE_PORTAL = ""  # the school_key of a portal's totals
LMS, SIS = "lms", "sis"
# The overview's rows, in order; people are counted by their role.
WHATS = ("schools", "students", "teachers", "administrators", "sections", "enrollments")
ROLE_OF = {"students": "student", "teachers": "teacher", "administrators": "administrator"}
_WHAT_OF_ROLE = {role: what for what, role in ROLE_OF.items()}
# Each count reads an index only: count(archived_at) counts the archived (NULL is active).
_COUNTS = "count(*) AS n, count(archived_at) AS archived"


def count_lms(conn: sa.Connection, portal_id: str, run_id: int | None) -> None:
    """Count the portal's LMS rows (all of them, whichever provider) and keep the counts.

    Every query groups by the leading columns of an index that also holds ``archived_at``
    (migration 0006), so no count reads a table's rows: on the large district the whole
    recount takes a few seconds of the commit."""
    ph = placeholder(conn)
    where = f"WHERE portal_id = {ph}"
    parts = [
        _counted(
            conn,
            f"SELECT '' AS school_key, 'schools' AS what, {_COUNTS} "
            f"FROM lms_organizations {where} AND kind = 'school'",
            portal_id,
        ),
        _counted(
            conn,
            f"SELECT '' AS school_key, role AS what, {_COUNTS} FROM lms_users {where} "
            "GROUP BY role",
            portal_id,
        ),
        _counted(
            conn,
            f"SELECT organization_key AS school_key, role AS what, {_COUNTS} "
            f"FROM lms_user_organizations {where} GROUP BY organization_key, role",
            portal_id,
        ),
        _with_whole(
            _counted(
                conn,
                f"SELECT organization_key AS school_key, 'sections' AS what, {_COUNTS} "
                f"FROM lms_sections {where} GROUP BY organization_key",
                portal_id,
            )
        ),
        _enrollments(conn, portal_id),
    ]
    counted = pd.concat(parts, ignore_index=True).dropna(subset=["school_key"])
    counted["what"] = counted["what"].map(lambda w: _WHAT_OF_ROLE.get(w, w))
    replace(conn, portal_id, LMS, _by_state(counted), run_id)


def _counted(conn: sa.Connection, sql: str, portal_id: str) -> pd.DataFrame:
    return read_frame(conn, sql, (portal_id,))


def _with_whole(per_school: pd.DataFrame) -> pd.DataFrame:
    """Per-school counts and their total, which includes rows of no school."""
    whole = per_school.groupby("what", as_index=False)[["n", "archived"]].sum()
    return pd.concat([per_school, whole.assign(school_key=WHOLE_PORTAL)], ignore_index=True)


def _enrollments(conn: sa.Connection, portal_id: str) -> pd.DataFrame:
    """Enrollments per school (their class's) and in all: one pass over an index."""
    ph = placeholder(conn)
    per_section = read_frame(
        conn,
        f"SELECT section_key, {_COUNTS} FROM lms_enrollments WHERE portal_id = {ph} "
        "GROUP BY section_key",
        (portal_id,),
    )
    schools = read_frame(
        conn,
        f"SELECT sis_key, organization_key FROM lms_sections WHERE portal_id = {ph}",
        (portal_id,),
    ).drop_duplicates("sis_key")
    school_of = schools.set_index("sis_key")["organization_key"]
    per_section["school_key"] = per_section["section_key"].map(school_of)
    per_section["what"] = "enrollments"
    return _with_whole(per_section[["school_key", "what", "n", "archived"]])


def _by_state(counted: pd.DataFrame) -> pd.DataFrame:
    """One row per school and what, with its active and archived counts."""
    summed = (
        counted.astype({"n": "int64", "archived": "int64"})
        .groupby(["school_key", "what"], as_index=False)[["n", "archived"]]
        .sum()
    )
    return pd.DataFrame(
        {
            "school_key": summed["school_key"].astype(str),
            "what": summed["what"].astype(str),
            "active": summed["n"] - summed["archived"],
            "archived": summed["archived"],
        }
    )


def replace(
    conn: sa.Connection, portal_id: str, source: str, rows: pd.DataFrame, run_id: int | None
) -> None:
    """Replace the portal's counts of one source with ``rows`` (school_key, what, active,
    archived)."""
    table = schema.counts
    conn.execute(sa.delete(table).where(table.c.portal_id == portal_id, table.c.source == source))
    fixed = {"portal_id": portal_id, "source": source, "run_id": run_id, "counted_at": now()}
    insert_frame(conn, table.name, rows[["school_key", "what", "active", "archived"]], fixed)


def read(engine: sa.Engine, portal_id: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The portal's counts, ``{school_key: {what: {"active", "archived", "sis"}}}``, with the
    whole portal under :data:`WHOLE_PORTAL`. An LMS never counted yet (one migrated from
    before the counts) is counted now."""
    table = schema.counts
    query = sa.select(table).where(table.c.portal_id == portal_id)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    if not any(r["source"] == LMS for r in rows):
        with write_transaction(engine) as conn:
            count_lms(conn, portal_id, None)
            rows = [dict(r) for r in conn.execute(query).mappings()]
    counts: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        per_what = counts.setdefault(row["school_key"], {})
        for what in WHATS if row["school_key"] == WHOLE_PORTAL else WHATS[1:]:
            per_what.setdefault(what, {"active": 0, "archived": 0, "sis": None})
        cell = per_what.setdefault(row["what"], {"active": 0, "archived": 0, "sis": None})
        if row["source"] == LMS:
            cell["active"], cell["archived"] = row["active"], row["archived"]
        else:
            cell["sis"] = row["active"]
    return counts


def sis_counts(summary: pd.DataFrame, totals: Mapping[str, int]) -> pd.DataFrame:
    """The SIS's counts in :func:`replace`'s shape: per school from the school summary, and
    the read's whole-portal ``totals`` (people are counted once, however many schools)."""
    per_school = summary[summary["kind"] == "school"].melt(
        id_vars="sis_key", value_vars=[w for w in WHATS if w != "schools"], var_name="what"
    )
    rows = pd.concat(
        [
            pd.DataFrame(
                {
                    "school_key": per_school["sis_key"],
                    "what": per_school["what"],
                    "active": per_school["value"],
                }
            ),
            pd.DataFrame(
                {"school_key": WHOLE_PORTAL, "what": list(totals), "active": list(totals.values())}
            ),
        ],
        ignore_index=True,
    )
    return rows.assign(archived=0)
