#!/bin/sh
# The stack's databases, one login role per component with only its grants (include/deploy/grants.py
# says who may do what; `make up` provisions the same). PostgreSQL runs this on an empty data volume
# only. The roles' passwords come from the environment through psql's \getenv, never an argument.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv airflow_pw PG_AIRFLOW_PASSWORD
\getenv mlflow_pw PG_MLFLOW_PASSWORD
\getenv serving_pw PG_SERVING_PASSWORD
CREATE ROLE airflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'airflow_pw';
CREATE ROLE mlflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'mlflow_pw';
CREATE ROLE serving LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'serving_pw';
ALTER DATABASE airflow OWNER TO airflow;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE serving OWNER serving;
REVOKE ALL ON DATABASE airflow, mlflow, mlflow_auth, serving FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE airflow TO airflow;
GRANT CONNECT, TEMPORARY ON DATABASE mlflow, mlflow_auth TO mlflow;
GRANT CONNECT, TEMPORARY ON DATABASE serving TO serving;
-- Airflow's tasks read the prediction log and keep the monitor's table beside it.
GRANT CONNECT ON DATABASE serving TO airflow;
\connect serving
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO serving, airflow;
SQL
