"""The stages of one sync, as plain functions: the DAG's tasks and the benchmarks call these.

Each stage reads what the previous one left in the run's data folder or in staging, does its
work set-based, logs counts and timings (never personal data), and returns a small summary.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from include.sis_sync import guards, model
from include.sis_sync.config import Portal
from include.sis_sync.diff import DiffInput, diff_snapshot
from include.sis_sync.lms import commit as lms_commit
from include.sis_sync.lms.db import check_schema, engine_for
from include.sis_sync.lms.store import active_keys, read_all_current, read_current
from include.sis_sync.providers import oneroster_csv
from include.sis_sync.rundata import RunData, purge_expired
from include.sis_sync.staging import (
    RunRequest,
    acquire_lock,
    get_run,
    last_committed,
    open_run,
    release_lock,
    update_run,
    write_change_set,
)
from include.sis_sync.transform import Scope, build_scope, derive_user_organizations, restrict
from include.sis_sync.validation import (
    SnapshotInvalid,
    check_oddities,
    check_references,
    run_suites,
)

log = logging.getLogger("sis_sync")

# OneRoster CSV and REST share sourcedIds: a portal moving from drops to REST keeps its rows.
PROVIDER_KEYS = {"oneroster_csv": "oneroster", "oneroster_rest": "oneroster", "clever": "clever"}


class DropRefused(RuntimeError):
    """An old drop that would roll the LMS back; the run must say ``replay`` to use it."""


@dataclass(frozen=True)
class RunContext:
    """What every stage needs to know about the run, free of Airflow types."""

    portal: Portal
    lms_url: str
    dag_id: str
    airflow_run_id: str
    run_type: str  # scheduled | manual | backfill
    logical_date: datetime | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    triggered_by: str | None = None
    # Opens the provider's API client (Clever, OneRoster REST); the DAG layer's hook makes it.
    client: Callable[[], Any] | None = None

    @property
    def provider(self) -> str:
        return PROVIDER_KEYS[self.portal.provider]

    @property
    def engine(self) -> Any:
        return engine_for(self.lms_url)

    @property
    def schools(self) -> list[str] | None:
        return list(self.params.get("schools") or []) or None

    def data(self, run_id: int) -> RunData:
        return RunData.for_run(self.portal.id, run_id)


@contextmanager
def timed(ctx: RunContext, run_id: int, stage: str) -> Iterator[dict[str, Any]]:
    """Time a stage, log its summary and keep the timing on the run's row."""
    summary: dict[str, Any] = {}
    started = time.perf_counter()
    yield summary
    seconds = round(time.perf_counter() - started, 3)
    summary["seconds"] = seconds
    run = get_run(ctx.engine, run_id)
    timings = json.loads(run["timings"]) if run.get("timings") else {}
    timings[stage] = seconds
    update_run(ctx.engine, run_id, timings=timings)
    log.info("%s: %s", stage, summary)


# --------------------------------------------------------------------------------------------
# start
# --------------------------------------------------------------------------------------------


def start(ctx: RunContext) -> dict[str, Any]:
    """Open the run's row and take the portal's lock; ``locked_by`` names a run in the way."""
    check_schema(ctx.lms_url)
    request = RunRequest(
        portal_id=ctx.portal.id,
        dag_id=ctx.dag_id,
        airflow_run_id=ctx.airflow_run_id,
        mode=str(ctx.params.get("mode") or ctx.portal.scheduled_mode),
        trigger=ctx.run_type,
        triggered_by=ctx.triggered_by,
        schools=ctx.schools,
        auto_commit=bool(ctx.params.get("auto_commit", ctx.portal.auto_commit)),
        allow_mass_archive=bool(ctx.params.get("allow_mass_archive", False)),
    )
    run_id = open_run(ctx.engine, request)
    holder = acquire_lock(ctx.engine, ctx.portal.id, run_id)
    if holder is not None:
        log.info("portal %s is busy with run %s; run %s waits", ctx.portal.id, holder, run_id)
    else:
        log.info("run %s of portal %s started (lock taken)", run_id, ctx.portal.id)
    return {"run_id": run_id, "locked_by": holder}


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------


def drop_date_for(ctx: RunContext) -> date | None:
    """The drop a run reads: the one its params name, else its logical date's for scheduled
    and backfill runs (in the portal's time zone), else None (the newest)."""
    named = ctx.params.get("drop_date")
    if named:
        return date.fromisoformat(str(named))
    if ctx.run_type in ("scheduled", "backfill") and ctx.logical_date is not None:
        return ctx.logical_date.astimezone(ZoneInfo(ctx.portal.timezone)).date()
    return None


def extract(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Read the SIS into raw run data, through the portal's provider."""
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
    from datetime import timedelta

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
            since = datetime.fromisoformat(str(history["checkpoint"]).replace("Z", "+00:00"))
            since -= timedelta(minutes=ctx.portal.oneroster.overlap_minutes)
            row_filter = f"dateLastModified>'{since.strftime('%Y-%m-%dT%H:%M:%SZ')}'"
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
            update_run(
                ctx.engine,
                run_id,
                status="refused",
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


# --------------------------------------------------------------------------------------------
# transform
# --------------------------------------------------------------------------------------------


def transform(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Raw provider tables to the canonical frames."""
    with timed(ctx, run_id, "transform") as summary:
        data = ctx.data(run_id)
        raw = data.read_frames("raw")
        if ctx.portal.provider == "clever":
            from include.sis_sync.providers import clever_extract

            delta = bool(data.read_json("extract").get("delta"))
            frames = clever_extract.to_canonical(raw, ctx.portal.entities, delta=delta)
        else:
            frames = oneroster_csv.to_canonical(raw, ctx.portal.entities)
        data.write_frames("canonical", frames)
        summary["rows"] = {name: len(frame) for name, frame in frames.items()}
    return summary


# --------------------------------------------------------------------------------------------
# validate_snapshot
# --------------------------------------------------------------------------------------------


def _inputs(
    ctx: RunContext, run_id: int, stage: str
) -> tuple[RunData, dict[str, pd.DataFrame], dict[str, str], dict[str, pd.DataFrame]]:
    """A stage's inputs: the run's data, one stage's frames, the feed modes, the LMS rows."""
    data = ctx.data(run_id)
    frames = data.read_frames(stage)
    modes = data.read_json("extract")["modes"]
    with ctx.engine.connect() as conn:
        current = read_all_current(conn, ctx.portal.id, ctx.provider)
    return data, frames, modes, current


def _lms_references(ctx: RunContext, modes: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """The LMS rows validation needs: keys of what the feed does not carry completely (a
    reference may point at them), and users' emails (to spot one used twice)."""
    needed = {e.name: () for e in model.ENTITIES if modes.get(e.name) != "bulk"}
    needed[model.USERS.name] = ("email",)
    with ctx.engine.connect() as conn:
        return {
            name: read_current(conn, ctx.portal.id, ctx.provider, model.BY_NAME[name], fields)
            for name, fields in needed.items()
        }


def validate_snapshot(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Reference checks (warnings, rows or links dropped) then the fatal GX suites."""
    with timed(ctx, run_id, "validate_snapshot") as summary:
        data = ctx.data(run_id)
        frames = data.read_frames("canonical")
        modes = data.read_json("extract")["modes"]
        lms = _lms_references(ctx, modes)
        lms_keys = {n: k for n, k in active_keys(lms).items() if modes.get(n) != "bulk"}
        frames, warnings = check_references(frames, lms_keys)
        warnings += check_oddities(frames, lms[model.USERS.name])
        if model.USERS.name in frames:
            frames[model.USER_ORGANIZATIONS.name] = derive_user_organizations(frames["users"])
        fatal = run_suites(frames, modes)
        data.write_json("findings", [f.as_dict() for f in [*warnings, *fatal]])
        if fatal:
            update_run(ctx.engine, run_id, error=str(SnapshotInvalid(fatal)))
            raise SnapshotInvalid(fatal)
        data.write_frames("validated", frames)
        summary.update(warnings=len(warnings), rows={n: len(f) for n, f in frames.items()})
    return summary


# --------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------


def _scope(
    ctx: RunContext, frames: Mapping[str, pd.DataFrame], current: Mapping[str, pd.DataFrame]
) -> Scope:
    known = pd.concat(
        [
            f[["sis_key", "kind", "parent_key"]]
            for f in (frames.get("organizations"), current.get("organizations"))
            if f is not None
        ],
        ignore_index=True,
    ).drop_duplicates("sis_key")
    return build_scope(known, ctx.portal.schools.synced, ctx.schools)


def _complete_per_parent(extract_info: Mapping[str, Any]) -> dict[str, Any]:
    """The provider's word on which delta children are complete per parent, if it has one."""
    given = extract_info.get("complete_per_parent")
    return {"complete_per_parent": {k: tuple(v) for k, v in given.items()}} if given else {}


def _synced_roles(ctx: RunContext) -> frozenset[str]:
    switches = ctx.portal.entities
    return frozenset(
        role for role, switch in oneroster_csv.ROLE_SWITCH.items() if getattr(switches, switch)
    )


def diff(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Diff the validated snapshot against the LMS and stage the actions and warnings."""
    from include.sis_sync.validation import Finding

    with timed(ctx, run_id, "diff") as summary:
        data, frames, modes, current = _inputs(ctx, run_id, "validated")
        scope = _scope(ctx, frames, current)
        frames, outsiders = restrict(frames, scope)
        window = ctx.portal.school_year
        change_set = diff_snapshot(
            frames,
            DiffInput(
                modes=modes,
                current=current,
                scope=scope,
                synced_roles=_synced_roles(ctx),
                school_year=(window.start.isoformat(), window.end.isoformat()) if window else None,
                **_complete_per_parent(data.read_json("extract")),
            ),
        )
        findings = [Finding(**f) for f in data.read_json("findings")]
        fallback = data.read_json("extract").get("fallback")
        if fallback:
            findings.append(Finding("run", "ran_as_full", "warning", 0, [], fallback))
        if len(outsiders):
            findings.append(
                Finding(
                    "users",
                    "home_school_not_synced",
                    "warning",
                    len(outsiders),
                    outsiders.head(20).tolist(),
                    "enrolled in a synced section, but their own school is not synced",
                )
            )
        if change_set.outside_school_year:
            findings.append(
                Finding(
                    "sections",
                    "outside_school_year",
                    "warning",
                    change_set.outside_school_year,
                    [],
                    "classes whose terms all fall outside the school year: not added or updated",
                )
            )
        counts = write_change_set(ctx.engine, run_id, ctx.portal.id, change_set, findings)
        data.write_frames("scoped", frames)
        data.write_frames("guards", {"active": guards.active_base(current, scope)})
        data.write_json("scope", {"schools": sorted(scope.schools) if scope.schools else None})
        summary.update(
            counts={e: {a: n for a, n in c.items() if n} for e, c in counts.items()},
            actions=len(change_set.actions),
            warnings=len(findings),
        )
    return summary


# --------------------------------------------------------------------------------------------
# validate_changes (the guards) and the gate
# --------------------------------------------------------------------------------------------


def validate_changes(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Evaluate the guards and record their decision; a guard never fails the task."""
    from include.sis_sync.lms.bulk import placeholder, read_frame

    with timed(ctx, run_id, "validate_changes") as summary:
        with ctx.engine.connect() as conn:
            ph = placeholder(conn)
            proposed = read_frame(
                conn,
                "SELECT entity, action, kind, school_key, count(*) AS n FROM sis_sync_actions "
                f"WHERE run_id = {ph} AND action IN ('archive', 'update') "
                "GROUP BY entity, action, kind, school_key",
                (run_id,),
            )
        proposed["n"] = proposed["n"].astype("int64")
        active = ctx.data(run_id).read_frames("guards")["active"]
        results = guards.evaluate(proposed, active, ctx.portal.guards)
        trips = guards.tripped(results)
        update_run(ctx.engine, run_id, guard_decisions=[r.as_dict() for r in trips])
        summary.update(tripped=[r.describe() for r in trips], guards_checked=len(results))
    return summary


def gate(ctx: RunContext, run_id: int, tripped: list[str]) -> str:
    """``commit`` when auto-commit is on and no guard tripped (or mass archive is allowed),
    else ``await_approval``. The run records the decision."""
    auto = bool(ctx.params.get("auto_commit", ctx.portal.auto_commit))
    allow = bool(ctx.params.get("allow_mass_archive", False))
    if auto and (not tripped or allow):
        decision = "auto_commit_guards_overridden" if tripped else "auto_commit"
        update_run(ctx.engine, run_id, decision=decision)
        return "commit"
    update_run(ctx.engine, run_id, decision="approval", status="awaiting_approval")
    return "await_approval"


def approval_body(ctx: RunContext, run_id: int, tripped: list[str], link: str | None = None) -> str:
    """The Markdown an approver reads: counts per entity and action, and the guards tripped."""
    from include.sis_sync.report import action_counts, counts_table

    run = get_run(ctx.engine, run_id)
    counts = action_counts(ctx.engine, run_id)
    lines = [
        f"**Portal** {ctx.portal.name} (`{ctx.portal.id}`), run {run_id}, "
        f"source `{run.get('source') or '-'}`",
        "",
        counts_table(counts),
        "",
    ]
    if tripped:
        lines.append("**Guards tripped**: this change set needs a human decision.")
        lines += [f"- {t}" for t in tripped]
    else:
        lines.append("No guard tripped; auto-commit is off for this run.")
    lines += ["", "Approve to apply these changes to the LMS; Reject to discard them."]
    if link:
        lines += ["", f"[The run in Airflow]({link}): each stage's log and the staged actions."]
    return "\n".join(lines)


def record_approval(ctx: RunContext, run_id: int, chosen: list[str], by: str | None) -> str:
    """Keep the approver's answer on the run's row at once: ``approved``, ``rejected``, or
    ``expired`` when nobody answered before the timeout (the default answer, Reject, applied).
    """
    status = "approved" if "Approve" in chosen else "rejected" if by else "expired"
    update_run(ctx.engine, run_id, status=status, approved_by=by if status == "approved" else None)
    log.info("run %s %s by %s", run_id, status, by or "the approval timeout")
    return status


# --------------------------------------------------------------------------------------------
# commit and report
# --------------------------------------------------------------------------------------------


def commit(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Apply the run's selected actions in one transaction with its status and checkpoint."""
    with timed(ctx, run_id, "commit") as summary:
        run = get_run(ctx.engine, run_id)
        frames = ctx.data(run_id).lazy_frames("scoped")
        checkpoint = ctx.data(run_id).read_json("extract").get("checkpoint")
        if run.get("source_date"):
            checkpoint = run["source_date"].isoformat()
        schools = ctx.portal.schools
        slugs = dict(schools.mapping) if isinstance(schools.mapping, dict) else {}
        if schools.mode == "single" and schools.school and schools.slug:
            slugs[schools.school] = schools.slug
        result = lms_commit.commit_run(
            ctx.engine,
            run_id,
            frames,
            lms_commit.CommitTarget(ctx.portal.id, ctx.provider, slugs),
            checkpoint=checkpoint,
        )
        summary.update(
            already_committed=result.already_committed,
            applied={e: {a: n for a, n in c.items() if n} for e, c in result.applied.items()},
            skipped=result.skipped,
            not_selected=result.not_selected,
        )
    return summary


def finish(ctx: RunContext, run_id: int, outcome: str, error: str | None = None) -> dict[str, Any]:
    """Write the run's final status, release the lock, purge expired run data, and report.

    A run the database calls committed, refused, rejected or expired keeps that status; any
    other run that reaches the end did not get through: ``outcome`` (``failed``).
    """
    from include.sis_sync.report import build_report
    from include.sis_sync.staging import now

    run = get_run(ctx.engine, run_id)
    ended = ("committed", "refused", "rejected", "expired")
    status = run["status"] if run["status"] in ended else outcome
    values: dict[str, Any] = {"status": status, "finished_at": now()}
    if error and not run.get("error"):
        values["error"] = error
    update_run(ctx.engine, run_id, **values)
    release_lock(ctx.engine, ctx.portal.id, run_id)
    purged = purge_expired(ctx.portal.id, ctx.portal.retention_days)
    report = build_report(ctx.engine, run_id)
    report["purged_run_folders"] = purged
    return report
