"""Where files live: a local folder, or an object store reached through an Airflow connection.

Run data (``SIS_SYNC_DATA_URL``) and CSV drops (``source.path``) are either a local path or
an object-store URL such as ``s3://bucket/prefix``. Local paths stay plain ``pathlib`` (no
Airflow import, fast); object-store URLs become Airflow's ``ObjectStoragePath``, whose
credentials come from an Airflow connection, so tasks of one run may land on different
machines. Both answer the same path methods (``/``, ``open``, ``glob``, ``exists``, ...);
the few operations where they differ are here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

# An object-store path: Airflow's ObjectStoragePath, typed loosely so that this module and
# its callers import no Airflow when every path is local.
Location = Any


def is_remote(url: str) -> bool:
    """True for an object-store URL (``s3://...``); False for a local path or ``file://``."""
    return "://" in url and not url.startswith("file://")


def location(url: str, conn_id: str | None = None) -> Location:
    """The path a URL names: ``pathlib.Path`` when local, ``ObjectStoragePath`` otherwise.

    ``conn_id`` names the Airflow connection holding the store's credentials (an ``aws``
    connection for ``s3://``, its ``endpoint_url`` extra for an S3-compatible server); a
    connection named in the URL itself (``s3://conn@bucket/prefix``) wins.
    """
    if not is_remote(url):
        return Path(url.removeprefix("file://"))
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(url, conn_id=None if "@" in url.split("/")[2] else conn_id)


def remove_tree(path: Location) -> None:
    """Delete a folder and everything under it; a missing folder is fine."""
    if isinstance(path, Path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


def last_modified(path: Location) -> float:
    """When anything under a folder last changed, as a POSIX time.

    An object store has no folders, so a "folder" there is as new as its newest object.
    """
    if isinstance(path, Path):
        return path.stat().st_mtime
    found = path.fs.find(path.path, detail=True)
    times = [_epoch(info.get("LastModified") or info.get("mtime")) for info in found.values()]
    return max((t for t in times if t is not None), default=0.0)


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def display(path: Location) -> str:
    """A path for messages: the URL without the connection id folded into it."""
    if isinstance(path, Path):
        return str(path)
    return f"{path.protocol}://{path.path}"
