-- Databases beside Airflow's: the MLflow backend store and MLflow's user store (basic auth).
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
