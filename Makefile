# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# PostgreSQL server the test suite creates its own databases on.
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432
PYTEST_ARGS ?=
# Parallel pytest workers; the end-to-end modules each start their own servers.
TEST_WORKERS ?= 4

.PHONY: demo serve test lint test-sqlite test-postgres bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@if $(PY) -c "import h2" 2>/dev/null; then echo "h2 is installed in $(VENV); remove it (daphne would negotiate HTTP/2)"; exit 1; fi
	touch $@

## Run the whole main job on the embedded default and check every outcome.
demo: $(VENV)/.installed
	$(PY) -m realtime.demo

## Serve on https://127.0.0.1:8443 with SQLite, in-memory stores and development certificates in var/.
serve: $(VENV)/.installed
	$(PY) manage.py migrate --noinput -v0
	@test -f var/pki/server.pem || $(PY) manage.py devpki --out var/pki --client dev-client
	$(PY) manage.py serve --host 127.0.0.1 --port 8443 \
		--tls-cert var/pki/server.pem --tls-key var/pki/server.key --client-ca var/pki/ca.pem

## Lint, then run the whole suite on SQLite, then on PostgreSQL.
test: lint test-sqlite test-postgres

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test-sqlite: $(VENV)/.installed
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-postgres: $(VENV)/.installed
	@$(PY) -c "import psycopg, sys; psycopg.connect('$(POSTGRES_URL)/postgres', connect_timeout=5).close()" \
		|| { echo "PostgreSQL is not reachable at $(POSTGRES_URL); .ci/run starts it"; exit 1; }
	env -u REDIS_URL DATABASE_URL=$(POSTGRES_URL)/rt_pytest_$$$$ $(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

## Benchmarks (not part of `make test`); QUICK=1 for a reduced run.
bench: $(VENV)/.installed
	$(PY) -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf var/demo var/tmp
