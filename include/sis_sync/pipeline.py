"""The stages of one sync, as plain functions: the DAG's tasks and the benchmarks call these.

Each stage reads what the previous one left in the run's data folder or in staging, does its
work set-based, logs counts and timings (never personal data), and returns a small summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from include.sis_sync import guards, model
from include.sis_sync.context import PROVIDER_KEYS, RunContext, log, timed
from include.sis_sync.diff import DiffInput, diff_snapshot
from include.sis_sync.extract import DropRefused, drop_date_for, extract
from include.sis_sync.lms import commit as lms_commit
from include.sis_sync.lms.db import check_schema
from include.sis_sync.lms.store import active_keys, read_all_current, read_current
from include.sis_sync.providers import oneroster_csv
from include.sis_sync.rundata import RunData, purge_expired
from include.sis_sync.staging import (
    RunRequest,
    acquire_lock,
    get_run,
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

__all__ = [
    "PROVIDER_KEYS",
    "DropRefused",
    "RunContext",
    "approval_body",
    "commit",
    "diff",
    "drop_date_for",
    "extract",
    "finish",
    "gate",
    "record_approval",
    "start",
    "timed",
    "transform",
    "validate_changes",
    "validate_snapshot",
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
    holder = acquire_lock(ctx.engine, ctx.portal.id, run_id)
    if holder is not None:
        log.info("portal %s is busy with run %s; run %s waits", ctx.portal.id, holder, run_id)
    else:
        log.info("run %s of portal %s started (lock taken)", run_id, ctx.portal.id)
    return {"run_id": run_id, "locked_by": holder}


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
