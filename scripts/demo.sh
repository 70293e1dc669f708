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

# The API portals, each against its local server (credentials are the throw-away ones in
# airflow_settings.yaml): a full sync, then the district moves on a day (SIGUSR1) and a quick
# sync reads only what changed (Clever: the Events API; OneRoster: dateLastModified).
servers=()
trap 'for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT
api_portal() {  # api_portal PORTAL_ID NAME SERVER-COMMAND...
  local portal=$1 name=$2; shift 2
  local server_log=".data/logs/$portal-server.log"
  "$@" > "$server_log" 2>&1 &
  local pid=$!; servers+=("$pid")
  for _ in $(seq 1 50); do grep -q "stop with Ctrl-C" "$server_log" && break; sleep 0.2; done
  for step in full quick; do
    local log=".data/logs/demo-$portal-$step.log"
    if [ "$step" = quick ]; then kill -USR1 "$pid"; sleep 1; fi
    echo; echo "== $name portal, $step sync: airflow dags test sis_sync__$portal (log: $log)"
    if ! timeout -s INT -k 30 900 airflow dags test "sis_sync__$portal" -c "{\"mode\": \"$step\"}" > "$log" 2>&1; then
      tail -40 "$log"; echo "demo: the $name $step sync failed (full log: $log)"; exit 1
    fi
    python -m include.sis_sync.cli report --last "$portal"
  done
  kill "$pid" 2>/dev/null || true
}
api_portal clever_demo Clever python -m include.sis_sync.simulators.clever \
  --preset demo --port 8765 --token demo-district-token
api_portal oneroster_demo "OneRoster REST" python -m include.sis_sync.simulators.oneroster \
  --preset demo --port 8766 --client-id demo-client --client-secret demo-client-secret

echo; echo "LMS database: $SIS_SYNC_HOME/.data/lms.db (SQLite); run data: $SIS_SYNC_DATA_URL"
