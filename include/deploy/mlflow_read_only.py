"""MLflow's basic-auth login with read-only users: the inference service reads the registry, nothing else.

MLflow's own permissions cover what exists (``default_permission = READ``: a user may read what it did
not create, and change nothing of it), but any user may *create* experiments and registered models
while workspaces are off. This authorization function (the auth configuration's
``authorization_function``, MLflow's extension point) is MLflow's basic auth plus one rule: a user
named in ``MLFLOW_READ_ONLY_USERS`` (``serving`` by default) may only read: ``GET``, ``HEAD`` and
the ``.../search`` queries, 403 for anything else.
"""

from __future__ import annotations

import json
import os

READ_METHODS = ("GET", "HEAD", "OPTIONS")


def read_only_users() -> set[str]:
    return {u.strip() for u in os.environ.get("MLFLOW_READ_ONLY_USERS", "serving").split(",") if u.strip()}


def is_read(method: str, path: str) -> bool:
    """A request that changes nothing: a read method, or a search (MLflow's searches are POSTs)."""
    return method.upper() in READ_METHODS or path.rstrip("/").endswith("/search")


def authenticate():  # -> werkzeug Authorization | flask Response, as MLflow expects
    from flask import make_response, request
    from mlflow.server.auth import authenticate_request_basic_auth

    result = authenticate_request_basic_auth()
    user = getattr(result, "username", None)
    if user is not None and user in read_only_users() and not is_read(request.method, request.path):
        response = make_response(
            json.dumps(
                {
                    "error_code": "PERMISSION_DENIED",
                    "message": f"user {user!r} is read-only here (MLFLOW_READ_ONLY_USERS)",
                }
            ),
            403,
        )
        response.mimetype = "application/json"
        return response
    return result
