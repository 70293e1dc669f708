"""Reading the portal's current LMS rows, always scoped by portal and provider."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import sqlalchemy as sa

from include.sis_sync import model
from include.sis_sync.lms.bulk import CHUNK_ROWS, placeholder, quote_name, read_chunks
from include.sis_sync.lms.schema import lms_table_name


def read_current(
    conn: sa.Connection,
    portal_id: str,
    provider: str,
    entity: model.Entity,
    fields: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Every LMS row of one entity for the portal: ``id``, ``sis_key``, ``active`` and the
    entity's fields (or only ``fields``)."""
    parts = list(iter_current(conn, portal_id, provider, entity, fields))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def iter_current(
    conn: sa.Connection,
    portal_id: str,
    provider: str,
    entity: model.Entity,
    fields: tuple[str, ...] | None = None,
    chunk: int = CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """:func:`read_current` in frames of at most ``chunk`` rows, for a reader that never
    holds them all."""
    fields = entity.fields if fields is None else fields
    columns = "".join(f", {quote_name(conn, f)}" for f in fields)
    table = quote_name(conn, lms_table_name(entity.name))
    ph = placeholder(conn)
    sql = (
        f"SELECT id, sis_key, CASE WHEN archived_at IS NULL THEN 1 ELSE 0 END AS active{columns} "
        f"FROM {table} WHERE portal_id = {ph} AND sis_provider = {ph}"
    )
    for frame in read_chunks(conn, sql, (portal_id, provider), chunk, text=("sis_key", *fields)):
        out = pd.DataFrame(
            {
                "id": frame["id"].astype("Int64"),
                "sis_key": frame["sis_key"].astype("string"),
                "active": frame["active"].astype("int64").astype(bool),
            }
        )
        for f in fields:
            out[f] = frame[f].astype("string")
        yield out


def count_current(conn: sa.Connection, portal_id: str, provider: str, entity: model.Entity) -> int:
    """How many LMS rows (active or archived) the portal holds of one entity."""
    table = quote_name(conn, lms_table_name(entity.name))
    ph = placeholder(conn)
    sql = f"SELECT count(*) FROM {table} WHERE portal_id = {ph} AND sis_provider = {ph}"
    return int(conn.exec_driver_sql(sql, (portal_id, provider)).scalar() or 0)


def read_all_current(conn: sa.Connection, portal_id: str, provider: str) -> dict[str, pd.DataFrame]:
    return {e.name: read_current(conn, portal_id, provider, e) for e in model.ENTITIES}


def active_keys(current: dict[str, pd.DataFrame]) -> dict[str, pd.Index]:
    """The active LMS keys of each entity, for reference checks."""
    return {
        name: pd.Index(frame.loc[frame["active"], "sis_key"]) for name, frame in current.items()
    }
