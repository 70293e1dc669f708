"""What the SIS sent of its schools in its last complete read.

``sis_sync_schools`` holds one row per organization of a portal's last read that carried
organizations completely: its fields, whether the portal syncs it, and its active users (all,
students, teachers, administrators), sections and enrollments in that read. The browse pages read it instead of run data, which retention deletes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sis_sync_schools",
        sa.Column("portal_id", sa.String(64), primary_key=True),
        sa.Column("sis_key", sa.String(255), primary_key=True),
        sa.Column("name", sa.Text, nullable=True),
        sa.Column("kind", sa.String(32), nullable=True),
        sa.Column("parent_key", sa.String(255), nullable=True),
        sa.Column("school_number", sa.Text, nullable=True),
        sa.Column("synced", sa.Boolean, nullable=False),
        sa.Column("users", sa.Integer, nullable=False),
        sa.Column("students", sa.Integer, nullable=False),
        sa.Column("teachers", sa.Integer, nullable=False),
        sa.Column("administrators", sa.Integer, nullable=False),
        sa.Column("sections", sa.Integer, nullable=False),
        sa.Column("enrollments", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sis_sync_schools")
