"""The service's SQL database (prediction log, feedback, API keys): SQLite by default, PostgreSQL
in production. Plain DB-API connections (``sqlite3``, ``psycopg2``): the log's group commit is the
hot path, and one small dialect switch is all the portability it needs.

URLs: ``sqlite:////abs/path/serving.db`` (or ``sqlite:///relative.db``) and
``postgresql://user[:password]@host:port/dbname`` (``postgresql+psycopg2://`` is accepted too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class DatabaseUrlError(ValueError):
    """The serving database URL names no supported backend."""


@dataclass(frozen=True)
class Database:
    """Where the service's tables live, and how to open a connection to them."""

    url: str
    dialect: str  # "sqlite" | "postgresql"

    @property
    def param(self) -> str:
        """The DB-API placeholder of the dialect."""
        return "?" if self.dialect == "sqlite" else "%s"

    def connect(self, timeout_s: float = 5.0):
        """A new connection (not shared between threads). SQLite: WAL, synchronous=FULL."""
        if self.dialect == "sqlite":
            import sqlite3

            path = self.url.split("sqlite:///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
            # WAL: readers never block the writer; FULL: a committed transaction survives power loss.
            _set_wal(conn, timeout_s)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            return conn
        import psycopg2

        dsn = self.url.replace("postgresql+psycopg2://", "postgresql://", 1)
        conn = psycopg2.connect(dsn, connect_timeout=max(1, int(timeout_s)))
        conn.autocommit = False
        return conn

    @contextmanager
    def reading(self) -> Iterator:
        """A connection for reads; closed at the end (a PostgreSQL snapshot rolled back first)."""
        conn = self.connect()
        try:
            yield conn
        finally:
            if self.dialect == "postgresql":
                conn.rollback()
            conn.close()

    @contextmanager
    def writing(self) -> Iterator:
        """A connection inside one transaction: committed at the end, rolled back on any error."""
        conn = self.connect()
        try:
            if self.dialect == "sqlite":
                conn.execute("BEGIN IMMEDIATE")  # autocommit connections: make the statements one unit
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def redacted(self) -> str:
        """The URL without its password, for logs and error messages."""
        parts = urlsplit(self.url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            return parts._replace(netloc=netloc).geturl()
        return self.url


def missing_table(exc: BaseException, table: str) -> bool:
    """Whether ``exc`` says that ``table`` (or, for a prefix like ``slipway_``, one of its tables)
    does not exist yet: PostgreSQL's undefined-table error (SQLSTATE 42P01), SQLite's "no such
    table" (SQLite gives no code of its own for it, only the message)."""
    text = str(exc)
    if table not in text:
        return False
    return getattr(exc, "pgcode", None) == "42P01" or "no such table" in text


def _set_wal(conn, timeout_s: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock: on a fresh file,
    processes starting at once all switch the mode, and that switch answers "database is locked" at
    once instead of waiting for busy_timeout (seen with 8 service workers starting together)."""
    import sqlite3
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                conn.close()
                raise
            time.sleep(0.01)


def database(url: str | None = None) -> Database:
    """The serving database: ``url``, else ``SLIPWAY_SERVING_DB``, else ``<home>/serving/serving.db``."""
    if url is None:
        url = os.environ.get("SLIPWAY_SERVING_DB")
    if not url:
        from include.settings import get_settings

        url = f"sqlite:///{get_settings().home / 'serving' / 'serving.db'}"
    if url.startswith("sqlite:///"):
        return Database(url, "sqlite")
    if url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
        return Database(url.replace("postgres://", "postgresql://", 1), "postgresql")
    raise DatabaseUrlError(
        f"SLIPWAY_SERVING_DB must be sqlite:////path/to/serving.db or postgresql://user@host:port/db, got "
        f"{url.split('://', 1)[0]}://…; set it to one of those"
    )


class LockTimeout(TimeoutError):
    """A named lock was held by another process for longer than the caller would wait."""


@contextmanager
def named_lock(name: str, db_url: str | None = None, timeout_s: float = 120.0) -> Iterator[None]:
    """Hold the lock ``name`` across processes and machines: PostgreSQL's ``pg_advisory_lock`` (every
    worker and replica shares the serving database), or an ``flock`` beside the SQLite file.
    Raises :class:`LockTimeout` after ``timeout_s``."""
    import hashlib
    import time

    db = database(db_url)
    if db.dialect == "sqlite":
        import fcntl

        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]
        path = db.url.split("sqlite:///", 1)[1] + f".{safe}.lock"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeout(f"the lock {name!r} has been held for {timeout_s:.0f} s") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
        return
    key = int.from_bytes(hashlib.sha256(f"slipway:{name}".encode()).digest()[:8], "big", signed=True)
    conn = db.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
            try:
                cur.execute("SELECT pg_advisory_lock(%s)", (key,))
            except Exception as exc:
                if getattr(exc, "pgcode", None) == "57014":  # query_canceled: the statement timeout
                    raise LockTimeout(f"the lock {name!r} has been held for {timeout_s:.0f} s") from exc
                raise
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()
