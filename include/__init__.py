"""Slipway: scikit-learn models to production on Apache Airflow."""
