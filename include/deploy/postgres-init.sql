-- Databases beside Airflow's: the MLflow backend store, MLflow's user store (basic auth), and the
-- inference service's (the prediction log, its API keys and the monitor's checks).
-- PostgreSQL runs this on an empty data volume only; on an existing one, create the missing
-- database once: docker compose exec postgres createdb -U slipway serving
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE serving;
