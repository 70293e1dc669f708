#!/usr/bin/env bash
# The demo: a fresh LMS, three generated daily drops, three `airflow dags test` runs of the
# demo portal's DAG (auto-commit, no approval needed), and each run's report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
rm -rf .data/lms.db .data/lms.db-wal .data/lms.db-shm .data/runs "$SIS_SYNC_DROPS_DIR/demo"
python -m include.sis_sync.cli migrate
python -m include.sis_sync.cli demo-drops --out "$SIS_SYNC_DROPS_DIR/demo"
mkdir -p .data/logs
for day in 2026-09-01 2026-09-02 2026-09-03; do
  log=".data/logs/demo-$day.log"
  echo; echo "== day $day: airflow dags test sis_sync__demo (log: $log)"
  # Bounded: the approval step would wait for ever under dags test; SIGINT stops it.
  if ! timeout -s INT -k 30 900 airflow dags test sis_sync__demo -c "{\"drop_date\": \"$day\"}" > "$log" 2>&1; then
    tail -40 "$log"; echo "demo: the run of $day failed (full log: $log)"; exit 1
  fi
  python -m include.sis_sync.cli report --last demo
done
echo; echo "LMS database: $SIS_SYNC_HOME/.data/lms.db (SQLite); run data: $SIS_SYNC_DATA_URL"
