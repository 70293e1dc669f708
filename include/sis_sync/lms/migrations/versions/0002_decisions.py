"""Decisions that stay decided: attempts, stages, who decided, run events, action causes.

- ``sis_sync_runs``: ``attempt`` (a whole DAG run cleared and run again is a new sync with its
  own row), ``stage`` (the stage a run is in, or last reached), ``decided_by``/``decided_at``
  (who approved or rejected, and when; expiry has a time and nobody), replacing
  ``approved_by``.
- ``sis_sync_run_events``: every decision, refusal and lock take-over, with who and when.
- ``sis_sync_actions.parent_user_key``/``parent_section_key``: the archived user and section
  that explain a membership's or an enrollment's archive, so unticking the parents keeps the
  child; the action index also holds ``sis_key``, so a warning finds its action, and an
  action list pages by key, without a second index on the run's millions of actions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sis_sync_runs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("stage", sa.String(32), nullable=True))
        batch.alter_column("approved_by", new_column_name="decided_by")
        batch.add_column(sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("uq_sis_sync_runs_dag_id_airflow_run_id", type_="unique")
        batch.create_unique_constraint(
            "uq_sis_sync_runs_dag_id_airflow_run_id_attempt",
            ["dag_id", "airflow_run_id", "attempt"],
        )
    op.create_table(
        "sis_sync_run_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(250), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sis_sync_run_events"),
    )
    op.create_index("ix_sis_sync_run_events_run_id", "sis_sync_run_events", ["run_id"])
    with op.batch_alter_table("sis_sync_actions") as batch:
        batch.add_column(sa.Column("parent_user_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("parent_section_key", sa.String(255), nullable=True))
    op.drop_index("ix_sis_sync_actions_run", "sis_sync_actions")
    op.create_index(
        "ix_sis_sync_actions_run", "sis_sync_actions", ["run_id", "entity", "action", "sis_key"]
    )


def downgrade() -> None:
    op.drop_index("ix_sis_sync_actions_run", "sis_sync_actions")
    op.create_index("ix_sis_sync_actions_run", "sis_sync_actions", ["run_id", "entity", "action"])
    with op.batch_alter_table("sis_sync_actions") as batch:
        batch.drop_column("parent_section_key")
        batch.drop_column("parent_user_key")
    op.drop_table("sis_sync_run_events")
    with op.batch_alter_table("sis_sync_runs") as batch:
        batch.drop_constraint("uq_sis_sync_runs_dag_id_airflow_run_id_attempt", type_="unique")
        batch.create_unique_constraint(
            "uq_sis_sync_runs_dag_id_airflow_run_id", ["dag_id", "airflow_run_id"]
        )
        batch.drop_column("decided_at")
        batch.alter_column("decided_by", new_column_name="approved_by")
        batch.drop_column("stage")
        batch.drop_column("attempt")
