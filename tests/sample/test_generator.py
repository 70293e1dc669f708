"""The sample district generator: determinism, OneRoster file shape, integrity and later days."""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from include.sis_sync.sample.generator import (
    HEADERS,
    PRESETS,
    District,
    DistrictSpec,
    delta_between,
    generate_district,
    main,
    next_day,
    returning_students,
    write_delta_drop,
    write_demo_drops,
    write_drop,
)

# The headers as the OneRoster 1.1 CSV spec orders them, spelled out independently of HEADERS.
EXPECTED_HEADERS = {
    "orgs": "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId",
    "users": "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,"
    "givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password",
    "academicSessions": "sourcedId,status,dateLastModified,title,type,startDate,endDate,"
    "parentSourcedId,schoolYear",
    "courses": "sourcedId,status,dateLastModified,schoolYearSourcedId,title,courseCode,grades,"
    "orgSourcedId,subjects,subjectCodes",
    "classes": "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,"
    "location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods",
    "enrollments": "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,"
    "role,primary,beginDate,endDate",
}
EXPECTED_MANIFEST = [
    ("manifest.version", "1.0"),
    ("oneroster.version", "1.1"),
    ("file.academicSessions", "bulk"),
    ("file.categories", "absent"),
    ("file.classes", "bulk"),
    ("file.classResources", "absent"),
    ("file.courses", "bulk"),
    ("file.courseResources", "absent"),
    ("file.demographics", "absent"),
    ("file.enrollments", "bulk"),
    ("file.lineItems", "absent"),
    ("file.orgs", "bulk"),
    ("file.resources", "absent"),
    ("file.results", "absent"),
    ("file.users", "bulk"),
    ("source.systemName", "SIS Sync sample generator"),
    ("source.systemCode", "sample"),
]
STAMP = "2026-09-02T06:00:00Z"
# Big enough for fractions to mean something, small enough to stay fast.
MID = DistrictSpec(
    schools=5,
    students=4000,
    teachers=200,
    administrators=3,
    sections=800,
    enrollments_per_student=6,
)


@pytest.fixture(scope="module")
def demo() -> District:
    return generate_district("demo")


@pytest.fixture(scope="module")
def mid() -> District:
    return generate_district(MID)


def read_rows(path: Path) -> list[dict[str, str]]:
    """A written CSV parsed by the standard library, as a strict reader would see it."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def students(district: District) -> pd.DataFrame:
    return district.users[district.users["role"] == "student"]


def split(values: pd.Series) -> set[str]:
    return {part for value in values for part in value.split(",") if part}


# --------------------------------------------------------------------------------------------
# Generating
# --------------------------------------------------------------------------------------------


def test_same_spec_gives_identical_frames(demo: District) -> None:
    again = generate_district(PRESETS["demo"])
    for stem, frame in demo.frames().items():
        pd.testing.assert_frame_equal(frame, again.frames()[stem], obj=stem)


def test_other_seed_gives_other_roster(demo: District) -> None:
    other = generate_district(replace(PRESETS["demo"], seed=7))
    assert not demo.users.equals(other.users)
    assert not demo.enrollments.equals(other.enrollments)


def test_demo_has_the_preset_sizes(demo: District) -> None:
    roles = demo.users["role"].value_counts()
    assert (roles["student"], roles["teacher"], roles["administrator"]) == (300, 20, 2)
    assert (demo.orgs["type"] == "school").sum() == 2
    assert (demo.orgs["type"] == "district").sum() == 1
    assert len(demo.classes) == 40
    enrolled = demo.enrollments["role"].value_counts()
    assert enrolled["student"] == 300 * 5
    assert enrolled["teacher"] == 40
    sessions = demo.academic_sessions.set_index("sourcedId")
    assert sorted(sessions["type"]) == ["schoolYear", "semester", "semester"]
    year = sessions[sessions["type"] == "schoolYear"].iloc[0]
    assert (year["title"], year["startDate"], year["endDate"], year["schoolYear"]) == (
        "2026-2027",
        "2026-08-15",
        "2027-06-15",
        "2027",
    )


def test_presets_have_the_promised_sizes() -> None:
    large = PRESETS["large"]
    assert (large.students, large.teachers, large.sections) == (1_000_000, 60_000, 250_000)
    assert large.students * large.enrollments_per_student == 6_000_000
    assert PRESETS["small"].students == 10_000
    assert (PRESETS["medium"].schools, PRESETS["medium"].students) == (20, 100_000)


def test_bad_spec_and_unknown_preset_are_rejected() -> None:
    with pytest.raises(ValueError, match="teachers"):
        DistrictSpec(5, 100, 2, 0, 10, 3)
    with pytest.raises(ValueError, match="unknown preset"):
        generate_district("huge")


def test_frames_have_exactly_the_headers_and_text(demo: District) -> None:
    for stem, frame in demo.frames().items():
        assert ",".join(frame.columns) == EXPECTED_HEADERS[stem]
        assert not frame.isna().any().any(), stem
        assert frame["sourcedId"].is_unique, stem


def test_referential_integrity(mid: District) -> None:
    orgs = set(mid.orgs["sourcedId"])
    sessions = set(mid.academic_sessions["sourcedId"])
    assert set(mid.courses["orgSourcedId"]) <= orgs
    assert set(mid.courses["schoolYearSourcedId"]) <= sessions
    assert set(mid.classes["courseSourcedId"]) <= set(mid.courses["sourcedId"])
    assert set(mid.classes["schoolSourcedId"]) <= orgs
    assert split(mid.classes["termSourcedIds"]) <= sessions
    assert split(mid.users["orgSourcedIds"]) <= orgs
    assert set(mid.enrollments["classSourcedId"]) <= set(mid.classes["sourcedId"])
    assert set(mid.enrollments["userSourcedId"]) <= set(mid.users["sourcedId"])
    class_school = mid.classes.set_index("sourcedId")["schoolSourcedId"]
    assert (
        mid.enrollments["schoolSourcedId"].to_numpy()
        == class_school.loc[mid.enrollments["classSourcedId"]].to_numpy()
    ).all()


def test_users_are_unique_and_fake(mid: District) -> None:
    for column in ("username", "email", "identifier"):
        assert mid.users[column].is_unique, column
    assert mid.users["email"].str.endswith("@example.org").all()
    assert set(mid.users["enabledUser"]) == {"true"}
    assert set(students(mid)["grades"]) <= {"KG", *(f"{g:02d}" for g in range(1, 13))}


def test_some_students_belong_to_two_schools(demo: District, mid: District) -> None:
    for district in (demo, mid):
        pupils = students(district)
        two = pupils["orgSourcedIds"].str.count(",") == 1
        assert two.any()
        assert two.mean() < 0.05
    assert (mid.users[mid.users["role"] == "teacher"]["orgSourcedIds"].str.count(",") == 1).any()


def test_enrollments_follow_school_membership(mid: District) -> None:
    member = mid.users.set_index("sourcedId")["orgSourcedIds"].str.split(",")
    rows = mid.enrollments
    allowed = member.loc[rows["userSourcedId"]].to_numpy()
    pairs_in = zip(rows["schoolSourcedId"], allowed, strict=True)
    assert all(school in schools for school, schools in pairs_in)
    pairs = rows[["classSourcedId", "userSourcedId"]]
    assert not pairs.duplicated().any()


def test_each_class_has_one_primary_teacher(mid: District) -> None:
    teachers = mid.enrollments[mid.enrollments["role"] == "teacher"]
    assert set(teachers["primary"]) == {"true"}
    assert teachers["classSourcedId"].value_counts().eq(1).all()
    assert set(teachers["classSourcedId"]) == set(mid.classes["sourcedId"])
    pupils = mid.enrollments[mid.enrollments["role"] == "student"]
    assert set(pupils["primary"]) == {"false"}
    assert (pupils.groupby("userSourcedId").size() == 6).all()


# --------------------------------------------------------------------------------------------
# Writing drops
# --------------------------------------------------------------------------------------------


def test_written_headers_manifest_and_blank_bulk_status(demo: District, tmp_path: Path) -> None:
    folder = write_drop(demo, tmp_path / "drop")
    assert folder == tmp_path / "drop"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["manifest.csv", *(f"{stem}.csv" for stem in EXPECTED_HEADERS)])
    manifest = [tuple(r.values()) for r in read_rows(folder / "manifest.csv")]
    assert manifest == EXPECTED_MANIFEST
    for stem, header in EXPECTED_HEADERS.items():
        raw = (folder / f"{stem}.csv").read_bytes()
        assert raw.split(b"\r\n", 1)[0].decode() == header
        rows = read_rows(folder / f"{stem}.csv")
        assert len(rows) == len(demo.frames()[stem])
        assert {r["status"] for r in rows} == {""}
        assert {r["dateLastModified"] for r in rows} == {""}
    users = read_rows(folder / "users.csv")
    assert [r["sourcedId"] for r in users] == list(demo.users["sourcedId"])


def test_multi_value_fields_are_quoted_only_when_needed(demo: District, tmp_path: Path) -> None:
    folder = write_drop(demo, tmp_path / "drop")
    classes = (folder / "classes.csv").read_text(encoding="utf-8")
    assert '"ses-000002,ses-000003"' in classes
    assert '"cls-' not in classes  # single values are not quoted
    users = read_rows(folder / "users.csv")
    assert any("," in r["orgSourcedIds"] for r in users)
    frame = demo.users.set_index("sourcedId")
    for row in users:
        assert row["orgSourcedIds"] == frame.loc[row["sourcedId"], "orgSourcedIds"]
        assert row["familyName"] == frame.loc[row["sourcedId"], "familyName"]


def test_line_endings_and_bom_options(demo: District, tmp_path: Path) -> None:
    crlf = (write_drop(demo, tmp_path / "a") / "orgs.csv").read_bytes()
    assert crlf.count(b"\r\n") == len(demo.orgs) + 1
    assert not crlf.startswith(b"\xef\xbb\xbf")
    lf = (write_drop(demo, tmp_path / "b", crlf=False) / "orgs.csv").read_bytes()
    assert b"\r" not in lf
    assert lf.count(b"\n") == len(demo.orgs) + 1
    bom_drop = write_drop(demo, tmp_path / "c", bom=True)
    for path in bom_drop.iterdir():
        assert path.read_bytes().startswith(b"\xef\xbb\xbfsourcedId") or path.name == "manifest.csv"
    assert (bom_drop / "manifest.csv").read_bytes().startswith(b"\xef\xbb\xbfpropertyName,value")


def test_zip_drop_has_csvs_at_its_root(demo: District, tmp_path: Path) -> None:
    target = write_drop(demo, tmp_path / "z", zip_name="oneroster.zip")
    assert target == tmp_path / "z" / "oneroster.zip"
    folder = write_drop(demo, tmp_path / "plain")
    with zipfile.ZipFile(target) as archive:
        assert sorted(archive.namelist()) == sorted(p.name for p in folder.iterdir())
        for name in archive.namelist():
            assert archive.read(name) == (folder / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["oneroster.zip"]


def test_modes_absent_and_delta(demo: District, tmp_path: Path) -> None:
    folder = write_drop(
        demo,
        tmp_path / "d",
        modes={"users": "delta", "courses": "absent"},
        last_modified=STAMP,
    )
    manifest = dict(tuple(r.values()) for r in read_rows(folder / "manifest.csv"))
    assert manifest["file.courses"] == "absent"
    assert manifest["file.users"] == "delta"
    assert manifest["file.orgs"] == "bulk"
    assert not (folder / "courses.csv").exists()
    users = read_rows(folder / "users.csv")
    assert {(r["status"], r["dateLastModified"]) for r in users} == {("active", STAMP)}
    with pytest.raises(ValueError, match="last_modified"):
        write_drop(demo, tmp_path / "e", modes={"users": "delta"})
    with pytest.raises(ValueError, match="mode"):
        write_drop(demo, tmp_path / "f", modes={"users": "partial"})


# --------------------------------------------------------------------------------------------
# Later days
# --------------------------------------------------------------------------------------------


def test_next_day_changes_the_asked_fractions(mid: District) -> None:
    before = {stem: frame.copy() for stem, frame in mid.frames().items()}
    later = next_day(mid, seed=11, add=0.02, update=0.03, archive=0.01)
    for stem, frame in mid.frames().items():  # the input is untouched
        pd.testing.assert_frame_equal(frame, before[stem], obj=stem)

    old, new = students(mid).set_index("sourcedId"), students(later).set_index("sourcedId")
    added = new.index.difference(old.index)
    archived = old.index.difference(new.index)
    kept = old.index.intersection(new.index)
    assert (len(added), len(archived)) == (80, 40)
    changed = (old.loc[kept] != new.loc[kept]).any(axis=1)
    assert changed.sum() == 120
    fields = (old.loc[kept] != new.loc[kept]).loc[changed].sum()
    assert set(fields[fields > 0].index) <= {"familyName", "email", "grades"}
    assert len(fields[fields > 0]) == 3
    staff = mid.users[mid.users["role"] != "student"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        later.users[later.users["role"] != "student"].reset_index(drop=True), staff
    )

    # Archived students lose their enrollments; new students get theirs under new keys.
    enrolled = later.enrollments
    assert not enrolled["userSourcedId"].isin(archived).any()
    assert (
        enrolled[enrolled["userSourcedId"].isin(added)].groupby("userSourcedId").size() == 6
    ).all()
    assert set(enrolled["classSourcedId"]) <= set(later.classes["sourcedId"])
    assert enrolled["sourcedId"].is_unique
    # Most enrollments keep their keys and values; a few are swapped.
    same = enrolled.merge(mid.enrollments, how="inner")
    assert len(same) > 0.97 * len(mid.enrollments)
    assert 0 < len(mid.enrollments) - len(same) - 40 * 6 <= 120
    moved = (mid.classes.set_index("sourcedId") != later.classes.set_index("sourcedId")).any(axis=1)
    assert moved.sum() == round(0.03 * len(mid.classes))
    assert later.classes["sourcedId"].tolist() == mid.classes["sourcedId"].tolist()


def test_next_day_is_deterministic(demo: District) -> None:
    first, second = next_day(demo, seed=3), next_day(demo, seed=3)
    for stem, frame in first.frames().items():
        pd.testing.assert_frame_equal(frame, second.frames()[stem], obj=stem)
    assert not next_day(demo, seed=4).users.equals(first.users)


def test_keys_are_never_reused(demo: District) -> None:
    day2 = next_day(demo, seed=1, add=0.05, update=0, archive=0)
    new_keys = set(day2.users["sourcedId"]) - set(demo.users["sourcedId"])
    # Archive every new student; the next day's new students must still get fresh keys.
    trimmed = replace(
        day2,
        users=day2.users[~day2.users["sourcedId"].isin(new_keys)],
        enrollments=day2.enrollments[~day2.enrollments["userSourcedId"].isin(new_keys)],
    )
    day3 = next_day(trimmed, seed=2, add=0.05, update=0, archive=0)
    newer = set(day3.users["sourcedId"]) - set(trimmed.users["sourcedId"])
    assert len(newer) == 15
    assert not newer & new_keys
    old_enrollments = set(day2.enrollments["sourcedId"])
    assert not set(day3.enrollments["sourcedId"]) - set(trimmed.enrollments["sourcedId"]) & (
        old_enrollments
    )


def test_returning_students_come_back_with_their_enrollments(demo: District) -> None:
    later = next_day(demo, seed=5, add=0, update=0, archive=0.05)
    missing = set(students(demo)["sourcedId"]) - set(later.users["sourcedId"])
    back = returning_students(demo, later, 4, seed=9)
    returned = set(back.users["sourcedId"]) - set(later.users["sourcedId"])
    assert len(returned) == 4
    assert returned <= missing
    earlier_rows = demo.users[demo.users["sourcedId"].isin(returned)].reset_index(drop=True)
    now_rows = back.users[back.users["sourcedId"].isin(returned)].reset_index(drop=True)
    pd.testing.assert_frame_equal(now_rows, earlier_rows)
    old = demo.enrollments[demo.enrollments["userSourcedId"].isin(returned)]
    new = back.enrollments[back.enrollments["userSourcedId"].isin(returned)]
    assert len(new) == len(old) > 0
    assert set(new["sourcedId"]) == set(old["sourcedId"])
    assert back.enrollments["sourcedId"].is_unique
    with pytest.raises(ValueError, match="missing"):
        returning_students(demo, later, len(missing) + 1, seed=1)


def test_delta_between_has_changes_and_deletes_only(demo: District) -> None:
    later = next_day(demo, seed=8, add=0.02, update=0.02, archive=0.02)
    delta = delta_between(demo, later, last_modified=STAMP)
    users = delta.users.set_index("sourcedId")
    assert set(users["dateLastModified"]) == {STAMP}
    deleted = users[users["status"] == "tobedeleted"]
    gone = set(demo.users["sourcedId"]) - set(later.users["sourcedId"])
    assert set(deleted.index) == gone
    old = demo.users.set_index("sourcedId")
    fields = [c for c in HEADERS["users"] if c not in ("sourcedId", "status", "dateLastModified")]
    assert (deleted[fields] == old.loc[deleted.index, fields]).all().all()
    active = users[users["status"] == "active"]
    assert len(active) == 6 + 6  # the adds and the updates, nothing unchanged
    after = later.users.set_index("sourcedId")
    assert (active[fields] == after.loc[active.index, fields]).all().all()
    for frame in (delta.orgs, delta.courses, delta.academic_sessions):
        assert frame.empty
    removed = delta.enrollments[delta.enrollments["status"] == "tobedeleted"]
    assert (
        removed["userSourcedId"].isin(gone).sum()
        == demo.enrollments["userSourcedId"].isin(gone).sum()
    )
    assert delta_between(demo, demo, last_modified=STAMP).enrollments.empty


def test_write_delta_drop(demo: District, tmp_path: Path) -> None:
    later = next_day(demo, seed=8)
    folder = write_delta_drop(demo, later, tmp_path / "delta", last_modified=STAMP)
    manifest = dict(tuple(r.values()) for r in read_rows(folder / "manifest.csv"))
    assert {manifest[f"file.{stem}"] for stem in EXPECTED_HEADERS} == {"delta"}
    rows = read_rows(folder / "users.csv")
    assert rows and {r["dateLastModified"] for r in rows} == {STAMP}
    assert {r["status"] for r in rows} == {"active", "tobedeleted"}
    zipped = write_delta_drop(demo, later, tmp_path / "dz", last_modified=STAMP, zip_name="d.zip")
    with zipfile.ZipFile(zipped) as archive:
        assert archive.read("users.csv") == (folder / "users.csv").read_bytes()


# --------------------------------------------------------------------------------------------
# Demo drops and the command line
# --------------------------------------------------------------------------------------------


def test_demo_drops_show_adds_updates_archives_and_a_return(tmp_path: Path) -> None:
    folders = write_demo_drops(tmp_path)
    assert folders == [tmp_path / d for d in ("2026-09-01", "2026-09-02", "2026-09-03")]
    days = []
    for folder in folders:
        rows = read_rows(folder / "users.csv")
        days.append({r["sourcedId"]: r for r in rows if r["role"] == "student"})
    day1, day2, day3 = days
    assert len(set(day2) - set(day1)) >= 5
    assert len(set(day1) - set(day2)) >= 5
    assert sum(day1[k] != day2[k] for k in set(day1) & set(day2)) >= 5
    came_back = (set(day1) - set(day2)) & set(day3)
    assert len(came_back) >= 1
    assert all(day3[k] == day1[k] for k in came_back)
    enrollments = read_rows(folders[2] / "enrollments.csv")
    assert came_back & {r["userSourcedId"] for r in enrollments}


def test_main_writes_days_and_prints_counts_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--preset", "demo", "--out", str(tmp_path), "--days", "2", "--zip"]) == 0
    out = capsys.readouterr().out
    assert "day1:" in out and "day2:" in out
    assert "students=300" in out
    assert "@" not in out
    for day in ("day1", "day2"):
        with zipfile.ZipFile(tmp_path / day / "oneroster.zip") as archive:
            assert "users.csv" in archive.namelist()
            header = io.TextIOWrapper(archive.open("users.csv"), encoding="utf-8").readline()
            assert header.rstrip("\r\n") == EXPECTED_HEADERS["users"]
