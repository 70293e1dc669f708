"""A run's report: counts per entity and action, warnings, timings and final status.

Built from staging only, so it can be rebuilt for any run of the history. It names keys and
counts, never a student's name, email or other personal data.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from include.sis_sync import model
from include.sis_sync.diff import ACTIONS, count_label
from include.sis_sync.lms import schema
from include.sis_sync.runs import get_run, read_events, run_of_airflow_run
from include.sis_sync.staging import read_warnings

MAX_WARNINGS_SHOWN = 20
MAX_KEYS_SHOWN = 20
# Events the report lists: attempts that were refused, and answers that came too late.
REFUSAL_EVENTS = ("commit_refused", "stage_refused", "answer_ignored", "approval_refused")


def action_counts(
    engine: sa.Engine, run_id: int, status: str | None = None
) -> dict[str, dict[str, int]]:
    """Counts per entity (users per primary role) and action, optionally of one status.

    Read from the counts that staging and the commit keep on the run's row (one row, however
    many actions); counted over the actions only for runs staged before those existed."""
    runs = schema.runs
    with engine.connect() as conn:
        kept = conn.execute(sa.select(runs.c.action_counts).where(runs.c.id == run_id)).scalar()
    by_status = json.loads(kept) if kept else {}
    if "staged" in by_status:  # statuses the commit has not written yet count nothing
        return by_status.get(status or "staged", {})
    return _counted_over_actions(engine, run_id, status)


def _counted_over_actions(
    engine: sa.Engine, run_id: int, status: str | None
) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for entity, action, kind, n in counted_actions(
        engine, run_id, ("entity", "action", "kind"), status=status
    ):
        label = count_label(entity, kind)
        counts.setdefault(label, dict.fromkeys(ACTIONS, 0))[action] += int(n)
    return counts


def counted_actions(
    engine: sa.Engine,
    run_id: int,
    by: tuple[str, ...],
    *,
    status: str | None = None,
    actions: tuple[str, ...] | None = None,
) -> list[tuple[Any, ...]]:
    """The run's actions counted per ``by`` columns (the count last), in one grouped query:
    the report's counts and the guards' per-school figures both come from here."""
    table = schema.actions
    columns = [table.c[name] for name in by]
    query = sa.select(*columns, sa.func.count()).where(table.c.run_id == run_id).group_by(*columns)
    if status:
        query = query.where(table.c.status == status)
    if actions:
        query = query.where(table.c.action.in_(actions))
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query).all()]


def ordered_labels(counts: dict[str, dict[str, int]]) -> list[str]:
    """Count labels in the model's dependency order (users' roles beside each other)."""
    order = [e.name for e in model.ENTITIES]

    def key(label: str) -> tuple[int, str]:
        base = label.split(" ")[0]
        return (order.index(base) if base in order else len(order), label)

    return sorted(counts, key=key)


def counts_table(counts: dict[str, dict[str, int]]) -> str:
    """A Markdown table of counts per entity and action (entities with no action left out)."""
    rows = ["| entity | " + " | ".join(ACTIONS) + " |", "|---|" + "---:|" * len(ACTIONS)]
    for label in ordered_labels(counts):
        values = counts[label]
        if any(values.get(a, 0) for a in ACTIONS):
            rows.append(f"| {label} | " + " | ".join(str(values.get(a, 0)) for a in ACTIONS) + " |")
    if len(rows) == 2:
        rows.append("| (no changes) |" + " |" * len(ACTIONS))
    return "\n".join(rows)


def grouped_warnings(engine: sa.Engine, run_id: int) -> list[dict[str, Any]]:
    """The run's warnings grouped for reading: one group per kind, entity and message, with
    its count, how many name an action, and the first keys."""
    groups: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    for w in read_warnings(engine, run_id):
        key = (w["kind"], w["entity"], w["message"])
        group = groups.setdefault(
            key,
            {
                "kind": w["kind"],
                "entity": w["entity"],
                "detail": w["message"],
                "count": 0,
                "with_action": 0,
                "keys": [],
            },
        )
        group["count"] += 1
        group["with_action"] += w["action_id"] is not None
        if w["sis_key"] and len(group["keys"]) < MAX_KEYS_SHOWN:
            group["keys"].append(w["sis_key"])
    for group in groups.values():
        group["message"] = _group_message(group)
    return list(groups.values())


def _group_message(group: dict[str, Any]) -> str:
    if not group["keys"]:
        return group["detail"]
    more = group["count"] - len(group["keys"])
    keys = ", ".join(group["keys"]) + (f" and {more} more" if more > 0 else "")
    return f"{group['entity']}: {group['detail']}: {group['count']} record(s): {keys}"


def decision_line(run: dict[str, Any]) -> str | None:
    """Who decided the run and when, in words: "Committed at T, approved by X at T",
    "Rejected by X at T", "Expired at T: nobody answered ...", or None while nobody has."""
    status, by, decision = run["status"], run.get("decided_by"), run.get("decision")
    at = _when(run.get("decided_at"))
    if status == "expired":
        return f"Expired{at}: nobody answered before the approval timeout"
    if status == "rejected":
        return f"Rejected by {by or 'unknown'}{at}"
    who = f"approved by {by}{at}" if decision == "approval" else _auto(run, by)
    if status == "committed":
        return f"Committed{_when(run.get('committed_at'))}, {who}"
    if status == "approved":
        return who[0].upper() + who[1:]
    return None


def _when(moment: Any) -> str:
    """`` at YYYY-MM-DD HH:MM:SS UTC`` (times are stored in UTC), or nothing."""
    return f" at {moment:%Y-%m-%d %H:%M:%S} UTC" if moment else ""


def _auto(run: dict[str, Any], by: str | None) -> str:
    if run.get("decision") == "auto_commit_guards_overridden":
        return f"auto-committed through tripped guards (allow_mass_archive by {by or 'unknown'})"
    return "auto-committed (no guard tripped)"


def build_report(engine: sa.Engine, run_id: int) -> dict[str, Any]:
    """The run's summary, as a dict (for XCom and the history) with a printable ``text``."""
    run = get_run(engine, run_id)
    committed = run["status"] == "committed"
    counts = action_counts(engine, run_id, "applied" if committed else None)
    guards_tripped = json.loads(run["guard_decisions"]) if run.get("guard_decisions") else []
    timings = json.loads(run["timings"]) if run.get("timings") else {}
    unticked = action_counts(engine, run_id, "not_selected")
    not_selected = sum(sum(per_action.values()) for per_action in unticked.values())
    events = read_events(engine, run_id)
    report = {
        "run_id": run_id,
        "portal_id": run["portal_id"],
        "attempt": run["attempt"],
        "status": run["status"],
        "mode": run["mode"],
        "ran_as": run["ran_as"],
        "trigger": run["trigger"],
        "triggered_by": run["triggered_by"],
        "source": run["source"],
        "source_date": str(run["source_date"]) if run.get("source_date") else None,
        "decision": run["decision"],
        "decided_by": run["decided_by"],
        "decided_at": run["decided_at"].isoformat() if run.get("decided_at") else None,
        "decided": decision_line(run),
        "counts": counts,
        "counts_are": "applied" if committed else "staged",
        "not_selected": not_selected,
        "warnings": grouped_warnings(engine, run_id),
        "refusals": [
            {
                "at": e["at"].isoformat(),
                "event": e["event"],
                "by": e["actor"],
                "detail": e["detail"],
            }
            for e in events
            if e["event"] in REFUSAL_EVENTS
        ],
        "guards_tripped": guards_tripped,
        "timings": timings,
        "error": run["error"],
    }
    report["text"] = render(report)
    return report


def render(report: dict[str, Any]) -> str:
    """The report as text for logs and the demo."""
    lines = [
        f"Sync report: portal {report['portal_id']}, sync {report['run_id']}: "
        f"{report['status'].upper()}",
        f"  source: {report['source'] or '-'} (drop date {report['source_date'] or '-'}); "
        f"asked {report['mode']}, ran as {report['ran_as'] or '-'}; trigger {report['trigger']}"
        + (f" by {report['triggered_by']}" if report["triggered_by"] else ""),
    ]
    if report["decided"]:
        lines.append(f"  {report['decided']}")
    lines += [
        f"  counts ({report['counts_are']}):",
        *("    " + line for line in counts_table(report["counts"]).splitlines()),
    ]
    if report["guards_tripped"]:
        lines.append("  guards tripped:")
        for g in report["guards_tripped"]:
            where = f"school {g['school']}" if g.get("school") else "portal-wide"
            lines.append(
                f"    - {g['action']}s of {g['kind']} ({where}): {g['count']} of {g['active']}"
                f" active ({g['percent']} %)"
            )
    if report.get("not_selected"):
        note = (
            "; a quick sync does not offer them again until the next full sync"
            if report["ran_as"] == "quick"
            else ""
        )
        lines.append(f"  not selected by the approver: {report['not_selected']} action(s){note}")
    for refusal in report["refusals"]:
        who = f" (by {refusal['by']})" if refusal["by"] else ""
        lines.append(f"  REFUSED at {refusal['at']}{who}: {refusal['detail']}")
    warnings = report["warnings"]
    lines.append(f"  warnings: {sum(w['count'] for w in warnings)}")
    for w in warnings[:MAX_WARNINGS_SHOWN]:
        lines.append(f"    - [{w['kind']}] {w['message']}")
    if len(warnings) > MAX_WARNINGS_SHOWN:
        lines.append(f"    ... and {len(warnings) - MAX_WARNINGS_SHOWN} more kinds")
    if report["error"]:
        lines.append(f"  error: {report['error']}")
    if report["timings"]:
        lines.append(
            "  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in report["timings"].items())
        )
    return "\n".join(lines)


NOTE_PREFIX = "SIS sync"


def outcome_note(engine: sa.Engine, dag_id: str, airflow_run_id: str) -> str | None:
    """The outcome of an Airflow run's latest sync, for its DAG run note: a rejected or
    expired sync ends as a successful DAG run, so the runs list must say which it was."""
    run_id = run_of_airflow_run(engine, dag_id, airflow_run_id)
    if run_id is None:
        return None
    report = build_report(engine, run_id)
    parts = [f"{NOTE_PREFIX} {run_id}: {report['status'].upper()}"]
    if report["status"] == "committed":
        totals = {a: sum(c[a] for c in report["counts"].values()) for a in ACTIONS}
        done = [f"{n} {a}" for a, n in totals.items() if n]
        parts.append(", ".join(done) or "no changes")
    if report["decided"]:
        parts.append(report["decided"])
    if report["error"] and report["status"] in ("failed", "refused"):
        parts.append(report["error"][:300])
    if report["refusals"]:
        latest = report["refusals"][-1]
        parts.append(f"then refused at {latest['at'][:19]} UTC: {latest['detail'][:300]}")
    return " · ".join(parts)
