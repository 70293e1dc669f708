"""A run's report: counts per entity and action, warnings, timings and final status.

Built from staging only, so it can be rebuilt for any run of the history. It names keys and
counts, never a student's name, email or other personal data.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from include.sis_sync import model
from include.sis_sync.diff import ACTIONS
from include.sis_sync.lms import schema
from include.sis_sync.staging import get_run, read_warnings

MAX_WARNINGS_SHOWN = 20


def action_counts(
    engine: sa.Engine, run_id: int, status: str | None = None
) -> dict[str, dict[str, int]]:
    """Counts per entity (users per primary role) and action, optionally of one status."""
    actions = schema.actions
    query = (
        sa.select(actions.c.entity, actions.c.action, actions.c.kind, sa.func.count())
        .where(actions.c.run_id == run_id)
        .group_by(actions.c.entity, actions.c.action, actions.c.kind)
    )
    if status:
        query = query.where(actions.c.status == status)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    counts: dict[str, dict[str, int]] = {}
    for entity, action, kind, n in rows:
        label = f"users ({kind})" if entity == "users" and kind else entity
        counts.setdefault(label, dict.fromkeys(ACTIONS, 0))[action] += int(n)
    return counts


def _ordered(counts: dict[str, dict[str, int]]) -> list[str]:
    order = [e.name for e in model.ENTITIES]

    def key(label: str) -> tuple[int, str]:
        base = label.split(" ")[0]
        return (order.index(base) if base in order else len(order), label)

    return sorted(counts, key=key)


def counts_table(counts: dict[str, dict[str, int]]) -> str:
    """A Markdown table of counts per entity and action (entities with no action left out)."""
    rows = ["| entity | " + " | ".join(ACTIONS) + " |", "|---|" + "---:|" * len(ACTIONS)]
    for label in _ordered(counts):
        values = counts[label]
        if any(values.get(a, 0) for a in ACTIONS):
            rows.append(f"| {label} | " + " | ".join(str(values.get(a, 0)) for a in ACTIONS) + " |")
    if len(rows) == 2:
        rows.append("| (no changes) |" + " |" * len(ACTIONS))
    return "\n".join(rows)


def build_report(engine: sa.Engine, run_id: int) -> dict[str, Any]:
    """The run's summary, as a dict (for XCom and the history) with a printable ``text``."""
    run = get_run(engine, run_id)
    committed = run["status"] == "committed"
    counts = action_counts(engine, run_id, "applied" if committed else None)
    warnings = read_warnings(engine, run_id)
    guards_tripped = json.loads(run["guard_decisions"]) if run.get("guard_decisions") else []
    timings = json.loads(run["timings"]) if run.get("timings") else {}
    unticked = action_counts(engine, run_id, "not_selected")
    not_selected = sum(sum(per_action.values()) for per_action in unticked.values())
    report = {
        "run_id": run_id,
        "portal_id": run["portal_id"],
        "status": run["status"],
        "mode": run["mode"],
        "ran_as": run["ran_as"],
        "trigger": run["trigger"],
        "source": run["source"],
        "source_date": str(run["source_date"]) if run.get("source_date") else None,
        "decision": run["decision"],
        "approved_by": run["approved_by"],
        "counts": counts,
        "counts_are": "applied" if committed else "staged",
        "not_selected": not_selected,
        "warnings": [
            {"kind": w["kind"], "entity": w["entity"], "message": w["message"]} for w in warnings
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
        f"Sync report: portal {report['portal_id']}, run {report['run_id']}: "
        f"{report['status'].upper()}",
        f"  source: {report['source'] or '-'} (drop date {report['source_date'] or '-'}); "
        f"asked {report['mode']}, ran as {report['ran_as'] or '-'}; trigger {report['trigger']}; "
        f"decision {report['decision'] or '-'}"
        + (f", approved by {report['approved_by']}" if report["approved_by"] else ""),
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
    warnings = report["warnings"]
    lines.append(f"  warnings: {len(warnings)}")
    for w in warnings[:MAX_WARNINGS_SHOWN]:
        lines.append(f"    - [{w['kind']}] {w['message']}")
    if len(warnings) > MAX_WARNINGS_SHOWN:
        lines.append(f"    ... and {len(warnings) - MAX_WARNINGS_SHOWN} more")
    if report["error"]:
        lines.append(f"  error: {report['error']}")
    if report["timings"]:
        lines.append(
            "  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in report["timings"].items())
        )
    return "\n".join(lines)
