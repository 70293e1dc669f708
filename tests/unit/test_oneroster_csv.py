"""The OneRoster 1.1 CSV provider on small hand-written drops and their edge cases."""

from __future__ import annotations

import zipfile
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from include.sis_sync.config import Entities
from include.sis_sync.providers import oneroster_csv
from include.sis_sync.providers.oneroster_csv import (
    DropError,
    entity_modes,
    list_drops,
    locate_drop,
    read_drop,
    read_manifest,
    to_canonical,
)
from tests.helpers import portal_dict, write_csv_drop

ORGS = (
    "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\n"
    "d1,,,Lake District,local,,\n"
    "s1,,,North High,school,101,d1\n"
    "s2,,,South High,school,102,d1\n"
)
SESSIONS = (
    "sourcedId,status,dateLastModified,title,type,startDate,endDate,parentSourcedId,schoolYear\n"
    "y1,,,2026-27,schoolYear,2026-08-15,2027-06-30,,2027\n"
    "t1,,,Fall,semester,2026-08-15T00:00:00Z,2026-12-20T23:59:59Z,y1,2027\n"
    "g1,,,Q1,gradingPeriod,2026-08-15,2026-10-15,t1,2027\n"
)
COURSES = (
    "sourcedId,status,dateLastModified,schoolYearSourcedId,title,courseCode,grades,orgSourcedId,"
    "subjects,subjectCodes\n"
    'c1,,,y1,Algebra,ALG1,"10,09",s1,"math",\n'
)
CLASSES = (
    "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,"
    "schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods\n"
    'k1,,,Algebra P1,09,c1,ALG1-1,scheduled,R12,s1,"t2,t1",math,,"3,1"\n'
)
USERS = (
    "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,"
    "familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password\n"
    'u1,,,TRUE,"s2,s1",student,ann,,Ann,Lee,Marie,S001,ann@x.org,,,,"10,09",\n'
    "u2,,,true,s1,teacher,bob,,Bob,Ray,,T001,bob@x.org,,,,,\n"
    "u3,,,1,s1,administrator,cat,,Cat,Moe,,,,,,,,\n"
    "u4,,,FALSE,s1,aide,dan,,Dan,Fox,,,,,,,,\n"
    "u5,,,0,s1,proctor,eve,,Eve,Kim,,,,,,,,\n"
    "u6,,,true,s1,guardian,fay,,Fay,Lee,,,,,,,,\n"
    "u7,,,true,s1,parent,gus,,Gus,Lee,,,,,,,,\n"
    "u8,,,true,s1,relative,hal,,Hal,Lee,,,,,,,,\n"
)
ENROLLMENTS = (
    "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,"
    "beginDate,endDate\n"
    "e1,,,k1,s1,u1,student,,2026-08-15,2026-12-20T00:00:00Z\n"
    "e2,,,k1,s1,u2,teacher,TRUE,,\n"
    "e3,,,k1,s1,u4,aide,False,,\n"
)
ALL_FILES = {
    "orgs": ORGS,
    "academicSessions": SESSIONS,
    "courses": COURSES,
    "classes": CLASSES,
    "users": USERS,
    "enrollments": ENROLLMENTS,
}


def _string_types(arrow_type: pa.DataType) -> object:
    return pd.StringDtype() if pa.types.is_string(arrow_type) else None


def canonical(path: Path | str, entities: Entities | None = None) -> dict[str, pd.DataFrame]:
    """Read a drop and map it as the pipeline does (raw tables read back as nullable text)."""
    drop = read_drop(str(path))
    raw = {n: t.to_pandas(types_mapper=_string_types) for n, t in drop.tables.items()}
    return to_canonical(raw, entities or Entities())


def by_key(frame: pd.DataFrame) -> dict[str, dict[str, object]]:
    """Rows by sis_key, with nulls as None."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return {row["sis_key"]: row for row in rows}


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, arcname=file.name)
    return target


# --------------------------------------------------------------------------------------------
# Folder and zip
# --------------------------------------------------------------------------------------------


def test_folder_and_zip_read_identically(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", ALL_FILES)
    archive = zip_folder(folder, tmp_path / "drop.zip")

    from_folder = read_drop(str(folder))
    from_zip = read_drop(str(archive))

    assert from_zip.modes == from_folder.modes
    assert from_folder.modes["users"] == "bulk"
    assert sorted(from_zip.tables) == sorted(ALL_FILES)
    for stem, table in from_folder.tables.items():
        assert from_zip.tables[stem].equals(table), stem
    assert from_zip.row_counts() == {
        "orgs": 3,
        "academicSessions": 3,
        "courses": 1,
        "classes": 1,
        "users": 8,
        "enrollments": 3,
    }
    assert from_zip.path == str(archive)


def test_canonical_frames_of_folder_and_zip_are_equal(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", ALL_FILES)
    archive = zip_folder(folder, tmp_path / "drop.zip")
    from_folder = canonical(folder)
    from_zip = canonical(archive)
    assert sorted(from_zip) == sorted(from_folder)
    for name, frame in from_folder.items():
        pd.testing.assert_frame_equal(from_zip[name], frame)


def test_path_that_is_neither_folder_nor_zip_fails(tmp_path: Path) -> None:
    not_a_drop = tmp_path / "drop.txt"
    not_a_drop.write_text("hello")
    with pytest.raises(DropError, match="neither") as info:
        read_drop(str(not_a_drop))
    assert str(not_a_drop) in str(info.value)


# --------------------------------------------------------------------------------------------
# Columns: order, extras, optional ones
# --------------------------------------------------------------------------------------------


def test_columns_matched_by_name_when_reordered_and_extras_ignored(tmp_path: Path) -> None:
    users = (
        "familyName,ext_foo,role,givenName,metadata.x,username,sourcedId,orgSourcedIds,email\n"
        "Lee,junk,student,Ann,meta,ann,u1,s1,ann@x.org\n"
    )
    orgs = "type,metadata.classification,name,sourcedId\nschool,public,North High,s1\n"
    frames = canonical(write_csv_drop(tmp_path / "drop", {"users": users, "orgs": orgs}))

    user = by_key(frames["users"])["u1"]
    assert user["given_name"] == "Ann"
    assert user["family_name"] == "Lee"
    assert user["username"] == "ann"
    assert user["role"] == "student"
    assert user["organizations"] == "s1"
    assert user["email"] == "ann@x.org"
    assert list(frames["users"].columns) == oneroster_csv.model.USERS.columns
    assert by_key(frames["organizations"])["s1"] == {
        "sis_key": "s1",
        "sis_status": "active",
        "name": "North High",
        "kind": "school",
        "parent_key": None,
        "school_number": None,
    }
    for frame in frames.values():
        assert not {"ext_foo", "metadata.x", "metadata.classification"} & set(frame.columns)


def test_optional_columns_missing_are_null(tmp_path: Path) -> None:
    users = (
        "sourcedId,orgSourcedIds,role,username,givenName,familyName\nu1,s1,teacher,bob,Bob,Ray\n"
    )
    courses = "sourcedId,title,orgSourcedId\nc1,Algebra,s1\n"
    enrollments = (
        "sourcedId,classSourcedId,schoolSourcedId,userSourcedId,role\ne1,k1,s1,u1,teacher\n"
    )
    frames = canonical(
        write_csv_drop(
            tmp_path / "drop", {"users": users, "courses": courses, "enrollments": enrollments}
        )
    )

    user = by_key(frames["users"])["u1"]
    assert user["sis_status"] == "active"
    for column in ("middle_name", "grades", "email", "sis_id", "enabled"):
        assert user[column] is None, column
    course = by_key(frames["courses"])["c1"]
    assert course["title"] == "Algebra"
    assert course["grades"] is None
    assert course["code"] is None
    assert course["school_year_key"] is None
    enrollment = by_key(frames["enrollments"])["e1"]
    assert enrollment["primary"] is None
    assert enrollment["begin_date"] is None
    assert enrollment["end_date"] is None


def test_blank_values_become_null_not_empty_text(tmp_path: Path) -> None:
    frames = canonical(write_csv_drop(tmp_path / "drop", {"users": USERS}))
    bob = by_key(frames["users"])["u2"]
    assert bob["middle_name"] is None
    assert bob["grades"] is None
    assert not (frames["users"] == "").any().any()


# --------------------------------------------------------------------------------------------
# Quoting, multi-value lists, newlines, CRLF, byte-order marks
# --------------------------------------------------------------------------------------------


def test_quoted_multi_value_lists_become_sorted_comma_lists(tmp_path: Path) -> None:
    frames = canonical(write_csv_drop(tmp_path / "drop", ALL_FILES))

    ann = by_key(frames["users"])["u1"]
    assert ann["grades"] == "09,10"
    assert ann["organizations"] == "s1,s2"
    section = by_key(frames["sections"])["k1"]
    assert section["term_keys"] == "t1,t2"
    assert section["period"] == "1,3"
    assert section["grades"] == "09"
    assert by_key(frames["courses"])["c1"]["grades"] == "09,10"


def test_multi_value_lists_with_spaces_and_duplicates_normalise(tmp_path: Path) -> None:
    users = (
        "sourcedId,orgSourcedIds,role,username,givenName,familyName,grades\n"
        'u1," s2, s1 ,s2",student,ann,Ann,Lee,"11, 10"\n'
    )
    ann = by_key(canonical(write_csv_drop(tmp_path / "drop", {"users": users}))["users"])["u1"]
    assert ann["organizations"] == "s1,s2"
    assert ann["grades"] == "10,11"


def test_value_with_embedded_newline_survives(tmp_path: Path) -> None:
    orgs = (
        "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\n"
        's1,,,"North\nHigh, Annex",school,101,\n'
        "s2,,,South High,school,102,\n"
    )
    folder = write_csv_drop(tmp_path / "drop", {"orgs": orgs})
    drop = read_drop(str(folder))
    assert drop.row_counts() == {"orgs": 2}
    rows = by_key(canonical(folder)["organizations"])
    assert rows["s1"]["name"] == "North\nHigh, Annex"
    assert rows["s1"]["school_number"] == "101"
    assert rows["s2"]["name"] == "South High"


def test_crlf_and_byte_order_mark_are_handled(tmp_path: Path) -> None:
    bom = "\ufeff"
    manifest = bom + (
        "propertyName,value\r\nmanifest.version,1.0\r\noneroster.version,1.1\r\n"
        "file.users,bulk\r\nfile.orgs,bulk\r\n"
    )
    users = bom + (
        "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,givenName,"
        'familyName,grades\r\nu1,,,TRUE,"s2,s1",student,ann,Ann,Lee,"10,09"\r\n'
        "u2,,,false,s1,teacher,bob,Bob,Ray,\r\n"
    )
    orgs = "sourcedId,name,type\r\ns1,North High,school\r\n"
    folder = write_csv_drop(tmp_path / "drop", {"users": users, "orgs": orgs}, manifest=manifest)

    assert read_manifest(str(folder))["file.users"] == "bulk"
    drop = read_drop(str(folder))
    assert drop.modes["users"] == "bulk"
    assert drop.modes["orgs"] == "bulk"
    assert drop.modes["classes"] == "absent"
    table = drop.tables["users"]
    assert table.column_names[0] == "sourcedId"
    assert table.column_names[-1] == "grades"
    assert table["sourcedId"].to_pylist() == ["u1", "u2"]
    assert table["grades"].to_pylist() == ["10,09", ""]
    assert drop.tables["orgs"]["type"].to_pylist() == ["school"]

    rows = by_key(canonical(folder)["users"])
    assert rows["u1"]["grades"] == "09,10"
    assert rows["u1"]["enabled"] == "true"
    assert rows["u2"]["enabled"] == "false"
    assert rows["u2"]["family_name"] == "Ray"


def test_crlf_and_byte_order_mark_in_a_zip(tmp_path: Path) -> None:
    manifest = "\ufeffpropertyName,value\r\nfile.orgs,bulk\r\n"
    orgs = "\ufeffsourcedId,name,type\r\ns1,North High,school\r\n"
    folder = write_csv_drop(tmp_path / "drop", {"orgs": orgs}, manifest=manifest)
    drop = read_drop(str(zip_folder(folder, tmp_path / "drop.zip")))
    assert drop.modes["orgs"] == "bulk"
    assert drop.tables["orgs"].column_names == ["sourcedId", "name", "type"]
    assert drop.tables["orgs"].to_pylist() == [
        {"sourcedId": "s1", "name": "North High", "type": "school"}
    ]


# --------------------------------------------------------------------------------------------
# Bulk and delta status
# --------------------------------------------------------------------------------------------


def test_bulk_blank_status_is_active_and_inactive_is_tobedeleted(tmp_path: Path) -> None:
    orgs = (
        "sourcedId,status,dateLastModified,name,type\n"
        "s1,,,North High,school\n"
        "s2,inactive,2026-09-01T00:00:00Z,South High,school\n"
        "s3,active,2026-09-01T00:00:00Z,East High,school\n"
    )
    rows = by_key(canonical(write_csv_drop(tmp_path / "drop", {"orgs": orgs}))["organizations"])
    assert {key: row["sis_status"] for key, row in rows.items()} == {
        "s1": "active",
        "s2": "tobedeleted",
        "s3": "active",
    }


def test_bulk_file_without_status_columns_is_active(tmp_path: Path) -> None:
    orgs = "sourcedId,name,type\ns1,North High,school\n"
    rows = by_key(canonical(write_csv_drop(tmp_path / "drop", {"orgs": orgs}))["organizations"])
    assert rows["s1"]["sis_status"] == "active"


def test_delta_tobedeleted_rows_keep_their_status(tmp_path: Path) -> None:
    users = (
        "sourcedId,status,dateLastModified,orgSourcedIds,role,username,givenName,familyName\n"
        "u1,active,2026-09-02T10:00:00Z,s1,student,ann,Ann,Lee\n"
        "u2,tobedeleted,2026-09-02T10:00:00Z,s1,student,bob,Bob,Ray\n"
        "u3,TOBEDELETED,2026-09-02T10:00:00Z,s1,student,cat,Cat,Moe\n"
    )
    folder = write_csv_drop(tmp_path / "drop", {"users": users}, {"users": "delta"})
    drop = read_drop(str(folder))
    assert drop.modes["users"] == "delta"
    rows = by_key(canonical(folder)["users"])
    assert {key: row["sis_status"] for key, row in rows.items()} == {
        "u1": "active",
        "u2": "tobedeleted",
        "u3": "tobedeleted",
    }


def test_delta_row_with_blank_status_fails_naming_file_column_and_key(tmp_path: Path) -> None:
    users = (
        "sourcedId,status,dateLastModified,orgSourcedIds,role,username,givenName,familyName\n"
        "u1,active,2026-09-02T10:00:00Z,s1,student,ann,Ann,Lee\n"
        "u2,,2026-09-02T10:00:00Z,s1,student,bob,Bob,Ray\n"
    )
    folder = write_csv_drop(tmp_path / "drop", {"users": users}, {"users": "delta"})
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    message = str(info.value)
    assert f"{folder}/users.csv" in message
    assert "'status'" in message
    assert "u2" in message
    assert "u1" not in message


def test_delta_file_without_status_column_fails(tmp_path: Path) -> None:
    users = (
        "sourcedId,dateLastModified,orgSourcedIds,role,username,givenName,familyName\n"
        "u1,2026-09-02T10:00:00Z,s1,student,ann,Ann,Lee\n"
    )
    folder = write_csv_drop(tmp_path / "drop", {"users": users}, {"users": "delta"})
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    message = str(info.value)
    assert f"{folder}/users.csv" in message
    assert "'status'" in message
    assert "'dateLastModified'" not in message.split("(")[0]


def test_same_file_without_status_column_is_fine_as_bulk(tmp_path: Path) -> None:
    users = "sourcedId,orgSourcedIds,role,username,givenName,familyName\nu1,s1,student,a,A,L\n"
    drop = read_drop(str(write_csv_drop(tmp_path / "drop", {"users": users})))
    assert drop.row_counts() == {"users": 1}


# --------------------------------------------------------------------------------------------
# Broken drops
# --------------------------------------------------------------------------------------------


def test_missing_required_column_names_file_and_column(tmp_path: Path) -> None:
    users = "sourcedId,orgSourcedIds,username,givenName,familyName\nu1,s1,ann,Ann,Lee\n"
    folder = write_csv_drop(tmp_path / "drop", {"users": users, "orgs": ORGS})
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    message = str(info.value)
    assert message.startswith(f"{folder}/users.csv:")
    assert "'role'" in message
    assert "'sourcedId'" not in message.split("(")[0]


def test_header_names_are_case_sensitive(tmp_path: Path) -> None:
    orgs = "sourcedid,name,type\ns1,North High,school\n"
    folder = write_csv_drop(tmp_path / "drop", {"orgs": orgs})
    with pytest.raises(DropError, match="'sourcedId'") as info:
        read_drop(str(folder))
    assert f"{folder}/orgs.csv" in str(info.value)


def test_manifest_listing_a_missing_file_fails(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"orgs": ORGS}, {"users": "bulk"})
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    message = str(info.value)
    assert "users.csv" in message
    assert "manifest" in message
    assert "file.users=bulk" in message


def test_unknown_mode_names_the_field(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"users": USERS}, {"users": "sometimes"})
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    message = str(info.value)
    assert f"{folder}/manifest.csv" in message
    assert "'file.users'" in message
    assert "'sometimes'" in message


def test_modes_are_case_and_space_tolerant(tmp_path: Path) -> None:
    manifest = "propertyName,value\nfile.orgs, BULK \nfile.users,Absent\n"
    folder = write_csv_drop(tmp_path / "drop", {"orgs": ORGS}, manifest=manifest)
    drop = read_drop(str(folder))
    assert drop.modes["orgs"] == "bulk"
    assert drop.modes["users"] == "absent"
    assert sorted(drop.tables) == ["orgs"]


def test_missing_manifest_fails(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"orgs": ORGS})
    (folder / "manifest.csv").unlink()
    with pytest.raises(DropError, match=r"manifest\.csv is missing") as info:
        read_drop(str(folder))
    assert str(folder) in str(info.value)


def test_manifest_with_wrong_header_fails(tmp_path: Path) -> None:
    folder = write_csv_drop(
        tmp_path / "drop", {"orgs": ORGS}, manifest="name,mode\nfile.orgs,bulk\n"
    )
    with pytest.raises(DropError, match="propertyName,value") as info:
        read_drop(str(folder))
    assert f"{folder}/manifest.csv" in str(info.value)


def test_absent_files_are_not_read_even_if_present(tmp_path: Path) -> None:
    broken_users = "this is,not\na roster,file,at all\n"
    folder = write_csv_drop(
        tmp_path / "drop",
        {"orgs": ORGS, "users": broken_users, "classes": ""},
        {"users": "absent", "classes": "absent"},
    )
    drop = read_drop(str(folder))
    assert sorted(drop.tables) == ["orgs"]
    assert drop.modes["users"] == "absent"
    assert drop.modes["classes"] == "absent"
    assert "users" not in canonical(folder)


def test_file_not_in_manifest_is_absent(tmp_path: Path) -> None:
    manifest = "propertyName,value\nfile.orgs,bulk\n"
    folder = write_csv_drop(tmp_path / "drop", {"orgs": ORGS, "users": USERS}, manifest=manifest)
    drop = read_drop(str(folder))
    assert drop.modes["users"] == "absent"
    assert sorted(drop.tables) == ["orgs"]


def test_empty_file_fails_clearly(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"orgs": ""})
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    message = str(info.value)
    assert f"{folder}/orgs.csv" in message
    assert "empty" in message


def test_file_with_only_a_byte_order_mark_fails_clearly(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"orgs": "\ufeff\r\n"})
    with pytest.raises(DropError, match="empty") as info:
        read_drop(str(folder))
    assert f"{folder}/orgs.csv" in str(info.value)


def test_empty_manifest_fails_clearly(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"orgs": ORGS}, manifest="")
    with pytest.raises(DropError, match="empty") as info:
        read_drop(str(folder))
    assert f"{folder}/manifest.csv" in str(info.value)


def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    orgs = "sourcedId,name,type\n"
    folder = write_csv_drop(tmp_path / "drop", {"orgs": orgs})
    assert read_drop(str(folder)).row_counts() == {"orgs": 0}
    frame = canonical(folder)["organizations"]
    assert len(frame) == 0
    assert list(frame.columns) == oneroster_csv.model.ORGANIZATIONS.columns


def test_header_only_file_without_final_newline_has_no_rows(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"orgs": "sourcedId,name,type", "users": USERS})
    drop = read_drop(str(folder))
    assert drop.row_counts() == {"orgs": 0, "users": 8}
    assert drop.tables["orgs"].column_names == ["sourcedId", "name", "type"]


def test_last_row_without_final_newline_is_read(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"orgs": "sourcedId,name,type\r\ns1,North,school"})
    assert read_drop(str(folder)).tables["orgs"]["type"].to_pylist() == ["school"]


def test_duplicate_column_fails_naming_file_and_column(tmp_path: Path) -> None:
    users = (
        "sourcedId,orgSourcedIds,role,username,givenName,familyName,role\n"
        "u1,s1,student,ann,Ann,Lee,teacher\n"
    )
    folder = write_csv_drop(tmp_path / "drop", {"users": users})
    with pytest.raises(DropError, match="'role'") as info:
        read_drop(str(folder))
    assert f"{folder}/users.csv" in str(info.value)
    assert "more than once" in str(info.value)


def test_blank_header_cells_are_ignored(tmp_path: Path) -> None:
    orgs = "sourcedId,name,type,,\ns1,North High,school,,\n"
    folder = write_csv_drop(tmp_path / "drop", {"orgs": orgs})
    table = read_drop(str(folder)).tables["orgs"]
    assert table.num_rows == 1
    assert table.column_names[:3] == ["sourcedId", "name", "type"]
    assert "nan" not in table.column_names
    assert by_key(canonical(folder)["organizations"])["s1"]["name"] == "North High"


def test_header_not_utf8_fails_naming_the_file(tmp_path: Path) -> None:
    orgs = "sourcedId,name,type,n\xe4me\ns1,North,school,x\n".encode("latin-1")
    folder = write_csv_drop(tmp_path / "drop", {"orgs": orgs})  # type: ignore[dict-item]
    with pytest.raises(DropError, match="UTF-8") as info:
        read_drop(str(folder))
    assert f"{folder}/orgs.csv" in str(info.value)


def test_data_not_utf8_fails_naming_file_line_and_column_not_the_value(tmp_path: Path) -> None:
    orgs = "sourcedId,name,type\ns1,North,school\ns2,Jos\xe9 High,school\n".encode("latin-1")
    folder = write_csv_drop(tmp_path / "drop", {"orgs": orgs})  # type: ignore[dict-item]
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    assert str(info.value) == (
        f"{folder}/orgs.csv: line 3, column 'name': not UTF-8 text (Latin-1 or another "
        "encoding?); OneRoster CSV files are UTF-8"
    )


def test_utf16_file_fails_saying_so(tmp_path: Path) -> None:
    orgs = "sourcedId,name,type\ns1,North,school\n".encode("utf-16")
    folder = write_csv_drop(tmp_path / "drop", {"orgs": orgs})  # type: ignore[dict-item]
    with pytest.raises(DropError, match="the file is UTF-16 text; OneRoster CSV files are UTF-8"):
        read_drop(str(folder))


PERSON = "Zoë O'Brien,zobrien@example.org"


def test_ragged_row_fails_naming_file_and_line_never_the_row(tmp_path: Path) -> None:
    users = (
        "sourcedId,orgSourcedIds,role,username,givenName,familyName\n"
        "u1,s1,student,amy,Amy,Ames\n"
        f"u2,s1,student,zob,{PERSON},extra\n"
    )
    folder = write_csv_drop(tmp_path / "drop", {"users": users})
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    assert str(info.value) == (
        f"{folder}/users.csv: line 3: 7 values where the header row has 6 columns "
        "(an unquoted comma or a missing value?)"
    )


def test_unbalanced_quote_fails_naming_the_line_never_the_row(tmp_path: Path) -> None:
    users = (
        "sourcedId,orgSourcedIds,role,username,givenName,familyName\n"
        "u1,s1,student,amy,Amy,Ames\n"
        "u2,s1,student,zob,\"Zoë,O'Brien\n"
        "u3,s1,student,bo,Bo,Bell\n"
    )
    folder = write_csv_drop(tmp_path / "drop", {"users": users})
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    message = str(info.value)
    assert message.startswith(f"{folder}/users.csv: line 3: ")
    assert "never closed" in message
    assert "Zo" not in message and "Brien" not in message and "bo" not in message.split(": ", 1)[1]


def test_a_one_megabyte_value_is_read_for_validation_to_judge(tmp_path: Path) -> None:
    orgs = f"sourcedId,name,type\ns1,{'x' * 1_000_000},school\ns2,South,school\n"
    folder = write_csv_drop(tmp_path / "drop", {"orgs": orgs})
    assert read_drop(str(folder)).row_counts() == {"orgs": 2}


def test_manifest_supplying_no_file_is_refused(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {})
    with pytest.raises(DropError) as info:
        read_drop(str(folder))
    assert str(info.value).startswith(f"{folder}/manifest.csv: supplies no roster file")


# --------------------------------------------------------------------------------------------
# Zip entries and size limits
# --------------------------------------------------------------------------------------------

ONE_ORG = "sourcedId,name,type\ns1,North,school\n"
MANIFEST = "propertyName,value\nfile.orgs,bulk\n"


def _zip(path: Path, entries: list[tuple[str, str | bytes]]) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: that is the attack
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, text in entries:
                archive.writestr(name, text)
    return path


@pytest.mark.parametrize(
    "evil", ["zzz/../evil/orgs.csv", "../orgs.csv", "/etc/orgs.csv", "a\\..\\orgs.csv"]
)
def test_zip_entry_climbing_out_is_refused_by_name(tmp_path: Path, evil: str) -> None:
    archive = _zip(
        tmp_path / "drop.zip", [("manifest.csv", MANIFEST), ("orgs.csv", ONE_ORG), (evil, ONE_ORG)]
    )
    with pytest.raises(DropError) as info:
        read_drop(str(archive))
    assert str(info.value) == (
        f"{archive}: zip entry {evil!r} climbs out of the drop's folder; the drop is refused"
    )


def test_zip_entry_named_twice_is_refused(tmp_path: Path) -> None:
    other = ONE_ORG.replace("N", "S")
    entries = [("manifest.csv", MANIFEST), ("orgs.csv", ONE_ORG), ("orgs.csv", other)]
    archive = _zip(tmp_path / "drop.zip", entries)
    with pytest.raises(DropError, match=r"zip holds 'orgs\.csv' more than once"):
        read_drop(str(archive))


def test_zip_files_in_other_folders_do_not_count(tmp_path: Path) -> None:
    other = "sourcedId,name,type\nevil,Evil,school\n"
    archive = _zip(
        tmp_path / "drop.zip",
        [("manifest.csv", MANIFEST), ("orgs.csv", ONE_ORG), ("old/orgs.csv", other)],
    )
    assert read_drop(str(archive)).tables["orgs"]["sourcedId"].to_pylist() == ["s1"]


def test_zip_with_the_drop_in_one_folder_reads_that_folder(tmp_path: Path) -> None:
    entries = [("2026-09-01/manifest.csv", MANIFEST), ("2026-09-01/orgs.csv", ONE_ORG)]
    archive = _zip(tmp_path / "drop.zip", entries)
    assert read_drop(str(archive)).row_counts() == {"orgs": 1}


def test_zip_with_two_manifest_folders_is_refused(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "drop.zip",
        [("a/manifest.csv", MANIFEST), ("a/orgs.csv", ONE_ORG), ("b/manifest.csv", MANIFEST)],
    )
    with pytest.raises(DropError, match=r"manifest\.csv appears in 2 folders"):
        read_drop(str(archive))


def test_file_past_the_size_limit_is_refused(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"orgs": ONE_ORG + "s2,South,school\n" * 1000})
    limits = oneroster_csv.DropLimits(max_file_bytes=4096)
    with pytest.raises(DropError) as info:
        read_drop(str(folder), limits)
    assert str(info.value).startswith(f"{folder}/orgs.csv: 0.0 MiB, past the limit of")
    assert "(source.max_file_mb); refused" in str(info.value)


def test_zip_bomb_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    bomb = ONE_ORG + ("s2,South,school\n" * 200_000)  # ~3 MB of one line repeated
    archive = _zip(tmp_path / "drop.zip", [("manifest.csv", MANIFEST), ("orgs.csv", bomb)])
    with pytest.raises(DropError, match="refused as a zip bomb") as info:
        read_drop(str(archive), oneroster_csv.DropLimits(max_ratio=50))
    assert str(info.value).startswith(f"{archive}/orgs.csv: unpacks to ")


def test_portal_limits_reach_the_reader(tmp_path: Path) -> None:
    from include.sis_sync.config import Portal

    source = {"provider": "oneroster_csv", "path": "x", "max_file_mb": 1, "max_zip_ratio": 20}
    portal = Portal.model_validate(portal_dict(source=source))
    assert portal.source.limits() == oneroster_csv.DropLimits(1024**2, 20.0)


# --------------------------------------------------------------------------------------------
# entity_modes
# --------------------------------------------------------------------------------------------

BULK_ALL = {stem: "bulk" for stem in oneroster_csv.ROSTER_FILES}


def test_entity_modes_absent_files_map_to_absent_entities() -> None:
    modes = {**BULK_ALL, "courses": "absent", "orgs": "delta"}
    assert entity_modes(modes, Entities()) == {
        "organizations": "delta",
        "terms": "bulk",
        "courses": "absent",
        "users": "bulk",
        "user_organizations": "bulk",
        "sections": "bulk",
        "enrollments": "bulk",
    }


def test_entity_modes_user_organizations_follow_users() -> None:
    assert entity_modes({**BULK_ALL, "users": "delta"}, Entities())["user_organizations"] == "delta"
    absent = entity_modes({**BULK_ALL, "users": "absent"}, Entities())
    assert absent["users"] == "absent"
    assert absent["user_organizations"] == "absent"


def test_entity_modes_missing_stems_are_absent() -> None:
    modes = entity_modes({"orgs": "bulk"}, Entities())
    assert modes["organizations"] == "bulk"
    assert {name for name, mode in modes.items() if mode == "absent"} == {
        "terms",
        "courses",
        "users",
        "user_organizations",
        "sections",
        "enrollments",
    }


def test_entity_modes_sections_off_makes_sections_and_enrollments_absent() -> None:
    modes = entity_modes(BULK_ALL, Entities(sections=False))
    assert modes["sections"] == "absent"
    assert modes["enrollments"] == "absent"
    assert modes["users"] == "bulk"
    assert modes["courses"] == "bulk"


def test_entity_modes_enrollments_off_keeps_sections() -> None:
    modes = entity_modes(BULK_ALL, Entities(enrollments=False))
    assert modes["sections"] == "bulk"
    assert modes["enrollments"] == "absent"


# --------------------------------------------------------------------------------------------
# to_canonical
# --------------------------------------------------------------------------------------------


def test_roles_map_and_contacts_are_left_out_by_default(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"users": USERS})
    rows = by_key(canonical(folder)["users"])
    assert {key: row["role"] for key, row in rows.items()} == {
        "u1": "student",
        "u2": "teacher",
        "u3": "administrator",
        "u4": "aide",
        "u5": "staff",
    }
    assert rows["u5"]["roles"] == "staff"


def test_contacts_are_kept_when_enabled(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"users": USERS})
    rows = by_key(canonical(folder, Entities(contacts=True))["users"])
    assert len(rows) == 8
    assert {rows[key]["role"] for key in ("u6", "u7", "u8")} == {"contact"}
    assert rows["u6"]["roles"] == "contact"


def test_role_switches_leave_out_roles(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"users": USERS})
    rows = by_key(canonical(folder, Entities(teachers=False, staff=False))["users"])
    assert sorted(rows) == ["u1", "u3"]


def test_unknown_and_blank_roles_are_kept_for_validation(tmp_path: Path) -> None:
    """A role outside the vocabulary is bad data, not a role the portal leaves out: dropping
    the row here would hide it from validation and, in a bulk file, archive the user."""
    users = (
        "sourcedId,orgSourcedIds,role,username,givenName,familyName\n"
        "u1,s1,student,ann,Ann,Lee\n"
        "u2,s1,superintendent,bob,Bob,Ray\n"
        "u3,s1,,cat,Cat,Moe\n"
        "u4,s1,guardian,dan,Dan,Lee\n"
    )
    rows = by_key(canonical(write_csv_drop(tmp_path / "drop", {"users": users}))["users"])
    assert sorted(rows) == ["u1", "u2", "u3"]
    assert rows["u2"]["role"] == "superintendent"
    assert rows["u3"]["role"] is None


def test_role_values_are_case_insensitive(tmp_path: Path) -> None:
    users = (
        "sourcedId,orgSourcedIds,role,username,givenName,familyName\n"
        "u1,s1,Student,ann,Ann,Lee\n"
        "u2,s1, Guardian ,bob,Bob,Lee\n"
    )
    folder = write_csv_drop(tmp_path / "drop", {"users": users})
    rows = by_key(canonical(folder, Entities(contacts=True))["users"])
    assert rows["u1"]["role"] == "student"
    assert rows["u2"]["role"] == "contact"


def test_user_fields_are_mapped(tmp_path: Path) -> None:
    ann = by_key(canonical(write_csv_drop(tmp_path / "drop", {"users": USERS}))["users"])["u1"]
    assert ann == {
        "sis_key": "u1",
        "sis_status": "active",
        "role": "student",
        "roles": "student",
        "given_name": "Ann",
        "family_name": "Lee",
        "middle_name": "Marie",
        "email": "ann@x.org",
        "username": "ann",
        "sis_id": "S001",
        "student_number": None,
        "teacher_number": None,
        "grades": "09,10",
        "organizations": "s1,s2",
        "enabled": "true",
    }


def test_enabled_user_flags_normalise(tmp_path: Path) -> None:
    rows = by_key(canonical(write_csv_drop(tmp_path / "drop", {"users": USERS}))["users"])
    assert {key: row["enabled"] for key, row in rows.items()} == {
        "u1": "true",  # TRUE
        "u2": "true",  # true
        "u3": "true",  # 1
        "u4": "false",  # FALSE
        "u5": "false",  # 0
    }


def test_org_types_map_local_to_district(tmp_path: Path) -> None:
    rows = by_key(canonical(write_csv_drop(tmp_path / "drop", {"orgs": ORGS}))["organizations"])
    assert {key: row["kind"] for key, row in rows.items()} == {
        "d1": "district",
        "s1": "school",
        "s2": "school",
    }
    assert rows["s1"]["parent_key"] == "d1"
    assert rows["s1"]["school_number"] == "101"
    assert rows["d1"]["parent_key"] is None


def test_academic_sessions_map_kinds_and_slice_dates(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"academicSessions": SESSIONS})
    rows = by_key(canonical(folder)["terms"])
    assert {key: row["kind"] for key, row in rows.items()} == {
        "y1": "school_year",
        "t1": "semester",
        "g1": "grading_period",
    }
    assert rows["t1"]["start_date"] == "2026-08-15"
    assert rows["t1"]["end_date"] == "2026-12-20"
    assert rows["y1"]["end_date"] == "2027-06-30"
    assert rows["t1"]["parent_key"] == "y1"
    assert rows["t1"]["school_year"] == "2027"
    assert rows["t1"]["name"] == "Fall"


def test_enrollments_normalise_primary_role_and_dates(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "drop", {"enrollments": ENROLLMENTS})
    rows = by_key(canonical(folder)["enrollments"])
    assert {key: row["primary"] for key, row in rows.items()} == {
        "e1": None,
        "e2": "true",
        "e3": "false",
    }
    assert rows["e1"] == {
        "sis_key": "e1",
        "sis_status": "active",
        "section_key": "k1",
        "user_key": "u1",
        "organization_key": "s1",
        "role": "student",
        "primary": None,
        "begin_date": "2026-08-15",
        "end_date": "2026-12-20",
    }


def test_sections_and_courses_are_mapped(tmp_path: Path) -> None:
    frames = canonical(write_csv_drop(tmp_path / "drop", {"classes": CLASSES, "courses": COURSES}))
    assert by_key(frames["sections"])["k1"] == {
        "sis_key": "k1",
        "sis_status": "active",
        "name": "Algebra P1",
        "organization_key": "s1",
        "course_key": "c1",
        "term_keys": "t1,t2",
        "period": "1,3",
        "subject": "math",
        "grades": "09",
        "code": "ALG1-1",
        "kind": "scheduled",
    }
    assert by_key(frames["courses"])["c1"] == {
        "sis_key": "c1",
        "sis_status": "active",
        "title": "Algebra",
        "code": "ALG1",
        "organization_key": "s1",
        "school_year_key": "y1",
        "grades": "09,10",
        "subjects": "math",
    }


def test_to_canonical_only_maps_supplied_files(tmp_path: Path) -> None:
    frames = canonical(write_csv_drop(tmp_path / "drop", {"orgs": ORGS, "users": USERS}))
    assert sorted(frames) == ["organizations", "users"]


# --------------------------------------------------------------------------------------------
# Finding a drop
# --------------------------------------------------------------------------------------------


def _dated_folders(root: Path) -> None:
    for name in ("2026-09-01", "2026-09-03", "2026-09-02x", "latest", "2026-02-30", "2026-9-4"):
        (root / name).mkdir(parents=True)
    (root / "notes.txt").write_text("not a drop")


def test_list_drops_finds_dated_folders_only(tmp_path: Path) -> None:
    root = tmp_path / "portal"
    _dated_folders(root)
    assert list_drops(f"{root}/{{date}}") == {
        date(2026, 9, 1): f"{root}/2026-09-01",
        date(2026, 9, 3): f"{root}/2026-09-03",
    }


def test_list_drops_finds_dated_zips(tmp_path: Path) -> None:
    root = tmp_path / "portal"
    root.mkdir()
    for name in ("roster_2026-09-01.zip", "roster_2026-09-05.zip", "roster_latest.zip", "x.zip"):
        (root / name).write_bytes(b"")
    (root / "roster_2026-09-07.csv").write_text("")
    assert list_drops(f"{root}/roster_{{date}}.zip") == {
        date(2026, 9, 1): f"{root}/roster_2026-09-01.zip",
        date(2026, 9, 5): f"{root}/roster_2026-09-05.zip",
    }


def test_list_drops_with_glob_characters_in_the_path(tmp_path: Path) -> None:
    root = tmp_path / "drops [a]*"
    (root / "2026-09-01").mkdir(parents=True)
    (tmp_path / "drops a" / "2026-09-02").mkdir(parents=True)
    assert list_drops(f"{root}/{{date}}") == {date(2026, 9, 1): f"{root}/2026-09-01"}


def test_locate_drop_picks_newest_without_a_date(tmp_path: Path) -> None:
    root = tmp_path / "portal"
    _dated_folders(root)
    assert locate_drop(f"{root}/{{date}}", None) == (f"{root}/2026-09-03", date(2026, 9, 3))


def test_locate_drop_picks_the_named_date(tmp_path: Path) -> None:
    root = tmp_path / "portal"
    _dated_folders(root)
    assert locate_drop(f"{root}/{{date}}", date(2026, 9, 1)) == (
        f"{root}/2026-09-01",
        date(2026, 9, 1),
    )


def test_locate_drop_picks_the_named_zip(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "src", {"orgs": ORGS})
    root = tmp_path / "portal"
    root.mkdir()
    zip_folder(folder, root / "2026-09-01.zip")
    zip_folder(folder, root / "2026-09-02.zip")
    path, when = locate_drop(f"{root}/{{date}}.zip", date(2026, 9, 1))
    assert (path, when) == (f"{root}/2026-09-01.zip", date(2026, 9, 1))
    assert read_drop(path).row_counts() == {"orgs": 3}


def test_locate_drop_missing_date_names_the_expected_path(tmp_path: Path) -> None:
    root = tmp_path / "portal"
    _dated_folders(root)
    with pytest.raises(DropError) as info:
        locate_drop(f"{root}/{{date}}", date(2026, 9, 2))
    assert f"{root}/2026-09-02" in str(info.value)
    assert "2026-09-02x" not in str(info.value)


def test_locate_drop_without_any_drop_fails(tmp_path: Path) -> None:
    (tmp_path / "portal").mkdir()
    template = f"{tmp_path}/portal/{{date}}"
    with pytest.raises(DropError, match="no drop found") as info:
        locate_drop(template, None)
    assert template in str(info.value)


def test_locate_drop_undated_path(tmp_path: Path) -> None:
    folder = write_csv_drop(tmp_path / "current", {"orgs": ORGS})
    assert locate_drop(str(folder), None) == (str(folder), None)
    assert locate_drop(str(folder), date(2026, 9, 1)) == (str(folder), None)


def test_locate_drop_undated_path_that_does_not_exist_fails(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.zip")
    with pytest.raises(DropError, match="does not exist") as info:
        locate_drop(missing, None)
    assert missing in str(info.value)
