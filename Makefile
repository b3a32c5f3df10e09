# Slipway: `make demo` and `make test` do all the setup on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: help install system-deps demo test test-unit lint docs up down up-embedded bench policy clean

help:
	@echo "make demo       install what is missing, then the whole lifecycle on the embedded stack: train, roll out with"
	@echo "                live traffic, approve, promote; a drift episode retrains and rolls out a new model by itself"
	@echo "make test       install what is missing, lint, run the whole test suite"
	@echo "make test-unit  the tests that need no started stack (no Airflow scheduler, no trained service), in minutes"
	@echo "make lint       ruff check, ruff format --check, mypy on include/, the docs built with their links checked,"
	@echo "                the alerting rules checked and tested (promtool)"
	@echo "make docs       build the documentation (MkDocs) into site/"
	@echo "make up         the production topology natively (Celery on PostgreSQL + Redis, MLflow with auth, S3, the service, Prometheus, Alertmanager), in the background"
	@echo "make down       stop what make up started"
	@echo "make up-embedded  Airflow (UI on :8080) + MLflow UI (:5000) on the embedded SQLite stack, in the foreground"
	@echo "make bench      scikit-learn vs onnxruntime, the inference service vs mlflow models serve (wrk, 8 and 64 connections,"
	@echo "                uvicorn and Granian), drift check vs Evidently, batch scoring, the train DAG on the scheduler vs one process"
	@echo "make policy     the fairness policy replayed on every monthly snapshot of the demo data"
	@echo "make clean      remove the embedded state folder (.slipway/) and the built docs (site/)"

# Locked install: two installs from uv.lock get the same versions. uv is bootstrapped with pip.
# Bytecode is compiled at install: every process (each Airflow task, the service's workers) then
# imports the libraries from .pyc, also where PYTHONDONTWRITEBYTECODE keeps Python from caching it.
$(BIN)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.5"
	$(UV) sync --frozen --extra dev --python 3.11 --compile-bytecode
	@touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/slipway demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff check --select AIR dags plugins include
	$(BIN)/ruff format --check .
	$(BIN)/mypy include
	d=$$(mktemp -d) && $(BIN)/mkdocs build --strict --quiet --site-dir "$$d"; s=$$?; rm -rf "$$d"; exit $$s
	$(BIN)/python docs/check_links.py
	@if command -v promtool >/dev/null; then promtool check rules include/deploy/prometheus/rules.yml \
	  && (cd include/deploy/prometheus && promtool test rules rules.test.yml); \
	else echo "[slipway] promtool not installed (make system-deps): alerting rules not checked here; make test checks them"; fi

docs: install
	$(BIN)/mkdocs build --strict

# Three workers on 2 cores: most end-to-end tests wait (on the scheduler, a service, a DAG run), so a
# third runs beside them (measured: 22 min 37 s with two, 19 min 20 s with three, the same tests);
# each worker takes whole groups (see tests/conftest.py).
# Debian packages the suite uses: chromium (the Airflow UI under Playwright), prometheus (make up's
# scraper and rule evaluator, with promtool) and prometheus-alertmanager (the alerts' router, with
# amtool). Installed when missing, as root or with sudo.
system-deps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	if [ -n "$$missing" ]; then S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "[slipway] installing$$missing (apt)"; \
	  $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq --no-install-recommends $$missing; fi

test: system-deps lint
	$(BIN)/python -m pytest -n 3

# No started stack: leaves out the live Airflow stack's tests, the trained registry and service's,
# and the end-to-end DAG runs (pytest markers live, service, e2e).
test-unit: install
	$(BIN)/python -m pytest -n 2 -m "not e2e and not live and not service"

up: install
	@command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager; } || echo "[slipway] prometheus could not be installed: the stack starts without it"
	$(BIN)/python -m include.deploy.production up

down: install
	$(BIN)/python -m include.deploy.production down

up-embedded: install
	$(BIN)/python -m include.deploy.embedded

bench: install
	$(BIN)/python -m benchmarks.scoring
	$(BIN)/python -m benchmarks.scoring --estimator gradient_boosting
	command -v wrk >/dev/null || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); $$S apt-get update -qq && $$S apt-get install -y -qq wrk; }
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.drift
	$(BIN)/python -m benchmarks.batch
	$(BIN)/python -m benchmarks.scheduler

clean:
	rm -rf .slipway site

policy: install
	$(BIN)/python -m include.demo.fairness_policy
