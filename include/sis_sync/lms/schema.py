"""The LMS store and the staging tables, as SQLAlchemy Core tables.

Alembic migrations (``lms/migrations``) create and evolve these tables; this module is what
queries use. Every LMS table has the same bookkeeping columns: a surrogate ``id`` kept for ever
(also through archive and reactivation), the portal and provider, the provider's ``sis_key``,
``archived_at`` (NULL = active) and timestamps. Canonical fields are stored as text, exactly as
the canonical model holds them.
"""

from __future__ import annotations

import sqlalchemy as sa

from include.sis_sync import model
from include.sis_sync.search import SEARCH_FIELDS

SEARCHABLE = tuple(SEARCH_FIELDS)

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def lms_table_name(entity: str) -> str:
    return f"lms_{entity}"


def _lms_table(entity: model.Entity) -> sa.Table:
    extra: list[sa.SchemaItem] = []
    if entity is model.ORGANIZATIONS:
        extra = [
            sa.Column("slug", sa.String(200), nullable=False),
            sa.UniqueConstraint("portal_id", "slug"),
        ]
    if entity.name in SEARCHABLE:
        # Folded name, email and ids (search.py), for the browse pages' lists (migration 0006).
        extra = [sa.Column("search_text", sa.Text, nullable=True)]
    return sa.Table(
        lms_table_name(entity.name),
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("portal_id", sa.String(64), nullable=False),
        sa.Column("sis_provider", sa.String(32), nullable=False),
        sa.Column("sis_key", sa.String(255), nullable=False),
        *(sa.Column(name, sa.Text, nullable=True) for name in entity.fields),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sync_run_id", sa.Integer, nullable=True),
        sa.UniqueConstraint("portal_id", "sis_provider", "sis_key"),
        *extra,
    )


LMS_TABLES: dict[str, sa.Table] = {e.name: _lms_table(e) for e in model.ENTITIES}


def _browse_indexes() -> frozenset[str]:
    """The browse pages' access paths (migration 0006): people and classes in name order, in
    two partial indexes (active, archived) so that either list pages by a range read; a
    school's members and a person's schools; a class's and a person's enrollments."""
    users, sections = LMS_TABLES["users"], LMS_TABLES["sections"]
    for state, condition in (("active", "IS NULL"), ("archived", "IS NOT NULL")):
        where = sa.text(f"archived_at {condition}")
        for table, columns in ((users, ("portal_id", "role")), (sections, ("portal_id",))):
            sa.Index(
                f"ix_{table.name}_{state}",
                *(table.c[c] for c in (*columns, "search_text", "id")),
                sqlite_where=where,
                postgresql_where=where,
            )
    members, enrollments = LMS_TABLES["user_organizations"], LMS_TABLES["enrollments"]
    # a school's members, and (with role and archived_at) the overview's counts from the index
    sa.Index(
        "ix_lms_user_organizations_school",
        *(members.c[c] for c in ("portal_id", "organization_key", "role", "archived_at")),
    )
    sa.Index("ix_lms_user_organizations_user", members.c.portal_id, members.c.user_key)
    sa.Index("ix_lms_sections_school", sections.c.portal_id, sections.c.organization_key)
    sa.Index(
        "ix_lms_enrollments_section",
        *(enrollments.c[c] for c in ("portal_id", "section_key", "archived_at")),
    )
    sa.Index("ix_lms_enrollments_user", enrollments.c.portal_id, enrollments.c.user_key)
    return frozenset(
        ix.name for t in (users, sections, members, enrollments) for ix in t.indexes if ix.name
    )


# Only the pages read these: a commit adding most of a table builds them once afterwards.
BROWSE_INDEXES = _browse_indexes()

runs = sa.Table(
    "sis_sync_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("portal_id", sa.String(64), nullable=False, index=True),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("airflow_run_id", sa.String(250), nullable=False),
    # A whole DAG run cleared and run again is a new sync: attempt 2, 3, ... of that run.
    # Migration 0002 gave the column a server default (rows of earlier runs are attempt 1).
    sa.Column("attempt", sa.Integer, nullable=False, default=1, server_default="1"),
    sa.Column("stage", sa.String(32), nullable=True),  # the stage it is in, or last reached
    sa.Column("mode", sa.String(16), nullable=False),  # asked: full | quick
    sa.Column("ran_as", sa.String(16), nullable=True),  # what it really was: full | quick
    sa.Column("trigger", sa.String(16), nullable=False),  # scheduled | manual | backfill
    sa.Column("triggered_by", sa.String(250), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("schools", sa.Text, nullable=True),  # JSON list of the run's subset, or NULL
    sa.Column("source", sa.Text, nullable=True),  # where the data came from (drop path)
    sa.Column("source_date", sa.Date, nullable=True),  # the drop's date, for file drops
    sa.Column("checkpoint", sa.Text, nullable=True),
    sa.Column("auto_commit", sa.Boolean, nullable=False, default=False),
    sa.Column("allow_mass_archive", sa.Boolean, nullable=False, default=False),
    sa.Column("counts", sa.Text, nullable=True),  # JSON {entity: {action: n}}
    # JSON {staged|applied|not_selected|skipped: {label: {action: n}}}, users per role
    sa.Column("action_counts", sa.Text, nullable=True),
    sa.Column("guard_decisions", sa.Text, nullable=True),  # JSON list of guard results
    sa.Column("decision", sa.String(32), nullable=True),  # auto_commit | approval
    sa.Column("decided_by", sa.String(250), nullable=True),  # who approved or rejected
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("selection_at", sa.DateTime(timezone=True), nullable=True),  # last (un)ticking
    sa.Column("timings", sa.Text, nullable=True),  # JSON {task: seconds}
    sa.Column("error", sa.Text, nullable=True),
    # Names the run's data folder with its id: see migration 0004.
    sa.Column("data_key", sa.String(32), nullable=True),
    # When retention forgot its actions' personal values (see staging.purge_personal_values).
    sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("dag_id", "airflow_run_id", "attempt"),
)

# What happened to a run and who did it: decisions, refused commits, lock take-overs.
run_events = sa.Table(
    "sis_sync_run_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(250), nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
)

# One row per portal while a sync of it is in flight: the per-portal lock.
locks = sa.Table(
    "sis_sync_locks",
    metadata,
    sa.Column("portal_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
)

actions = sa.Table(
    "sis_sync_actions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("portal_id", sa.String(64), nullable=False),
    sa.Column("entity", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # add | update | archive | reactivate
    sa.Column("sis_key", sa.String(255), nullable=False),
    sa.Column("lms_id", sa.Integer, nullable=True),
    sa.Column("school_key", sa.String(255), nullable=True),
    sa.Column("kind", sa.String(32), nullable=True),  # users: primary role
    sa.Column("reason", sa.String(64), nullable=True),
    sa.Column("changes", sa.Text, nullable=True),  # JSON {field: [before, after]}
    sa.Column("label", sa.Text, nullable=True),  # a person's or record's name, for the pages
    # A membership's or enrollment's archive: the archived user and section that explain it
    # (unticking every one of them keeps the child).
    sa.Column("parent_user_key", sa.String(255), nullable=True),
    sa.Column("parent_section_key", sa.String(255), nullable=True),
    sa.Column("selected", sa.Boolean, nullable=False, default=True),
    sa.Column("status", sa.String(16), nullable=False),  # staged | applied | skipped
    # one index serves counts per action, lists paged by key, and a warning's action
    sa.Index("ix_sis_sync_actions_run", "run_id", "entity", "action", "sis_key"),
    # half of each page free for the commit's status update of every row (migration 0007)
    postgresql_with={"fillfactor": 50},
)
# Only unticked actions (few, and none at staging): a list counts its unticked ones at once.
sa.Index(
    "ix_sis_sync_actions_unticked",
    actions.c.run_id,
    actions.c.entity,
    actions.c.action,
    sqlite_where=actions.c.selected == sa.false(),
    postgresql_where=actions.c.selected == sa.false(),
)
# Written as the index's condition is, so that SQLite sees a query may use it.
UNTICKED = actions.c.selected == sa.false()
# A person's or class's sync history (migration 0006): partial, so that staging millions of
# enrollment actions writes no entry to it.
for _entity in SEARCHABLE:
    sa.Index(
        f"ix_sis_sync_actions_{_entity}_history",
        actions.c.portal_id,
        actions.c.sis_key,
        actions.c.run_id,
        sqlite_where=sa.text(f"entity = '{_entity}'"),
        postgresql_where=sa.text(f"entity = '{_entity}'"),
    )

# What the SIS sent of its organizations in its last complete read (school_summary.py).
schools = sa.Table(
    "sis_sync_schools",
    metadata,
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
    sa.Column("run_id", sa.Integer, nullable=False),  # the sync whose read this is
    sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
)

# The overview's counts (migration 0006): per portal (school_key "") and per school, of
# schools, people by role, sections and enrollments; active and archived in the LMS (counted
# by each commit, in its transaction) and in the SIS's last complete read (by the diff stage).
counts = sa.Table(
    "sis_sync_counts",
    metadata,
    sa.Column("portal_id", sa.String(64), primary_key=True),
    sa.Column("source", sa.String(16), primary_key=True),  # lms | sis
    sa.Column("school_key", sa.String(255), primary_key=True),
    sa.Column("what", sa.String(32), primary_key=True),
    sa.Column("active", sa.Integer, nullable=False),
    sa.Column("archived", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Integer, nullable=True),
    sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
)

warnings = sa.Table(
    "sis_sync_warnings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("action_id", sa.Integer, nullable=True),
    sa.Column("entity", sa.String(32), nullable=True),
    sa.Column("sis_key", sa.String(255), nullable=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)
