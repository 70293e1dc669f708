"""The Alembic migrations build exactly the tables the code queries (``lms/schema.py``), on
SQLite and on PostgreSQL, and they go down and up again."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from include.sis_sync.lms import schema
from include.sis_sync.lms.db import engine_for, head_revision, migrate


def _differences(url: str) -> list:
    with engine_for(url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        return compare_metadata(context, schema.metadata)


def test_migrated_database_matches_the_schema(lms_url: str) -> None:
    assert _differences(lms_url) == []


def test_migrations_go_down_and_up_again(lms_url: str) -> None:
    from alembic import command

    from include.sis_sync.lms.db import _alembic_config

    with engine_for(lms_url).begin() as conn:
        command.downgrade(_alembic_config(conn), "0001")
    assert migrate(lms_url) == head_revision()
    assert _differences(lms_url) == []
