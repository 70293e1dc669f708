"""``sis-sync check``: one line per portal file, exit status 1 when any file is broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.sis_sync.cli import main
from tests.helpers import write_portal


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    status = main(["check", *args])
    return status, capsys.readouterr().out.splitlines()


def test_good_files_print_ok_and_return_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alpha = write_portal(tmp_path, id="alpha")
    beta = write_portal(tmp_path, id="beta", schedule="0 6 * * *")

    status, lines = run_check(capsys, str(alpha), str(beta))

    assert status == 0
    assert lines == [
        f"ok      {alpha}: portal alpha -> DAG sis_sync__alpha",
        f"ok      {beta}: portal beta -> DAG sis_sync__beta",
    ]


def test_a_broken_file_prints_broken_and_returns_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_portal(tmp_path, id="alpha")
    bad = write_portal(tmp_path, id="beta", guards={"archive_percent": 150})

    status, lines = run_check(capsys, str(bad), str(good))

    assert status == 1
    assert len(lines) == 2
    assert lines[0].startswith(f"BROKEN  {bad}: ")
    assert "field 'guards.archive_percent'" in lines[0]
    assert lines[1] == f"ok      {good}: portal alpha -> DAG sis_sync__alpha"


def test_a_bad_schedule_is_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_portal(tmp_path, id="alpha", schedule="every morning")
    status, lines = run_check(capsys, str(bad))
    assert status == 1
    assert lines[0].startswith(f"BROKEN  {bad}: field 'schedule'")


def test_every_broken_file_gets_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong_zone = write_portal(tmp_path, id="alpha", timezone="Nowhere/Town")
    not_yaml = tmp_path / "beta.yaml"
    not_yaml.write_text("id: beta\nname: [unclosed\n")
    status, lines = run_check(capsys, str(wrong_zone), str(not_yaml))
    assert status == 1
    assert lines[0].startswith(f"BROKEN  {wrong_zone}: field 'timezone'")
    assert lines[1].startswith(f"BROKEN  {not_yaml}: not valid YAML")
    assert len(lines) == 2


def test_a_missing_file_is_broken_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "alpha.yaml"
    status, lines = run_check(capsys, str(missing))
    assert status == 1
    assert lines == [lines[0]]
    assert lines[0].startswith(f"BROKEN  {missing}: ")


def test_without_files_checks_the_portals_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIS_SYNC_PORTALS_DIR", str(tmp_path))
    alpha = write_portal(tmp_path, id="alpha")
    beta = write_portal(tmp_path, id="beta", source={"provider": "powerschool"})
    (tmp_path / "README.txt").write_text("not a portal")

    status, lines = run_check(capsys)

    assert status == 1
    assert lines == [
        f"ok      {alpha}: portal alpha -> DAG sis_sync__alpha",
        lines[1],
    ]
    assert lines[1].startswith(f"BROKEN  {beta}: field 'source.provider'")


def test_without_files_all_good_returns_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIS_SYNC_PORTALS_DIR", str(tmp_path))
    write_portal(tmp_path, id="alpha")
    status, lines = run_check(capsys)
    assert status == 0
    assert lines == [f"ok      {tmp_path / 'alpha.yaml'}: portal alpha -> DAG sis_sync__alpha"]


def test_an_empty_portals_folder_returns_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIS_SYNC_PORTALS_DIR", str(tmp_path))
    status, lines = run_check(capsys)
    assert status == 1
    assert lines == [f"no portal files in {tmp_path}"]
