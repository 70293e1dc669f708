"""Initial LMS store and staging tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copy of the canonical fields at this revision: migrations never import live code.
LMS_FIELDS = {
    "organizations": ["name", "kind", "parent_key", "school_number"],
    "terms": ["name", "kind", "start_date", "end_date", "parent_key", "school_year"],
    "courses": ["title", "code", "organization_key", "school_year_key", "grades", "subjects"],
    "users": [
        "role", "roles", "given_name", "family_name", "middle_name", "email", "username",
        "sis_id", "student_number", "teacher_number", "grades", "organizations", "enabled",
    ],
    "user_organizations": ["user_key", "organization_key", "role"],
    "sections": [
        "name", "organization_key", "course_key", "term_keys", "period", "subject", "grades",
        "code", "kind",
    ],
    "enrollments": [
        "section_key", "user_key", "organization_key", "role", "primary", "begin_date",
        "end_date",
    ],
}


def _lms_table(entity: str, fields: list[str]) -> None:
    table = f"lms_{entity}"
    extra = []
    if entity == "organizations":
        extra = [
            sa.Column("slug", sa.String(200), nullable=False),
            sa.UniqueConstraint("portal_id", "slug", name=f"uq_{table}_portal_id_slug"),
        ]
    op.create_table(
        table,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("portal_id", sa.String(64), nullable=False),
        sa.Column("sis_provider", sa.String(32), nullable=False),
        sa.Column("sis_key", sa.String(255), nullable=False),
        *(sa.Column(name, sa.Text, nullable=True) for name in fields),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sync_run_id", sa.Integer, nullable=True),
        sa.UniqueConstraint(
            "portal_id", "sis_provider", "sis_key",
            name=f"uq_{table}_portal_id_sis_provider_sis_key",
        ),
        *extra,
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
    )


def upgrade() -> None:
    for entity, fields in LMS_FIELDS.items():
        _lms_table(entity, fields)
    op.create_table(
        "sis_sync_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("portal_id", sa.String(64), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("ran_as", sa.String(16), nullable=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("triggered_by", sa.String(250), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("schools", sa.Text, nullable=True),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("source_date", sa.Date, nullable=True),
        sa.Column("checkpoint", sa.Text, nullable=True),
        sa.Column("auto_commit", sa.Boolean, nullable=False),
        sa.Column("allow_mass_archive", sa.Boolean, nullable=False),
        sa.Column("counts", sa.Text, nullable=True),
        sa.Column("guard_decisions", sa.Text, nullable=True),
        sa.Column("decision", sa.String(32), nullable=True),
        sa.Column("approved_by", sa.String(250), nullable=True),
        sa.Column("timings", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sis_sync_runs"),
        sa.UniqueConstraint("dag_id", "airflow_run_id", name="uq_sis_sync_runs_dag_id_airflow_run_id"),
    )
    op.create_index("ix_sis_sync_runs_portal_id", "sis_sync_runs", ["portal_id"])
    op.create_table(
        "sis_sync_locks",
        sa.Column("portal_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("portal_id", name="pk_sis_sync_locks"),
    )
    op.create_table(
        "sis_sync_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("portal_id", sa.String(64), nullable=False),
        sa.Column("entity", sa.String(32), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("sis_key", sa.String(255), nullable=False),
        sa.Column("lms_id", sa.Integer, nullable=True),
        sa.Column("school_key", sa.String(255), nullable=True),
        sa.Column("kind", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("changes", sa.Text, nullable=True),
        sa.Column("selected", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sis_sync_actions"),
    )
    op.create_index("ix_sis_sync_actions_run", "sis_sync_actions", ["run_id", "entity", "action"])
    op.create_table(
        "sis_sync_warnings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("action_id", sa.Integer, nullable=True),
        sa.Column("entity", sa.String(32), nullable=True),
        sa.Column("sis_key", sa.String(255), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sis_sync_warnings"),
    )
    op.create_index("ix_sis_sync_warnings_run_id", "sis_sync_warnings", ["run_id"])


def downgrade() -> None:
    for table in ("sis_sync_warnings", "sis_sync_actions", "sis_sync_locks", "sis_sync_runs"):
        op.drop_table(table)
    for entity in reversed(list(LMS_FIELDS)):
        op.drop_table(f"lms_{entity}")
