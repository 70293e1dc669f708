"""The OneRoster 1.1 CSV provider: dated drops (folders or zips) that the SIS leaves each day.

The manifest of a drop decides what each file is (bulk, delta, absent). A scheduled run reads
its logical date's drop and waits for a late one; a drop older than the newest one committed
is refused unless the run says ``replay``, since applying it would roll the LMS back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

import pandas as pd
from pydantic import Field

from include.sis_sync import storage
from include.sis_sync.providers import oneroster_csv
from include.sis_sync.providers.base import (
    Completeness,
    ExtractRecord,
    ExtractRequest,
    ExtractResult,
    InputWait,
    Provider,
    SourceConfig,
    SourceRefused,
)
from include.sis_sync.providers.oneroster_csv import DropError

if TYPE_CHECKING:
    from include.sis_sync.config import Entities
    from include.sis_sync.context import RunContext


class FileDropSource(SourceConfig):
    """Where a OneRoster CSV portal finds its drops.

    ``path`` is a folder or a ``.zip``; it may hold ``{date}`` (the drop date, ``YYYY-MM-DD``).
    A relative path is taken from ``SIS_SYNC_DROPS_DIR``. A scheduled run whose dated drop
    has not arrived waits for it up to ``wait_hours``, looking every ``poke_seconds`` and
    holding no worker slot meanwhile (0 hours: fail at once, as manual and backfill runs do).
    A file past ``max_file_mb``, or a zip entry unpacking to more than ``max_zip_ratio``
    times its packed size, is refused before it is read. ``path`` may be an object-store URL
    (``s3://bucket/drops/{date}``), read with the Airflow connection ``conn_id``.
    """

    provider: Literal["oneroster_csv"]
    path: str
    wait_hours: Annotated[float, Field(ge=0, le=24)] = 4.0
    poke_seconds: Annotated[int, Field(ge=5, le=3600)] = 300
    max_file_mb: Annotated[int, Field(ge=1)] = 2048
    max_zip_ratio: Annotated[float, Field(ge=1)] = 100.0
    conn_id: str | None = None

    def limits(self) -> oneroster_csv.DropLimits:
        return oneroster_csv.DropLimits(
            self.max_file_mb * 1024**2, self.max_zip_ratio, self.conn_id
        )

    @property
    def dated(self) -> bool:
        return "{date}" in self.path

    def resolve(self) -> str:
        """The path template with environment variables expanded and, when local, made
        absolute."""
        from include.sis_sync.config import DEFAULT_DROPS_DIR

        expanded = os.path.expandvars(os.path.expanduser(self.path))
        if storage.is_remote(expanded):
            return expanded
        if not os.path.isabs(expanded):
            base = os.environ.get("SIS_SYNC_DROPS_DIR") or str(DEFAULT_DROPS_DIR)
            expanded = os.path.abspath(os.path.join(os.path.expanduser(base), expanded))
        return expanded


def drop_date_for(ctx: RunContext) -> date | None:
    """The drop a run reads: the one its params name, else its logical date's for scheduled
    and backfill runs (in the portal's time zone), else None (the newest)."""
    named = ctx.params.get("drop_date")
    if named:
        return date.fromisoformat(str(named))
    if ctx.run_type in ("scheduled", "backfill") and ctx.logical_date is not None:
        return ctx.logical_date.astimezone(ZoneInfo(ctx.portal.timezone)).date()
    return None


class OneRosterCsvProvider(Provider):
    name = "oneroster_csv"
    label = "OneRoster CSV"
    source_model = FileDropSource
    key_space = "oneroster"  # OneRoster CSV and REST share sourcedIds
    # Every kind a drop's manifest supplies must hold rows; a kind a drop may lack, the
    # manifest marks absent.
    permanent_errors = (DropError,)
    row_wise_tables = frozenset({"users", "enrollments"})  # a row of either maps on its own

    def describe(self, source: Any) -> str:
        return f"OneRoster CSV drops at {source.path}"

    def input_wait(self, source: Any) -> InputWait:
        return InputWait(poke_seconds=source.poke_seconds, wait_hours=source.wait_hours)

    def input_ready(self, ctx: RunContext, run_id: int) -> bool | str:
        """Runs reading the newest drop, or an undated path, never wait (extract says what is
        missing); else the dated drop must be there."""
        source = ctx.portal.source
        drop_date = drop_date_for(ctx)
        if not source.dated or drop_date is None:
            return True
        template = source.resolve()
        if drop_date in oneroster_csv.list_drops(template, source.conn_id):
            return True
        return f"{template.replace('{date}', drop_date.isoformat())}: no drop for {drop_date}"

    def extract(self, request: ExtractRequest) -> ExtractResult:
        ctx = request.ctx
        source = ctx.portal.source
        path, drop_date = oneroster_csv.locate_drop(
            source.resolve(), drop_date_for(ctx), source.conn_id
        )
        newest = request.newest_source_date
        if drop_date and newest and drop_date < newest and not ctx.params.get("replay"):
            raise SourceRefused(
                f"{path}: the drop of {drop_date} is older than the newest drop already committed "
                f"({newest}); applying it would roll the LMS back. Trigger with replay=true to "
                "apply it anyway.",
                source=path,
                source_date=drop_date,
            )
        drop = oneroster_csv.read_drop(path, source.limits())
        modes = oneroster_csv.entity_modes(drop.modes, ctx.portal.entities)
        return ExtractResult(
            tables=drop.tables,
            modes=modes,
            ran_as="quick" if Completeness.DELTA in modes.values() else "full",
            source=path,
            source_date=drop_date,
            details={
                "drop": path,
                "drop_date": str(drop_date) if drop_date else None,
                "files": drop.modes,
                "rows": drop.row_counts(),
            },
        )

    def to_canonical(
        self, raw: Mapping[str, pd.DataFrame], entities: Entities, record: ExtractRecord
    ) -> dict[str, pd.DataFrame]:
        return oneroster_csv.to_canonical(dict(raw), entities)
