"""Where things are in the Airflow UI: a sync's report in the admin pages, a DAG run's page.

One place for the paths, so that approval texts, mails, the plugin's redirects and its
templates all point at the same pages. ``base`` is the UI's address (the
``sis_sync_ui_base_url`` variable), or "" for links relative to the UI.
"""

from __future__ import annotations

from urllib.parse import quote

ADMIN_ROOT = "/sis-sync"  # where the API server mounts the admin pages


def report_url(dag_id: str, run_id: int, base: str = "") -> str:
    """A sync's report page in the admin pages."""
    return f"{base.rstrip('/')}{ADMIN_ROOT}/portals/{dag_id}/runs/{run_id}"


def airflow_run_url(dag_id: str, airflow_run_id: str, base: str = "") -> str:
    """A DAG run's page in the Airflow UI."""
    return f"{base.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(airflow_run_id, safe='')}"
