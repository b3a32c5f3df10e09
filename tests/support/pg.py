"""The machine's PostgreSQL (127.0.0.1:5432, trust auth) as tests use it: throwaway databases,
created and always dropped, every session on them ended first."""

from __future__ import annotations

from dataclasses import dataclass

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


@dataclass(frozen=True)
class PgDatabase:
    name: str
    url: str  # without a password


def pg_url(name: str, password: str | None = None) -> str:
    """The URL of database ``name`` on the machine's PostgreSQL (trust auth ignores ``password``)."""
    secret = f":{password}" if password else ""
    return f"postgresql://postgres{secret}@127.0.0.1:5432/{name}"


def pg_admin():
    """An autocommit connection to the server's ``postgres`` database (create, alter, drop)."""
    import psycopg2

    conn = psycopg2.connect(**PG_ADMIN, connect_timeout=5)
    conn.autocommit = True
    return conn


def pg_terminate_backends(cur, name: str) -> None:
    """End every other session on database ``name``."""
    cur.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )


def create_databases(*names: str) -> None:
    conn = pg_admin()
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def drop_databases(*names: str) -> None:
    """Drop ``names`` even if a test refused connections to one or left sessions open on it."""
    conn = pg_admin()
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s",
                    (name,),
                )
                if cur.fetchone() is None:
                    continue
                cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                pg_terminate_backends(cur, name)
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        conn.close()
