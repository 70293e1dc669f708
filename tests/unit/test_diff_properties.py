"""Properties of the diff and the commit over random small rosters, on SQLite and PostgreSQL.

The hand-written cases (test_diff, test_commit) pin one behaviour each; these check the laws
that tie them together on many generated snapshots: syncing converges on the feed, a second
diff finds nothing, unticked actions are exactly what stays different, and a quick sync's
delta lands where a full sync does.

Every example syncs into its own portal ids: the database is shared by the examples of one
test (the ``lms_url`` fixture is function-scoped), and portals never see each other's rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from include.sis_sync import model
from include.sis_sync.lms.commit import lms_snapshot
from include.sis_sync.lms.db import engine_for
from include.sis_sync.staging import set_selected
from include.sis_sync.transform import derive_user_organizations
from tests.helpers import approve, canonical, commit, run_diff, stage, sync

Record = dict[str, str | None]
Table = dict[str, Record]  # sis_key -> fields (a field left out is null)
Rows = dict[str, tuple[str | None, ...]]  # sis_key -> the entity's fields, in model order
Action = tuple[str, str, str]  # (entity, sis_key, action)

# Small pools, so that keys come, go and come back, and values often stay equal.
SCHOOLS = ("sch-a", "sch-b", "sch-c")
TERM_DATES = {"fall": ("2026-08-15", "2026-12-20"), "spring": ("2027-01-05", "2027-06-15")}
USER_KEYS = tuple(f"u{i}" for i in range(10))
SECTION_KEYS = ("c0", "c1", "c2", "c3")
USER_ROLES = ("student", "teacher", "aide", "administrator", "staff")
# The frames a feed carries; user_organizations are derived from users, as the pipeline does.
FED = ("organizations", "terms", "courses", "users", "sections", "enrollments")
ALL_DELTA = {entity.name: "delta" for entity in model.ENTITIES}


def property_settings(max_examples: int) -> settings:
    """Few examples, each a handful of real syncs (about half a second each), so that the
    module stays within a few minutes on both stores. Derandomized: CI draws the same
    examples every time (a new seed is a local experiment: ``--hypothesis-seed``)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,  # nothing written into the repository's working tree
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


_PORTALS = itertools.count(1)


def fresh_portal() -> str:
    """A portal id no earlier example used: each example starts from an empty LMS."""
    return f"prop{next(_PORTALS)}"


# --------------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One feed as plain records per fed entity, easy to compare and to turn into frames."""

    tables: dict[str, Table]

    def frames(self) -> dict[str, pd.DataFrame]:
        """The canonical frames a provider would hand the diff (copies: built once, as
        building them costs about as much as a diff)."""
        return {name: frame.copy() for name, frame in self._frames.items()}

    @cached_property
    def _frames(self) -> dict[str, pd.DataFrame]:
        frames = {
            name: canonical(name, [{"sis_key": k, **r} for k, r in sorted(table.items())])
            for name, table in self.tables.items()
        }
        frames["user_organizations"] = derive_user_organizations(frames["users"])
        return frames

    def expected(self) -> dict[str, Rows]:
        """What the LMS should hold as active rows once this snapshot is synced."""
        out = {name: {k: _fields(name, r) for k, r in self.tables[name].items()} for name in FED}
        out["user_organizations"] = {
            f"{user}:{org}": (user, org, record["role"])
            for user, record in self.tables["users"].items()
            for org in str(record["organizations"]).split(",")
        }
        return out


def _fields(entity: str, record: Record) -> tuple[str | None, ...]:
    return tuple(record.get(f) for f in model.BY_NAME[entity].fields)


def _pick(options: Iterable[str | None]) -> st.SearchStrategy[str | None]:
    return st.sampled_from(tuple(options))


def _organization(key: str) -> st.SearchStrategy[Record]:
    if key == "dist":
        return st.fixed_dictionaries(
            {"name": _pick(("District", "District renamed")), "kind": st.just("district")}
        )
    return st.fixed_dictionaries(
        {
            "name": _pick((f"School {key}", f"School {key} renamed")),
            "kind": st.just("school"),
            "parent_key": st.just("dist"),
            "school_number": _pick((None, "1", "2")),
        }
    )


def _term(key: str) -> st.SearchStrategy[Record]:
    start, end = TERM_DATES[key]
    return st.fixed_dictionaries(
        {
            "name": _pick((key.title(), f"{key.title()} term")),
            "kind": st.just("semester"),
            "start_date": st.just(start),
            "end_date": _pick((end, end[:-2] + "01")),
        }
    )


def _course(key: str) -> st.SearchStrategy[Record]:
    return st.fixed_dictionaries(
        {"title": _pick(("Math", "Algebra")), "organization_key": st.just(key.removeprefix("crs-"))}
    )


def _user(key: str, schools: tuple[str, ...]) -> st.SearchStrategy[Record]:
    return st.fixed_dictionaries(
        {
            "role": _pick(USER_ROLES),
            "given_name": _pick(("Ann", "Bea")),
            "family_name": _pick(("Lee", "Kim")),
            "email": _pick((None, f"{key}@school.test")),
            "username": st.just(key),
            "organizations": st.sets(st.sampled_from(schools), min_size=1).map(
                lambda orgs: ",".join(sorted(orgs))
            ),
        }
    ).map(lambda record: {**record, "roles": record["role"]})


def _section(
    key: str, schools: tuple[str, ...], terms: tuple[str, ...]
) -> st.SearchStrategy[Record]:
    return st.fixed_dictionaries(
        {
            "name": _pick((f"Section {key}", f"Section {key} B")),
            "organization_key": st.sampled_from(schools),
            "term_keys": st.sets(st.sampled_from(terms), min_size=1).map(
                lambda keys: ",".join(sorted(keys))
            ),
            "period": _pick((None, "1")),
        }
    ).map(lambda record: {**record, "course_key": f"crs-{record['organization_key']}"})


def _user_within(record: Record, schools: tuple[str, ...]) -> Record:
    """A kept user, without the schools the feed no longer has (never without any)."""
    orgs = [o for o in str(record["organizations"]).split(",") if o in schools] or [schools[0]]
    return {**record, "organizations": ",".join(orgs)}


def _section_within(record: Record, schools: tuple[str, ...], terms: tuple[str, ...]) -> Record:
    """A kept section, moved to a school and terms the feed still has."""
    school = record["organization_key"] if record["organization_key"] in schools else schools[0]
    keys = [t for t in str(record["term_keys"]).split(",") if t in terms] or ["fall"]
    return {
        **record,
        "organization_key": school,
        "course_key": f"crs-{school}",
        "term_keys": ",".join(keys),
    }


def _enrollment(
    section_key: str, section: Record, user_key: str, user: Record, primary: str
) -> Record:
    """An enrollment row; its school and role follow its section and user."""
    role = user["role"] if user["role"] in model.ENROLLMENT_ROLES else "teacher"
    return {
        "section_key": section_key,
        "user_key": user_key,
        "organization_key": section["organization_key"],
        "role": role,
        "primary": primary,
    }


def _evolve(
    draw: st.DrawFn,
    before: Table,
    keys: Iterable[str],
    fresh: Callable[[str], st.SearchStrategy[Record]],
    *,
    always: bool = False,
    fix: Callable[[Record], Record] = lambda record: record,
) -> Table:
    """Each key's record after ``before``: kept, changed, dropped, or new (``always``: never
    absent). The first choice is the smallest, so failures shrink towards no change."""
    out: Table = {}
    for key in keys:
        old = before.get(key)
        if old is None:
            choice = "new" if always else draw(_pick(("absent", "new")))
        else:
            choice = draw(_pick(("keep", "change") if always else ("keep", "change", "drop")))
        if choice == "keep" and old is not None:
            out[key] = fix(old)
        elif choice in ("change", "new"):
            out[key] = draw(fresh(key))
    return out


@st.composite
def snapshots(draw: st.DrawFn, before: Snapshot | None = None) -> Snapshot:
    """A consistent snapshot (every reference resolves), drawn as a change of ``before``."""
    prev = before.tables if before else {name: {} for name in FED}
    organizations = _evolve(draw, prev["organizations"], ("dist",), _organization, always=True)
    schools_of = _evolve(draw, prev["organizations"], SCHOOLS, _organization)
    if not schools_of:
        schools_of = {"sch-a": draw(_organization("sch-a"))}
    organizations.update(schools_of)
    schools = tuple(sorted(schools_of))
    terms = _evolve(draw, prev["terms"], ("fall",), _term, always=True)
    terms.update(_evolve(draw, prev["terms"], ("spring",), _term))
    term_keys = tuple(sorted(terms))
    courses = _evolve(draw, prev["courses"], [f"crs-{s}" for s in schools], _course, always=True)
    users = _evolve(
        draw,
        prev["users"],
        USER_KEYS,
        lambda key: _user(key, schools),
        fix=lambda record: _user_within(record, schools),
    )
    sections = _evolve(
        draw,
        prev["sections"],
        SECTION_KEYS,
        lambda key: _section(key, schools, term_keys),
        fix=lambda record: _section_within(record, schools, term_keys),
    )
    enrollments: Table = {}
    for section_key, user_key in itertools.product(sorted(sections), sorted(users)):
        key = f"{section_key}:{user_key}"
        old = prev["enrollments"].get(key)
        choice = draw(_pick(("keep", "change", "drop") if old else ("absent", "absent", "new")))
        if choice in ("absent", "drop"):
            continue
        primary = (
            str(old["primary"]) if old and choice == "keep" else draw(_pick(("false", "true")))
        )
        enrollments[key] = _enrollment(
            section_key, sections[section_key], user_key, users[user_key], primary
        )
    return Snapshot(
        {
            "organizations": organizations,
            "terms": terms,
            "courses": courses,
            "users": users,
            "sections": sections,
            "enrollments": enrollments,
        }
    )


@st.composite
def histories(draw: st.DrawFn, min_size: int = 2, max_size: int = 3) -> list[Snapshot]:
    """Successive snapshots of one district; with three, archived keys can come back."""
    history = [draw(snapshots())]
    for _ in range(draw(st.integers(min_size, max_size)) - 1):
        history.append(draw(snapshots(history[-1])))
    return history


def delta_frames(before: Snapshot, after: Snapshot) -> dict[str, pd.DataFrame]:
    """A quick sync's feed from ``before`` to ``after``: new and changed rows active, removed
    rows ``tobedeleted`` (with their last fields); memberships derived from its users."""
    frames: dict[str, pd.DataFrame] = {}
    for name in FED:
        old, new = before.tables[name], after.tables[name]
        rows: list[dict[str, Any]] = [
            {"sis_key": k, **r} for k, r in sorted(new.items()) if old.get(k) != r
        ]
        rows += [
            {"sis_key": k, **r, "sis_status": model.TO_BE_DELETED}
            for k, r in sorted(old.items())
            if k not in new
        ]
        frames[name] = canonical(name, rows)
    frames["user_organizations"] = derive_user_organizations(frames["users"])
    return frames


# --------------------------------------------------------------------------------------------
# Reading the outcome
# --------------------------------------------------------------------------------------------


def lms_state(lms_url: str, portal_id: str) -> dict[str, dict[str, tuple[bool, tuple[Any, ...]]]]:
    """Every LMS row of a portal: ``{entity: {sis_key: (active, fields)}}`` (ids and
    timestamps left out, so two portals compare)."""
    snapshot = lms_snapshot(engine_for(lms_url), portal_id)
    state: dict[str, dict[str, tuple[bool, tuple[Any, ...]]]] = {}
    for entity in model.ENTITIES:
        rows = snapshot[f"lms_{entity.name}"]
        state[entity.name] = {
            r["sis_key"]: (r["archived_at"] is None, tuple(r[f] for f in entity.fields))
            for r in rows
        }
        assert len(state[entity.name]) == len(rows), f"{entity.name}: a key has two rows"
    return state


def proposed(change_set: Any) -> set[Action]:
    """The change set's actions as (entity, key, action); a record never gets two."""
    frame = change_set.actions
    actions = set(zip(frame["entity"], frame["sis_key"], frame["action"], strict=True))
    assert frame[["entity", "sis_key"]].drop_duplicates().shape[0] == len(frame), "two actions"
    return actions


def note_kinds(actions: set[Action]) -> None:
    """Tell Hypothesis's statistics which (entity, action) kinds an example reached, to see
    that the generator covers adds, updates, archives and returns of every entity."""
    for entity, action in sorted({(e, a) for e, _, a in actions}):
        event(f"{entity} {action}")


def staged_actions(lms_url: str, run_id: int) -> list[tuple[int, Action, str]]:
    """The run's staged actions as (id, action, status), in a stable order for drawing."""
    with engine_for(lms_url).connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, entity, sis_key, action, status FROM sis_sync_actions WHERE run_id = :r"
            ),
            {"r": run_id},
        )
        out = [(int(i), (str(e), str(k), str(a)), str(s)) for i, e, k, a, s in rows]
    return sorted(out, key=lambda row: row[1])


def _parents(entity: str, key: str) -> list[tuple[str, str]]:
    """The records a membership or enrollment refers to, read from its key
    (``<user>:<organization>``, ``<section>:<user>``): what a commit checks or links it by."""
    if entity == "user_organizations":
        user, organization = key.split(":")
        return [("users", user), ("organizations", organization)]
    if entity == "enrollments":
        section, user = key.split(":")
        return [("sections", section), ("users", user)]
    return []


def left_as_they_were(
    actions: set[Action], unticked: set[Action]
) -> tuple[set[Action], set[Action]]:
    """What a commit should leave undone besides the unticked actions, by its documented
    rules, worked out here without its code: (dependency skips, children kept)."""
    not_made = {(e, k) for e, k, a in unticked if a in ("add", "reactivate")}
    archive_kept = {(e, k) for e, k, a in unticked if a == "archive"}
    archived = {(e, k) for e, k, a in actions if a == "archive"}
    dependency: set[Action] = set()
    kept: set[Action] = set()
    for action in actions - unticked:
        entity, key, kind = action
        parents = _parents(entity, key)
        if kind in ("add", "reactivate", "update"):
            if any(parent in not_made for parent in parents):
                dependency.add(action)
        elif parents:
            # an archive explained by its user's or section's archive in the same change set
            links = [p for p in parents if p[0] in ("users", "sections") and p in archived]
            if links and all(p in archive_kept for p in links):
                kept.add(action)
    return dependency, kept


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@property_settings(25)
@given(history=histories())
def test_syncing_snapshots_one_after_another_leaves_the_lms_equal_to_the_last(
    lms_url: str, history: list[Snapshot]
) -> None:
    """Full syncs of A then B (then C) make the LMS's active rows B's (C's), key and field;
    every key that went away is archived, its row kept: nothing is ever deleted."""
    portal = fresh_portal()
    for snapshot in history:
        change_set, _ = sync(lms_url, snapshot.frames(), portal_id=portal)
        note_kinds(proposed(change_set))
    state = lms_state(lms_url, portal)
    expected = history[-1].expected()
    for entity in model.ENTITIES:
        rows = state[entity.name]
        active = {k: fields for k, (is_active, fields) in rows.items() if is_active}
        assert active == expected[entity.name], entity.name
        ever = set().union(*(s.expected()[entity.name] for s in history))
        assert set(rows) == ever, f"{entity.name}: rows were deleted or invented"
        gone = ever - set(expected[entity.name])
        assert not any(rows[k][0] for k in gone), f"{entity.name}: a gone key is still active"


@property_settings(20)
@given(history=histories(min_size=1))
def test_a_second_diff_right_after_a_commit_is_empty(lms_url: str, history: list[Snapshot]) -> None:
    """Once a snapshot is committed the LMS is that snapshot: diffing it again proposes
    nothing (after every step of a history of adds, changes, archives and returns)."""
    portal = fresh_portal()
    for step, snapshot in enumerate(history):
        sync(lms_url, snapshot.frames(), portal_id=portal)
        change_set, _ = run_diff(lms_url, snapshot.frames(), portal_id=portal)
        assert proposed(change_set) == set(), f"step {step}"


@property_settings(20)
@given(history=histories(), data=st.data())
def test_unticked_actions_are_exactly_what_stays_different(
    lms_url: str, history: list[Snapshot], data: st.DataObject
) -> None:
    """Untick any actions of the last snapshot's change set and commit: the actions left
    undone (the unticked ones, the children a commit skips or keeps for them) are exactly
    what a fresh diff of that snapshot proposes again."""
    portal = fresh_portal()
    *earlier, last = history
    for snapshot in earlier:
        sync(lms_url, snapshot.frames(), portal_id=portal)
    change_set, scoped = run_diff(lms_url, last.frames(), portal_id=portal)
    run_id = stage(lms_url, change_set, portal_id=portal, approve=False)
    staged = staged_actions(lms_url, run_id)
    assert {action for _, action, _ in staged} == proposed(change_set)
    mask = data.draw(st.lists(st.booleans(), min_size=len(staged), max_size=len(staged)))
    unticked_ids = [i for (i, _, _), off in zip(staged, mask, strict=True) if off]
    unticked = {action for (_, action, _), off in zip(staged, mask, strict=True) if off}
    if unticked_ids:
        changed = set_selected(engine_for(lms_url), run_id, unticked_ids, False)
        assert changed == len(unticked_ids)
    approve(lms_url, run_id)
    commit(lms_url, run_id, scoped, portal_id=portal)

    dependency, kept = left_as_they_were(proposed(change_set), unticked)
    note_kinds(unticked)
    event(f"dependency skips: {bool(dependency)}, children kept: {bool(kept)}")
    statuses = {action: status for _, action, status in staged_actions(lms_url, run_id)}
    assert {a for a, s in statuses.items() if s == "not_selected"} == unticked
    assert {a for a, s in statuses.items() if s == "skipped"} == dependency | kept
    again, _ = run_diff(lms_url, last.frames(), portal_id=portal)
    assert proposed(again) == unticked | dependency | kept


@property_settings(20)
@given(history=histories())
def test_a_quick_syncs_delta_lands_where_a_full_sync_does(
    lms_url: str, history: list[Snapshot]
) -> None:
    """After full syncs up to A, the delta A -> B (changed and new rows, removed ones
    ``tobedeleted``) proposes what a full sync of B does in a twin portal, and leaves its LMS
    rows the same: keys, active flags and fields, archived rows included."""
    *earlier, newest = history
    full, quick = fresh_portal(), fresh_portal()
    for portal in (full, quick):
        for snapshot in earlier:
            sync(lms_url, snapshot.frames(), portal_id=portal)
    full_changes, _ = sync(lms_url, newest.frames(), portal_id=full)
    quick_changes, _ = sync(
        lms_url, delta_frames(earlier[-1], newest), portal_id=quick, modes=ALL_DELTA
    )
    note_kinds(proposed(quick_changes))
    assert proposed(quick_changes) == proposed(full_changes)
    quick_state = lms_state(lms_url, quick)
    assert quick_state == lms_state(lms_url, full)
    expected = newest.expected()
    for entity in model.ENTITIES:
        active = {k: f for k, (is_active, f) in quick_state[entity.name].items() if is_active}
        assert active == expected[entity.name], entity.name


SCHOOL_YEARS = (None, ("2026-07-01", "2026-12-31"), ("2027-01-01", "2027-06-30"))


@property_settings(20)
@given(
    history=histories(),
    bucket_rows=st.sampled_from((1, 2, 5)),
    schools=st.sampled_from((None, ["sch-a"], ["sch-b", "sch-c"])),
    school_year=st.sampled_from(SCHOOL_YEARS),
    quick=st.booleans(),
)
def test_the_diff_in_key_buckets_proposes_what_the_diff_in_memory_does(
    lms_url: str,
    history: list[Snapshot],
    bucket_rows: int,
    schools: list[str] | None,
    school_year: tuple[str, str] | None,
    quick: bool,
) -> None:
    """The diff stage streams entity by entity and key bucket by bucket; whatever the bucket
    size, a run over some schools or all, a delta or a full read, with or without a school
    year, its change set equals the in-memory diff's: every action, reason, change, label
    and parent link, and the sections the school year kept out."""
    *earlier, newest = history
    portal = fresh_portal()
    for snapshot in earlier:
        sync(lms_url, snapshot.frames(), portal_id=portal)
    frames, modes = newest.frames(), None
    if quick:
        frames, modes = delta_frames(earlier[-1], newest), ALL_DELTA
    options: dict[str, Any] = {
        "portal_id": portal,
        "run_schools": schools,
        "school_year": school_year,
        "modes": modes,
    }
    in_memory, memory_scoped = run_diff(lms_url, frames, bucket_rows=None, **options)
    streamed, streamed_scoped = run_diff(lms_url, frames, bucket_rows=bucket_rows, **options)
    note_kinds(proposed(in_memory))
    streamed_rows, memory_rows = _rows(streamed.actions), _rows(in_memory.actions)
    only = [r for r in streamed_rows if r not in memory_rows]
    missing = [r for r in memory_rows if r not in streamed_rows]
    assert streamed_rows == memory_rows, f"streamed only: {only}; in memory only: {missing}"
    kept_out = sorted(streamed.outside_school_year.tolist())
    assert kept_out == sorted(in_memory.outside_school_year.tolist())
    for name, frame in memory_scoped.items():
        assert _keys_of(streamed_scoped[name]) == _keys_of(frame), name


def _rows(actions: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Actions as sorted plain tuples (nulls as None), whatever order and dtypes they came in."""
    frame = actions.astype(object).where(actions.notna(), None)
    rows = [tuple(r) for r in frame.itertuples(index=False)]
    return sorted(rows, key=lambda r: tuple("" if v is None else str(v) for v in r))


def _keys_of(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["sis_key"].astype(str))
