"""Test set-up shared by every test: a throw-away Airflow home and project folders.

The environment is set before anything imports Airflow, so every test (and every dag.test run
in this process) uses its own metadata database, LMS database, drops and run data.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="sis_sync_tests_"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow/airflow.db",
        "AIRFLOW__API_AUTH__JWT_SECRET": "sis-sync-tests-" + "x" * 64,
        "SIS_SYNC_DATA_URL": str(_HOME / "runs"),
        "SIS_SYNC_DROPS_DIR": str(_HOME / "drops"),
        "SIS_SYNC_PORTALS_DIR": str(_HOME / "portals"),
        "GX_ANALYTICS_ENABLED": "false",
        "AIRFLOW_CONN_LMS_DB": json.dumps({"conn_type": "sqlite", "host": str(_HOME / "lms.db")}),
    }
)
(_HOME / "airflow").mkdir(parents=True, exist_ok=True)
(_HOME / "portals").mkdir(parents=True, exist_ok=True)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from include.sis_sync.lms.db import migrate  # noqa: E402


@pytest.fixture
def lms_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite LMS database for one test."""
    url = f"sqlite:///{tmp_path / 'lms.db'}"
    migrate(url)
    return url


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run data of one test, in its own folder."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("SIS_SYNC_DATA_URL", str(folder))
    return folder
