"""Extract: read the SIS into the run's raw data, through the portal's provider.

File drops (OneRoster CSV), the Clever API (full reads and quick syncs from its events) and
OneRoster REST (full reads and ``dateLastModified`` quick syncs). Each records what the run
will commit as its checkpoint, and says why when a quick sync had to run in full.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from include.sis_sync.context import RunContext, log, timed
from include.sis_sync.providers import oneroster_csv
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


class DropRefused(RuntimeError):
    """An old drop that would roll the LMS back; the run must say ``replay`` to use it."""


def drop_date_for(ctx: RunContext) -> date | None:
    """The drop a run reads: the one its params name, else its logical date's for scheduled
    and backfill runs (in the portal's time zone), else None (the newest)."""
    named = ctx.params.get("drop_date")
    if named:
        return date.fromisoformat(str(named))
    if ctx.run_type in ("scheduled", "backfill") and ctx.logical_date is not None:
        return ctx.logical_date.astimezone(ZoneInfo(ctx.portal.timezone)).date()
    return None


def wait_for_drop(ctx: RunContext, run_id: int) -> bool:
    """Whether the drop this run reads is there; a scheduled run waits for a late one.

    Runs reading the newest drop, or an undated path, never wait (extract says what is
    missing). A scheduled run waits up to the source's ``wait_hours`` from its first look;
    manual and backfill runs fail at once. Then the run ends with a message naming the drop.
    """
    source = ctx.portal.source
    drop_date = drop_date_for(ctx)
    if source is None or not source.dated or drop_date is None:
        return True
    enter_stage(ctx.engine, run_id, "wait_for_drop")
    template = source.resolve()
    if drop_date in oneroster_csv.list_drops(template):
        return True
    expected = template.replace("{date}", drop_date.isoformat())
    if ctx.run_type != "scheduled" or not source.wait_hours:
        raise oneroster_csv.DropError(f"{expected}: no drop for {drop_date}")
    waits = [e for e in read_events(ctx.engine, run_id) if e["event"] == "waiting_for_drop"]
    if not waits:
        record_event(ctx.engine, run_id, "waiting_for_drop", f"waiting for {expected}")
        log.info(
            "run %s: no drop for %s yet: waiting up to %s h", run_id, drop_date, source.wait_hours
        )
        return False
    since = waits[0]["at"] if waits[0]["at"].tzinfo else waits[0]["at"].replace(tzinfo=UTC)
    if datetime.now(UTC) - since >= timedelta(hours=source.wait_hours):
        raise oneroster_csv.DropError(
            f"{expected}: no drop for {drop_date} after waiting {source.wait_hours:g} h "
            "(source.wait_hours): nothing was synced"
        )
    return False


def extract(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Read the SIS into raw run data, through the portal's provider."""
    enter_stage(ctx.engine, run_id, "extract")
    if ctx.portal.provider == "clever":
        return extract_clever(ctx, run_id)
    if ctx.portal.provider == "oneroster_rest":
        return extract_oneroster_rest(ctx, run_id)
    return extract_drop(ctx, run_id)


def extract_oneroster_rest(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Read a OneRoster REST server: every record (full), or what changed since the last
    committed sync's start, re-read with a small overlap (quick).

    The checkpoint is the moment this extraction started, so a record changed while it reads
    is read again next time. A quick read gets ``tobedeleted`` records from servers that keep
    them; deletes on servers that drop records outright are seen by the next full sync
    (``full_sync_every_days``).
    """
    from include.sis_sync.providers.oneroster_rest import modified_since_filter
    from include.sis_sync.providers.oneroster_rest_mapping import COLLECTIONS, flatten

    if ctx.client is None or ctx.portal.oneroster is None:
        raise RuntimeError("a OneRoster REST run needs its client (the DAG layer opens it)")
    with timed(ctx, run_id, "extract") as summary:
        started = datetime.now(UTC)
        client = ctx.client()
        history = last_committed(ctx.engine, ctx.portal.id)
        reason = _full_sync_reason(ctx, history)
        row_filter = None
        if reason is None:
            row_filter = modified_since_filter(_quick_from(ctx, history))
        tables = {
            name: flatten(name, client.collection(name, filter=row_filter)) for name in COLLECTIONS
        }
        mode = "bulk" if reason else "delta"
        modes = oneroster_csv.entity_modes(dict.fromkeys(COLLECTIONS, mode), ctx.portal.entities)
        info: dict[str, Any] = {
            "modes": modes,
            "checkpoint": started.isoformat(),
            "source": "oneroster_rest",
        }
        asked = ctx.params.get("mode") or ctx.portal.scheduled_mode
        if reason and asked == "quick":
            info["fallback"] = f"ran as full: {reason}"
        ctx.data(run_id).write_tables("raw", tables)
        ctx.data(run_id).write_json("extract", info)
        ran_as = "full" if reason else "quick"
        update_run(ctx.engine, run_id, source="oneroster rest", ran_as=ran_as)
        summary.update(
            ran_as=ran_as,
            why=reason,
            filter=row_filter,
            rows={name: t.num_rows for name, t in tables.items()},
        )
    return summary


def extract_clever(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Read the Clever district: from its events for a quick sync, else in full.

    A quick sync reads the events after the last committed checkpoint (or from the run's
    ``since``). When the district's events cannot be read, or the checkpoint has left Clever's
    window, the run says so and reads in full. A full read takes the newest event id first,
    so a change made while the district is read is seen again by the next quick sync.
    """
    from include.sis_sync.providers import clever_events, clever_extract
    from include.sis_sync.providers.clever import CleverEventsUnavailable

    if ctx.client is None or ctx.portal.clever is None:
        raise RuntimeError("a Clever portal's run needs a Clever client (the DAG layer opens it)")
    with timed(ctx, run_id, "extract") as summary:
        client = ctx.client()
        history = last_committed(ctx.engine, ctx.portal.id)
        reason = _full_sync_reason(ctx, history)
        data = ctx.data(run_id)
        extract_info: dict[str, Any] = {"source": "clever", "fallback": None}
        if reason is None:
            try:
                events = client.events(starting_after=_event_id(history["checkpoint"]))
                delta = clever_events.fold(_since(events, ctx.params.get("since")))
            except CleverEventsUnavailable as exc:
                reason = f"the events cannot be read ({exc}); running a full sync instead"
                extract_info["fallback"] = reason
                log.warning("run %s: %s", run_id, reason)
            else:
                data.write_tables("raw", clever_events.raw_tables(delta))
                extract_info.update(
                    modes=clever_extract.full_modes(ctx.portal.entities, "delta"),
                    checkpoint=delta.last_event_id or history["checkpoint"],
                    delta=True,
                    complete_per_parent={
                        "user_organizations": ["user_key", "users"],
                        "enrollments": ["section_key", "sections"],
                    },
                )
                summary.update(ran_as="quick", events=delta.events, objects=delta.counts())
        if reason is not None:
            asked = ctx.params.get("mode") or ctx.portal.scheduled_mode
            if asked == "quick":
                extract_info["fallback"] = extract_info["fallback"] or f"ran as full: {reason}"
            newest_event = _newest_event(client, history["checkpoint"])
            tables = clever_extract.read_district(client, ctx.portal.entities)
            data.write_tables("raw", tables)
            extract_info.update(
                modes=clever_extract.full_modes(ctx.portal.entities), checkpoint=newest_event
            )
            summary.update(
                ran_as="full",
                why=reason,
                newest_event=newest_event,
                rows={name: t.num_rows for name, t in tables.items()},
            )
        data.write_json("extract", extract_info)
        update_run(
            ctx.engine,
            run_id,
            source=f"clever district {ctx.portal.clever.district_id}",
            ran_as=summary["ran_as"],
        )
    return summary


def _quick_from(ctx: RunContext, history: Mapping[str, Any]) -> datetime:
    """Where a OneRoster REST quick read starts: the run's ``since`` when asked, else the last
    committed sync's start less the overlap."""
    asked = ctx.params.get("since")
    if asked:
        return datetime.fromisoformat(str(asked).replace("Z", "+00:00"))
    since = datetime.fromisoformat(str(history["checkpoint"]).replace("Z", "+00:00"))
    overlap = ctx.portal.oneroster.overlap_minutes if ctx.portal.oneroster else 0
    return since - timedelta(minutes=overlap)


def _full_sync_reason(ctx: RunContext, history: Mapping[str, Any]) -> str | None:
    """Why this API run must read everything, or None when a quick sync may run."""
    mode = ctx.params.get("mode") or ctx.portal.scheduled_mode
    if mode == "full":
        return "a full sync was asked for"
    if not history["checkpoint"] and not ctx.params.get("since"):
        return "no committed sync yet: the first sync is a full one"
    checkpoint_age = _age_days(history["checkpoint_at"])
    window = ctx.portal.provider == "clever"  # Clever keeps 30 days of events
    if (
        window
        and not ctx.params.get("since")
        and checkpoint_age is not None
        and checkpoint_age >= 29
    ):
        return (
            f"the checkpoint is {checkpoint_age} days old and Clever keeps events for 30 days: "
            "running a full sync instead"
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


# The checkpoint of a full sync taken while the events window was empty: every later event
# is new, so the next quick sync reads the window from its start.
EVENTS_START = "events:start"


def _event_id(checkpoint: str | None) -> str | None:
    return None if checkpoint in (None, EVENTS_START) else checkpoint


def _newest_event(client: Any, checkpoint: str | None) -> str | None:
    """The checkpoint a full read leaves: the newest event id (``EVENTS_START`` for an empty
    window), or None when the district's events cannot be read."""
    from include.sis_sync.providers.clever import CleverEventsUnavailable

    try:
        newest = client.newest_event_id(starting_after=_event_id(checkpoint))
    except CleverEventsUnavailable as exc:
        log.warning("events unavailable (%s): quick syncs will run as full syncs", exc)
        return None
    return newest or EVENTS_START


def extract_drop(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Read the drop into raw Parquet; refuse a drop older than the newest one committed."""
    with timed(ctx, run_id, "extract") as summary:
        template = ctx.portal.source.resolve()
        path, drop_date = oneroster_csv.locate_drop(template, drop_date_for(ctx))
        newest = last_committed(ctx.engine, ctx.portal.id)["newest_drop"]
        if drop_date and newest and drop_date < newest and not ctx.params.get("replay"):
            move(
                ctx.engine,
                run_id,
                REFUSED,
                allowed_from=PREPARING,
                finished_at=now(),
                source=path,
                source_date=drop_date,
                error=f"drop {drop_date} is older than the newest committed drop {newest}",
            )
            raise DropRefused(
                f"{path}: the drop of {drop_date} is older than the newest drop already committed "
                f"({newest}); applying it would roll the LMS back. Trigger with replay=true to "
                "apply it anyway."
            )
        drop = oneroster_csv.read_drop(path)
        ctx.data(run_id).write_tables("raw", drop.tables)
        modes = oneroster_csv.entity_modes(drop.modes, ctx.portal.entities)
        ran_as = "quick" if "delta" in modes.values() else "full"
        ctx.data(run_id).write_json("extract", {"modes": modes, "drop": path})
        update_run(ctx.engine, run_id, source=path, source_date=drop_date, ran_as=ran_as)
        summary.update(
            drop=path,
            drop_date=str(drop_date) if drop_date else None,
            ran_as=ran_as,
            files=drop.modes,
            rows=drop.row_counts(),
        )
    return summary
