"""Connecting to the LMS database and keeping its schema at the migrations' head."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
import tenacity
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaOutOfDate(RuntimeError):
    """The LMS database is not at the migrations' head: run the migrations first."""


def url_from_connection(
    conn_type: str,
    host: str | None,
    *,
    login: str | None = None,
    password: str | None = None,
    port: int | None = None,
    schema: str | None = None,
    extra: str | dict[str, Any] | None = None,
) -> str:
    """A SQLAlchemy URL from an Airflow connection's fields (no Airflow import needed).

    ``sqlite``: ``host`` is the absolute path of the database file. ``postgres``: the usual
    host, port, login, password and database (``schema``). An ``extra`` holding ``url`` wins.
    """
    extras = json.loads(extra) if isinstance(extra, str) and extra else (extra or {})
    if isinstance(extras, dict) and extras.get("url"):
        return str(extras["url"])
    kind = (conn_type or "").lower()
    if kind == "sqlite":
        if not host:
            raise ValueError("connection lms_db (sqlite): 'host' must be the database file path")
        return f"sqlite:///{host}"
    if kind in ("postgres", "postgresql"):
        auth = ""
        if login:
            auth = quote(login, safe="") + (f":{quote(password, safe='')}" if password else "")
            auth += "@"
        return f"postgresql+psycopg://{auth}{host or 'localhost'}:{port or 5432}/{schema or ''}"
    raise ValueError(f"connection lms_db: unsupported conn_type {conn_type!r} (sqlite, postgres)")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers work beside a commit; never switch the journal off (a killed commit
    would then corrupt the file)."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MB per connection
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    """Begin the transaction ourselves: pysqlite's implicit one starts only at the first write,
    leaving earlier reads and DDL of a commit outside it. A write transaction
    (:func:`write_transaction`) takes the write lock at once."""
    immediate = connection.get_execution_options().get(WRITE_OPTION)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


WRITE_OPTION = "sis_sync_write_transaction"


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that writes from its first statement: on SQLite it holds the write lock
    from BEGIN (waiting for it up to the busy timeout), so what it reads first is what it
    changes; PostgreSQL locks rows as the statements reach them."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


class LMSUnavailable(RuntimeError):
    """The LMS database refused connections for longer than the project waits."""


def connect_seconds() -> float:
    """How long a connection to the LMS database is retried: ``SIS_SYNC_LMS_CONNECT_SECONDS``
    (default 60), so a database restarting or failing over does not fail the task at once."""
    return float(os.environ.get("SIS_SYNC_LMS_CONNECT_SECONDS", "60"))


@cache
def engine_for(url: str) -> sa.Engine:
    """One engine per database URL and process."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = sa.create_engine(url, pool_pre_ping=True)
    sa.event.listen(engine, "do_connect", _connect_retrying)
    return engine


def _connect_retrying(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
    """Open a server connection, retrying refusals with backoff for ``connect_seconds``;
    then fail with a message naming the server (never its password)."""
    seconds = connect_seconds()
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(seconds),
        wait=tenacity.wait_exponential(multiplier=0.25, max=5),
        retry=tenacity.retry_if_exception_type(dialect.loaded_dbapi.OperationalError),
        reraise=True,
    )
    try:
        return retrying(dialect.connect, *cargs, **cparams)
    except dialect.loaded_dbapi.OperationalError as exc:
        where = (
            f"{cparams.get('host', '?')}:{cparams.get('port', 5432)}/{cparams.get('dbname', '?')}"
        )
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise LMSUnavailable(
            f"the LMS database at {where} refused connections for {seconds:g} s "
            f"(SIS_SYNC_LMS_CONNECT_SECONDS): {reason}; nothing was changed by this try"
        ) from None


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration shipped with this code."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def migrate(url: str) -> str:
    """Bring the database to the head migration; returns the revision it is at."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with engine_for(url).begin() as connection:
        command.upgrade(_alembic_config(connection), "head")
    return current_revision(url) or ""


def current_revision(url: str) -> str | None:
    with engine_for(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema(url: str) -> None:
    """Fail clearly when the database has not been migrated to this code's head."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"the LMS database is at migration {current or 'none'} but this code needs {head}: "
            "run `python -m include.sis_sync.cli migrate` (or `make setup`) first"
        )
