"""Write Airflow's simple-auth passwords file from ``AIRFLOW_ADMIN_PASSWORD`` (mode 0600).

The api-server of the compose stack runs it before it starts (its entrypoint), and ``make up`` calls
:func:`write_passwords` itself: the admin password comes from a secret, never from Airflow's
generated default, and never reaches a command line.
"""

from __future__ import annotations

import json
import os


def write_passwords(path: str, password: str, user: str = "admin") -> None:
    """``{user: password}`` as the file named by AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE."""
    if not password:
        raise SystemExit("AIRFLOW_ADMIN_PASSWORD is empty: set it from your secret store")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({user: password}, fh)
    os.chmod(path, 0o600)


def main() -> None:
    write_passwords(
        os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], os.environ.get("AIRFLOW_ADMIN_PASSWORD", "")
    )


if __name__ == "__main__":
    main()
