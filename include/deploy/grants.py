"""Least privilege in PostgreSQL: one login role per component, each with only its grants.

==================  =====================================  =================================================
role                owns                                   may also
==================  =====================================  =================================================
``<p>_airflow``     ``<p>_airflow`` (metadata, Celery)      connect to ``<p>_serving``; read the prediction
                                                           log's tables there (not the API keys); insert
                                                           batch-scored rows; create and write the
                                                           monitor's table
``<p>_mlflow``      ``<p>_mlflow``, ``<p>_mlflow_auth``     nothing else
``<p>_serving``     ``<p>_serving`` (log, keys)             nothing else: no other database, no superuser
==================  =====================================  =================================================

No role is a superuser or may create roles or databases, and ``PUBLIC`` may not connect to any of the
stack's databases, so a component that is taken over reaches its own data only. ``make up`` runs
:func:`provision` as the server's administrator (``SLIPWAY_STACK_PG``); the compose stack does the same
in ``include/deploy/postgres-init.sh``. The service creates its tables at start and, as their owner,
lets Airflow's role read the log's (``SLIPWAY_SERVING_LOG_READERS``; never the API keys).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

#: component -> the databases (by purpose) it owns
OWNS = {"airflow": ("airflow",), "mlflow": ("mlflow", "mlflow_auth"), "serving": ("serving",)}
PASSWORD_SECRETS = {c: f"PG_{c.upper()}_PASSWORD" for c in OWNS}


def role(prefix: str, component: str) -> str:
    return f"{prefix}_{component}"


def component_url(
    admin_url: str, prefix: str, component: str, purpose: str, password: str, driver: str
) -> str:
    """``driver://<role>:<password>@host:port/<prefix>_<purpose>`` on the administrator's server."""
    parts = urlsplit(admin_url)
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    user = f"{quote(role(prefix, component), safe='')}:{quote(password, safe='')}"
    return f"{driver}://{user}@{host}{port}/{prefix}_{purpose}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _connect(admin_url: str, database: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(f"{admin_url.rstrip('/')}/{database}")
    conn.autocommit = True
    return conn


def _hand_over(cur: Any, owner: str) -> None:
    """Objects of the public schema the administrator created (a stack from before these roles) go to
    the database's owner, so the component can use what it made before."""
    cur.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') "
        "AND pg_get_userbyid(c.relowner) <> %s "
        # a serial or identity column's sequence follows its table
        "AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid "
        "AND d.deptype IN ('a', 'i')))",
        (owner,),
    )
    kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}
    for name, kind in cur.fetchall():
        cur.execute(f"ALTER {kinds[kind]} public.{_ident(name)} OWNER TO {_ident(owner)}")
    cur.execute(
        "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd') AND pg_get_userbyid(t.typowner) <> %s",
        (owner,),
    )
    for (name,) in cur.fetchall():
        cur.execute(f"ALTER TYPE public.{_ident(name)} OWNER TO {_ident(owner)}")


def provision(admin_url: str, prefix: str, passwords: dict[str, str]) -> None:
    """Create (or update) the roles and databases with their grants; idempotent."""
    conn = _connect(admin_url, "postgres")
    try:
        cur = conn.cursor()
        for component, purposes in OWNS.items():
            name = role(prefix, component)
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(
                f"{verb} ROLE {_ident(name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                "NOBYPASSRLS PASSWORD %s",
                (passwords[PASSWORD_SECRETS[component]],),
            )
            for purpose in purposes:
                db = f"{prefix}_{purpose}"
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone():
                    cur.execute(f"ALTER DATABASE {_ident(db)} OWNER TO {_ident(name)}")
                else:
                    cur.execute(f"CREATE DATABASE {_ident(db)} OWNER {_ident(name)}")
                cur.execute(f"REVOKE ALL ON DATABASE {_ident(db)} FROM PUBLIC")
                cur.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {_ident(db)} TO {_ident(name)}")
        serving_db = f"{prefix}_serving"
        cur.execute(f"GRANT CONNECT ON DATABASE {_ident(serving_db)} TO {_ident(role(prefix, 'airflow'))}")
    finally:
        conn.close()
    for component, purposes in OWNS.items():
        for purpose in purposes:
            conn = _connect(admin_url, f"{prefix}_{purpose}")
            try:
                cur = conn.cursor()
                owner = role(prefix, component)
                _hand_over(cur, owner)
                cur.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
                cur.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {_ident(owner)}")
                if purpose == "serving":  # the monitor's table is Airflow's own, beside the log
                    cur.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {_ident(role(prefix, 'airflow'))}")
            finally:
                conn.close()


def drop_roles(admin_url: str, prefix: str) -> None:
    """Drop the roles (after their databases: ``reset``)."""
    conn = _connect(admin_url, "postgres")
    try:
        cur = conn.cursor()
        for component in OWNS:
            cur.execute(f"DROP ROLE IF EXISTS {_ident(role(prefix, component))}")
    finally:
        conn.close()
