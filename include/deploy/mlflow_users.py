"""MLflow's users besides its admin, created (or their passwords reset) through its auth REST API.

- ``pipelines``: Airflow's tasks. Not an admin: it manages what it creates (its experiments, runs and
  registered models) and reads the rest.
- ``serving``: the inference service. Reads only: it cannot create, tag or delete anything.

Both follow from ``default_permission = READ`` in the auth configuration (mlflow_auth_config.py) and
MLflow granting MANAGE to whoever creates an experiment or a registered model. The admin's password
stays with the supervisor (``make up``) or the one-shot ``mlflow-users`` service (compose).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request

USERS = {"pipelines": "MLFLOW_PIPELINES_PASSWORD", "serving": "MLFLOW_SERVING_PASSWORD"}


def _call(url: str, admin_password: str, method: str, path: str, body: dict) -> tuple[int, str]:
    auth = base64.b64encode(f"admin:{admin_password}".encode()).decode()
    req = urllib.request.Request(
        f"{url.rstrip('/')}{path}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def ensure_users(url: str, admin_password: str, passwords: dict[str, str]) -> None:
    """Create each user of :data:`USERS` with its password, or set the password if it exists."""
    for user, secret in USERS.items():
        password = passwords[secret]
        status, text = _call(
            url,
            admin_password,
            "POST",
            "/api/2.0/mlflow/users/create",
            {"username": user, "password": password},
        )
        if status == 200:
            continue
        if "RESOURCE_ALREADY_EXISTS" not in text and "already exists" not in text:
            raise RuntimeError(f"MLflow refused to create user {user!r} ({status}): {text[:300]}")
        status, text = _call(
            url,
            admin_password,
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            {"username": user, "password": password},
        )
        if status != 200:
            raise RuntimeError(f"MLflow refused to set the password of {user!r} ({status}): {text[:300]}")


def main() -> None:
    """The compose stack's ``mlflow-users`` service: everything from its environment."""
    ensure_users(
        os.environ["MLFLOW_TRACKING_URI"],
        os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"],
        {secret: os.environ.get(secret, "") for secret in USERS.values()},
    )


if __name__ == "__main__":
    main()
