"""Portal configuration: loading, validation errors that name the file and the field."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from include.sis_sync import config
from include.sis_sync.config import (
    Entities,
    Guards,
    Portal,
    PortalConfigError,
    Schools,
    get_portal,
    load_portal,
    load_portals,
    portals_dir,
)
from include.sis_sync.providers.oneroster_csv_provider import FileDropSource
from tests.helpers import portal_dict, write_portal


def broken(path: Path) -> str:
    """The message of the error loading ``path`` raises."""
    with pytest.raises(PortalConfigError) as info:
        load_portal(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# --------------------------------------------------------------------------------------------
# A valid file
# --------------------------------------------------------------------------------------------


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    portal = load_portal(write_portal(tmp_path))
    assert isinstance(portal, Portal)
    assert portal.id == "testportal"
    assert portal.name == "Test portal"
    assert portal.dag_id == "sis_sync__testportal"
    assert portal.provider == "oneroster_csv"
    assert portal.source == FileDropSource(provider="oneroster_csv", path="testportal/{date}")
    assert portal.auto_commit is True
    assert portal.timezone == "UTC"
    assert portal.schedule is None
    assert portal.scheduled_mode == "quick"
    assert portal.full_sync_every_days == 7
    assert portal.approval_timeout_hours == 24.0
    assert portal.approvers == []
    assert portal.retention_days == 30
    assert portal.owner == "sis-sync"
    assert portal.school_year is None
    assert portal.guards == Guards(
        archive_percent=10.0, archive_min_count=20, update_percent=75.0, update_min_count=20
    )
    assert portal.entities.contacts is False
    assert portal.entities == Entities(
        students=True,
        teachers=True,
        administrators=True,
        staff=True,
        contacts=False,
        sections=True,
        enrollments=True,
    )
    assert portal.schools.mode == "multi"
    assert portal.schools.mapping == "auto"
    assert portal.schools.synced is None


def test_full_file_loads_every_setting(tmp_path: Path) -> None:
    path = write_portal(
        tmp_path,
        id="north",
        timezone="America/New_York",
        schedule="0 6 * * 1-5",
        scheduled_mode="full",
        approval_timeout_hours=4,
        approvers=["ops@example.org"],
        schools={"mode": "multi", "mapping": {"s1": "north-high", "s2": "south-high"}},
        entities={"contacts": True, "sections": False},
        school_year={"start": "2026-08-15", "end": "2027-06-30"},
        guards={"archive_percent": 5, "archive_min_count": 3},
    )
    portal = load_portal(path)
    assert portal.id == "north"
    assert portal.timezone == "America/New_York"
    assert portal.schedule == "0 6 * * 1-5"
    assert portal.scheduled_mode == "full"
    assert portal.approval_timeout_hours == 4.0
    assert portal.approvers == ["ops@example.org"]
    assert portal.schools.synced == frozenset({"s1", "s2"})
    assert portal.entities.contacts is True
    assert portal.entities.sections is False
    assert portal.school_year is not None
    assert (portal.school_year.start, portal.school_year.end) == (
        date(2026, 8, 15),
        date(2027, 6, 30),
    )
    assert portal.guards.archive_percent == 5.0
    assert portal.guards.archive_min_count == 3
    assert portal.guards.update_percent == 75.0


@pytest.mark.parametrize("schedule", ["0 6 * * *", "@daily", "@quarterly", "*/15 6-18 * * 1-5"])
def test_cron_schedules_are_accepted(tmp_path: Path, schedule: str) -> None:
    assert load_portal(write_portal(tmp_path, schedule=schedule)).schedule == schedule


def test_empty_schedule_means_no_schedule(tmp_path: Path) -> None:
    assert not load_portal(write_portal(tmp_path, schedule="")).schedule


def test_yml_suffix_loads(tmp_path: Path) -> None:
    path = tmp_path / "testportal.yml"
    path.write_text(yaml.safe_dump(portal_dict()))
    assert load_portal(path).id == "testportal"


# --------------------------------------------------------------------------------------------
# Broken files: the message names the file and the field
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"schedule": "every morning at six"}, "field 'schedule'"),
        ({"schedule": "61 6 * * *"}, "field 'schedule'"),
        ({"schedule": 6}, "field 'schedule'"),
        ({"guards": {"archive_percent": 150}}, "field 'guards.archive_percent'"),
        ({"guards": {"update_min_count": -1}}, "field 'guards.update_min_count'"),
        ({"guards": {"archive_pct": 5}}, "field 'guards.archive_pct'"),
        ({"timezone": "Mars/Olympus_Mons"}, "field 'timezone'"),
        ({"timezone": ""}, "field 'timezone'"),
        ({"source": {"provider": "powerschool"}}, "field 'source.provider': unknown provider"),
        ({"source": {"provider": "clever"}}, "field 'source.connection_id'"),
        ({"provider": "clever"}, "'provider' belongs inside 'source'"),
        ({"colour": "blue"}, "field 'colour'"),
        (
            {"source": {"provider": "oneroster_csv", "path": "x/{date}", "glob": "*.zip"}},
            "field 'source.glob'",
        ),
        ({"source": {"provider": "oneroster_csv"}}, "field 'source.path'"),
        ({"source": {"path": "x/{date}"}}, "field 'source.provider': a provider is required"),
        ({"name": None}, "field 'name'"),
        ({"scheduled_mode": "sometimes"}, "field 'scheduled_mode'"),
        ({"approval_timeout_hours": 0}, "field 'approval_timeout_hours'"),
        ({"full_sync_every_days": 0}, "field 'full_sync_every_days'"),
        ({"retention_days": "forever"}, "field 'retention_days'"),
        ({"approvers": "ops@example.org"}, "field 'approvers'"),
        ({"entities": {"teachers": "maybe"}}, "field 'entities.teachers'"),
        ({"entities": {"parents": True}}, "field 'entities.parents'"),
        ({"schools": {"mode": "single"}}, "field 'schools'"),
        ({"schools": {"mode": "multi", "school": "s1"}}, "field 'schools'"),
        ({"schools": {"mode": "several"}}, "field 'schools.mode'"),
        ({"school_year": {"start": "2026-08-15", "end": "2026-01-01"}}, "field 'school_year'"),
        ({"school_year": {"start": "2026-08-15"}}, "field 'school_year.end'"),
    ],
)
def test_bad_field_names_file_and_field(
    tmp_path: Path, overrides: dict[str, Any], field: str
) -> None:
    message = broken(write_portal(tmp_path, **overrides))
    assert field in message


def test_missing_required_field_is_named(tmp_path: Path) -> None:
    data = portal_dict()
    del data["source"]["provider"]
    path = tmp_path / "testportal.yaml"
    path.write_text(yaml.safe_dump(data))
    assert "field 'source.provider'" in broken(path)


def test_several_problems_are_all_named(tmp_path: Path) -> None:
    message = broken(
        write_portal(tmp_path, timezone="Nowhere/Town", source={"provider": "powerschool"})
    )
    assert "field 'timezone'" in message
    assert "field 'source.provider'" in message


def test_id_must_match_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(portal_dict()))
    message = broken(path)
    assert "field 'id'" in message
    assert "'testportal'" in message
    assert "'other'" in message


def test_id_must_be_lower_case_identifier(tmp_path: Path) -> None:
    path = tmp_path / "Test-Portal.yaml"
    path.write_text(yaml.safe_dump(portal_dict(id="Test-Portal")))
    assert "field 'id'" in broken(path)


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "testportal.yaml"
    path.write_text("id: testportal\nname: [unclosed\n")
    assert "not valid YAML" in broken(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "testportal.yaml"
    path.write_text(text)
    assert "expected a mapping" in broken(path)


def test_not_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "testportal.yaml"
    path.write_bytes(b"id: testportal\nname: Caf\xe9\n")
    assert "UTF-8" in broken(path)


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot read" in broken(tmp_path / "testportal.yaml")


# --------------------------------------------------------------------------------------------
# A folder of portal files
# --------------------------------------------------------------------------------------------


def test_load_portals_returns_good_portals_beside_one_error_per_broken_file(
    tmp_path: Path,
) -> None:
    write_portal(tmp_path, id="alpha")
    write_portal(tmp_path, id="beta", timezone="Nowhere/Town")
    (tmp_path / "gamma.yml").write_text(yaml.safe_dump(portal_dict(id="gamma")))
    (tmp_path / "delta.yaml").write_text("- not\n- a mapping\n")
    (tmp_path / "epsilon.yaml").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "notes.txt").write_text("not a portal")

    portals, errors = load_portals(tmp_path)

    assert [p.id for p in portals] == ["alpha", "gamma"]
    assert len(errors) == 3
    messages = sorted(str(e) for e in errors)
    assert messages[0].startswith(f"{tmp_path / 'beta.yaml'}: field 'timezone'")
    assert messages[1].startswith(f"{tmp_path / 'delta.yaml'}: ")
    assert messages[2].startswith(f"{tmp_path / 'epsilon.yaml'}: ")
    assert all(isinstance(e, PortalConfigError) for e in errors)


def test_load_portals_same_id_twice_is_an_error(tmp_path: Path) -> None:
    write_portal(tmp_path, id="alpha")
    (tmp_path / "alpha.yml").write_text(yaml.safe_dump(portal_dict(id="alpha")))
    portals, errors = load_portals(tmp_path)
    assert [p.id for p in portals] == ["alpha"]
    assert len(errors) == 1
    message = str(errors[0])
    assert str(tmp_path / "alpha.yml") in message
    assert "field 'id'" in message
    assert str(tmp_path / "alpha.yaml") in message


def test_load_portals_of_an_empty_folder(tmp_path: Path) -> None:
    assert load_portals(tmp_path) == ([], [])


def test_load_portals_defaults_to_the_portals_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIS_SYNC_PORTALS_DIR", str(tmp_path))
    write_portal(tmp_path, id="alpha")
    assert portals_dir() == tmp_path
    portals, errors = load_portals()
    assert [p.id for p in portals] == ["alpha"]
    assert errors == []


def test_portals_dir_falls_back_to_the_project_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIS_SYNC_PORTALS_DIR", raising=False)
    assert portals_dir() == config.DEFAULT_PORTALS_DIR
    monkeypatch.setenv("SIS_SYNC_PORTALS_DIR", "")
    assert portals_dir() == config.DEFAULT_PORTALS_DIR


def test_get_portal(tmp_path: Path) -> None:
    write_portal(tmp_path, id="alpha", name="Alpha")
    assert get_portal("alpha", tmp_path).name == "Alpha"
    with pytest.raises(PortalConfigError, match="'beta'") as info:
        get_portal("beta", tmp_path)
    assert str(tmp_path) in str(info.value)


# --------------------------------------------------------------------------------------------
# Schools
# --------------------------------------------------------------------------------------------


def test_single_school_mode_requires_school() -> None:
    with pytest.raises(ValidationError, match="must name its 'school'"):
        Schools(mode="single")
    with pytest.raises(ValidationError, match="only for mode: single"):
        Schools(mode="multi", school="s1")


def test_schools_synced() -> None:
    assert Schools().synced is None
    assert Schools(mapping="auto").synced is None
    assert Schools(mapping={"s1": "north", "s2": "south"}).synced == frozenset({"s1", "s2"})
    assert Schools(mode="single", school="s9", slug="nine").synced == frozenset({"s9"})


def test_schools_slug_for() -> None:
    mapped = Schools(mapping={"s1": "north", "s2": "south"})
    assert mapped.slug_for("s1") == "north"
    assert mapped.slug_for("s2") == "south"
    assert mapped.slug_for("s3") is None
    assert Schools().slug_for("s1") is None
    single = Schools(mode="single", school="s9", slug="nine")
    assert single.slug_for("s9") == "nine"
    assert single.slug_for("s1") is None
    assert Schools(mode="single", school="s9").slug_for("s9") is None


# --------------------------------------------------------------------------------------------
# Drop source
# --------------------------------------------------------------------------------------------


def test_relative_source_path_uses_drops_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIS_SYNC_DROPS_DIR", str(tmp_path / "drops"))
    source = FileDropSource(provider="oneroster_csv", path="north/{date}.zip")
    assert source.dated is True
    assert source.resolve() == f"{tmp_path}/drops/north/{{date}}.zip"


def test_absolute_source_path_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIS_SYNC_DROPS_DIR", "/somewhere/else")
    source = FileDropSource(provider="oneroster_csv", path=f"{tmp_path}/current")
    assert source.dated is False
    assert source.resolve() == f"{tmp_path}/current"


def test_source_path_expands_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORTH_SFTP", str(tmp_path / "sftp"))
    monkeypatch.setenv("SIS_SYNC_DROPS_DIR", "/somewhere/else")
    source = FileDropSource(provider="oneroster_csv", path="$NORTH_SFTP/{date}")
    assert source.resolve() == f"{tmp_path}/sftp/{{date}}"


def test_source_path_without_drops_dir_uses_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIS_SYNC_DROPS_DIR", raising=False)
    expected = f"{config.DEFAULT_DROPS_DIR}/north/{{date}}"
    assert FileDropSource(provider="oneroster_csv", path="north/{date}").resolve() == expected
    monkeypatch.setenv("SIS_SYNC_DROPS_DIR", "")
    assert FileDropSource(provider="oneroster_csv", path="north/{date}").resolve() == expected


def test_portal_source_resolves_through_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIS_SYNC_DROPS_DIR", str(tmp_path / "drops"))
    portal = load_portal(write_portal(tmp_path))
    assert portal.source.resolve() == f"{tmp_path}/drops/testportal/{{date}}"


def test_clever_portal_leaves_admins_and_staff_off_unless_asked(tmp_path: Path) -> None:
    clever = {"provider": "clever", "connection_id": "clever_x", "district_id": "d1"}
    default = load_portal(write_portal(tmp_path, source=clever))
    assert (default.entities.administrators, default.entities.staff) == (False, False)
    assert default.entities.students and default.entities.teachers
    chosen = load_portal(write_portal(tmp_path, source=clever, entities={"staff": True}))
    assert (chosen.entities.administrators, chosen.entities.staff) == (False, True)
    csv = load_portal(write_portal(tmp_path))
    assert csv.entities.administrators and csv.entities.staff  # OneRoster keeps its defaults
