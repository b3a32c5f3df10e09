"""Write Airflow's simple-auth passwords file from secrets, one per user (mode 0600).

The users and their Airflow roles are ``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS`` (``name:role,...``;
:data:`USERS` by default): an ``admin``, an ``operator`` (op: runs pipelines, connections and pools),
an ``approver`` (user: triggers runs and answers Required Actions) and a ``viewer`` (read only). Each
user's password is the secret ``AIRFLOW_<NAME>_PASSWORD`` (``AIRFLOW_ADMIN_PASSWORD``, ...).

The api-server of the compose stack runs this before it starts (its entrypoint), and ``make up`` calls
:func:`write_passwords` itself: passwords come from secrets, never from Airflow's generated default,
and never reach a command line. For single sign-on, another auth manager replaces all of this
(docs/production.md).
"""

from __future__ import annotations

import json
import os
import re

from include.deploy.private import write_private

USERS = "admin:admin,operator:op,approver:user,viewer:viewer"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_ROLES = ("admin", "op", "user", "viewer")


def password_variable(user: str) -> str:
    """The secret holding ``user``'s password."""
    return f"AIRFLOW_{user.upper()}_PASSWORD"


def users(entries: str) -> dict[str, str]:
    """``{name: role}`` of ``name:role,...``; a clear error for a name or role Airflow would not take."""
    out: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in entries.split(","))):
        name, _, role = entry.partition(":")
        if not _NAME.fullmatch(name) or role.lower() not in _ROLES:
            raise SystemExit(
                f"Airflow user {entry!r}: write name:role, the name in lowercase letters, digits and '_' "
                f"(it names the secret {password_variable(name or 'NAME')}), the role one of {', '.join(_ROLES)}"
            )
        out[name] = role.lower()
    if not out:
        raise SystemExit("no Airflow users: set AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS, e.g. " + USERS)
    return out


def passwords_from(env: dict[str, str] | os._Environ[str], names: list[str]) -> dict[str, str]:
    """Each user's password from its secret; names every missing one."""
    missing = [password_variable(n) for n in names if not env.get(password_variable(n))]
    if missing:
        raise SystemExit(f"{', '.join(missing)} empty: set each from your secret store")
    return {n: env[password_variable(n)] for n in names}


def write_passwords(path: str, passwords: dict[str, str]) -> None:
    """``{user: password}`` as the file named by AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE."""
    empty = [u for u, p in passwords.items() if not p]
    if empty or not passwords:
        raise SystemExit(f"empty Airflow password for {empty or 'every user'}: set it from your secret store")
    write_private(path, json.dumps(passwords))


def main() -> None:
    names = list(users(os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", USERS)))
    write_passwords(
        os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], passwords_from(os.environ, names)
    )


if __name__ == "__main__":
    main()
