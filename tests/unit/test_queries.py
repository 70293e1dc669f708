"""The admin pages' read model on both stores: keyset pages, filters, searches, selections
over a whole filtered list, and the history of a portal."""

from __future__ import annotations

from datetime import timedelta

import pytest

from include.sis_sync import queries, runs
from include.sis_sync.lms.db import engine_for
from include.sis_sync.queries import ActionFilter
from include.sis_sync.staging import set_selected_where
from tests.helpers import district, run_diff, set_status, stage, sync

STUDENTS = {f"s{n:03}": ("sch-a" if n % 3 else "sch-b") for n in range(1, 121)}


def _staged(lms_url: str, **kwargs: object) -> int:
    change_set, _ = run_diff(lms_url, district(students=STUDENTS, **kwargs))
    return stage(lms_url, change_set, approve=False)


def _walk(lms_url: str, run_id: int, flt: ActionFilter, limit: int = 7) -> list[str]:
    """Every key of a filtered list, page after page."""
    engine, keys, after = engine_for(lms_url), [], None
    while True:
        page = queries.action_page(engine, run_id, flt, after=after, limit=limit)
        keys += [r["sis_key"] for r in page.rows]
        if page.next_after is None:
            return keys
        after = page.next_after


def test_pages_walk_every_action_once_in_key_order(lms_url: str) -> None:
    run_id = _staged(lms_url)
    keys = _walk(lms_url, run_id, ActionFilter("users", "add"))
    assert keys == sorted(STUDENTS)


def test_previous_page_returns_the_page_before(lms_url: str) -> None:
    engine, run_id = engine_for(lms_url), _staged(lms_url)
    flt = ActionFilter("users", "add")
    first = queries.action_page(engine, run_id, flt, limit=10)
    assert first.prev_before is None
    second = queries.action_page(engine, run_id, flt, after=first.next_after, limit=10)
    back = queries.action_page(engine, run_id, flt, before=second.prev_before, limit=10)
    assert [r["sis_key"] for r in back.rows] == [r["sis_key"] for r in first.rows]
    assert back.prev_before is None and back.next_after == first.next_after


def test_filters_by_school_and_searches_by_key_and_by_name(lms_url: str) -> None:
    engine, run_id = engine_for(lms_url), _staged(lms_url)
    in_b = _walk(lms_url, run_id, ActionFilter("users", "add", school="sch-b"))
    assert in_b == sorted(k for k, s in STUDENTS.items() if s == "sch-b")
    by_key = _walk(lms_url, run_id, ActionFilter("users", "add", search="s01"))
    assert by_key == [f"s01{n}" for n in range(10)]
    # labels are "Given Family <key>"; a name search ignores case and treats % and _ as text
    by_name = _walk(
        lms_url, run_id, ActionFilter("users", "add", search="FAMILY S11", search_in="name")
    )
    assert by_name == [f"s11{n}" for n in range(10)]
    assert _walk(lms_url, run_id, ActionFilter("users", "add", search="%", search_in="name")) == []
    counted = queries.count_actions(engine, run_id, ActionFilter("users", "add", school="sch-b"))
    assert (counted["total"], counted["more"], counted["unticked"]) == (len(in_b), False, 0)


def test_untick_all_applies_to_the_whole_filtered_list(lms_url: str) -> None:
    engine, run_id = engine_for(lms_url), _staged(lms_url)
    flt = ActionFilter("users", "add", school="sch-b")
    changed = set_selected_where(engine, run_id, flt.clause(run_id), selected=False)
    assert changed == sum(1 for s in STUDENTS.values() if s == "sch-b")
    whole = queries.count_actions(engine, run_id, ActionFilter("users", "add"))
    assert (whole["total"], whole["unticked"]) == (len(STUDENTS), changed)


def test_filtered_lists_count_up_to_the_limit_then_say_more(
    lms_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, run_id = engine_for(lms_url), _staged(lms_url)
    monkeypatch.setattr(queries, "COUNT_LIMIT", 30)
    flt = ActionFilter("users", "add", school="sch-a")
    set_selected_where(engine, run_id, flt.clause(run_id), selected=False)
    counted = queries.count_actions(engine, run_id, flt)
    assert counted == {"total": 30, "more": True, "unticked": 30, "unticked_more": True}
    whole = queries.count_actions(engine, run_id, ActionFilter("users", "add"))
    assert (whole["total"], whole["more"]) == (len(STUDENTS), False)  # from the kept counts


def test_an_approve_given_before_the_selection_changed_is_refused(lms_url: str) -> None:
    """The admin approved one selection; a later save changed it: nothing is committed."""
    engine, run_id = engine_for(lms_url), _staged(lms_url)
    set_status(lms_url, run_id, "awaiting_approval")
    answered = runs.now()
    set_selected_where(engine, run_id, ActionFilter("users", "add").clause(run_id), selected=False)
    assert runs.record_answer(engine, run_id, True, "amy", answered_at=answered) == "refused"
    assert "approved another selection" in runs.get_run(engine, run_id)["error"]


def test_an_approve_after_the_selection_was_saved_stands(lms_url: str) -> None:
    engine, run_id = engine_for(lms_url), _staged(lms_url)
    set_status(lms_url, run_id, "awaiting_approval")
    set_selected_where(engine, run_id, ActionFilter("users", "add").clause(run_id), selected=False)
    later = runs.now() + timedelta(seconds=1)
    assert runs.record_answer(engine, run_id, True, "amy", answered_at=later) == "approved"


def test_memberships_show_their_user_and_school_from_the_lms(lms_url: str) -> None:
    sync(lms_url, district(students={"s1": "sch-a"}))
    change_set, _ = run_diff(lms_url, district(students={}))
    run_id = stage(lms_url, change_set, approve=False)
    engine = engine_for(lms_url)
    page = queries.action_page(engine, run_id, ActionFilter("user_organizations", "archive"))
    links = queries.action_links(engine, "p1", "user_organizations", page.rows)
    (link,) = links.values()
    assert (link["user_key"], link["user_name"]) == ("s1", "Given Family s1")
    assert (link["other_key"], link["other_name"]) == ("sch-a", "School sch-a")


def test_history_pages_newest_first_and_back(lms_url: str) -> None:
    engine = engine_for(lms_url)
    made = []
    for n in range(5):
        change_set, _ = run_diff(lms_url, district(students={f"x{n}": "sch-a"}))
        run_id = stage(lms_url, change_set, approve=False)
        set_status(lms_url, run_id, "rejected")
        runs.release_lock(engine, "p1", run_id)
        made.append(run_id)
    first = queries.history(engine, "p1", limit=2)
    assert [r["id"] for r in first.rows] == made[::-1][:2]
    second = queries.history(engine, "p1", after=int(first.next_after), limit=2)
    assert [r["id"] for r in second.rows] == made[::-1][2:4]
    back = queries.history(engine, "p1", before=int(second.prev_before), limit=2)
    assert [r["id"] for r in back.rows] == [r["id"] for r in first.rows]
    assert first.rows[0]["shown_status"] == "rejected" and first.rows[0]["changes"] > 0


def test_portal_overview_finds_the_last_and_the_waiting_sync(lms_url: str) -> None:
    engine = engine_for(lms_url)
    _, committed = sync(lms_url, district(students={"s1": "sch-a"}))
    waiting = _staged(lms_url)
    set_status(lms_url, waiting, "awaiting_approval")
    latest = queries.latest_runs(engine, ["p1", "p2"])
    assert list(latest) == ["p1"] and latest["p1"]["id"] == waiting
    assert latest["p1"]["shown_status"] == "awaiting approval"
    assert latest["p1"]["elapsed_seconds"] >= 0
    assert queries.waiting_runs(engine, ["p1"])["p1"]["id"] == waiting
    assert queries.last_decided_run(engine, "p1")["id"] == committed
    assert [s["sis_key"] for s in queries.schools(engine, "p1")] == ["sch-a", "sch-b"]


def test_a_filter_refuses_unknown_entities_and_actions() -> None:
    with pytest.raises(ValueError, match="unknown entity"):
        ActionFilter("pets", "add")
    with pytest.raises(ValueError, match="unknown action"):
        ActionFilter("users", "delete")
