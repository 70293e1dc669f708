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

import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from include.sis_sync.lms.db import engine_for, migrate  # noqa: E402

# scripts/test.sh starts a throw-away PostgreSQL server and sets this; CI always has it.
POSTGRES_URL = os.environ.get("SIS_SYNC_TEST_POSTGRES_URL")
TEMPLATE = "sis_sync_template"


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    """The PostgreSQL server, with a migrated template database that each test copies."""
    if not POSTGRES_URL:
        # never skipped: every store test runs on PostgreSQL too (scripts/test.sh starts it)
        pytest.fail(
            "SIS_SYNC_TEST_POSTGRES_URL is not set: run scripts/postgres.sh start, or the "
            "tests through scripts/test.sh"
        )
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {TEMPLATE}")
    template_url = sa.make_url(POSTGRES_URL).set(database=TEMPLATE)
    migrate(template_url.render_as_string(hide_password=False))
    engine_for(template_url.render_as_string(hide_password=False)).dispose()
    yield admin
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def lms_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated LMS database for one test: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lms.db'}"
        migrate(url)
        yield url
        return
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    name = f"lms_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    engine_for(url).dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run data of one test, in its own folder."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("SIS_SYNC_DATA_URL", str(folder))
    return folder
