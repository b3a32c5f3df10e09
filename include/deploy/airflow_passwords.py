"""Write Airflow's simple-auth passwords file from ``AIRFLOW_ADMIN_PASSWORD`` (mode 0600).

The api-server of the compose stack runs it before it starts (its entrypoint), and ``make up`` calls
:func:`write_passwords` itself: the admin password comes from a secret, never from Airflow's
generated default, and never reaches a command line.
"""

from __future__ import annotations

import json
import os

from include.deploy.private import write_private


def write_passwords(path: str, password: str, user: str = "admin") -> None:
    """``{user: password}`` as the file named by AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE."""
    if not password:
        raise SystemExit("AIRFLOW_ADMIN_PASSWORD is empty: set it from your secret store")
    write_private(path, json.dumps({user: password}))


def main() -> None:
    write_passwords(
        os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"],
        os.environ.get("AIRFLOW_ADMIN_PASSWORD", ""),
    )


if __name__ == "__main__":
    main()
