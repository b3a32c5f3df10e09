"""Write MLflow's basic-auth configuration from the environment (no password in any file in git).

Used by the ``mlflow`` service of docker-compose.yaml and by ``make up``: the user store lives in
PostgreSQL, every request needs a user, and a user may read what it did not create
(``default_permission = READ``): the service's ``serving`` user reads the registry and writes nothing
(mlflow_read_only.py); the pipelines' user manages what it creates (mlflow_users.py).
The admin password is read by MLflow itself from ``MLFLOW_AUTH_ADMIN_PASSWORD`` on first start.
"""

from __future__ import annotations

import configparser
import io
import os

from include.deploy.private import write_private


def write_config(path: str, database_uri: str) -> None:
    """Write the basic-auth INI to ``path`` (mode 0600), its user store at ``database_uri``."""
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": database_uri,
        "admin_username": "admin",
        # MLflow's basic auth, and read-only users (the service): include/deploy/mlflow_read_only.py
        "authorization_function": "include.deploy.mlflow_read_only:authenticate",
    }
    text = io.StringIO()
    config.write(text)
    write_private(path, text.getvalue())


def main() -> None:
    """Write the INI file named by ``MLFLOW_AUTH_CONFIG_PATH`` (the compose stack's mlflow service)."""
    from urllib.parse import quote

    # URL-quoted for the database URL (@ / : in a password), then %-escaped for configparser.
    password = quote(os.environ["PG_MLFLOW_PASSWORD"], safe="").replace("%", "%%")
    write_config(
        os.environ["MLFLOW_AUTH_CONFIG_PATH"],
        f"postgresql+psycopg2://mlflow:{password}@postgres:5432/mlflow_auth",
    )


if __name__ == "__main__":
    main()
