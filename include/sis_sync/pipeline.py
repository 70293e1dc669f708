"""The stages of one sync, as plain functions: the DAG's tasks and the benchmarks call these.

Each stage reads what the previous one left in the run's data folder or in staging, does its
work set-based, logs counts and timings (never personal data), and returns a small summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from include.sis_sync import guards, model, school_summary
from include.sis_sync.buckets import scratch
from include.sis_sync.context import RunContext, log, timed
from include.sis_sync.diff import DiffInput
from include.sis_sync.diff_parts import Outcome, Source, diff_in_parts
from include.sis_sync.extract import InputMissing, extract, read_record, wait_for_input
from include.sis_sync.links import report_url
from include.sis_sync.lms import commit as lms_commit
from include.sis_sync.lms.db import check_schema
from include.sis_sync.lms.store import active_keys, read_current
from include.sis_sync.providers.base import Completeness, ExtractRecord, SourceRefused
from include.sis_sync.rundata import RunData, purge_expired
from include.sis_sync.runs import (
    APPROVED,
    AWAITING_APPROVAL,
    FAILED,
    FINAL,
    IN_FLIGHT,
    STAGED,
    RunClosed,
    RunNotCommittable,
    RunRequest,
    acquire_lock,
    enter_stage,
    get_run,
    move,
    now,
    open_run,
    record_answer,
    record_event,
    release_lock,
    retire_error,
    update_run,
)
from include.sis_sync.staging import purge_personal_values, write_change_set
from include.sis_sync.transform import Scope, build_scope, derive_user_organizations
from include.sis_sync.validation import (
    Finding,
    PartChecks,
    SnapshotInvalid,
    check_oddities,
    check_references,
    check_text,
    enrollment_targets,
    left_out_keys,
    run_suites,
    user_roles,
    warn,
)

__all__ = [
    "PREPARE",
    "InputMissing",
    "RunClosed",
    "RunContext",
    "RunNotCommittable",
    "SourceRefused",
    "approval_body",
    "commit",
    "diff",
    "extract",
    "finish",
    "gate",
    "record_approval",
    "start",
    "timed",
    "transform",
    "validate_changes",
    "validate_snapshot",
    "wait_for_input",
]

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
    holder = acquire_lock(ctx.engine, ctx.portal.id, run_id, ctx.airflow_run_alive)
    if holder is not None:
        log.info("portal %s is busy with run %s; run %s waits", ctx.portal.id, holder, run_id)
    else:
        log.info("run %s of portal %s started (lock taken)", run_id, ctx.portal.id)
    return {"run_id": run_id, "locked_by": holder}


# --------------------------------------------------------------------------------------------
# transform
# --------------------------------------------------------------------------------------------


def transform(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Raw provider tables to the canonical frames, through the portal's provider. The
    provider's row-wise tables (a million users, six million enrollments) are mapped part by
    part, so the task never holds one whole."""
    enter_stage(ctx.engine, run_id, "transform")
    with timed(ctx, run_id, "transform") as summary:
        data = ctx.data(run_id)
        record = read_record(ctx, run_id)
        provider = ctx.portal.source_provider()
        entities = ctx.portal.entities
        raw = data.lazy_frames("raw")
        in_parts = [name for name in raw if name in provider.row_wise_tables]
        whole = {name: raw[name] for name in raw if name not in in_parts}
        frames = provider.to_canonical(whole, entities, record)
        rows = {name: len(frame) for name, frame in frames.items()}
        with data.stage_writer("canonical") as canonical:
            for name in in_parts:
                for part in data.iter_frames("raw", name, TRANSFORM_ROWS):
                    mapped = provider.to_canonical({name: part}, entities, record)
                    for entity, frame in mapped.items():
                        rows[entity] = rows.get(entity, 0) + len(frame)
                        canonical.write(entity, frame)
            empty, record = _sent_none(rows, record, provider.optional_entities)
            for entity, frame in frames.items():
                if entity not in empty:
                    canonical.write(entity, frame)
        data.write_json("extract", record.as_json())
        summary["rows"] = {name: n for name, n in rows.items() if name not in empty}
        if record.sent_none:
            summary["sent_none"] = list(record.sent_none)
    return summary


TRANSFORM_ROWS = 500_000  # raw rows mapped at once


def _sent_none(
    rows: Mapping[str, int], record: ExtractRecord, optional: frozenset[str]
) -> tuple[list[str], ExtractRecord]:
    """Optional kinds a complete read came back without are absent, never "archive them all":
    the LMS keeps its rows of them and the report says the SIS sent none. Returns those
    kinds (their frames are not written) and the record saying so."""
    empty = [
        name
        for name in sorted(optional)
        if record.modes.get(name) == Completeness.COMPLETE and rows.get(name, 0) == 0
    ]
    if not empty:
        return empty, record
    modes = {**record.modes, **dict.fromkeys(empty, Completeness.ABSENT)}
    sent_none = tuple(sorted({*record.sent_none, *empty}))
    return empty, replace(record, modes=modes, sent_none=sent_none)


# --------------------------------------------------------------------------------------------
# validate_snapshot
# --------------------------------------------------------------------------------------------


def _lms_references(ctx: RunContext, modes: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """The LMS rows validation needs: keys of what the feed does not carry completely (a
    reference may point at them), and users' emails (to spot one used twice)."""
    needed = {e.name: () for e in model.ENTITIES if modes.get(e.name) != Completeness.COMPLETE}
    needed[model.USERS.name] = ("email",)
    with ctx.engine.connect() as conn:
        return {
            name: read_current(conn, ctx.portal.id, ctx.provider, model.BY_NAME[name], fields)
            for name, fields in needed.items()
        }


def validate_snapshot(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Reference checks (warnings, rows or links dropped) then the fatal GX suites. The
    enrollments (six million in a large district) are checked part by part, their keys'
    uniqueness over the whole (``PartChecks``)."""
    enter_stage(ctx.engine, run_id, "validate_snapshot")
    with timed(ctx, run_id, "validate_snapshot") as summary:
        data = ctx.data(run_id)
        canonical = data.lazy_frames("canonical")
        enrollments = model.ENROLLMENTS.name
        frames = {name: canonical[name] for name in canonical if name != enrollments}
        modes = read_record(ctx, run_id).modes
        lms = _lms_references(ctx, modes)
        lms_keys = {
            n: k for n, k in active_keys(lms).items() if modes.get(n) != Completeness.COMPLETE
        }
        targets = enrollment_targets(frames, lms_keys)
        frames, warnings = check_references(frames, lms_keys)
        warnings += check_oddities(frames, lms[model.USERS.name])
        if model.USERS.name in frames:
            frames[model.USER_ORGANIZATIONS.name] = derive_user_organizations(frames["users"])
        fatal = check_text(frames)
        rows = {n: len(f) for n, f in frames.items()}
        fatal += run_suites(frames, modes)
        checks = None
        with data.stage_writer("validated") as validated:
            for name, frame in frames.items():
                validated.write(name, frame)
            if enrollments in canonical:
                checks = PartChecks(
                    model.ENROLLMENTS,
                    modes[enrollments] == "bulk",
                    targets,
                    user_roles(frames["users"]) if "users" in frames else None,
                )
                for part in data.iter_frames("canonical", enrollments, VALIDATE_ROWS):
                    validated.write(enrollments, checks.check(part))
        if checks is not None:  # the keys written are read again if some hashes repeat
            more_warnings, more_fatal = checks.findings(
                lambda: (
                    p["sis_key"]
                    for p in data.iter_frames("validated", enrollments, VALIDATE_ROWS, ["sis_key"])
                )
            )
            warnings, fatal = warnings + more_warnings, fatal + more_fatal
            rows[enrollments] = checks.rows
        data.write_json("findings", [f.as_dict() for f in [*warnings, *fatal]])
        if fatal:
            data.remove_stage("validated")
            update_run(ctx.engine, run_id, error=str(SnapshotInvalid(fatal)))
            raise SnapshotInvalid(fatal)
        summary.update(warnings=len(warnings), rows=rows)
    return summary


VALIDATE_ROWS = 500_000  # enrollments checked at once


# --------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------


def _scope(ctx: RunContext, data: RunData, conn: sa.Connection) -> Scope:
    """The run's scope, from the organizations the snapshot and the LMS know."""
    entity = model.ORGANIZATIONS
    columns = ["sis_key", "kind", "parent_key"]
    fed = data.read_columns("validated", entity.name, columns)
    current = read_current(conn, ctx.portal.id, ctx.provider, entity)[columns]
    known = pd.concat([fed, current], ignore_index=True).drop_duplicates("sis_key")
    return build_scope(known, ctx.portal.schools.synced, ctx.schools)


def _synced_roles(ctx: RunContext) -> frozenset[str]:
    switches = ctx.portal.entities
    return frozenset(
        role for role, switch in model.ROLE_SWITCH.items() if getattr(switches, switch)
    )


def _sent_none_finding(name: str, held: int) -> Finding:
    """The report's line for an optional kind the SIS sent none of (``held``: the LMS's
    active ones)."""
    kept = f"the LMS keeps its {held} active {name}" if held else f"the LMS holds no {name}"
    return Finding(name, "sent_none", "warning", 0, [], f"the SIS sent no {name}: {kept}")


def diff(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Diff the validated snapshot against the LMS and stage the actions and warnings.

    Entity by entity, a large one in key buckets (``diff_parts``): the task holds one part
    of the snapshot and of the LMS at a time."""
    enter_stage(ctx.engine, run_id, "diff")
    with timed(ctx, run_id, "diff") as summary:
        data = ctx.data(run_id)
        record = read_record(ctx, run_id)
        modes = record.modes
        findings = [Finding(**f) for f in data.read_json("findings")]
        window = ctx.portal.school_year
        with (
            scratch() as folder,
            ctx.engine.connect() as conn,
            data.stage_writer("scoped") as scoped,
        ):
            scope = _scope(ctx, data, conn)
            diff_in = DiffInput(
                modes=modes,
                current={},
                scope=scope,
                synced_roles=_synced_roles(ctx),
                left_out=left_out_keys(findings),
                school_year=(window.start.isoformat(), window.end.isoformat()) if window else None,
                **(
                    {"complete_per_parent": record.complete_per_parent}
                    if record.complete_per_parent
                    else {}
                ),
            )
            source = Source(data, conn, ctx.portal.id, ctx.provider)
            outcome = diff_in_parts(source, diff_in, scoped, folder)
            conn.rollback()  # end the read before writing: SQLite would wait on it
            _keep_school_summary(ctx, run_id, data, modes, outcome)
            findings += _diff_findings(record, outcome)
            counts = write_change_set(
                ctx.engine, run_id, ctx.portal.id, outcome.action_parts(), findings
            )
        data.write_frames("guards", {"active": outcome.guards_base()})
        data.write_json("scope", {"schools": sorted(scope.schools) if scope.schools else None})
        summary.update(
            counts={e: {a: n for a, n in c.items() if n} for e, c in counts.items()},
            actions=sum(sum(c.values()) for c in counts.values()),
            warnings=len(findings),
        )
    return summary


def _diff_findings(record: ExtractRecord, outcome: Outcome) -> list[Finding]:
    """The warnings the diff adds to validation's: a run that fell back to a full read, kinds
    the SIS sent none of, users kept for an enrollment, sections outside the school year."""
    findings = []
    if record.fallback:
        findings.append(Finding("run", "ran_as_full", "warning", 0, [], record.fallback))
    findings += [
        _sent_none_finding(name, outcome.active_lms.get(name, 0)) for name in record.sent_none
    ]
    outsiders = [o for o in outcome.outsiders if len(o)]
    if outsiders:
        findings.append(
            warn(
                "users",
                "home_school_not_synced",
                pd.concat(outsiders, ignore_index=True),
                "enrolled in a synced section, but their own school is not synced",
            )
        )
    if len(outcome.outside_school_year):
        findings.append(
            warn(
                "sections",
                "outside_school_year",
                outcome.outside_school_year,
                "terms all fall outside the school year: not added or updated",
            )
        )
    return findings


def _keep_school_summary(
    ctx: RunContext, run_id: int, data: RunData, modes: Mapping[str, str], outcome: Outcome
) -> None:
    """A read carrying organizations completely replaces the portal's school summary."""
    orgs = model.ORGANIZATIONS.name
    validated = data.lazy_frames("validated")
    if modes.get(orgs) != Completeness.COMPLETE or orgs not in validated:
        return
    needs = {
        orgs: None,
        model.USERS.name: ["sis_key", "sis_status", "role", "organizations"],
        model.SECTIONS.name: ["sis_key", "sis_status", "organization_key"],
    }
    frames = {
        name: data.read_columns("validated", name, columns)
        for name, columns in needs.items()
        if name in validated
    }
    synced = ctx.portal.schools.synced
    summary = school_summary.summarise(frames, synced, outcome.enrollment_counts())
    totals = school_summary.totals(frames, outcome.enrollments_active)
    school_summary.write(ctx.engine, ctx.portal.id, run_id, summary, totals)


# The stages that turn a read of the SIS into a staged change set, in order: each reads what
# the one before left. The DAG, the benchmark and the tests run them from this one list.
PREPARE = (extract, transform, validate_snapshot, diff)


# --------------------------------------------------------------------------------------------
# validate_changes (the guards) and the gate
# --------------------------------------------------------------------------------------------


def validate_changes(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Evaluate the guards and record their decision; a guard never fails the task."""
    from include.sis_sync.report import counted_actions

    enter_stage(ctx.engine, run_id, "validate_changes")
    with timed(ctx, run_id, "validate_changes") as summary:
        by = ("entity", "action", "kind", "school_key")
        rows = counted_actions(ctx.engine, run_id, by, actions=("archive", "update"))
        proposed = pd.DataFrame(rows, columns=[*by, "n"]).astype({"n": "int64"})
        active = ctx.data(run_id).read_frames("guards")["active"]
        results = guards.evaluate(proposed, active, ctx.portal.guards)
        trips = guards.tripped(results)
        update_run(ctx.engine, run_id, guard_decisions=[r.as_dict() for r in trips])
        summary.update(tripped=[r.describe() for r in trips], guards_checked=len(results))
    return summary


@dataclass(frozen=True)
class Switches:
    """The run params that skip approval, as this run may use them, and why not if not."""

    auto_commit: bool
    allow_mass_archive: bool
    ignored: str | None = None


def switches(ctx: RunContext) -> Switches:
    """``auto_commit`` and ``allow_mass_archive`` as the run may use them.

    Scheduled runs follow the portal file. Where a portal names ``approvers``, a run's own
    values count only when one of them triggered it; otherwise the portal's ``auto_commit``
    applies, mass archives are not allowed, and the run says why.
    """
    portal = ctx.portal
    asked = Switches(
        bool(ctx.params.get("auto_commit", portal.auto_commit)),
        bool(ctx.params.get("allow_mass_archive", False)),
    )
    own = Switches(portal.auto_commit, False)
    if ctx.run_type == "scheduled":
        return own
    if not portal.approvers or ctx.triggered_by in portal.approvers:
        return asked
    ignored = [
        f"{name}={str(value).lower()}"
        for name, value, default in (
            ("auto_commit", asked.auto_commit, own.auto_commit),
            ("allow_mass_archive", asked.allow_mass_archive, False),
        )
        if value != default
    ]
    if not ignored:
        return own
    why = (
        f"{' and '.join(ignored)} asked by {ctx.triggered_by or 'an unknown user'}, who is not "
        "among the portal's approvers: ignored, the portal's own settings apply"
    )
    return Switches(own.auto_commit, False, why)


def gate(ctx: RunContext, run_id: int, tripped: list[str]) -> str:
    """``commit`` when the run may auto-commit and no guard tripped (or mass archive is
    allowed), else ``await_approval``. The run records the decision.

    Only a staged run is gated. A retried gate gives the answer already recorded; a gate run
    again after the run was decided or ended is refused.
    """
    use = switches(ctx)
    if use.ignored:
        record_event(ctx.engine, run_id, "switches_ignored", use.ignored, ctx.triggered_by)
    if use.auto_commit and (not tripped or use.allow_mass_archive):
        overridden = bool(tripped)
        decision = "auto_commit_guards_overridden" if overridden else "auto_commit"
        values = {"decision": decision, "decided_at": now()}
        if overridden:  # an explicit allow_mass_archive: whoever asked for it decided
            values["decided_by"] = ctx.triggered_by
        if move(ctx.engine, run_id, APPROVED, allowed_from=(STAGED,), **values):
            detail = "auto-commit" + (
                ": guards tripped, mass archive allowed" if overridden else ""
            )
            record_event(ctx.engine, run_id, decision, detail, values.get("decided_by"))
            return "commit"
    elif move(ctx.engine, run_id, AWAITING_APPROVAL, allowed_from=(STAGED,), decision="approval"):
        return "await_approval"
    status = get_run(ctx.engine, run_id)["status"]
    if status == APPROVED:
        return "commit"
    if status == AWAITING_APPROVAL:
        return "await_approval"
    detail = f"gate was run again while the sync was {status}: refused, nothing changed"
    record_event(ctx.engine, run_id, "stage_refused", detail)
    raise RunClosed(f"sync {run_id}: {detail}")


def approval_body(
    ctx: RunContext, run_id: int, tripped: list[str], link: str | None = None, ui_base: str = ""
) -> str:
    """The Markdown an approver reads: counts per entity and action, the guards tripped, and
    a link to the sync's report in the admin pages (relative to the UI unless ``ui_base``)."""
    from include.sis_sync.report import action_counts, counts_table

    run = get_run(ctx.engine, run_id)
    counts = action_counts(ctx.engine, run_id)
    lines = [
        f"**Portal** {ctx.portal.name} (`{ctx.portal.id}`), sync {run_id}, "
        f"source `{run.get('source') or '-'}`",
        "",
        counts_table(counts),
        "",
    ]
    use = switches(ctx)
    if tripped:
        lines.append("**Guards tripped**: this change set needs a human decision.")
        lines += [f"- {t}" for t in tripped]
    elif use.ignored:
        lines.append(f"**Waiting for approval**: {use.ignored}.")
    else:
        lines.append("No guard tripped; auto-commit is off for this run.")
    if ctx.portal.approvers:
        lines += [
            "",
            f"Only the portal's approvers may approve: {', '.join(ctx.portal.approvers)}.",
        ]
    lines += ["", "Approve to apply these changes to the LMS; Reject to discard them."]
    report = report_url(ctx.portal.dag_id, run_id, ui_base)
    lines += [
        "",
        f"[Review the actions in the sync report]({report}): untick what must not reach the "
        "LMS, then commit or reject there or here.",
    ]
    if link:
        lines += ["", f"[The run in Airflow]({link}): each stage's log and the staged actions."]
    return "\n".join(lines)


def record_approval(
    ctx: RunContext,
    run_id: int,
    chosen: list[str],
    by: str | None,
    answered_at: datetime | None = None,
) -> str:
    """Keep the approver's answer on the run's row at once (``runs.record_answer``): approved,
    rejected, expired when nobody answered in time, refused when the one approving is not
    among the portal's approvers. Returns the run's status after it."""
    status = record_answer(
        ctx.engine, run_id, "Approve" in chosen, by, ctx.portal.approvers, answered_at
    )
    log.info("sync %s: %s (answer by %s)", run_id, status, by or "nobody: the approval timeout")
    return status


# --------------------------------------------------------------------------------------------
# commit and report
# --------------------------------------------------------------------------------------------


def commit(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """Apply the run's selected actions in one transaction with its status and checkpoint.

    Refused (:class:`RunNotCommittable`, recorded) unless the run was approved, still holds
    the portal's lock and no newer sync of the portal committed.
    """
    with timed(ctx, run_id, "commit") as summary:
        run = get_run(ctx.engine, run_id)
        frames = ctx.data(run_id).lazy_frames("scoped")
        checkpoint = read_record(ctx, run_id).checkpoint
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
        retire_error(ctx.engine, run_id)
        summary.update(
            already_committed=result.already_committed,
            applied={e: {a: n for a, n in c.items() if n} for e, c in result.applied.items()},
            skipped=result.skipped,
            not_selected=result.not_selected,
        )
    return summary


def finish(ctx: RunContext, run_id: int) -> dict[str, Any]:
    """End the run, release the lock, purge expired run data, and report.

    A run that ended (committed, rejected, expired, refused, failed) keeps its status; a run
    still in flight when its DAG run ends did not get through: ``failed``, with the reason
    when no stage recorded one.
    """
    from include.sis_sync.report import build_report

    run = get_run(ctx.engine, run_id)
    if run["status"] not in FINAL:
        values: dict[str, Any] = {"finished_at": now()}
        if not run.get("error"):
            values["error"] = _unfinished(run["status"])
        move(ctx.engine, run_id, FAILED, allowed_from=IN_FLIGHT, **values)
    elif run.get("finished_at") is None:
        update_run(ctx.engine, run_id, finished_at=now())
    release_lock(ctx.engine, ctx.portal.id, run_id)
    purged = purge_expired(ctx.portal.id, ctx.portal.retention_days)
    forgotten = purge_personal_values(ctx.engine, ctx.portal.id, ctx.portal.retention_days)
    report = build_report(ctx.engine, run_id)
    report["purged_run_folders"] = purged
    report["purged_staged_values"] = forgotten
    return report


def _unfinished(status: str) -> str:
    if status == AWAITING_APPROVAL:
        return "the approval step ended without an answer: nothing was committed"
    if status == APPROVED:
        return "approved, but the commit did not complete: nothing was committed"
    return f"the DAG run ended while the sync was {status}: nothing was committed"
