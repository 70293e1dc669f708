"""Extract: read the SIS into the run's raw data, through the portal's provider.

This module decides what every source shares: whether the run must read in full or may read
what changed (the mode asked, the last committed sync, the provider's checkpoint window), how
a scheduled run waits for input that arrives on its own, and what the run keeps of the read
(raw tables, the typed :class:`ExtractRecord`, its checkpoint). The provider does the reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from include.sis_sync.context import RunContext, log, timed
from include.sis_sync.providers.base import ExtractRecord, ExtractRequest, SourceRefused
from include.sis_sync.runs import (
    PREPARING,
    REFUSED,
    enter_stage,
    move,
    now,
    read_events,
    record_event,
    update_run,
)
from include.sis_sync.staging import last_committed


class InputMissing(RuntimeError):
    """The run's input never arrived (a drop past its wait): nothing was synced."""


def wait_for_input(ctx: RunContext, run_id: int) -> bool:
    """Whether the input this run reads is there; a scheduled run waits for late input.

    Only providers with an :meth:`~Provider.input_wait` wait. A scheduled run waits up to the
    source's ``wait_hours`` from its first look; manual and backfill runs fail at once. Then
    the run ends with a message naming what is missing.
    """
    provider = ctx.portal.source_provider()
    wait = provider.input_wait(ctx.portal.source)
    if wait is None:
        return True
    enter_stage(ctx.engine, run_id, "wait_for_drop")
    missing = provider.input_ready(ctx, run_id)
    if missing is True:
        return True
    if ctx.run_type != "scheduled" or not wait.wait_hours:
        raise InputMissing(str(missing))
    waits = [e for e in read_events(ctx.engine, run_id) if e["event"] == "waiting_for_drop"]
    if not waits:
        record_event(ctx.engine, run_id, "waiting_for_drop", f"waiting for {missing}")
        log.info("run %s: %s yet: waiting up to %s h", run_id, missing, wait.wait_hours)
        return False
    since = waits[0]["at"] if waits[0]["at"].tzinfo else waits[0]["at"].replace(tzinfo=UTC)
    if datetime.now(UTC) - since >= timedelta(hours=wait.wait_hours):
        raise InputMissing(
            f"{missing} after waiting {wait.wait_hours:g} h (source.wait_hours): nothing was synced"
        )
    return False


def extract(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Read the SIS into raw run data through the portal's provider, and keep what the later
    stages need of the read (``extract.json``)."""
    enter_stage(ctx.engine, run_id, "extract")
    provider = ctx.portal.source_provider()
    with timed(ctx, run_id, "extract") as summary:
        history = last_committed(ctx.engine, ctx.portal.id)
        request = ExtractRequest(
            ctx=ctx,
            run_id=run_id,
            full_reason=full_sync_reason(ctx, history),
            checkpoint=history["checkpoint"],
            since=ctx.params.get("since") if provider.supports_since else None,
            newest_source_date=history["newest_drop"],
        )
        try:
            result = provider.extract(request)
        except SourceRefused as exc:
            move(
                ctx.engine,
                run_id,
                REFUSED,
                allowed_from=PREPARING,
                finished_at=now(),
                source=exc.source,
                source_date=exc.source_date,
                error=str(exc),
            )
            raise
        if result.fallback:
            log.warning("run %s: %s", run_id, result.fallback)
        data = ctx.data(run_id)
        data.write_tables("raw", result.tables)
        data.write_json("extract", result.record().as_json())
        update_run(
            ctx.engine,
            run_id,
            source=result.source,
            source_date=result.source_date,
            ran_as=result.ran_as,
        )
        summary.update(ran_as=result.ran_as, **result.details)
    return summary


def read_record(ctx: RunContext, run_id: int) -> ExtractRecord:
    """The typed record of the run's read."""
    return ExtractRecord.from_json(ctx.data(run_id).read_json("extract"))


def full_sync_reason(ctx: RunContext, history: Mapping[str, Any]) -> str | None:
    """Why this run must read everything, or None when a quick read may run."""
    provider = ctx.portal.source_provider()
    since = ctx.params.get("since") if provider.supports_since else None
    mode = ctx.params.get("mode") or ctx.portal.scheduled_mode
    if mode == "full":
        return "a full sync was asked for"
    if not history["checkpoint"] and not since:
        return "no committed sync yet: the first sync is a full one"
    checkpoint_age = _age_days(history["checkpoint_at"])
    window = provider.checkpoint_max_age_days
    if window is not None and not since and checkpoint_age is not None and checkpoint_age >= window:
        return (
            f"the checkpoint is {checkpoint_age} days old and {provider.label} keeps changes "
            f"for {window + 1} days: running a full sync instead"
        )
    last_full = _age_days(history["last_full"])
    due = last_full is not None and last_full >= ctx.portal.full_sync_every_days
    if ctx.run_type == "scheduled" and due:
        return f"the last full sync is {last_full} days old (full_sync_every_days)"
    return None


def _age_days(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (datetime.now(UTC) - moment).days
