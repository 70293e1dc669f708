#!/usr/bin/env bash
# Install everything into .venv, prepare the Airflow home (SQLite metadata), load
# airflow_settings.yaml and migrate the LMS database. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
stamp=.venv/.installed-$(cat requirements.txt constraints.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt -c constraints.txt
  rm -f .venv/.installed-*; touch "$stamp"
fi
source scripts/env.sh
mkdir -p .data
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
python -m include.sis_sync.cli load-settings airflow_settings.yaml
python -m include.sis_sync.cli migrate
python -m include.sis_sync.cli check
