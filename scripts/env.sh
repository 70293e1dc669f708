# Source this file: the environment every command of the project runs in (no Docker, no Astro CLI).
SIS_SYNC_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SIS_SYNC_HOME
export AIRFLOW_HOME="${AIRFLOW_HOME:-$SIS_SYNC_HOME/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$SIS_SYNC_HOME/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$SIS_SYNC_HOME/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# The LocalExecutor starts `parallelism` workers (32 by default): too many for a small machine.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}"
export PYTHONPATH="$SIS_SYNC_HOME${PYTHONPATH:+:$PYTHONPATH}"
export SIS_SYNC_DATA_URL="${SIS_SYNC_DATA_URL:-$SIS_SYNC_HOME/.data/runs}"
export SIS_SYNC_DROPS_DIR="${SIS_SYNC_DROPS_DIR:-$SIS_SYNC_HOME/.data/drops}"
export GX_ANALYTICS_ENABLED=false
export PATH="$SIS_SYNC_HOME/.venv/bin:$PATH"
mkdir -p "$AIRFLOW_HOME"
# A long JWT secret, made once per Airflow home (a short generated one only warns).
if [ ! -s "$AIRFLOW_HOME/jwt_secret" ]; then
  python3 -c 'import secrets; print(secrets.token_urlsafe(64))' > "$AIRFLOW_HOME/jwt_secret"
fi
AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$AIRFLOW_HOME/jwt_secret")"
export AIRFLOW__API_AUTH__JWT_SECRET
