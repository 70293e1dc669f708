"""The admin pages: a FastAPI app that Airflow's API server mounts (``plugins/``), rendered
inside the Airflow UI. ``app`` routes, ``views`` renders, ``csrf`` guards forms,
``airflow_side`` asks Airflow; what the pages read comes from ``include.sis_sync.queries``."""
