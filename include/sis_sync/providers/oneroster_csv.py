"""OneRoster 1.1 CSV drops: find the drop, read it, and map it to the canonical frames.

A drop is a folder or a zip holding ``manifest.csv`` and one CSV per entity. The manifest says,
per file, ``bulk`` (the complete set), ``delta`` (changed rows only, ``tobedeleted`` marks a
delete) or ``absent`` (not supplied: that entity is left alone). Columns are matched by name,
since vendors reorder them; extension columns (``metadata.*``) are ignored.
"""

from __future__ import annotations

import csv
import glob
import io
import posixpath
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import IO, TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from include.sis_sync import model, storage
from include.sis_sync.providers.base import Completeness

if TYPE_CHECKING:
    from include.sis_sync.config import Entities

MODES = tuple(str(m) for m in Completeness)

# OneRoster file stem -> the columns a file must have to be usable.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "orgs": ("sourcedId", "name", "type"),
    "academicSessions": ("sourcedId", "title", "type", "startDate", "endDate"),
    "courses": ("sourcedId", "title", "orgSourcedId"),
    "classes": ("sourcedId", "title", "courseSourcedId", "schoolSourcedId", "termSourcedIds"),
    "users": ("sourcedId", "orgSourcedIds", "role", "username", "givenName", "familyName"),
    "enrollments": ("sourcedId", "classSourcedId", "schoolSourcedId", "userSourcedId", "role"),
}
DELTA_COLUMNS = ("status", "dateLastModified")
ROSTER_FILES = tuple(REQUIRED_COLUMNS)


class DropError(ValueError):
    """A drop that cannot be read; the message names the drop, the file and the column."""


@dataclass
class RawDrop:
    """The roster files of one drop, as read: all values text, blanks as ``""``."""

    path: str
    modes: dict[str, str]
    tables: dict[str, pa.Table] = field(default_factory=dict)

    def row_counts(self) -> dict[str, int]:
        return {name: table.num_rows for name, table in self.tables.items()}


# --------------------------------------------------------------------------------------------
# Finding a drop
# --------------------------------------------------------------------------------------------


def list_drops(template: str, conn_id: str | None = None) -> dict[date, str]:
    """Every dated drop a ``{date}`` path template matches, by date."""
    regex = re.compile(re.escape(template).replace(re.escape("{date}"), r"(\d{4}-\d{2}-\d{2})"))
    drops: dict[date, str] = {}
    for candidate in _candidates(template, conn_id):
        match = regex.fullmatch(candidate)
        if match:
            try:
                drops[date.fromisoformat(match.group(1))] = candidate
            except ValueError:
                continue
    return dict(sorted(drops.items()))


def _candidates(template: str, conn_id: str | None) -> list[str]:
    """The paths a template's ``{date}`` could stand for, spelled as the template spells them."""
    if not storage.is_remote(template):
        return glob.glob(glob.escape(template).replace(glob.escape("{date}"), "*"))
    head, _, tail = template.partition("{date}")
    base, _, first = head.rpartition("/")
    pattern = (first + "{date}" + tail).replace("{date}", "*")
    root = storage.location(base, conn_id)
    if not root.exists():
        return []
    return [f"{base}/{found.path[len(root.path) + 1 :]}" for found in root.glob(pattern)]


def locate_drop(
    template: str, drop_date: date | None, conn_id: str | None = None
) -> tuple[str, date | None]:
    """The drop to read: the one of ``drop_date``, else the newest; undated paths as they are."""
    if "{date}" not in template:
        if not storage.location(template, conn_id).exists():
            raise DropError(f"{template}: the portal's drop path does not exist")
        return template, None
    drops = list_drops(template, conn_id)
    if drop_date is not None:
        if drop_date not in drops:
            raise DropError(
                f"{template.replace('{date}', drop_date.isoformat())}: no drop for {drop_date}"
            )
        return drops[drop_date], drop_date
    if not drops:
        raise DropError(f"{template}: no drop found")
    newest = max(drops)
    return drops[newest], newest


# --------------------------------------------------------------------------------------------
# Reading a drop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropLimits:
    """How large a drop may be. A file past ``max_file_bytes`` is refused before it is read,
    and so is a zip entry past ``RATIO_FLOOR`` that unpacks to more than ``max_ratio`` times
    its packed size (a zip bomb); a file is read whole, so memory stays within the limit."""

    max_file_bytes: int = 2 * 1024**3
    max_ratio: float = 100.0
    conn_id: str | None = None  # the Airflow connection of an object-store drop


# Small files compress as they like: the ratio is judged only past this unpacked size.
RATIO_FLOOR = 1024**2
# pyarrow parses in blocks holding whole rows: a row longer than one block is unreadable, so
# blocks are large enough for any row that validation then judges (a 1 MB value, say).
BLOCK_BYTES = 16 * 1024**2


class DropFiles:
    """The files of one drop (a folder or a zip) by name, opened within the limits.

    Only the drop's own top-level files count, or in a zip, those of the one folder that
    holds ``manifest.csv``; a zip entry whose name climbs out (``..``, an absolute path) or
    names a file twice is refused by name, never matched by its base name.
    """

    def __init__(self, path: str, limits: DropLimits) -> None:
        self.path, self.limits = path, limits
        self.folder = storage.location(path, limits.conn_id)
        self._archive: zipfile.ZipFile | None = None
        self._stream: IO[bytes] | None = None
        if self.folder.is_file():
            self._stream = self.folder.open("rb")
            if zipfile.is_zipfile(self._stream):
                self._archive = zipfile.ZipFile(self._stream)
                self._members: dict[str, zipfile.ZipInfo] = _zip_members(self._archive, path)
                self.names = set(self._members)
                return
            self._stream.close()
        elif self.folder.is_dir():
            self.names = {p.name for p in self.folder.iterdir() if p.is_file()}
            return
        raise DropError(f"{path}: a drop is a folder or a .zip file, and this is neither")

    def __enter__(self) -> DropFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._archive is not None:
            self._archive.close()
        if self._stream is not None:
            self._stream.close()

    def read(self, name: str) -> bytes:
        """The file's bytes, refused by name when past the drop's limits."""
        where = f"{self.path}/{name}"
        limit = self.limits.max_file_bytes
        if self._archive is None:
            file = self.folder / name
            _check_size(where, file.stat().st_size, limit)
            return file.read_bytes()
        info = self._members[name]
        _check_size(where, info.file_size, limit)
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > self.limits.max_ratio:
            raise DropError(
                f"{where}: unpacks to {ratio:.0f} times its packed size, past the limit of "
                f"{self.limits.max_ratio:g} (source.max_zip_ratio); refused as a zip bomb"
            )
        with self._archive.open(info) as stream:
            data = stream.read(limit + 1)
        _check_size(where, len(data), limit)
        return data


def _check_size(where: str, size: int, limit: int) -> None:
    if size > limit:
        raise DropError(
            f"{where}: {size / 1024**2:.1f} MiB, past the limit of {limit / 1024**2:g} MiB "
            "(source.max_file_mb); refused"
        )


def _zip_members(archive: zipfile.ZipFile, path: str) -> dict[str, zipfile.ZipInfo]:
    """The zip's files of the drop's folder (its top level, or the one folder holding the
    manifest), by name; any entry that climbs out of its folder fails the whole drop."""
    files = [info for info in archive.infolist() if not info.is_dir()]
    for info in files:
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
            raise DropError(
                f"{path}: zip entry {info.filename!r} climbs out of the drop's folder; "
                "the drop is refused"
            )
    manifests = sorted(
        posixpath.dirname(posixpath.normpath(i.filename))
        for i in files
        if posixpath.basename(i.filename) == "manifest.csv"
    )
    root = "" if "" in manifests or not manifests else manifests[0]
    if root and len(manifests) > 1:
        raise DropError(
            f"{path}: manifest.csv appears in {len(manifests)} folders of the zip "
            f"({', '.join(repr(m) for m in manifests)}); a drop holds one"
        )
    members: dict[str, zipfile.ZipInfo] = {}
    for info in files:
        normal = posixpath.normpath(info.filename)
        if posixpath.dirname(normal) != root:
            continue
        name = posixpath.basename(normal)
        if name in members:
            raise DropError(f"{path}: zip holds {normal!r} more than once; the drop is refused")
        members[name] = info
    return members


def _header(data: bytes, where: str) -> list[str]:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DropError(f"{where}: the file is UTF-16 text; OneRoster CSV files are UTF-8")
    try:
        line = data.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DropError(
            f"{where}: the header row is not UTF-8 text (byte {exc.start} cannot be decoded)"
        ) from None
    if not line:
        raise DropError(f"{where}: the file is empty (no header row)")
    # The csv module, not pandas: pandas would turn a blank name (a trailing comma) into "nan".
    return next(csv.reader([line]))


def _columns(header: list[str], where: str) -> list[str]:
    """Clean column names; a blank one (a trailing comma) gets a placeholder name."""
    columns = [c.strip() or f"unnamed.{i}" for i, c in enumerate(header, start=1)]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DropError(
            f"{where}: column(s) {', '.join(repr(c) for c in repeated)} appear more than once "
            "in the header row; columns are matched by name, so each must be unique"
        )
    return columns


def _read_table(files: DropFiles, name: str, where: str) -> pa.Table:
    """Read one CSV with every column as text; tolerate a byte-order mark and CRLF."""
    data = files.read(name)
    columns = _columns(_header(data, where), where)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.endswith((b"\n", b"\r")):
        # A header-only file without a final newline is a file with no rows; pyarrow would
        # refuse to skip its header row.
        data += b"\n"
    try:
        return pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(
                column_names=columns, skip_rows=1, block_size=BLOCK_BYTES
            ),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid:
        # pyarrow's message quotes the broken row: a student's name and email. Say where
        # instead, found again with the csv module.
        raise DropError(_where_broken(data, columns, where)) from None


def _where_broken(data: bytes, columns: list[str], where: str) -> str:
    """The line (and column) where a CSV that pyarrow refused first breaks; never a value."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        before = data[line_start : exc.start].decode("utf-8", errors="replace")
        column = columns[min(len(next(csv.reader([before]), [""])), len(columns)) - 1]
        return (
            f"{where}: line {line}, column {column!r}: not UTF-8 text (Latin-1 or another "
            "encoding?); OneRoster CSV files are UTF-8"
        )
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for row in reader:
            if reader.line_num > 1 and row and len(row) != len(columns):
                return (
                    f"{where}: line {start}: {len(row)} values where the header row has "
                    f"{len(columns)} columns (an unquoted comma or a missing value?)"
                )
            start = reader.line_num + 1
    except csv.Error as exc:
        return f"{where}: line {start}: {exc} (a quote opened in this record is never closed?)"
    return f"{where}: not a readable CSV file (its rows could not be parsed)"


def read_manifest(path: str, limits: DropLimits | None = None) -> dict[str, str]:
    """``manifest.csv`` as a dict of ``propertyName -> value``."""
    with DropFiles(path, limits or DropLimits()) as files:
        if "manifest.csv" not in files.names:
            raise DropError(f"{path}: manifest.csv is missing from the drop")
        table = _read_table(files, "manifest.csv", f"{path}/manifest.csv")
    if table.column_names[:2] != ["propertyName", "value"]:
        raise DropError(
            f"{path}/manifest.csv: the header must be 'propertyName,value', "
            f"found {','.join(table.column_names)!r}"
        )
    return dict(zip(table["propertyName"].to_pylist(), table["value"].to_pylist(), strict=True))


def file_modes(manifest: dict[str, str], path: str) -> dict[str, str]:
    """The mode of each roster file; a file the manifest does not list is absent."""
    modes: dict[str, str] = {}
    for stem in ROSTER_FILES:
        mode = (manifest.get(f"file.{stem}") or "absent").strip().lower()
        if mode not in MODES:
            raise DropError(
                f"{path}/manifest.csv: field 'file.{stem}' is {mode!r}; "
                f"expected one of {', '.join(MODES)}"
            )
        modes[stem] = mode
    return modes


def read_drop(path: str, limits: DropLimits | None = None) -> RawDrop:
    """Read every roster file the manifest supplies, checking that each is there and usable.

    Checks everything before returning, so a bad drop stages nothing. A drop whose manifest
    supplies no roster file is refused: committing it would change nothing yet count as the
    newest drop, and older drops would then be refused.
    """
    limits = limits or DropLimits()
    modes = file_modes(read_manifest(path, limits), path)
    if all(mode == "absent" for mode in modes.values()):
        raise DropError(
            f"{path}/manifest.csv: supplies no roster file (every file.* is absent or not "
            "listed); a drop must carry at least one entity"
        )
    drop = RawDrop(path=path, modes=modes)
    with DropFiles(path, limits) as files:
        for stem, mode in modes.items():
            if mode == "absent":
                continue
            filename = f"{stem}.csv"
            where = f"{path}/{filename}"
            if filename not in files.names:
                raise DropError(
                    f"{where}: manifest.csv lists file.{stem}={mode} but the drop has no {filename}"
                )
            table = _read_table(files, filename, where)
            required = REQUIRED_COLUMNS[stem] + (DELTA_COLUMNS if mode == "delta" else ())
            missing = [c for c in required if c not in table.column_names]
            if missing:
                raise DropError(
                    f"{where}: missing required column(s) {', '.join(repr(c) for c in missing)}"
                    f" (a {mode} {filename} needs {', '.join(required)})"
                )
            if mode == "delta":
                _check_delta_status(table, where)
            drop.tables[stem] = table
    return drop


def _check_delta_status(table: pa.Table, where: str) -> None:
    """A delta row must say whether it is active or to be deleted."""
    status = table["status"].to_pandas()
    blank = status.str.strip() == ""
    if blank.any():
        keys = table["sourcedId"].to_pandas()[blank].head(5).tolist()
        raise DropError(
            f"{where}: column 'status' is blank in {int(blank.sum())} delta row(s), "
            f"e.g. sourcedId {', '.join(keys)}; a delta row must be active or tobedeleted"
        )


# --------------------------------------------------------------------------------------------
# Mapping to the canonical model
# --------------------------------------------------------------------------------------------

ORG_KINDS = {"local": "district"}
TERM_KINDS = {"schoolYear": "school_year", "gradingPeriod": "grading_period"}
USER_ROLES = {
    "proctor": "staff",
    "guardian": "contact",
    "parent": "contact",
    "relative": "contact",
}


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return frame[name]
    return pd.Series(pd.NA, index=frame.index, dtype="string")


def _status(frame: pd.DataFrame) -> pd.Series:
    """``inactive`` is OneRoster 1.0's word for ``tobedeleted``; blank means active."""
    status = _col(frame, "status").astype("string").str.strip().str.lower()
    return status.replace({"inactive": model.TO_BE_DELETED, "": model.ACTIVE}).fillna(model.ACTIVE)


def _flag(values: pd.Series) -> pd.Series:
    lowered = values.astype("string").str.strip().str.lower()
    return lowered.map({"true": "true", "false": "false", "1": "true", "0": "false"}).astype(
        "string"
    )


def _organizations(f: pd.DataFrame) -> pd.DataFrame:
    kind = f["type"].astype("string").str.strip()
    return pd.DataFrame(
        {
            "sis_key": f["sourcedId"],
            "sis_status": _status(f),
            "name": f["name"],
            "kind": kind.replace(ORG_KINDS),
            "parent_key": _col(f, "parentSourcedId"),
            "school_number": _col(f, "identifier"),
        }
    )


def _terms(f: pd.DataFrame) -> pd.DataFrame:
    kind = f["type"].astype("string").str.strip()
    return pd.DataFrame(
        {
            "sis_key": f["sourcedId"],
            "sis_status": _status(f),
            "name": f["title"],
            "kind": kind.replace(TERM_KINDS),
            "start_date": f["startDate"].str.slice(0, 10),
            "end_date": f["endDate"].str.slice(0, 10),
            "parent_key": _col(f, "parentSourcedId"),
            "school_year": _col(f, "schoolYear"),
        }
    )


def _courses(f: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sis_key": f["sourcedId"],
            "sis_status": _status(f),
            "title": f["title"],
            "code": _col(f, "courseCode"),
            "organization_key": f["orgSourcedId"],
            "school_year_key": _col(f, "schoolYearSourcedId"),
            "grades": model.join_sorted(_col(f, "grades")),
            "subjects": model.join_sorted(_col(f, "subjects")),
        }
    )


def _users(f: pd.DataFrame) -> pd.DataFrame:
    role = f["role"].astype("string").str.strip().str.lower().replace(USER_ROLES)
    return pd.DataFrame(
        {
            "sis_key": f["sourcedId"],
            "sis_status": _status(f),
            "role": role,
            "roles": role,
            "given_name": f["givenName"],
            "family_name": f["familyName"],
            "middle_name": _col(f, "middleName"),
            "email": _col(f, "email"),
            "username": f["username"],
            "sis_id": _col(f, "identifier"),
            "student_number": pd.NA,
            "teacher_number": pd.NA,
            "grades": model.join_sorted(_col(f, "grades")),
            "organizations": model.join_sorted(f["orgSourcedIds"]),
            "enabled": _flag(_col(f, "enabledUser")),
        }
    )


def _sections(f: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sis_key": f["sourcedId"],
            "sis_status": _status(f),
            "name": f["title"],
            "organization_key": f["schoolSourcedId"],
            "course_key": f["courseSourcedId"],
            "term_keys": model.join_sorted(f["termSourcedIds"]),
            "period": model.join_sorted(_col(f, "periods")),
            "subject": model.join_sorted(_col(f, "subjects")),
            "grades": model.join_sorted(_col(f, "grades")),
            "code": _col(f, "classCode"),
            "kind": _col(f, "classType"),
        }
    )


def _enrollments(f: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sis_key": f["sourcedId"],
            "sis_status": _status(f),
            "section_key": f["classSourcedId"],
            "user_key": f["userSourcedId"],
            "organization_key": f["schoolSourcedId"],
            "role": f["role"].astype("string").str.strip().str.lower(),
            "primary": _flag(_col(f, "primary")),
            "begin_date": _col(f, "beginDate").str.slice(0, 10),
            "end_date": _col(f, "endDate").str.slice(0, 10),
        }
    )


MAPPERS = {
    "orgs": (model.ORGANIZATIONS, _organizations),
    "academicSessions": (model.TERMS, _terms),
    "courses": (model.COURSES, _courses),
    "users": (model.USERS, _users),
    "classes": (model.SECTIONS, _sections),
    "enrollments": (model.ENROLLMENTS, _enrollments),
}


def entity_modes(modes: Mapping[str, str], entities: Entities) -> dict[str, Completeness]:
    """How completely the feed carries each canonical entity (``bulk``, ``delta``, ``absent``).

    An entity the portal does not sync counts as absent: the diff leaves it alone.
    """
    out = {
        entity.name: Completeness(modes.get(stem, "absent"))
        for stem, (entity, _) in MAPPERS.items()
    }
    out[model.USER_ORGANIZATIONS.name] = out[model.USERS.name]
    if not entities.sections:
        out[model.SECTIONS.name] = Completeness.ABSENT
    if not entities.sections or not entities.enrollments:
        out[model.ENROLLMENTS.name] = Completeness.ABSENT
    return out


def to_canonical(tables: dict[str, pd.DataFrame], entities: Entities) -> dict[str, pd.DataFrame]:
    """Map the drop's files to canonical frames, keeping only the roles the portal syncs."""
    frames: dict[str, pd.DataFrame] = {}
    for stem, (entity, mapper) in MAPPERS.items():
        if stem in tables:
            frames[entity.name] = model.conform(mapper(tables[stem]), entity)
    if "users" in frames:
        users = frames["users"]
        # Leave out the roles the portal switches off, and only those: a blank or unknown role
        # is bad data that validation must see (dropped here, a bulk file would archive it).
        unwanted = [
            role for role, switch in model.ROLE_SWITCH.items() if not getattr(entities, switch)
        ]
        frames["users"] = users[~users["role"].isin(unwanted)].reset_index(drop=True)
    return frames
