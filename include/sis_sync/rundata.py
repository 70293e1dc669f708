"""Run-scoped intermediate data: Parquet frames and small JSON files under SIS_SYNC_DATA_URL.

The root is a local folder or an object-store URL (``s3://bucket/prefix``, credentials from
the Airflow connection ``SIS_SYNC_DATA_CONN_ID``, default ``aws_default``): with object
storage, tasks of one run may run on different workers sharing no disk.

Each run gets its own folder ``<root>/<portal>/run_<id>_<data_key>/<stage>/`` (the key is
random, kept on the run's row: two LMS databases sharing the root never meet), and a stage
writes its folder afresh, so a retried task never reads an earlier try's files. Run data
holds students' personal data, so it is kept for the portal's ``retention_days`` and then
deleted (``purge_expired``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from include.sis_sync import storage
from include.sis_sync.config import PROJECT_ROOT
from include.sis_sync.storage import Location

DEFAULT_DATA_DIR = PROJECT_ROOT / ".data" / "runs"
DEFAULT_DATA_CONN_ID = "aws_default"
STAGE_MARKER = "_tables.json"


def data_root() -> Location:
    """``SIS_SYNC_DATA_URL`` (a local folder, ``file://`` or object-store URL), else
    ``.data/runs``."""
    url = os.environ.get("SIS_SYNC_DATA_URL") or str(DEFAULT_DATA_DIR)
    return storage.location(url, os.environ.get("SIS_SYNC_DATA_CONN_ID") or DEFAULT_DATA_CONN_ID)


@dataclass(frozen=True)
class RunData:
    """The folder of one run's intermediate data."""

    portal_id: str
    run_id: int
    root: Location
    data_key: str | None = None  # None: a run from before migration 0004

    @classmethod
    def for_run(cls, portal_id: str, run_id: int, data_key: str | None = None) -> RunData:
        return cls(portal_id, run_id, data_root(), data_key)

    @property
    def folder(self) -> Location:
        suffix = f"_{self.data_key}" if self.data_key else ""
        return self.root / self.portal_id / f"run_{self.run_id}{suffix}"

    def write_tables(self, stage: str, tables: dict[str, pa.Table]) -> None:
        """Write a stage's tables into a fresh folder: files of an earlier try go first."""
        with self.stage_writer(stage) as writer:
            for name, table in tables.items():
                writer.write(name, table)

    def write_frames(self, stage: str, frames: dict[str, pd.DataFrame]) -> None:
        self.write_tables(stage, {n: to_table(f) for n, f in frames.items()})

    @contextmanager
    def stage_writer(self, stage: str) -> Iterator[StageWriter]:
        """A stage's folder, written afresh table by table, a large table in parts."""
        folder = self.folder / stage
        storage.remove_tree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        writer = StageWriter(folder)
        try:
            yield writer
        finally:
            writer.close()

    def remove_stage(self, stage: str) -> None:
        """Delete a stage's folder (a stage that failed leaves nothing a later one reads)."""
        storage.remove_tree(self.folder / stage)

    def row_count(self, stage: str, name: str) -> int:
        """Rows of one table of a stage, from its Parquet footer (0 when it is not there)."""
        folder = self.folder / stage
        if not (folder / f"{name}.parquet").exists():
            return 0
        return LazyFrames(folder).rows(name)

    def iter_frames(
        self, stage: str, name: str, rows: int, columns: list[str] | None = None
    ) -> Iterator[pd.DataFrame]:
        """One table of a stage in frames of about ``rows`` rows (none when it is not there),
        so a stage never holds the whole of a large one."""
        frames = LazyFrames(self.folder / stage)
        if name in frames:
            yield from frames.parts(name, rows, columns)

    def read_columns(self, stage: str, name: str, columns: list[str] | None) -> pd.DataFrame | None:
        """Some columns (None: all) of one whole table of a stage; None when it is not there."""
        path = self.folder / stage / f"{name}.parquet"
        if not path.exists():
            return None
        return _read_parquet(path, columns)

    def read_frames(self, stage: str) -> dict[str, pd.DataFrame]:
        folder = self.folder / stage
        if not folder.exists():
            raise FileNotFoundError(
                f"{storage.display(folder)}: no {stage} data for this run (was it purged?)"
            )
        return {p.stem: _read_parquet(p) for p in sorted(folder.glob("*.parquet"))}

    def lazy_frames(self, stage: str) -> LazyFrames:
        """The stage's frames, each read only when asked for (and not kept)."""
        return LazyFrames(self.folder / stage)

    def write_json(self, name: str, value: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{name}.json").write_text(json.dumps(value, default=str, indent=1))

    def read_json(self, name: str) -> Any:
        return json.loads((self.folder / f"{name}.json").read_text())


class LazyFrames(Mapping[str, pd.DataFrame]):
    """A stage's Parquet frames as a mapping that reads each file when it is looked up, so a
    consumer going entity by entity holds one frame at a time."""

    def __init__(self, folder: Location) -> None:
        if not folder.exists():
            raise FileNotFoundError(
                f"{storage.display(folder)}: no data for this run (was it purged?)"
            )
        self.folder = folder

    def __getitem__(self, name: str) -> pd.DataFrame:
        path = self.folder / f"{name}.parquet"
        if not path.exists():
            raise KeyError(name)
        return _read_parquet(path)

    def rows(self, name: str) -> int:
        """A frame's row count, from its Parquet footer."""
        path = self.folder / f"{name}.parquet"
        if not path.exists():
            raise KeyError(name)
        with _parquet_file(path) as parquet:
            return int(parquet.metadata.num_rows)

    def parts(
        self, name: str, rows: int, columns: list[str] | None = None
    ) -> Iterator[pd.DataFrame]:
        """One frame (or some of its columns) in parts of about ``rows`` rows: at least one
        part, maybe empty."""
        path = self.folder / f"{name}.parquet"
        if not path.exists():
            raise KeyError(name)
        with _parquet_file(path) as parquet:
            yield from _batches(parquet, rows, columns)

    def __contains__(self, name: object) -> bool:
        return (self.folder / f"{name}.parquet").exists()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(p.stem for p in self.folder.glob("*.parquet")))

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*.parquet"))


class StageWriter:
    """Writes one stage's tables; a table written in several parts becomes one file. Closing
    it writes the marker through which an empty stage exists on an object store."""

    def __init__(self, folder: Location) -> None:
        self.folder = folder
        self._open: dict[str, tuple[pq.ParquetWriter, Any]] = {}
        self._names: set[str] = set()

    def write(self, name: str, table: pa.Table | pd.DataFrame) -> None:
        """Append ``table`` to the stage's table ``name`` (a first part sets its columns)."""
        if isinstance(table, pd.DataFrame):
            table = to_table(table)
        self._names.add(name)
        if name not in self._open:
            path = self.folder / f"{name}.parquet"
            stream = None if isinstance(path, Path) else path.open("wb")
            writer = pq.ParquetWriter(path if stream is None else stream, table.schema)
            self._open[name] = (writer, stream)
        writer = self._open[name][0]
        writer.write_table(table.select(writer.schema.names).cast(writer.schema))

    def close(self) -> None:
        for writer, stream in self._open.values():
            writer.close()
            if stream is not None:
                stream.close()
        self._open.clear()
        # An object store has no empty folders: a stage with no tables (a quick sync that
        # found no changes) exists through this marker.
        (self.folder / STAGE_MARKER).write_text(json.dumps(sorted(self._names)))


def to_table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def to_frame(table: pa.Table, nullable_ints: bool = False) -> pd.DataFrame:
    """An Arrow table as a frame whose strings are pandas' nullable string dtype (and, with
    ``nullable_ints``, whose integers are ``Int64``: an id column holding a null stays ids)."""
    return table.to_pandas(types_mapper=_nullable_types if nullable_ints else _string_types)


def _batches(
    parquet: pq.ParquetFile, rows: int, columns: list[str] | None
) -> Iterator[pd.DataFrame]:
    """A Parquet file's rows in frames of about ``rows`` rows; one empty frame, with the
    table's columns, when it holds none."""
    batches = parquet.iter_batches(batch_size=rows, columns=columns)
    first = next(batches, None)
    if first is None:
        schema = parquet.schema_arrow
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        yield to_frame(schema.empty_table())
        return
    yield to_frame(pa.Table.from_batches([first]))
    for batch in batches:
        yield to_frame(pa.Table.from_batches([batch]))


@contextmanager
def _parquet_file(path: Location) -> Iterator[pq.ParquetFile]:
    if isinstance(path, Path):
        with pq.ParquetFile(path) as parquet:
            yield parquet
    else:
        with path.open("rb") as stream, pq.ParquetFile(stream) as parquet:
            yield parquet


def _read_parquet(path: Location, columns: list[str] | None = None) -> pd.DataFrame:
    if isinstance(path, Path):
        table = pq.read_table(path, columns=columns)
    else:
        with path.open("rb") as stream:
            table = pq.read_table(stream, columns=columns)
    return to_frame(table)


def _string_types(arrow_type: pa.DataType) -> Any:
    """Read Arrow strings back as pandas' nullable string dtype."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype()
    return None


def _nullable_types(arrow_type: pa.DataType) -> Any:
    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype()
    return _string_types(arrow_type)


def purge_expired(portal_id: str, retention_days: int, root: Location | None = None) -> int:
    """Delete this portal's run folders older than the retention period; returns how many."""
    folder = (root if root is not None else data_root()) / portal_id
    if not folder.exists():
        return 0
    cutoff = time.time() - retention_days * 86400
    removed = 0
    for run in folder.glob("run_*"):
        if run.is_dir() and storage.last_modified(run) < cutoff:
            storage.remove_tree(run)
            removed += 1
    return removed
