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

# The Clever portal, against the local Clever server (its token is the throw-away one in
# airflow_settings.yaml): a full sync, then the district moves on a day and a quick sync reads
# the changes from the Events API.
python -m include.sis_sync.simulators.clever --preset demo --port 8765 \
  --token demo-district-token > .data/logs/clever-simulator.log 2>&1 &
clever_pid=$!
trap 'kill $clever_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do grep -q "Clever simulator:" .data/logs/clever-simulator.log && break; sleep 0.2; done
for step in full quick; do
  log=".data/logs/demo-clever-$step.log"
  if [ "$step" = quick ]; then kill -USR1 $clever_pid; sleep 1; fi
  echo; echo "== Clever portal, $step sync: airflow dags test sis_sync__clever_demo (log: $log)"
  if ! timeout -s INT -k 30 900 airflow dags test sis_sync__clever_demo -c "{\"mode\": \"$step\"}" > "$log" 2>&1; then
    tail -40 "$log"; echo "demo: the Clever $step sync failed (full log: $log)"; exit 1
  fi
  python -m include.sis_sync.cli report --last clever_demo
done

echo; echo "LMS database: $SIS_SYNC_HOME/.data/lms.db (SQLite); run data: $SIS_SYNC_DATA_URL"
