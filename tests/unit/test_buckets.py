"""Key buckets: every row lands in exactly one bucket, the same key in the same bucket."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from include.sis_sync.buckets import BucketFiles, bucket_count, bucket_of


def test_a_key_lands_in_the_same_bucket_whatever_comes_beside_it() -> None:
    keys = pd.Series([f"enr_{i:07d}" for i in range(50_000)], dtype="string")
    alone = bucket_of(keys, 7)
    assert set(np.unique(alone)) == set(range(7))
    shuffled = keys.sample(frac=1, random_state=1)
    again = bucket_of(shuffled.reset_index(drop=True), 7)
    assert (again == alone[shuffled.index.to_numpy()]).all()
    # from Arrow, as the LMS side hands them over, in several chunks
    chunked = pa.chunked_array([pa.array(keys[:100].tolist()), pa.array(keys[100:].tolist())])
    assert (bucket_of(chunked, 7) == alone).all()
    # spread: no bucket holds more than twice its share
    assert np.bincount(alone).max() < 2 * len(keys) / 7


def test_nulls_and_short_keys_have_a_bucket() -> None:
    keys = pd.Series(["a", None, "bb", "a"], dtype="string")
    found = bucket_of(keys, 3)
    assert found[1] == 0 and found[0] == found[3]
    assert bucket_count(0) == 1 and bucket_count(10, 3) == 4


def test_bucket_files_keep_every_row_once_with_ids_as_ids(tmp_path: Path) -> None:
    files = BucketFiles(tmp_path, "lms", 4)
    frame = pd.DataFrame(
        {
            "id": pd.array([1, None, 3, 4, 5], dtype="Int64"),
            "sis_key": pd.array(["k1", "k2", "k3", "k4", "k5"], dtype="string"),
            "active": [True, False, True, True, False],
        }
    )
    files.add(frame.iloc[:2])
    files.add(frame.iloc[2:])
    files.close()
    parts = [p for b in range(4) if (p := files.read(b)) is not None]
    back = pd.concat(parts).sort_values("sis_key").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert str(back["id"].dtype) == "Int64"
    for bucket, part in enumerate(files.read(b) for b in range(4)):
        if part is not None:
            assert set(bucket_of(part["sis_key"], 4)) == {bucket}
    files.remove()
    assert not list(tmp_path.iterdir())
