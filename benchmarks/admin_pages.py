"""How fast the admin pages' action lists answer on the large district's initial sync.

    python -m benchmarks.admin_pages --lms sqlite:///path/to/lms.db [--out benchmarks/results]

Point it at an LMS database holding a big staged change set (the large preset's, kept with
``python -m benchmarks.run_sync --preset large --keep``: about 8.6 million actions in its
initial sync). It migrates the database to the head first, then times the queries the action
list runs for one page (``include.sis_sync.queries``): the first page, a page deep in the
list by keyset, the page before it, a search by SIS key, a school filter, the rarest role, a
name search and the list's counts; each the best of three runs (the first one warms the
cache), in seconds. Results go to ``admin_pages.json`` and a section of the results README.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include.sis_sync import queries
from include.sis_sync.lms import schema
from include.sis_sync.lms.db import engine_for, migrate
from include.sis_sync.queries import ActionFilter
from include.sis_sync.report import build_report

BUDGET_SECONDS = 1.0


def _best(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def _biggest_run(engine: sa.Engine) -> tuple[int, int]:
    a = schema.actions.c
    with engine.connect() as conn:
        run_id, n = conn.execute(
            sa.select(a.run_id, sa.func.count()).group_by(a.run_id).order_by(sa.func.count().desc())
        ).first()
    return int(run_id), int(n)


def _key_at(engine: sa.Engine, run_id: int, flt: ActionFilter, fraction: float) -> str:
    """A key ``fraction`` of the way through the list (read once, not timed)."""
    a = schema.actions.c
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).where(flt.clause(run_id))).scalar()
        return str(
            conn.execute(
                sa.select(a.sis_key)
                .where(flt.clause(run_id))
                .order_by(a.sis_key)
                .offset(int(total * fraction))
                .limit(1)
            ).scalar()
        )


def measure(url: str) -> dict[str, Any]:
    migrate(url)
    engine = engine_for(url)
    run_id, total = _biggest_run(engine)
    users = ActionFilter("users", "add")
    enrollments = ActionFilter("enrollments", "add")
    a = schema.actions.c
    with engine.connect() as conn:
        portal = conn.execute(
            sa.select(schema.runs.c.portal_id).where(schema.runs.c.id == run_id)
        ).scalar()
        school = conn.execute(sa.select(a.school_key).where(users.clause(run_id)).limit(1)).scalar()
        rare = conn.execute(
            sa.select(a.kind)
            .where(users.clause(run_id))
            .group_by(a.kind)
            .order_by(sa.func.count())
            .limit(1)
        ).scalar()
    deep_user = _key_at(engine, run_id, users, 0.9)
    deep_enrollment = _key_at(engine, run_id, enrollments, 0.9)
    key_prefix = deep_enrollment[:-1]
    cases: dict[str, Callable[[], Any]] = {
        "users: first page": lambda: queries.action_page(engine, run_id, users),
        "users: page at 90 % (keyset)": lambda: queries.action_page(
            engine, run_id, users, after=deep_user
        ),
        "enrollments: page at 90 % (keyset)": lambda: queries.action_page(
            engine, run_id, enrollments, after=deep_enrollment
        ),
        "enrollments: previous page at 90 %": lambda: queries.action_page(
            engine, run_id, enrollments, before=deep_enrollment
        ),
        "enrollments: search by SIS key": lambda: queries.action_page(
            engine, run_id, ActionFilter("enrollments", "add", search=key_prefix)
        ),
        "users: one school": lambda: queries.action_page(
            engine, run_id, ActionFilter("users", "add", school=school)
        ),
        f"users: rarest role ({rare})": lambda: queries.action_page(
            engine, run_id, ActionFilter("users", "add", kind=rare)
        ),
        "users: search by name": lambda: queries.action_page(
            engine, run_id, ActionFilter("users", "add", search="zz", search_in="name")
        ),
        "users: count and ticked": lambda: queries.count_actions(engine, run_id, users),
        "enrollments: count and ticked": lambda: queries.count_actions(engine, run_id, enrollments),
        "history: first page": lambda: queries.history(engine, portal),
        "report: counts, guards, warnings": lambda: build_report(engine, run_id),
    }
    timings = {}
    for name, fn in cases.items():
        seconds, result = _best(fn)
        if isinstance(result, queries.Page):
            rows = len(result.rows)
        elif isinstance(result, dict) and "total" in result:
            rows = result["total"]
        else:
            rows = sum(n for per in result["counts"].values() for n in per.values())
        timings[name] = {"seconds": round(seconds, 4), "rows": rows}
        print(f"{name:45} {seconds:8.4f} s  {rows}")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": engine.dialect.name,
        "run_id": run_id,
        "staged_actions": total,
        "budget_seconds": BUDGET_SECONDS,
        "timings": timings,
        "within_budget": all(
            t["seconds"] < BUDGET_SECONDS
            for name, t in timings.items()
            if "count" not in name and "name" not in name
        ),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "## Admin pages: action lists",
        "",
        f"`python -m benchmarks.admin_pages` on {result['date'][:10]} ({result['database']}): "
        f"sync {result['run_id']} with {result['staged_actions']:,} staged actions; best of "
        f"three, seconds. Budget: a page or a key search < {result['budget_seconds']:g} s "
        f"({'met' if result['within_budget'] else 'MISSED'}).",
        "",
        "| query | seconds | rows (or actions counted) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v['seconds']:.4f} | {v['rows']} |" for k, v in result["timings"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lms", required=True, help="SQLAlchemy URL of the LMS database")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    result = measure(args.lms)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "admin_pages.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "admin_pages.md").write_text(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
