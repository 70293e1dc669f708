"""The browse pages' read model: what the LMS holds of a portal's people and classes, what the
SIS sent of its schools, and each record's sync history.

Plain SQLAlchemy Core, no Airflow, like ``queries.py`` (whose keyset pages and capped counts
it uses): lists page in name order by keyset on the partial indexes of migration 0006, and a
search is a ``LIKE`` on the folded ``search_text`` (``search.py``), so "Zoë" finds "zoe" on
both stores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from include.sis_sync import model, school_summary
from include.sis_sync.lms import counts, schema
from include.sis_sync.queries import PAGE_SIZE, Page, capped_count, keyset_page, providers_of
from include.sis_sync.runs import FINAL
from include.sis_sync.search import like_escaped, matches

State = Literal["active", "archived"]
HISTORY_LIMIT = 200  # a record's newest actions shown (the page says when there are more)
COURSE_CHOICES = 300  # a class list's course filter is a menu up to this many courses
USERS = schema.LMS_TABLES["users"]
SECTIONS = schema.LMS_TABLES["sections"]
ORGS = schema.LMS_TABLES["organizations"]
MEMBERS = schema.LMS_TABLES["user_organizations"]
ENROLLMENTS = schema.LMS_TABLES["enrollments"]
COURSES = schema.LMS_TABLES["courses"]
TERMS = schema.LMS_TABLES["terms"]


def _refers_to(child: sa.Table, column: str, parent: sa.Table) -> sa.ColumnElement[bool]:
    """The join of a row to the record its ``column`` names: same portal and provider, so
    the lookup uses the parent's unique index (portal, provider, key)."""
    c, p = child.c, parent.c
    same = (p.portal_id == c.portal_id, p.sis_provider == c.sis_provider)
    return sa.and_(*same, p.sis_key == c[column])


def _state_clause(table: sa.Table, state: State) -> sa.ColumnElement[bool]:
    """Written as the partial indexes' conditions are, so that SQLite uses them."""
    return table.c.archived_at.is_(None) if state == "active" else table.c.archived_at.is_not(None)


# --------------------------------------------------------------------------------------------
# Schools and the overview
# --------------------------------------------------------------------------------------------


def lms_schools(engine: sa.Engine, portal_id: str) -> dict[str, dict[str, Any]]:
    """Every organization of the portal in the LMS (active or archived), by SIS key."""
    query = sa.select(
        ORGS.c.id,
        ORGS.c.sis_key,
        ORGS.c.name,
        ORGS.c.slug,
        ORGS.c.kind,
        ORGS.c.parent_key,
        ORGS.c.school_number,
        ORGS.c.archived_at,
    ).where(ORGS.c.portal_id == portal_id)
    with engine.connect() as conn:
        return {r["sis_key"]: dict(r) for r in conn.execute(query).mappings()}


def schools(engine: sa.Engine, portal_id: str) -> list[dict[str, Any]]:
    """The organizations the SIS sent in its last complete read, each with the LMS
    organization it maps to (None: not mapped), by name."""
    in_lms = lms_schools(engine, portal_id)
    rows = []
    for row in school_summary.read(engine, portal_id):
        rows.append({**row, "lms": in_lms.get(row["sis_key"])})
    return rows


def school(engine: sa.Engine, portal_id: str, sis_key: str) -> dict[str, Any] | None:
    """One organization: as the SIS last sent it and as the LMS holds it, with its parent and
    its sub-organizations (from either), or None when neither knows it."""
    sent = {r["sis_key"]: r for r in school_summary.read(engine, portal_id)}
    in_lms = lms_schools(engine, portal_id)
    if sis_key not in sent and sis_key not in in_lms:
        return None
    record = sent.get(sis_key) or in_lms[sis_key]
    everyone = {**in_lms, **sent}
    parent_key = record.get("parent_key")
    children = sorted(
        (r for k, r in everyone.items() if r.get("parent_key") == sis_key and k != sis_key),
        key=lambda r: (r.get("name") or r["sis_key"]).lower(),
    )
    return {
        "sis_key": sis_key,
        "sent": sent.get(sis_key),
        "lms": in_lms.get(sis_key),
        "name": record.get("name") or sis_key,
        "parent": everyone.get(parent_key) if parent_key else None,
        "parent_key": parent_key,
        "children": [{**c, "lms": in_lms.get(c["sis_key"])} for c in children],
    }


def school_choices(engine: sa.Engine, portal_id: str) -> list[dict[str, str]]:
    """The schools a list's school filter offers: the LMS's, and those the SIS's last read
    sent that the portal syncs. A portal that syncs one school of a district offers one."""
    in_lms = lms_schools(engine, portal_id)
    names = {k: r["name"] or k for k, r in in_lms.items() if r["kind"] == "school"}
    for row in school_summary.read(engine, portal_id):
        if row["kind"] == "school" and row["synced"]:
            names.setdefault(row["sis_key"], row["name"] or row["sis_key"])
    return [{"sis_key": k, "name": n} for k, n in sorted(names.items(), key=lambda i: i[1].lower())]


def overview(engine: sa.Engine, portal_id: str) -> dict[str, Any]:
    """The portal's counts and each school's, with the schools' names."""
    counted = counts.read(engine, portal_id)
    in_lms = lms_schools(engine, portal_id)
    names = {k: r["name"] for k, r in in_lms.items()}
    names |= {r["sis_key"]: r["name"] for r in school_summary.read(engine, portal_id)}
    per_school = []
    for key in sorted(
        (k for k in counted if k != counts.WHOLE_PORTAL),
        key=lambda k: (names.get(k) or (in_lms.get(k) or {}).get("name") or k).lower(),
    ):
        org = in_lms.get(key) or {}
        per_school.append(
            {
                "sis_key": key,
                "name": names.get(key) or org.get("name") or key,
                "kind": org.get("kind") or "school",
                "counts": counted[key],
            }
        )
    return {"portal": counted.get(counts.WHOLE_PORTAL, {}), "schools": per_school}


# --------------------------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeopleFilter:
    """Which people a list shows: one role, active or archived, optionally one school (by
    membership) and a search by name, email, SIS key or ids."""

    role: str
    state: State = "active"
    school: str | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        if self.state not in ("active", "archived"):
            raise ValueError(f"state must be active or archived, not {self.state!r}")

    def query(self, portal_id: str, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
        """The list's rows; a school's list reads that school's memberships first (a join,
        not a test per person), so it costs the school's size, not the district's."""
        u = USERS.c
        terms = [u.portal_id == portal_id, u.role == self.role, _state_clause(USERS, self.state)]
        if self.search:
            terms.append(matches(u.search_text, self.search))
        query = sa.select(*columns)
        if self.school:
            m = MEMBERS.c
            on = [m.portal_id == u.portal_id, m.sis_provider == u.sis_provider]
            query = query.select_from(USERS.join(MEMBERS, sa.and_(*on, m.user_key == u.sis_key)))
            terms.append(m.organization_key == self.school)
        return query.where(*terms)


# What a person's and a class's page show of the LMS row, in order.
PERSON_FIELDS = (
    "given_name",
    "middle_name",
    "family_name",
    "email",
    "username",
    "role",
    "roles",
    "sis_id",
    "student_number",
    "teacher_number",
    "grades",
    "enabled",
)
CLASS_FIELDS = ("name", "code", "period", "subject", "grades", "kind")
PERSON_LIST_COLUMNS = (
    "id",
    "sis_key",
    "given_name",
    "family_name",
    "email",
    "sis_id",
    "role",
    "grades",
    "organizations",
    "search_text",
    "archived_at",
    "updated_at",
)


def people_page(
    engine: sa.Engine,
    portal_id: str,
    flt: PeopleFilter,
    *,
    after: int | None = None,
    before: int | None = None,
    limit: int = PAGE_SIZE,
) -> Page:
    """One page of people in name order (family name first, case and accents aside)."""
    query = flt.query(portal_id, *(USERS.c[c] for c in PERSON_LIST_COLUMNS))
    keys = (USERS.c.search_text, USERS.c.id)
    return keyset_page(
        engine, query, keys, _bound(engine, USERS, after), _bound(engine, USERS, before), limit
    )


def count_people(engine: sa.Engine, portal_id: str, flt: PeopleFilter) -> int:
    """How many people the list holds, up to ``queries.COUNT_LIMIT`` (then "more")."""
    return capped_count(engine, flt.query(portal_id, USERS.c.id))


def _bound(engine: sa.Engine, table: sa.Table, row_id: int | None) -> tuple[Any, int] | None:
    """A page's edge, named by its row's id, as the (search_text, id) the list sorts by."""
    if row_id is None:
        return None
    with engine.connect() as conn:
        text = conn.execute(sa.select(table.c.search_text).where(table.c.id == row_id)).first()
    if text is None:
        raise LookupError(f"no row {row_id} to page from")
    return (text[0], row_id)


def _record(engine: sa.Engine, table: sa.Table, portal_id: str, sis_key: str) -> dict | None:
    """The portal's LMS row with this SIS key (the newest, should two providers hold it),
    found through the unique index (portal, provider, key)."""
    with engine.connect() as conn:
        query = (
            sa.select(table)
            .where(
                table.c.portal_id == portal_id,
                table.c.sis_provider.in_(providers_of(conn, portal_id)),
                table.c.sis_key == sis_key,
            )
            .order_by(table.c.id.desc())
            .limit(1)
        )
        row = conn.execute(query).mappings().first()
    return dict(row) if row is not None else None


def person(engine: sa.Engine, portal_id: str, sis_key: str) -> dict[str, Any] | None:
    """A person as the LMS holds them: fields, schools, classes (with role), sync history."""
    row = _record(engine, USERS, portal_id, sis_key)
    if row is None:
        return None
    m, o = MEMBERS.c, ORGS.c
    memberships = (
        sa.select(
            m.organization_key,
            m.role,
            m.archived_at,
            o.name,
            o.slug,
            o.kind,
            o.archived_at.label("school_archived_at"),
        )
        .select_from(MEMBERS.outerjoin(ORGS, _refers_to(MEMBERS, "organization_key", ORGS)))
        .where(m.portal_id == portal_id, m.user_key == sis_key)
        .order_by(m.archived_at.is_not(None), o.name)
    )
    e, s = ENROLLMENTS.c, SECTIONS.c
    classes = (
        sa.select(
            e.section_key,
            e.role,
            e.archived_at,
            s.name,
            s.organization_key,
            s.term_keys,
            s.archived_at.label("class_archived_at"),
        )
        .select_from(
            ENROLLMENTS.outerjoin(SECTIONS, _refers_to(ENROLLMENTS, "section_key", SECTIONS))
        )
        .where(e.portal_id == portal_id, e.user_key == sis_key)
        .order_by(e.archived_at.is_not(None), s.name)
    )
    with engine.connect() as conn:
        row["schools"] = [dict(r) for r in conn.execute(memberships).mappings()]
        row["classes"] = [dict(r) for r in conn.execute(classes).mappings()]
    row["history"] = history(engine, portal_id, model.USERS.name, sis_key)
    return row


# --------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassFilter:
    """Which classes a list shows: active or archived, optionally one school, term and course,
    and a search by name, code or SIS key."""

    state: State = "active"
    school: str | None = None
    term: str | None = None
    course: str | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        if self.state not in ("active", "archived"):
            raise ValueError(f"state must be active or archived, not {self.state!r}")

    def query(self, portal_id: str, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
        s = SECTIONS.c
        terms = [s.portal_id == portal_id, _state_clause(SECTIONS, self.state)]
        if self.school:
            terms.append(s.organization_key == self.school)
        if self.course:
            terms.append(s.course_key == self.course)
        if self.term:
            # term_keys is a sorted, comma-joined list (model.py)
            listed = sa.literal(",") + sa.func.coalesce(s.term_keys, "") + sa.literal(",")
            terms.append(listed.like(f"%,{like_escaped(self.term)},%", escape="\\"))
        if self.search:
            terms.append(matches(s.search_text, self.search))
        return sa.select(*columns).where(*terms)


CLASS_LIST_COLUMNS = (
    "id",
    "sis_key",
    "name",
    "code",
    "organization_key",
    "course_key",
    "term_keys",
    "period",
    "subject",
    "search_text",
    "archived_at",
    "updated_at",
)


def class_page(
    engine: sa.Engine,
    portal_id: str,
    flt: ClassFilter,
    *,
    after: int | None = None,
    before: int | None = None,
    limit: int = PAGE_SIZE,
) -> Page:
    """One page of classes in name order, each with its number of active students."""
    query = flt.query(portal_id, *(SECTIONS.c[c] for c in CLASS_LIST_COLUMNS))
    keys = (SECTIONS.c.search_text, SECTIONS.c.id)
    page = keyset_page(
        engine,
        query,
        keys,
        _bound(engine, SECTIONS, after),
        _bound(engine, SECTIONS, before),
        limit,
    )
    sizes = _class_sizes(engine, portal_id, [r["sis_key"] for r in page.rows])
    for row in page.rows:
        row["students"] = sizes.get(row["sis_key"], 0)
    return page


def _class_sizes(engine: sa.Engine, portal_id: str, keys: list[str]) -> dict[str, int]:
    e = ENROLLMENTS.c
    query = (
        sa.select(e.section_key, sa.func.count())
        .where(
            e.portal_id == portal_id,
            e.section_key.in_(keys),
            e.role == "student",
            e.archived_at.is_(None),
        )
        .group_by(e.section_key)
    )
    with engine.connect() as conn:
        return {k: int(n) for k, n in conn.execute(query).all()} if keys else {}


def count_classes(engine: sa.Engine, portal_id: str, flt: ClassFilter) -> int:
    return capped_count(engine, flt.query(portal_id, SECTIONS.c.id))


def class_choices(
    engine: sa.Engine, portal_id: str, school: str | None
) -> dict[str, list[dict[str, str]]]:
    """The terms and courses a class list's filters offer (a school's courses when one is
    picked; at most ``COURSE_CHOICES``, else the course filter is typed)."""
    t, c = TERMS.c, COURSES.c
    with engine.connect() as conn:
        terms = conn.execute(
            sa.select(t.sis_key, t.name)
            .where(t.portal_id == portal_id, t.archived_at.is_(None))
            .order_by(t.start_date.desc(), t.name)
        ).all()
        courses_query = sa.select(c.sis_key, c.title).where(
            c.portal_id == portal_id, c.archived_at.is_(None)
        )
        if school:
            courses_query = courses_query.where(c.organization_key == school)
        courses = conn.execute(courses_query.order_by(c.title).limit(COURSE_CHOICES + 1)).all()
    return {
        "terms": [{"sis_key": k, "name": n or k} for k, n in terms],
        "courses": [{"sis_key": k, "name": n or k} for k, n in courses[:COURSE_CHOICES]],
        "courses_typed": len(courses) > COURSE_CHOICES,
    }


def class_record(engine: sa.Engine, portal_id: str, sis_key: str) -> dict[str, Any] | None:
    """A class as the LMS holds it: fields, school, course, terms, teachers and students
    (active first), and its sync history."""
    row = _record(engine, SECTIONS, portal_id, sis_key)
    if row is None:
        return None
    e, u = ENROLLMENTS.c, USERS.c
    members = (
        sa.select(
            e.user_key,
            e.role,
            e.archived_at,
            u.given_name,
            u.family_name,
            u.email,
            u.archived_at.label("person_archived_at"),
        )
        .select_from(ENROLLMENTS.outerjoin(USERS, _refers_to(ENROLLMENTS, "user_key", USERS)))
        .where(e.portal_id == portal_id, e.section_key == sis_key)
        .order_by(e.archived_at.is_not(None), u.search_text)
    )
    term_keys = [k for k in (row.get("term_keys") or "").split(",") if k]
    with engine.connect() as conn:
        people = [dict(r) for r in conn.execute(members).mappings()]
        row["terms"] = [
            dict(r)
            for r in conn.execute(
                sa.select(
                    TERMS.c.sis_key, TERMS.c.name, TERMS.c.start_date, TERMS.c.end_date
                ).where(TERMS.c.portal_id == portal_id, TERMS.c.sis_key.in_(term_keys))
            ).mappings()
        ]
    row["teachers"] = [p for p in people if p["role"] != "student"]
    row["students"] = [p for p in people if p["role"] == "student"]
    row["school"] = _record(engine, ORGS, portal_id, row["organization_key"] or "")
    row["course"] = _record(engine, COURSES, portal_id, row["course_key"] or "")
    row["history"] = history(engine, portal_id, model.SECTIONS.name, sis_key)
    return row


# --------------------------------------------------------------------------------------------
# A record's sync history
# --------------------------------------------------------------------------------------------


def history(engine: sa.Engine, portal_id: str, entity: str, sis_key: str) -> dict[str, Any]:
    """Every action on one person or class across syncs, newest first, with its sync: what
    it did (an update's fields, before and after unless retention forgot them) and whether
    it was applied, unticked, skipped, or never committed."""
    if entity not in (model.USERS.name, model.SECTIONS.name):
        raise ValueError(f"no sync history is kept by record for {entity}")
    a, r = schema.actions.c, schema.runs.c
    where = [
        a.portal_id == portal_id,
        a.sis_key == sis_key,
        # the partial history index's condition, literally (SQLite matches it as written)
        a.entity == sa.literal_column(f"'{entity}'"),
    ]
    query = (
        sa.select(
            a.id,
            a.run_id,
            a.action,
            a.reason,
            a.changes,
            a.status,
            a.selected,
            r.status.label("run_status"),
            r.created_at,
            r.committed_at,
            r.decided_by,
            r.mode,
            r.ran_as,
            r.trigger,
            r.purged_at,
        )
        .select_from(schema.actions.join(schema.runs, r.id == a.run_id))
        .where(*where)
        .order_by(a.run_id.desc(), a.id.desc())
    )
    with engine.connect() as conn:
        rows = [dict(x) for x in conn.execute(query.limit(HISTORY_LIMIT + 1)).mappings()]
    for row in rows:
        row["changes"] = json.loads(row["changes"]) if row["changes"] else {}
        row["outcome"] = outcome(row["status"], row["run_status"])
    return {"rows": rows[:HISTORY_LIMIT], "more": len(rows) > HISTORY_LIMIT}


def outcome(status: str, run_status: str) -> str:
    """What became of one action, in an admin's words."""
    if status == "applied":
        return "applied"
    if status == "not_selected":
        return "skipped: unticked"
    if status == "skipped":
        return "skipped: see the sync's warnings"
    if run_status in FINAL:
        return f"not applied: sync {run_status}"
    return "staged: the sync is not committed yet"
