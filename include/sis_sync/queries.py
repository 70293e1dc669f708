"""The admin pages' read model: portals' last syncs, a portal's history, a sync's actions and
warnings, read from the runs and staging tables and the LMS.

Plain SQLAlchemy Core, no Airflow: the plugin only routes and renders what these functions
return. Every list pages on the server by keyset (the last key shown), never by offset, so a
page of an initial sync's millions of actions costs the same as its first page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from include.sis_sync import model
from include.sis_sync.diff import ACTION_COLUMNS, ACTIONS, count_label
from include.sis_sync.lms import schema
from include.sis_sync.report import action_counts
from include.sis_sync.runs import APPROVED, AWAITING_APPROVAL, IN_FLIGHT, as_utc, now
from include.sis_sync.search import like_escaped

PAGE_SIZE = 50
COUNT_LIMIT = 1000  # a filtered list counts this far, then says "more"
HISTORY_PAGE_SIZE = 25
# What an admin reads for each stored status.
SHOWN_STATUS = {
    "running": "running",
    "staged": "running",
    AWAITING_APPROVAL: "awaiting approval",
    APPROVED: "approved, committing",
}
RUN_COLUMNS = (
    "id",
    "portal_id",
    "dag_id",
    "airflow_run_id",
    "attempt",
    "stage",
    "mode",
    "ran_as",
    "trigger",
    "triggered_by",
    "status",
    "schools",
    "counts",
    "decision",
    "decided_by",
    "decided_at",
    "error",
    "created_at",
    "finished_at",
    "committed_at",
)


@dataclass(frozen=True)
class Page:
    """One page of a keyset-paged list: its rows and the keys that open the pages beside it."""

    rows: list[dict[str, Any]]
    next_after: str | None = None
    prev_before: str | None = None


@dataclass(frozen=True)
class ActionFilter:
    """Which actions of a run a list shows: one entity and action, optionally one kind (users'
    role), one school, and a search by SIS key (prefix) or by name (contains, any case)."""

    entity: str
    action: str
    kind: str | None = None
    school: str | None = None
    search: str | None = None
    search_in: str = "key"  # key | name

    def __post_init__(self) -> None:
        if self.entity not in {e.name for e in model.ENTITIES}:
            raise ValueError(f"unknown entity {self.entity!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        if self.search_in not in ("key", "name"):
            raise ValueError(f"search_in must be 'key' or 'name', not {self.search_in!r}")

    def clause(self, run_id: int) -> sa.ColumnElement[bool]:
        """The filter as a WHERE clause over ``sis_sync_actions``; its first three terms are
        the action index's prefix, and a key search is a range on the index's last column."""
        a = schema.actions.c
        terms = [a.run_id == run_id, a.entity == self.entity, a.action == self.action]
        if self.kind:
            terms.append(a.kind == self.kind)
        if self.school:
            terms.append(a.school_key == self.school)
        if self.search:
            if self.search_in == "key":
                terms += [a.sis_key >= self.search, a.sis_key < self.search + "\uffff"]
            else:
                pattern = "%" + like_escaped(self.search.lower()) + "%"
                terms.append(sa.func.lower(a.label).like(pattern, escape="\\"))
        return sa.and_(*terms)


# --------------------------------------------------------------------------------------------
# Runs: the portals list, a portal's status and history
# --------------------------------------------------------------------------------------------


def run_view(row: dict[str, Any]) -> dict[str, Any]:
    """A run's row as the pages show it: status in words, its changes counted, its type."""
    counts = json.loads(row["counts"]) if row.get("counts") else {}
    view = dict(row)
    view["shown_status"] = SHOWN_STATUS.get(row["status"], row["status"])
    view["changes"] = sum(int(n) for per in counts.values() for n in per.values())
    view["counts"] = counts
    view["kind"] = f"{row.get('ran_as') or row['mode']}, {row['trigger']}"
    view["schools"] = json.loads(row["schools"]) if row.get("schools") else None
    view["in_flight"] = row["status"] in IN_FLIGHT
    started = row.get("created_at")
    if view["in_flight"] and started is not None:
        view["elapsed_seconds"] = int((now() - as_utc(started)).total_seconds())
    return view


def _run_select() -> sa.Select[Any]:
    return sa.select(*(schema.runs.c[name] for name in RUN_COLUMNS))


def latest_runs(engine: sa.Engine, portal_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each portal's newest sync (one query for all portals)."""
    runs = schema.runs
    ids = list(portal_ids)
    newest = (
        sa.select(sa.func.max(runs.c.id))
        .where(runs.c.portal_id.in_(ids))
        .group_by(runs.c.portal_id)
        .scalar_subquery()
    )
    with engine.connect() as conn:
        rows = conn.execute(_run_select().where(runs.c.id.in_(newest))).mappings()
        return {r["portal_id"]: run_view(dict(r)) for r in rows}


def waiting_runs(engine: sa.Engine, portal_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The sync of each portal that waits for approval, if one does."""
    runs = schema.runs
    with engine.connect() as conn:
        rows = conn.execute(
            _run_select()
            .where(runs.c.portal_id.in_(list(portal_ids)), runs.c.status == AWAITING_APPROVAL)
            .order_by(runs.c.id)
        ).mappings()
        return {r["portal_id"]: run_view(dict(r)) for r in rows}


def last_decided_run(engine: sa.Engine, portal_id: str) -> dict[str, Any] | None:
    """The portal's newest sync that has ended (for the status page's summary)."""
    runs = schema.runs
    with engine.connect() as conn:
        row = (
            conn.execute(
                _run_select()
                .where(
                    runs.c.portal_id == portal_id,
                    runs.c.status.not_in(IN_FLIGHT),
                )
                .order_by(runs.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    return run_view(dict(row)) if row is not None else None


def in_flight_runs(engine: sa.Engine, portal_id: str) -> list[dict[str, Any]]:
    """The portal's syncs still being prepared, waiting or committing, newest first."""
    runs = schema.runs
    with engine.connect() as conn:
        rows = conn.execute(
            _run_select()
            .where(
                runs.c.portal_id == portal_id,
                runs.c.status.in_(IN_FLIGHT),
            )
            .order_by(runs.c.id.desc())
        ).mappings()
        return [run_view(dict(r)) for r in rows]


def history(
    engine: sa.Engine,
    portal_id: str,
    *,
    after: int | None = None,
    before: int | None = None,
    limit: int = HISTORY_PAGE_SIZE,
) -> Page:
    """Every sync of the portal, newest first, a page at a time: the first page, the older
    page after the run ``after``, or the newer page before the run ``before``."""
    runs = schema.runs
    query = _run_select().where(runs.c.portal_id == portal_id)
    page = keyset_page(engine, query, runs.c.id, after, before, limit, descending=True)
    return Page(
        rows=[run_view(r) for r in page.rows],
        next_after=page.next_after,
        prev_before=page.prev_before,
    )


def keyset_page(
    engine: sa.Engine,
    query: sa.Select[Any],
    key: sa.ColumnElement[Any] | tuple[sa.ColumnElement[Any], ...],
    after: Any,
    before: Any,
    limit: int,
    *,
    descending: bool = False,
) -> Page:
    """One page of ``query`` in ``key`` order: the first, the one after the key ``after``, or
    the one before the key ``before``. One indexed range read per page, whatever its depth.

    ``key`` may be several columns (a name, then the id that makes it unique): ``after`` and
    ``before`` are then tuples, compared as row values, and a page's neighbours are named by
    the last column alone (its caller turns an id back into the tuple)."""
    keys = key if isinstance(key, tuple) else (key,)
    forward = before is None or after is not None
    reading_down = descending == forward  # reading the key downwards
    bound = after if after is not None else before
    if bound is not None:
        lhs = keys[0] if len(keys) == 1 else sa.tuple_(*keys)
        rhs = bound if len(keys) == 1 else sa.tuple_(*(sa.literal(v) for v in bound))
        query = query.where(lhs < rhs if descending == (after is not None) else lhs > rhs)
    query = query.order_by(*(k.desc() if reading_down else k for k in keys))
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query.limit(limit + 1)).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    if not forward:
        rows.reverse()
    if not rows:
        return Page(rows=[])
    name = keys[-1].key
    has_next = more if forward else True
    has_prev = after is not None or (not forward and more)
    return Page(
        rows=rows,
        next_after=str(rows[-1][name]) if has_next else None,
        prev_before=str(rows[0][name]) if has_prev else None,
    )


def find_run(engine: sa.Engine, run_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(_run_select().where(schema.runs.c.id == run_id)).mappings().first()
    return run_view(dict(row)) if row is not None else None


# --------------------------------------------------------------------------------------------
# A run's actions and warnings
# --------------------------------------------------------------------------------------------

# What a list shows of an action: what the diff staged, its id, and its selection and outcome.
ACTION_LIST_COLUMNS = (
    "id",
    *(c for c in ACTION_COLUMNS if c not in ("parent_user_key", "parent_section_key")),
    "selected",
    "status",
)


def action_page(
    engine: sa.Engine,
    run_id: int,
    flt: ActionFilter,
    *,
    after: str | None = None,
    before: str | None = None,
    limit: int = PAGE_SIZE,
) -> Page:
    """One page of a run's actions in SIS-key order: the first page, the page after the key
    ``after``, or the page before the key ``before``."""
    a = schema.actions.c
    query = sa.select(*(a[name] for name in ACTION_LIST_COLUMNS)).where(flt.clause(run_id))
    page = keyset_page(engine, query, a.sis_key, after, before, limit)
    for row in page.rows:
        row["changes"] = json.loads(row["changes"]) if row["changes"] else {}
    return page


def count_actions(engine: sa.Engine, run_id: int, flt: ActionFilter) -> dict[str, Any]:
    """How many actions a list holds and how many of them are unticked.

    A list of one entity and action (and role) takes its total from the counts kept on the
    run's row; a filtered one counts up to :data:`COUNT_LIMIT` and then says "more" (as
    Airflow's own lists do), so no page scans millions of rows. Unticked actions are counted
    through a partial index that holds only them."""
    total = None if (flt.school or flt.search) else _kept_total(engine, run_id, flt)
    more = False
    if total is None:
        total = _capped_count(engine, flt.clause(run_id))
        more = total > COUNT_LIMIT
        total = min(total, COUNT_LIMIT)
    unticked = _capped_count(engine, sa.and_(flt.clause(run_id), schema.UNTICKED))
    return {
        "total": total,
        "more": more,
        "unticked": min(unticked, COUNT_LIMIT),
        "unticked_more": unticked > COUNT_LIMIT,
    }


def _kept_total(engine: sa.Engine, run_id: int, flt: ActionFilter) -> int | None:
    counts = action_counts(engine, run_id)
    if flt.entity == "users" and flt.kind:
        labels = [count_label("users", flt.kind)]
    else:
        labels = [k for k in counts if k == flt.entity or k.startswith(f"{flt.entity} (")]
    return sum(counts.get(label, {}).get(flt.action, 0) for label in labels)


def _capped_count(engine: sa.Engine, where: sa.ColumnElement[bool]) -> int:
    """``count(*)`` of the matching actions, stopping one past :data:`COUNT_LIMIT`."""
    return capped_count(engine, sa.select(schema.actions.c.id).where(where))


def capped_count(engine: sa.Engine, query: sa.Select[Any]) -> int:
    """How many rows ``query`` returns, stopping one past :data:`COUNT_LIMIT`."""
    capped = query.limit(COUNT_LIMIT + 1).subquery()
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(capped)).scalar() or 0)


def action_links(
    engine: sa.Engine, portal_id: str, entity: str, rows: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """For a page of membership or enrollment actions: each one's user and section (or
    organization) with their names, read from the LMS. Adds not yet committed are not in the
    LMS and have none."""
    table = schema.LMS_TABLES.get(entity)
    if table is None or entity not in ("user_organizations", "enrollments") or not rows:
        return {}
    other = "section_key" if entity == "enrollments" else "organization_key"
    users = schema.LMS_TABLES["users"]
    other_table = schema.LMS_TABLES["sections" if other == "section_key" else "organizations"]
    user_name = sa.func.trim(
        sa.func.coalesce(users.c.given_name, "") + " " + sa.func.coalesce(users.c.family_name, "")
    )
    with engine.connect() as conn:
        providers = providers_of(conn, portal_id)
        columns = (table.c.user_key, table.c[other], table.c.role)
        keys = [r["sis_key"] for r in rows]
        links = {
            key: {"user_key": user, "other_key": other_key, "role": role}
            for key, (user, other_key, role) in _by_key(
                conn, table, columns, portal_id, providers, keys
            ).items()
        }
        user_names = _by_key(
            conn, users, (user_name,), portal_id, providers, {v["user_key"] for v in links.values()}
        )
        other_names = _by_key(
            conn,
            other_table,
            (other_table.c.name,),
            portal_id,
            providers,
            {v["other_key"] for v in links.values()},
        )
    for link in links.values():
        link["user_name"] = (user_names.get(link["user_key"]) or (None,))[0]
        link["other_name"] = (other_names.get(link["other_key"]) or (None,))[0]
    return links


def providers_of(conn: sa.Connection, portal_id: str) -> list[str]:
    """The providers the portal's LMS rows come from (so lookups use the unique index)."""
    orgs = schema.LMS_TABLES["organizations"]
    found = conn.execute(
        sa.select(orgs.c.sis_provider).where(orgs.c.portal_id == portal_id).distinct()
    ).scalars()
    return list(found)


def _by_key(
    conn: sa.Connection,
    table: sa.Table,
    columns: tuple[sa.ColumnElement[Any], ...],
    portal_id: str,
    providers: list[str],
    keys: Iterable[str],
) -> dict[str, tuple[Any, ...]]:
    """``columns`` of the portal's LMS rows with these SIS keys, by key (on the unique index)."""
    found = conn.execute(
        sa.select(table.c.sis_key, *columns).where(
            table.c.portal_id == portal_id,
            table.c.sis_provider.in_(providers),
            table.c.sis_key.in_(list(keys)),
        )
    ).all()
    return {row[0]: tuple(row[1:]) for row in found}


def action_kinds(engine: sa.Engine, run_id: int, entity: str, action: str) -> list[str]:
    """The kinds (users' roles) present among a run's actions of one entity and action."""
    a = schema.actions.c
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(a.kind)
            .where(a.run_id == run_id, a.entity == entity, a.action == action)
            .group_by(a.kind)
        ).scalars()
        return sorted(k for k in found if k)


def schools(engine: sa.Engine, portal_id: str) -> list[dict[str, str]]:
    """The portal's active schools in the LMS, by name: what a school filter or picker offers."""
    orgs = schema.LMS_TABLES["organizations"]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(orgs.c.sis_key, orgs.c.name, orgs.c.slug)
            .where(
                orgs.c.portal_id == portal_id,
                orgs.c.kind == "school",
                orgs.c.archived_at.is_(None),
            )
            .order_by(orgs.c.name, orgs.c.sis_key)
        ).mappings()
        return [
            {"sis_key": r["sis_key"], "name": r["name"] or r["sis_key"], "slug": r["slug"]}
            for r in rows
        ]


def school_names(engine: sa.Engine, portal_id: str, run_id: int) -> dict[str, str]:
    """Names of the schools an action list may name: the LMS's, and those this run adds."""
    a = schema.actions.c
    with engine.connect() as conn:
        staged = conn.execute(
            sa.select(a.sis_key, a.label).where(
                a.run_id == run_id, a.entity == "organizations", a.action.in_(ACTIONS)
            )
        ).all()
    names = {key: label for key, label in staged if label}
    names.update({s["sis_key"]: s["name"] for s in schools(engine, portal_id)})
    return names


def warnings_page(
    engine: sa.Engine,
    run_id: int,
    *,
    after: int | None = None,
    before: int | None = None,
    limit: int = PAGE_SIZE,
) -> Page:
    """The run's warnings one row per record, each with the action it belongs to (if any)."""
    w, a = schema.warnings.c, schema.actions.c
    query = (
        sa.select(w.id, w.entity, w.sis_key, w.kind, w.message, w.action_id, a.action)
        .select_from(schema.warnings.outerjoin(schema.actions, a.id == w.action_id))
        .where(w.run_id == run_id)
    )
    return keyset_page(engine, query, w.id, after, before, limit)
