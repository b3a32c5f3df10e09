# Slipway: `make demo` and `make test` do all the setup on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: help install system-deps demo test lint up down up-embedded bench policy clean

help:
	@echo "make demo   install what is missing, run the telco_churn training pipeline on the embedded stack"
	@echo "make test   install what is missing, run linters and the whole test suite"
	@echo "make up     the production topology natively (Celery on PostgreSQL + Redis, MLflow with auth, S3, the service, Prometheus), in the background"
	@echo "make down   stop what make up started"
	@echo "make up-embedded  Airflow (UI on :8080) + MLflow UI (:5000) on the embedded SQLite stack, in the foreground"
	@echo "make bench  scikit-learn vs onnxruntime, the inference service vs mlflow models serve (wrk), drift check vs Evidently"
	@echo "make policy the fairness policy replayed on every monthly snapshot of the demo data"
	@echo "make clean  remove the embedded state folder (.slipway/)"

# Locked install: two installs from uv.lock get the same versions. uv is bootstrapped with pip.
$(BIN)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.5"
	$(UV) sync --frozen --extra dev --python 3.11
	@touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/slipway demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff check --select AIR dags plugins include

# Two workers: the live Airflow stack's tests mostly wait on the scheduler, so the other tests run
# beside them; each worker takes whole groups (see tests/conftest.py).
# Debian packages the suite uses: chromium (the Airflow UI under Playwright) and prometheus (make up's
# scraper). Installed when missing, as root or with sudo.
system-deps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "[slipway] installing$$missing (apt)"; \
	  $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq --no-install-recommends $$missing; fi

test: lint system-deps
	$(BIN)/python -m pytest -n 2

up: install
	@command -v prometheus >/dev/null || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq --no-install-recommends prometheus; } || echo "[slipway] prometheus could not be installed: the stack starts without it"
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

clean:
	rm -rf .slipway

policy: install
	$(BIN)/python -m include.demo.fairness_policy
