"""The Alembic migrations build exactly the tables the code queries (``lms/schema.py``), on
SQLite and on PostgreSQL, and they go down and up again."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.migration import MigrationContext
from sqlalchemy.schema import CreateIndex

from include.sis_sync.lms import schema
from include.sis_sync.lms.db import current_revision, engine_for, head_revision, migrate

# Autogenerate compares tables, columns, nullability, indexes, unique constraints and foreign
# keys by default; types and server defaults only when asked. Both are reliable on SQLite and
# PostgreSQL for the plain types used here (Integer, String(n), Text, Boolean, Date, DateTime).
COMPARE_OPTS = {"compare_type": True, "compare_server_default": True}


def _context(conn: sa.Connection) -> MigrationContext:
    return MigrationContext.configure(conn, opts=COMPARE_OPTS)


def _normalized_where(sql: str) -> str:
    """A partial index's condition, without what databases add when they report it back
    (parentheses, ``::type`` casts, table names, case and spacing)."""
    sql = re.sub(r"::[\w ]+", "", sql.lower())
    sql = re.sub(r"\b[a-z_]\w*\.", "", sql)  # table-qualified column names
    return " ".join(sql.replace("(", " ").replace(")", " ").split())


def _declared_where(index: sa.Index, dialect: sa.Dialect) -> str:
    ddl = str(CreateIndex(index).compile(dialect=dialect))
    return _normalized_where(ddl.partition(" WHERE ")[2])


def _where_differences(conn: sa.Connection) -> list[str]:
    """Partial indexes' conditions: autogenerate compares an index's columns but not its
    ``WHERE``, so an index that lost or changed its condition would otherwise pass."""
    inspector = sa.inspect(conn)
    where_option = f"{conn.dialect.name}_where"
    found = []
    for table in schema.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue  # compare_metadata reports the missing table
        reflected = {
            ix["name"]: _normalized_where(str(ix.get("dialect_options", {}).get(where_option, "")))
            for ix in inspector.get_indexes(table.name)
        }
        for index in table.indexes:
            if index.name not in reflected:
                continue  # compare_metadata reports the missing index
            declared = _declared_where(index, conn.dialect)
            if declared != reflected[index.name]:
                found.append(
                    f"index {index.name}: WHERE {reflected[index.name] or '(none)'!r} "
                    f"in the database, WHERE {declared or '(none)'!r} in schema.py"
                )
    return found


def _differences(url: str) -> list:
    """What autogenerate finds between the database and ``schema.metadata``, plus partial
    indexes whose condition differs."""
    with engine_for(url).connect() as conn:
        return [*compare_metadata(_context(conn), schema.metadata), *_where_differences(conn)]


def _described(value: object) -> str:
    """A column's type or server default, or a schema item, as a person reads it."""
    if isinstance(value, sa.DefaultClause):
        value = value.arg
    if isinstance(value, sa.TextClause):
        return value.text
    if isinstance(value, sa.Column):
        return f"{value.table.name}.{value.name} {value.type}"
    if isinstance(value, sa.Index | sa.UniqueConstraint):
        columns = ", ".join(getattr(c, "name", str(c)) for c in value.columns or value.expressions)
        kind = "unique constraint" if isinstance(value, sa.UniqueConstraint) else "index"
        return f"{kind} {value.name} on {value.table.name} ({columns})"
    if isinstance(value, sa.ForeignKeyConstraint):
        return f"foreign key {value.name} on {value.table.name} -> {value.referred_table.name}"
    if isinstance(value, sa.Table):
        return value.name
    if isinstance(value, sa.types.TypeEngine):
        return str(value)
    if isinstance(value, sa.ClauseElement):
        return str(value.compile(compile_kwargs={"literal_binds": True}))
    return repr(value)


def _difference_line(difference: Any) -> str:
    """One difference: ``compare_metadata`` gives ``(op, item...)`` tuples, a column's
    changes as a list of ``(modify_*, schema, table, column, existing, database, code)``."""
    if isinstance(difference, str):
        return difference
    if isinstance(difference, list):
        return "; ".join(
            f"{op} {table}.{column}: {_described(database)!r} in the database, "
            f"{_described(code)!r} in schema.py"
            for op, _schema, table, column, _existing, database, code in difference
        )
    op, *items = difference
    if op in ("add_column", "remove_column"):
        return f"{op} {_described(items[-1])}"
    return f"{op} {_described(items[0])}"


def _report(url: str, differences: list) -> str:
    """The differences one a line, then the migration Alembic would write to remove them."""
    with engine_for(url).connect() as conn:
        script = produce_migrations(_context(conn), schema.metadata)
    lines = "\n".join(f"  - {_difference_line(d)}" for d in differences)
    return (
        f"the {sa.make_url(url).get_backend_name()} database at migration "
        f"{current_revision(url)} differs from include/sis_sync/lms/schema.py "
        "(add = in the code only, remove = in the database only):\n"
        f"{lines}\n"
        "A migration making the database match the code would do (partial indexes' WHERE "
        "not included):\n"
        f"{render_python_code(script.upgrade_ops)}"
    )


def _assert_matches_schema(url: str) -> None:
    differences = _differences(url)
    assert not differences, _report(url, differences)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a new SQLite file, then a new PostgreSQL database (not the
    migrated template the store tests copy)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lms.db'}"
        return
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    name = f"lms_empty_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    yield url
    engine_for(url).dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_empty_database_migrated_to_head_matches_the_schema(empty_url: str) -> None:
    assert sa.inspect(engine_for(empty_url)).get_table_names() == []
    assert migrate(empty_url) == head_revision()
    _assert_matches_schema(empty_url)


def test_a_partial_index_without_its_condition_is_a_difference(lms_url: str) -> None:
    """The check sees an index that lost its ``WHERE`` (autogenerate alone does not)."""
    with engine_for(lms_url).begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_sis_sync_actions_unticked")
        conn.exec_driver_sql(
            "CREATE INDEX ix_sis_sync_actions_unticked ON sis_sync_actions (run_id, entity, action)"
        )
    differences = _differences(lms_url)
    assert differences == [
        "index ix_sis_sync_actions_unticked: WHERE '(none)' in the database, "
        f"WHERE {_declared_where(_unticked(), engine_for(lms_url).dialect)!r} in schema.py"
    ]


def _unticked() -> sa.Index:
    return next(ix for ix in schema.actions.indexes if ix.name == "ix_sis_sync_actions_unticked")


def test_migrations_go_down_and_up_again(lms_url: str) -> None:
    from alembic import command

    from include.sis_sync.lms.db import _alembic_config

    with engine_for(lms_url).begin() as conn:
        command.downgrade(_alembic_config(conn), "0001")
    assert migrate(lms_url) == head_revision()
    _assert_matches_schema(lms_url)


def test_actions_keep_room_for_their_status_update_on_postgresql(lms_url: str) -> None:
    """The commit's status update of every action stays on its page (migration 0007)."""
    with engine_for(lms_url).connect() as conn:
        if conn.dialect.name != "postgresql":
            assert migrate(lms_url) == head_revision()  # SQLite: nothing to set
            return
        options = conn.exec_driver_sql(
            "SELECT reloptions FROM pg_class WHERE relname = 'sis_sync_actions'"
        ).scalar()
    assert options == ["fillfactor=50"]
