#!/usr/bin/env bash
# The test suite, as CI runs it: set up, lint, start a throw-away PostgreSQL server (the LMS
# store is tested on SQLite and on PostgreSQL), then pytest under a hard timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
ruff check . && ruff format --check .
# The admin pages' browser tests drive Debian's Chromium (installed here when missing).
SIS_SYNC_CHROMIUM="${SIS_SYNC_CHROMIUM:-$(scripts/chromium.sh)}"
export SIS_SYNC_CHROMIUM
SIS_SYNC_TEST_POSTGRES_URL="$(scripts/postgres.sh start)"
export SIS_SYNC_TEST_POSTGRES_URL
trap 'scripts/postgres.sh stop' EXIT
# pytest-timeout bounds each test; the outer timeout bounds the whole run (SIGINT first, so
# a dag.test waiting for approval stops, then SIGKILL).
timeout -s INT -k 60 3600 python -m pytest "$@"
