"""The Clever provider: a district read through the Data API v3.0, quick syncs from its Events.

A quick sync reads the events after the last committed checkpoint (or from the run's
``since``). When the district's events cannot be read, or the checkpoint has left Clever's
30-day window, the run says so and reads in full. A full read takes the newest event id
first, so a change made while the district is read is seen again by the next quick sync, and
checks that it read everything (``clever_extract.check_complete``) before anything is staged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pandas as pd
from pydantic import Field

from include.sis_sync import model
from include.sis_sync.providers import clever_events, clever_extract
from include.sis_sync.providers.base import (
    Completeness,
    ExtractRecord,
    ExtractRequest,
    ExtractResult,
    Provider,
    SourceConfig,
)
from include.sis_sync.providers.clever import CleverAuthError, CleverEventsUnavailable
from include.sis_sync.providers.clever_extract import IncompleteRead

if TYPE_CHECKING:
    from include.sis_sync.config import Entities

# The checkpoint of a full sync taken while the events window was empty: every later event
# is new, so the next quick sync reads the window from its start.
EVENTS_START = "events:start"


class CleverSource(SourceConfig):
    """Where a Clever portal reads: an Airflow connection of type http (the API's base URL as
    host, the district-app bearer token as password) and the Clever district id."""

    provider: Literal["clever"]
    connection_id: str
    district_id: str
    page_limit: Annotated[int, Field(ge=1, le=10000)] = 10000


class CleverProvider(Provider):
    name = "clever"
    label = "Clever"
    source_model = CleverSource
    key_space = "clever"
    # Both are optional Clever data types; many districts share neither.
    optional_entities = frozenset({model.TERMS.name, model.COURSES.name})
    off_by_default = frozenset({"administrators", "staff"})
    supports_since = True
    checkpoint_max_age_days = 29  # Clever keeps 30 days of events
    permanent_errors = (CleverAuthError, IncompleteRead)
    hook = "include.sis_sync.providers.clever_hook:CleverHook"

    def describe(self, source: Any) -> str:
        return f"Clever district {source.district_id}"

    def extract(self, request: ExtractRequest) -> ExtractResult:
        ctx = request.ctx
        if ctx.client is None:
            raise RuntimeError(
                "a Clever portal's run needs a Clever client (the DAG layer opens it)"
            )
        client = ctx.client()
        source = f"clever district {ctx.portal.source.district_id}"
        reason = request.full_reason
        fallback = None
        if reason is None:
            try:
                events = client.events(starting_after=_event_id(request.checkpoint))
                delta = clever_events.fold(_since(events, request.since))
            except CleverEventsUnavailable as exc:
                reason = fallback = (
                    f"the events cannot be read ({exc}); running a full sync instead"
                )
            else:
                return ExtractResult(
                    tables=clever_events.raw_tables(delta),
                    modes=clever_extract.full_modes(ctx.portal.entities, Completeness.DELTA),
                    ran_as="quick",
                    source=source,
                    checkpoint=delta.last_event_id or request.checkpoint,
                    complete_per_parent={
                        model.USER_ORGANIZATIONS.name: ("user_key", model.USERS.name),
                        model.ENROLLMENTS.name: ("section_key", model.SECTIONS.name),
                    },
                    details={"events": delta.events, "objects": delta.counts()},
                )
        if request.asked_quick:
            fallback = fallback or f"ran as full: {reason}"
        newest_event = _newest_event(client, request.checkpoint)
        read = clever_extract.read_district(client, ctx.portal.entities)
        return ExtractResult(
            tables=read.tables,
            modes=clever_extract.full_modes(ctx.portal.entities),
            ran_as="full",
            source=source,
            checkpoint=newest_event,
            fallback=fallback,
            details={
                "why": reason,
                "newest_event": newest_event,
                "rows": {name: t.num_rows for name, t in read.tables.items()},
                "checked": read.checked,
            },
        )

    def to_canonical(
        self, raw: Mapping[str, pd.DataFrame], entities: Entities, record: ExtractRecord
    ) -> dict[str, pd.DataFrame]:
        return clever_extract.to_canonical(raw, entities, delta=record.delta)


def _since(events: Iterable[Mapping[str, Any]], since: str | None) -> Iterator[Mapping[str, Any]]:
    """Only the events created at or after ``since`` (an ISO date-time), when given."""
    if not since:
        yield from events
        return
    bound = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
    if bound.tzinfo is None:
        bound = bound.replace(tzinfo=UTC)
    for event in events:
        created = datetime.fromisoformat(str(event.get("created", "")).replace("Z", "+00:00"))
        if created >= bound:
            yield event


def _event_id(checkpoint: str | None) -> str | None:
    return None if checkpoint in (None, EVENTS_START) else checkpoint


def _newest_event(client: Any, checkpoint: str | None) -> str | None:
    """The checkpoint a full read leaves: the newest event id (``EVENTS_START`` for an empty
    window), or None when the district's events cannot be read."""
    from include.sis_sync.context import log

    try:
        newest = client.newest_event_id(starting_after=_event_id(checkpoint))
    except CleverEventsUnavailable as exc:
        log.warning("events unavailable (%s): quick syncs will run as full syncs", exc)
        return None
    return newest or EVENTS_START
