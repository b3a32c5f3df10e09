"""Write MLflow's basic-auth configuration from the environment (no password in any file in git).

Used by the ``mlflow`` service of docker-compose.yaml: the user store lives in PostgreSQL, every
request needs a user, and new users get no access until granted (``default_permission = NO_PERMISSIONS``).
The admin password is read by MLflow itself from ``MLFLOW_AUTH_ADMIN_PASSWORD`` on first start.
"""

from __future__ import annotations

import configparser
import os


def write_config(path: str, database_uri: str) -> None:
    """Write the basic-auth INI to ``path`` (mode 0600), its user store at ``database_uri``."""
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": database_uri,
        "admin_username": "admin",
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        config.write(fh)
    os.chmod(path, 0o600)


def main() -> None:
    """Write the INI file named by ``MLFLOW_AUTH_CONFIG_PATH`` (the compose stack's mlflow service)."""
    from urllib.parse import quote

    # URL-quoted for the database URL (@ / : in a password), then %-escaped for configparser.
    password = quote(os.environ["POSTGRES_PASSWORD"], safe="").replace("%", "%%")
    write_config(
        os.environ["MLFLOW_AUTH_CONFIG_PATH"],
        f"postgresql+psycopg2://slipway:{password}@postgres:5432/mlflow_auth",
    )


if __name__ == "__main__":
    main()
