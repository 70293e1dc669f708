"""Key buckets: a large table split on local disk so that a stage holds one bucket at a time.

A key always lands in the same bucket, whichever side it comes from (the snapshot or the LMS)
and on whichever machine: its bucket is a CRC-32 of the key's last characters, modulo the
number of buckets. Hashing only the tail keeps it cheap: the tails of a million keys have a
few hundred distinct values, hashed once each, then looked up by Arrow. Keys whose tails are
all alike (a feed whose keys end in one fixed suffix) stay correct but share one bucket.
"""

from __future__ import annotations

import math
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from include.sis_sync.rundata import to_frame

DEFAULT_BUCKET_ROWS = 750_000  # a bucket's diff then needs about 0.7 GB


def _bucket_rows() -> int:
    """``SIS_SYNC_BUCKET_ROWS``: rows per bucket aimed at (smaller: less memory, more files)."""
    value = os.environ.get("SIS_SYNC_BUCKET_ROWS") or str(DEFAULT_BUCKET_ROWS)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"SIS_SYNC_BUCKET_ROWS={value!r}: expected a whole number of rows, >= 1")
    return int(value)


BUCKET_ROWS = _bucket_rows()
TAIL = 4  # characters of the key hashed


def bucket_count(rows: int, per_bucket: int | None = None) -> int:
    """How many buckets keep each near ``per_bucket`` (``BUCKET_ROWS``) rows, at least one."""
    return max(1, math.ceil(rows / (per_bucket or BUCKET_ROWS)))


def bucket_of(keys: pa.Array | pa.ChunkedArray | pd.Series, buckets: int) -> np.ndarray:
    """Each key's bucket, 0 to ``buckets - 1`` (a null key goes to bucket 0)."""
    if isinstance(keys, pd.Series):
        keys = pa.array(keys.astype("string"), from_pandas=True)
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if buckets == 1 or len(keys) == 0:
        return np.zeros(len(keys), dtype=np.int32)
    tails = pc.dictionary_encode(pc.utf8_slice_codeunits(keys, start=-TAIL))
    per_tail = np.array(
        [zlib.crc32(t.encode()) % buckets for t in tails.dictionary.to_pylist()], dtype=np.int32
    )
    indices = tails.indices.fill_null(0).to_numpy(zero_copy_only=False)
    found = per_tail[indices] if len(per_tail) else np.zeros(len(keys), dtype=np.int32)
    nulls = keys.is_null().to_numpy(zero_copy_only=False)
    return np.where(nulls, 0, found).astype(np.int32)


class BucketFiles:
    """One table spilled into ``buckets`` Parquet files under ``folder``, part by part."""

    def __init__(
        self,
        folder: Path,
        name: str,
        buckets: int,
        key: str = "sis_key",
        schema: pa.Schema | None = None,
    ) -> None:
        self.folder, self.name, self.buckets, self.key = folder, name, buckets, key
        self._writers: dict[int, pq.ParquetWriter] = {}
        self._schema = schema  # None: the first part's
        self.rows = 0

    def _path(self, bucket: int) -> Path:
        return self.folder / f"{self.name}.{bucket}.parquet"

    def add(self, part: pd.DataFrame | pa.Table) -> None:
        """Split a part by its keys' buckets and append each piece to its bucket's file."""
        if isinstance(part, pd.DataFrame):
            part = pa.Table.from_pandas(part, schema=self._schema, preserve_index=False)
        table = part
        if self._schema is None:
            self._schema = table.schema
        table = table.select(self._schema.names).cast(self._schema)
        self.rows += table.num_rows
        which = bucket_of(table[self.key], self.buckets)
        for bucket in np.unique(which):
            piece = table.filter(pa.array(which == bucket))
            if bucket not in self._writers:
                self._writers[bucket] = pq.ParquetWriter(self._path(bucket), self._schema)
            self._writers[bucket].write_table(piece)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def read(self, bucket: int) -> pd.DataFrame | None:
        """One bucket's rows (None when no row fell in it)."""
        path = self._path(bucket)
        return to_frame(pq.read_table(path), nullable_ints=True) if path.exists() else None

    def iter_bucket(self, bucket: int, rows: int) -> Iterator[pd.DataFrame]:
        """One bucket's rows in frames of about ``rows`` rows."""
        path = self._path(bucket)
        if not path.exists():
            return
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=rows):
                yield to_frame(pa.Table.from_batches([batch]), nullable_ints=True)

    def remove(self) -> None:
        """Delete the bucket files (a large entity's take gigabytes of the task's disk)."""
        self.close()
        for bucket in range(self.buckets):
            self._path(bucket).unlink(missing_ok=True)


@contextmanager
def scratch() -> Iterator[Path]:
    """A local folder for bucket files, removed afterwards (the task's own disk: buckets
    never travel between workers)."""
    with tempfile.TemporaryDirectory(prefix="sis_sync_buckets_") as folder:
        yield Path(folder)
