"""SIS sync Airflow DAGs: one per portal file in include/portals (or SIS_SYNC_PORTALS_DIR).

Wiring only: the DAG shape lives in include/sis_sync/dag_factory.py. A broken portal file
shows as this file's import error, naming the file and the field, and never stops the other
portals' DAGs from loading.
"""

from include.sis_sync.config import load_portals
from include.sis_sync.dag_factory import broken_portals_dag, build_dag

portals, errors = load_portals()
for portal in portals:
    globals()[portal.dag_id] = build_dag(portal)
if errors:
    broken_portal_files = broken_portals_dag(errors)
