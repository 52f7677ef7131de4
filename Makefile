# Relay: `make run` to try it, `make test` to test it. Needs only Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# Parallel test workers: one per core by default.
WORKERS ?= auto

.PHONY: run test venv install migrate lint audit clean cluster cluster-stop cluster-restart

# A local cluster (platform/scripts/cluster.py): N instances + Celery worker/beat + nginx on :8080,
# on DATABASE_URL/REDIS_URL (default: the local PostgreSQL, database relay_cluster, and Redis).
N ?= 3
cluster: install
	$(PY) platform/scripts/cluster.py start -n $(N)

cluster-stop:
	$(PY) platform/scripts/cluster.py stop

cluster-restart:
	$(PY) platform/scripts/cluster.py restart

# Each step says what it does; pip shows what it downloads (a first install takes minutes).
$(VENV)/.installed: requirements.txt requirements-dev.txt
	@echo "Creating the virtual environment in $(VENV)…"
	$(PYTHON) -m venv $(VENV)
	@echo "Installing Python packages (about 2 minutes on the first run)…"
	$(PY) -m pip install --disable-pip-version-check --progress-bar on --upgrade pip
	$(PY) -m pip install --disable-pip-version-check --progress-bar on -r requirements-dev.txt
	@touch $@

venv install: $(VENV)/.installed

migrate: install
	@echo "Migrating the $(if $(DATABASE_URL),PostgreSQL,SQLite) database…"
	@$(PY) manage.py migrate --noinput

# The demo's last lines are the URL, the demo users and what to try first.
run: migrate
	@echo "Seeding the demo…"
	@$(PY) manage.py seed_demo --url http://$(HOST):$(PORT)/
	@$(PY) manage.py runserver $(HOST):$(PORT)

test: install
	@mkdir -p var
	$(PY) -m pytest -n $(WORKERS) --dist loadfile $(PYTEST_ARGS)

# platform/k8s/ against the Kubernetes API schemas kubernetes-validate bundles (offline); strict:
# an unknown field is an error. The oldest Kubernetes the manifests target, and the newest bundled.
K8S_VERSIONS ?= 1.30.0 1.37.0

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/kubernetes-validate --strict --quiet $(foreach v,$(K8S_VERSIONS),-k $(v)) platform/k8s/*.yaml

# bandit (no high-severity finding) and pip-audit (skipped with a warning when offline): .ci/audit
audit: install
	VENV=$(VENV) .ci/audit

clean:
	rm -rf $(VENV) var db.sqlite3 db.sqlite3-wal db.sqlite3-shm staticfiles
