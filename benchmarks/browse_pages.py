"""How fast the browse pages answer on the large district, searching included.

    python -m benchmarks.browse_pages --lms sqlite:///path/to/lms.db [--out benchmarks/results]

Point it at an LMS database after an initial sync and a day-2 re-sync (the large preset's,
kept with ``python -m benchmarks.run_sync --preset large --keep``: 1,000,000 students,
6,250,000 enrollments). It migrates the database to the head first, then calls each page's
route function in this process, as the API server does after its access check: every query
the page runs and the rendering of its HTML. Each page is the best of three calls (the first
warms the cache), in seconds; the budget is one second per page. Results go to
``browse_pages.json`` and ``browse_pages.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
import yaml

from include.sis_sync.lms import schema
from include.sis_sync.lms.db import engine_for, migrate

BUDGET_SECONDS = 1.0


class _Reader:
    """The signed-in user a route gets (only its id is used, for the forms' token)."""

    def get_id(self) -> str:
        return "benchmark"


def _request(query: dict[str, Any]) -> Any:
    from starlette.requests import Request

    return Request({"type": "http", "query_string": urlencode(query).encode(), "headers": []})


def _best(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def _one(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def _samples(engine: sa.Engine, portal: str) -> dict[str, Any]:
    """Records to open (read once, not timed): the biggest school, a student changed on day
    2 (an add and an update in her history), a busy teacher, a class, a key 90 % through the
    students, and a common family name."""
    p = {"p": portal}
    return {
        "school": _one(
            engine,
            "SELECT organization_key FROM lms_user_organizations WHERE portal_id = :p "
            "GROUP BY organization_key ORDER BY count(*) DESC LIMIT 1",
            **p,
        ),
        "student": _one(
            engine,
            "SELECT sis_key FROM sis_sync_actions WHERE portal_id = :p AND entity = 'users' "
            "AND action = 'update' ORDER BY id LIMIT 1",
            **p,
        ),
        "teacher": _one(
            engine,
            "SELECT user_key FROM lms_enrollments WHERE portal_id = :p AND role = 'teacher' "
            "GROUP BY user_key ORDER BY count(*) DESC LIMIT 1",
            **p,
        ),
        "class": _one(
            engine,
            "SELECT section_key FROM lms_enrollments WHERE portal_id = :p AND role = 'student' "
            "GROUP BY section_key ORDER BY count(*) DESC LIMIT 1",
            **p,
        ),
        "deep": _one(
            engine,
            "SELECT id FROM lms_users WHERE portal_id = :p AND role = 'student' "
            "AND archived_at IS NULL ORDER BY search_text, id LIMIT 1 OFFSET 900000",
            **p,
        ),
        "family": _one(
            engine,
            "SELECT family_name FROM lms_users WHERE portal_id = :p GROUP BY family_name "
            "ORDER BY count(*) DESC LIMIT 1",
            **p,
        ),
        "term": _one(engine, "SELECT sis_key FROM lms_terms WHERE portal_id = :p LIMIT 1", **p),
    }


def measure(url: str) -> dict[str, Any]:
    migrate(url)
    engine = engine_for(url)
    portal = _one(engine, "SELECT portal_id FROM lms_users GROUP BY portal_id LIMIT 1")
    with tempfile.TemporaryDirectory() as portals:
        source = {"provider": "oneroster_csv", "path": "unused/{date}"}
        data = {"id": portal, "name": f"Portal {portal}", "source": source}
        Path(portals, f"{portal}.yaml").write_text(yaml.safe_dump(data))
        os.environ["SIS_SYNC_PORTALS_DIR"] = portals
        os.environ["AIRFLOW_CONN_LMS_DB"] = _connection(url)
        return _time_pages(engine, portal)


def _connection(url: str) -> str:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return json.dumps({"conn_type": "sqlite", "host": parsed.database})
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": parsed.host,
            "port": parsed.port,
            "login": parsed.username,
            "password": parsed.password,
            "schema": parsed.database,
        }
    )


def _time_pages(engine: sa.Engine, portal: str) -> dict[str, Any]:
    from include.sis_sync.plugin import browse_routes as pages

    dag, user, s = f"sis_sync__{portal}", _Reader(), _samples(engine, portal)

    def people(who: str = "students", **query: Any) -> Any:
        return pages.people_page(
            dag,
            who,
            _request(query),
            user,
            school=query.get("school"),
            state=query.get("state", "active"),
            q=query.get("q"),
            after=query.get("after"),
        )

    def classes(**query: Any) -> Any:
        return pages.classes_page(
            dag,
            _request(query),
            user,
            school=query.get("school"),
            term=query.get("term"),
            state="active",
            q=query.get("q"),
        )

    cases: dict[str, Callable[[], Any]] = {
        "overview": lambda: pages.overview_page(dag, _request({}), user),
        "schools": lambda: pages.schools_page(dag, _request({}), user),
        "a school": lambda: pages.school_page(dag, s["school"], _request({}), user),
        "students: first page": lambda: people(),
        "students: page at 90 % (keyset)": lambda: people(after=s["deep"]),
        "students: biggest school": lambda: people(school=s["school"]),
        "students: archived": lambda: people(state="archived"),
        f"students: search a common name ({s['family']})": lambda: people(q=s["family"]),
        "students: search with an accent (zoë)": lambda: people(q="Zoë"),
        "students: search matching no one": lambda: people(q="zzqxj"),
        "students: search in a school, no one": lambda: people(school=s["school"], q="zzqxj"),
        "teachers: first page": lambda: people("teachers"),
        "administrators: first page": lambda: people("administrators"),
        "a student (fields, schools, classes, history)": lambda: pages.person_page(
            dag, s["student"], _request({}), user
        ),
        "the busiest teacher": lambda: pages.person_page(dag, s["teacher"], _request({}), user),
        "classes: first page": lambda: classes(),
        "classes: a school and a term": lambda: classes(school=s["school"], term=s["term"]),
        "classes: search matching no one": lambda: classes(q="zzqxj"),
        "the biggest class": lambda: pages.class_page(dag, s["class"], _request({}), user),
    }
    timings = {}
    for name, fn in cases.items():
        seconds, response = _best(fn)
        assert response.status_code == 200, name
        timings[name] = {"seconds": round(seconds, 4), "kb": round(len(response.body) / 1024, 1)}
        print(f"{name:50} {seconds:8.4f} s  {timings[name]['kb']} kB")
    with engine.connect() as conn:
        rows = {
            name: conn.execute(
                sa.select(sa.func.count()).select_from(schema.LMS_TABLES[name])
            ).scalar()
            for name in ("users", "sections", "enrollments")
        }
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": engine.dialect.name,
        "lms_rows": rows,
        "budget_seconds": BUDGET_SECONDS,
        "timings": timings,
        "within_budget": all(t["seconds"] < BUDGET_SECONDS for t in timings.values()),
    }


def render(result: dict[str, Any]) -> str:
    rows = ", ".join(f"{n:,} {name}" for name, n in result["lms_rows"].items())
    verdict = "met" if result["within_budget"] else "MISSED"
    lines = [
        "## Browse pages",
        "",
        f"`python -m benchmarks.browse_pages` on {result['date'][:10]} ({result['database']}), "
        f"the large district after its initial sync and day-2 re-sync ({rows} in the LMS): "
        "each page's route (its queries and its HTML), best of three, seconds. Budget: every "
        f"page < {result['budget_seconds']:g} s ({verdict}).",
        "",
        "| page | seconds | HTML kB |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v['seconds']:.4f} | {v['kb']} |" for k, v in result["timings"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lms", required=True, help="SQLAlchemy URL of the LMS database")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    result = measure(args.lms)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"browse_pages_{result['database']}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(render(result))
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
