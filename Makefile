# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
.PHONY: setup demo test lint format check ui bench cluster cluster-stop cluster-status clean

setup:            ## install into .venv, prepare Airflow and the LMS database
	scripts/setup.sh

demo:             ## run the demo portal's sync over three generated daily drops
	scripts/demo.sh

test:             ## the whole test suite (what CI runs), bounded by a timeout
	scripts/test.sh

lint:             ## ruff lint and format check
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

check:            ## validate the portal files
	source scripts/env.sh && python -m include.sis_sync.cli check

ui:               ## Airflow UI with the demo portal (airflow standalone, small machine settings)
	source scripts/env.sh && airflow standalone

bench:            ## the scale benchmark (PRESET=small|medium|large)
	source scripts/env.sh && python -m benchmarks.run_sync --preset $${PRESET:-small}

cluster:          ## a production-shaped deployment here: PostgreSQL, Redis, S3, Celery with 2 workers
	scripts/setup.sh >/dev/null && .venv/bin/python scripts/cluster.py start

cluster-stop:
	.venv/bin/python scripts/cluster.py stop

cluster-status:
	.venv/bin/python scripts/cluster.py status

clean:
	rm -rf .data .airflow
