"""Admin pages: action labels, and when a sync's selection last changed.

``sis_sync_actions.label`` holds a user's given and family name, or a record's name or title
(NULL for memberships and enrollments), so the admin pages' action lists show and search
names without reading run data, which retention deletes. ``sis_sync_runs.selection_at`` is when
an admin last ticked or unticked its actions: an Approve given before it is refused.
``sis_sync_runs.action_counts`` keeps a sync's counts per entity (users per role), action and
status, written at staging and at commit, so a report of millions of actions reads one row.
``ix_sis_sync_actions_unticked`` is a partial index of the unticked actions only: an action
list counts them without reading its millions of ticked ones, and staging (all ticked) does
not pay for it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sis_sync_actions", sa.Column("label", sa.Text, nullable=True))
    op.add_column(
        "sis_sync_runs", sa.Column("selection_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("sis_sync_runs", sa.Column("action_counts", sa.Text, nullable=True))
    unticked = sa.column("selected") == sa.false()
    op.create_index(
        "ix_sis_sync_actions_unticked",
        "sis_sync_actions",
        ["run_id", "entity", "action"],
        sqlite_where=unticked,
        postgresql_where=unticked,
    )


def downgrade() -> None:
    op.drop_index("ix_sis_sync_actions_unticked", "sis_sync_actions")
    with op.batch_alter_table("sis_sync_actions") as batch:
        batch.drop_column("label")
    with op.batch_alter_table("sis_sync_runs") as batch:
        batch.drop_column("selection_at")
        batch.drop_column("action_counts")
