"""Alembic environment for the LMS database; run through ``include.sis_sync.lms.db.migrate``."""

from __future__ import annotations

from alembic import context

from include.sis_sync.lms.schema import metadata

config = context.config


def run_migrations() -> None:
    """Migrate over the connection the caller passed in ``config.attributes``."""
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
