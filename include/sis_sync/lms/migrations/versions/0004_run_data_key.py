"""Run data keyed by a random key of the run, not only its id; retention of staged values.

``sis_sync_runs.data_key`` names the run's data folder (``run_<id>_<data_key>``): an LMS
database recreated from scratch, or a second one sharing ``SIS_SYNC_DATA_URL``, numbers its
runs from 1 again, and must never read another database's files of "run 1". Runs from before
this migration keep their folder ``run_<id>``.

``sis_sync_runs.purged_at`` is when retention forgot the personal values of the sync's staged
actions (the before and after values of updates, people's names in labels).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sis_sync_runs", sa.Column("data_key", sa.String(32), nullable=True))
    op.add_column(
        "sis_sync_runs", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("sis_sync_runs") as batch:
        batch.drop_column("data_key")
        batch.drop_column("purged_at")
