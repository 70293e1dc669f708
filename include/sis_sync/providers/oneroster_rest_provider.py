"""The OneRoster 1.1 REST provider: every record (full), or what changed (quick).

A quick read asks each collection for the records whose ``dateLastModified`` is later than
the last committed sync's start, less a small overlap (or than the run's ``since``). The
checkpoint is the moment this extraction started, so a record changed while it reads is read
again next time. A quick read gets ``tobedeleted`` records from servers that keep them;
deletes on servers that drop records outright are seen by the next full sync
(``full_sync_every_days``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pandas as pd
from pydantic import Field

from include.sis_sync.providers import oneroster_csv
from include.sis_sync.providers.base import (
    Completeness,
    ExtractRecord,
    ExtractRequest,
    ExtractResult,
    Provider,
    SourceConfig,
)
from include.sis_sync.providers.oneroster_rest import OneRosterAuthError, modified_since_filter
from include.sis_sync.providers.oneroster_rest_mapping import COLLECTIONS, flatten

if TYPE_CHECKING:
    from include.sis_sync.config import Entities


class OneRosterRestSource(SourceConfig):
    """Where a OneRoster REST portal reads: an Airflow connection whose host is the base URL
    (up to, not including, ``/ims/oneroster/v1p1``), login the client id, password the client
    secret, and extra the ``token_url``, ``auth`` (``oauth2``, the default, or ``oauth1``) and
    ``scope``."""

    provider: Literal["oneroster_rest"]
    connection_id: str
    page_limit: Annotated[int, Field(ge=1, le=10000)] = 1000
    # A quick sync re-reads this much before its checkpoint: clocks and commits drift.
    overlap_minutes: Annotated[int, Field(ge=0)] = 10


class OneRosterRestProvider(Provider):
    name = "oneroster_rest"
    label = "OneRoster REST"
    source_model = OneRosterRestSource
    key_space = "oneroster"  # OneRoster CSV and REST share sourcedIds
    supports_since = True
    permanent_errors = (OneRosterAuthError,)
    hook = "include.sis_sync.providers.oneroster_hook:OneRosterHook"

    def describe(self, source: Any) -> str:
        return f"OneRoster REST via connection {source.connection_id}"

    def extract(self, request: ExtractRequest) -> ExtractResult:
        ctx = request.ctx
        started = datetime.now(UTC)
        client = request.client()
        reason = request.full_reason
        row_filter = None
        if reason is None:
            row_filter = modified_since_filter(_quick_from(request))
        tables = {
            name: flatten(name, client.collection(name, filter=row_filter)) for name in COLLECTIONS
        }
        mode = Completeness.COMPLETE if reason else Completeness.DELTA
        return ExtractResult(
            tables=tables,
            modes=oneroster_csv.entity_modes(dict.fromkeys(COLLECTIONS, mode), ctx.portal.entities),
            ran_as="full" if reason else "quick",
            source="oneroster rest",
            checkpoint=started.isoformat(),
            fallback=f"ran as full: {reason}" if reason and request.asked_quick else None,
            details={
                "why": reason,
                "filter": row_filter,
                "rows": {name: t.num_rows for name, t in tables.items()},
            },
        )

    def to_canonical(
        self, raw: Mapping[str, pd.DataFrame], entities: Entities, record: ExtractRecord
    ) -> dict[str, pd.DataFrame]:
        return oneroster_csv.to_canonical(dict(raw), entities)


def _quick_from(request: ExtractRequest) -> datetime:
    """Where a quick read starts: the run's ``since`` when asked, else the last committed
    sync's start less the overlap."""
    if request.since:
        return datetime.fromisoformat(str(request.since).replace("Z", "+00:00"))
    since = datetime.fromisoformat(str(request.checkpoint).replace("Z", "+00:00"))
    return since - timedelta(minutes=request.ctx.portal.source.overlap_minutes)
