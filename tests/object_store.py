"""A real local S3-compatible server (moto's server mode) for tests of object storage.

It is a separate process listening on 127.0.0.1, reached over HTTP exactly as a real store
would be, through an Airflow ``aws`` connection whose ``endpoint_url`` points at it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.standalone import free_port

KEY_ID, SECRET = "sis-sync-test-key", "sis-sync-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str

    def connection(self) -> str:
        """The Airflow connection (JSON form) holding this store's credentials."""
        extra = {"endpoint_url": self.endpoint, "region_name": REGION}
        return json.dumps({"conn_type": "aws", "login": KEY_ID, "password": SECRET, "extra": extra})

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under a prefix."""
        paginator = self.client().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> None:
        """Every file under ``folder`` to ``s3://bucket/prefix/<relative path>``."""
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


@contextmanager
def object_store_server(timeout: float = 30) -> Iterator[ObjectStore]:
    """Start moto's S3 server on a free port; stop it (and lose its objects) on exit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(endpoint, process, timeout)
        _forget_stores()
        yield ObjectStore(endpoint)
    finally:
        _forget_stores()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _forget_stores() -> None:
    """Airflow keeps one filesystem per connection id for the life of the process; tests
    point the same connection id at servers that come and go, so each starts afresh."""
    from airflow.sdk.io import store

    store._STORE_CACHE.clear()


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {process.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"the S3 server at {endpoint} did not answer within {timeout:.0f} s")
