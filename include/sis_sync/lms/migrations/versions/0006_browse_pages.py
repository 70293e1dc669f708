"""Browse pages: folded search text, their lists' indexes, records' sync history, counts.

- ``lms_users.search_text`` and ``lms_sections.search_text``: the name, email and ids folded
  (lower case, no accents; ``include/sis_sync/search.py``), written by every commit, so a
  search ignores case and accents alike on both stores. Filled here for existing rows.
- Partial indexes over people (by role) and classes in name order, one of active rows and one
  of archived rows: a list's page is one range read, whichever state it shows.
- A school's members and classes, a person's schools, a class's and a person's enrollments.
- Partial indexes of the actions on users and on sections by key: a record's sync history.
  Enrollment and membership actions (most of an initial sync) write no entry to them.
- ``sis_sync_counts``: the overview's counts per portal and school (the membership and
  enrollment indexes hold ``archived_at`` so that a commit recounts from the indexes alone).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from include.sis_sync.lms.bulk import read_frame, temp_table, update_from
from include.sis_sync.search import SEARCH_FIELDS, search_text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BACKFILL_ROWS = 200_000


def upgrade() -> None:
    for entity in SEARCH_FIELDS:
        op.add_column(f"lms_{entity}", sa.Column("search_text", sa.Text, nullable=True))
        _backfill(entity)
    for state, condition in (("active", "IS NULL"), ("archived", "IS NOT NULL")):
        where = sa.text(f"archived_at {condition}")
        for table, columns in (("lms_users", ["portal_id", "role"]), ("lms_sections", ["portal_id"])):
            op.create_index(
                f"ix_{table}_{state}",
                table,
                [*columns, "search_text", "id"],
                sqlite_where=where,
                postgresql_where=where,
            )
    members, enrollments = "lms_user_organizations", "lms_enrollments"
    school_columns = ["portal_id", "organization_key", "role", "archived_at"]
    op.create_index(f"ix_{members}_school", members, school_columns)
    op.create_index(f"ix_{members}_user", members, ["portal_id", "user_key"])
    op.create_index("ix_lms_sections_school", "lms_sections", ["portal_id", "organization_key"])
    section_columns = ["portal_id", "section_key", "archived_at"]
    op.create_index(f"ix_{enrollments}_section", enrollments, section_columns)
    op.create_index(f"ix_{enrollments}_user", enrollments, ["portal_id", "user_key"])
    for entity in SEARCH_FIELDS:
        where = sa.text(f"entity = '{entity}'")
        op.create_index(
            f"ix_sis_sync_actions_{entity}_history",
            "sis_sync_actions",
            ["portal_id", "sis_key", "run_id"],
            sqlite_where=where,
            postgresql_where=where,
        )
    op.create_table(
        "sis_sync_counts",
        sa.Column("portal_id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(16), primary_key=True),
        sa.Column("school_key", sa.String(255), primary_key=True),
        sa.Column("what", sa.String(32), primary_key=True),
        sa.Column("active", sa.Integer, nullable=False),
        sa.Column("archived", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer, nullable=True),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
    )


def _backfill(entity: str) -> None:
    """Fill search_text of the rows already there, a chunk of ids at a time."""
    conn, table = op.get_bind(), f"lms_{entity}"
    columns = ", ".join(SEARCH_FIELDS[entity])
    last = 0
    while True:
        frame = read_frame(
            conn,
            f"SELECT id, {columns} FROM {table} WHERE id > {last} ORDER BY id LIMIT {BACKFILL_ROWS}",
        )
        if frame.empty:
            return
        rows = frame[["id"]].assign(search_text=search_text(entity, frame))
        source = temp_table(conn, "sis_sync_search", [("id", "INTEGER"), ("search_text", "TEXT")], rows)
        update_from(conn, table, source, ["search_text"])
        last = int(frame["id"].max())


def downgrade() -> None:
    op.drop_table("sis_sync_counts")
    for entity in SEARCH_FIELDS:
        op.drop_index(f"ix_sis_sync_actions_{entity}_history", "sis_sync_actions")
    for name, table in (
        ("school", "lms_user_organizations"),
        ("user", "lms_user_organizations"),
        ("school", "lms_sections"),
        ("section", "lms_enrollments"),
        ("user", "lms_enrollments"),
    ):
        op.drop_index(f"ix_{table}_{name}", table)
    for state in ("active", "archived"):
        for table in ("lms_users", "lms_sections"):
            op.drop_index(f"ix_{table}_{state}", table)
    for entity in SEARCH_FIELDS:
        with op.batch_alter_table(f"lms_{entity}") as batch:
            batch.drop_column("search_text")
