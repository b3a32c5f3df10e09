"""The group-commit writer: a prediction is answered only after its row is committed, and concurrent
requests share one commit, so durability costs one fsync per batch, not per request.

On SQLite, :meth:`PredictionLog.record` commits on the caller's event loop, with its own
connection: the rows that queued while the previous commit ran go into the next one. A writer
thread with its own connection commits :meth:`PredictionLog.record_sync`'s rows, and every row on
PostgreSQL (a network round trip must not hold the loop). Worker processes sharing a SQLite file
take turns through an flock on ``<database>.write-lock``. Readers (``feedback``, ``get``, ...) use a
small pool of their own connections. At most ``max_queue`` rows wait for a commit: beyond that
``record`` refuses at once with :class:`LogOverloaded` (the caller answers 503 with Retry-After).

What survives a killed process or a power loss, per database: docs/serving.md, "The prediction log".
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from time import monotonic, perf_counter
from typing import Any

from include.database import Database, database
from include.prediction_log import labels, reads
from include.prediction_log.errors import LogOverloaded, LogUnavailable
from include.prediction_log.rows import (
    COLUMNS,
    FailureRow,
    PredictionRow,
    failure_params,
    iso_utc,
    row_params,
)
from include.prediction_log.schema import create_schema, rollback_quietly

log = logging.getLogger(__name__)

_MAX_IDLE_READERS = 4
_LOCK_RETRY_S = 0.0005  # the event loop's next try for the SQLite write lock another process holds
_BUSY_RETRY_S = 0.005  # ... and for the database, when a writer outside Slipway's lock holds it
_SQLITE_BUSY = frozenset({5, 6, 261, 517})  # SQLITE_BUSY, SQLITE_LOCKED, BUSY_RECOVERY, BUSY_SNAPSHOT


class _Busy(Exception):
    """BEGIN found the SQLite database locked by a writer outside the write lock; nothing was written."""


#: Rows per SQLite INSERT statement (x 12 columns = 768 variables, under SQLite's oldest limit of 999).
_ROWS_PER_STATEMENT = 64


def _insert_rows(conn: Any, sql: str, rows: Sequence[tuple]) -> None:
    """Insert ``rows`` with one multi-row ``INSERT ... VALUES (...), (...)`` per 64 rows (SQLite).

    ``executemany`` steps the statement once per row, and the sqlite3 module releases and re-takes
    the GIL around every step: under load the writer thread then waits for the event loop's thread
    at each row (measured: 3 rows took ~800 us in the service, ~40 us alone). One statement per
    chunk takes the GIL back once. ``sql`` ends with one ``(?, ...)`` group, which is repeated.
    """
    head, _, group = sql.rpartition(" VALUES ")
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        conn.execute(f"{head} VALUES {', '.join([group] * len(chunk))}", [v for row in chunk for v in row])


def _first_line(exc: BaseException) -> str:
    """The error's headline only: PostgreSQL puts row values in DETAIL lines, which must not leak."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # the connection is being discarded because it is already broken
        pass


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled (client went away)
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class _AsyncWaiter:
    __slots__ = ("_loop", "_future")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
        self._loop = loop
        self._future = future

    def resolve(self, error: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(_settle, self._future, error)
        except RuntimeError:  # the loop is closed: nobody is waiting for this answer any more
            pass


class _LoopWaiter:
    """A waiter resolved on its own event loop's thread (the SQLite commit runs there)."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future) -> None:
        self._future = future

    def resolve(self, error: BaseException | None) -> None:
        try:
            _settle(self._future, error)
        except RuntimeError:  # its loop is closed: nobody is waiting for this answer any more
            pass


class _SyncWaiter:
    __slots__ = ("_event", "error")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.error: BaseException | None = None

    def resolve(self, error: BaseException | None) -> None:
        self.error = error
        self._event.set()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)


@dataclass(frozen=True)
class _Pending:
    """One record() call: its rows commit together or not at all."""

    params: list[tuple]
    waiter: _AsyncWaiter | _LoopWaiter | _SyncWaiter
    failures: list[tuple] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.params) + len(self.failures)


_STOP = None  # queue sentinel: everything put before it has been taken when the writer sees it


class PredictionLog:
    """The prediction and feedback tables, with group commit (on the event loop for SQLite, in a
    writer thread otherwise).

    Batching needs no timer: while one commit is being made, the rows that arrive queue up and go
    into the next one, so the batch grows with the load by itself. ``max_wait_ms`` > 0 adds a wait
    for more rows before each commit; measured with 8 concurrent clients on SQLite (synchronous
    FULL), a 2 ms wait cut the throughput from ~8,900 to ~3,000 rows/s, so the default is 0 (it
    applies to the writer thread). ``lock_timeout_s``: how long record()'s rows wait for a SQLite
    database that a writer outside Slipway's lock holds before their requests are refused.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        max_queue: int = 20000,
        max_batch: int = 1000,
        max_wait_ms: float = 0.0,
        lock_timeout_s: float = 5.0,
    ) -> None:
        if max_queue < 1 or max_batch < 1 or max_wait_ms < 0 or lock_timeout_s <= 0:
            raise ValueError(
                f"PredictionLog needs max_queue >= 1, max_batch >= 1, max_wait_ms >= 0 and lock_timeout_s > 0, "
                f"got {max_queue}, {max_batch}, {max_wait_ms}, {lock_timeout_s}"
            )
        self._lock_timeout_s = lock_timeout_s
        self._db: Database = database(url)
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._lock = threading.Lock()  # admission: depth check, enqueue, started/closing flags
        self._depth = 0
        self._started = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._conn: Any = None  # the writer's connection; touched by the writer thread only
        self._lock_fd: int | None = None  # the writer's cross-process lock file (SQLite)
        # SQLite commits record()'s rows on the caller's event loop (see _flush_on_loop); these are
        # touched by that loop's thread only.
        self._on_loop = self._db.dialect == "sqlite"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_pending: list[_Pending] = []
        self._loop_flush: asyncio.Handle | None = None
        self._loop_conn: Any = None
        self._loop_lock_fd: int | None = None
        self._loop_busy_since: float | None = None
        self._idle: list[Any] = []
        self._pool_lock = threading.Lock()
        self._healthy = False
        self._reason = "prediction log not started"
        # Counters for metrics, written by the writer thread (``overloaded`` under the admission lock).
        self.rows_written = 0
        self.commits = 0
        self.commit_failures = 0
        self.overloaded = 0
        # Seconds each successful commit took, newest last; the service's /metrics drains it into a
        # histogram (bounded: without scrapes the oldest are dropped).
        self.commit_seconds: deque[float] = deque(maxlen=4096)
        if self._db.dialect == "sqlite":
            import sqlite3

            self._db_errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
            self._integrity_error: type[BaseException] = sqlite3.IntegrityError
        else:
            import psycopg2

            self._db_errors = (psycopg2.Error,)
            self._integrity_error = psycopg2.IntegrityError
        columns = ", ".join(COLUMNS)
        if self._db.dialect == "sqlite":
            marks = ", ".join("?" for _ in COLUMNS)
            self._insert_sql = f"INSERT INTO slipway_predictions ({columns}) VALUES ({marks})"
        else:
            self._insert_sql = f"INSERT INTO slipway_predictions ({columns}) VALUES %s"
        failure_columns = "request_id, variant, pipeline, model_version, served, reason, created_at, key_id"
        values = "(?, ?, ?, ?, ?, ?, ?, ?)" if self._db.dialect == "sqlite" else "%s"
        self._failure_sql = f"INSERT INTO slipway_failures ({failure_columns}) VALUES {values}"

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Create the tables if missing (safe when several processes start at once) and start the writer."""
        with self._lock:
            if self._closing:
                raise RuntimeError("this PredictionLog was closed; create a new one to log again")
            if self._started:
                return
        try:
            conn = self._db.connect()
        except self._db_errors as exc:
            raise LogUnavailable(
                f"cannot open the serving database {self._db.redacted()} ({_first_line(exc)}); check that it "
                "is reachable and SLIPWAY_SERVING_DB is right"
            ) from exc
        try:
            readers = os.environ.get("SLIPWAY_SERVING_LOG_READERS", "")
            create_schema(self._db, conn, [r.strip() for r in readers.split(",") if r.strip()])
        except self._db_errors as exc:
            _close_quietly(conn)
            raise LogUnavailable(
                f"cannot create the prediction-log tables in {self._db.redacted()} ({_first_line(exc)}); "
                "the service's database user needs CREATE on its schema"
            ) from exc
        except BaseException:
            _close_quietly(conn)
            raise
        # The schema connection becomes the writer's: a second open would only repeat the handshake.
        self._conn = conn
        with self._lock:
            if self._started:  # another thread started it meanwhile
                _close_quietly(conn)
                self._conn = None
                return
            self._healthy, self._reason = True, "ok"
            self._thread = threading.Thread(target=self._run, name="slipway-predlog-writer", daemon=True)
            self._thread.start()
            self._started = True

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new rows, commit everything already queued, stop the writer and close connections."""
        with self._lock:
            already = self._closing
            self._closing = True
            if not already and self._started:
                self._queue.put(_STOP)
        self._close_loop_writer(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning(
                    "prediction log: %d rows were still waiting for %s after %.0f s at shutdown; their "
                    "requests were not answered",
                    self._depth,
                    self._db.redacted(),
                    timeout_s,
                )
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)
        self._healthy, self._reason = False, "prediction log closed"

    def _close_loop_writer(self, timeout_s: float) -> None:
        """Commit what record() left on its event loop and close that loop's connection, on the loop's
        thread when it still runs (the connection is that thread's)."""
        loop = self._loop
        if loop is None:
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here or not loop.is_running():
            self._close_on_loop()
            return
        done = threading.Event()

        def close_then_signal() -> None:
            try:
                self._close_on_loop()
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(close_then_signal)
        except RuntimeError:  # closed meanwhile: no thread uses the connection any more
            self._close_on_loop()
            return
        if not done.wait(timeout_s):
            log.warning("prediction log: the event loop did not close its writer within %.0f s", timeout_s)

    def _close_on_loop(self) -> None:
        if self._loop_flush is not None:
            self._loop_flush.cancel()
            self._loop_flush = None
        if self._loop_pending:
            if self._loop_lock_fd is None:
                self._loop_lock_fd = self._open_lock_file()
            batch, self._loop_pending = self._loop_pending, []
            with self._write_lock(self._loop_lock_fd):  # shutting down: waiting for it is fine
                self._commit(batch, on_loop=True)
        self._drop_writer("_loop_conn", "_loop_lock_fd")

    def _drop_writer(self, conn_attr: str, fd_attr: str) -> None:
        """Close one writer's connection and lock file (the writer thread's, or the loop's)."""
        conn = getattr(self, conn_attr)
        if conn is not None:
            _close_quietly(conn)
            setattr(self, conn_attr, None)
        fd = getattr(self, fd_attr)
        if fd is not None:
            os.close(fd)
            setattr(self, fd_attr, None)

    # ---------------------------------------------------------------- recording

    def _enqueue(
        self,
        rows: list[PredictionRow],
        waiter: _AsyncWaiter | _SyncWaiter,
        failures: Sequence[FailureRow] = (),
    ) -> None:
        self._queue.put(self._admitted(rows, waiter, failures))

    def _admitted(self, rows: list[PredictionRow], waiter, failures: Sequence[FailureRow]) -> _Pending:
        """The rows as one pending commit, counted as waiting; refused when the log is closed or full."""
        item = _Pending([row_params(row) for row in rows], waiter, [failure_params(row) for row in failures])
        n = item.size
        with self._lock:
            if self._closing or not self._started:
                raise LogUnavailable(
                    "the prediction log is not running (not started, or shutting down); predictions "
                    "cannot be logged, so they are not answered"
                )
            # A batch larger than max_queue is admitted only into an empty queue: refusing it always
            # would make such a request impossible, and admitting it alone still bounds memory.
            if self._depth >= self._max_queue or (self._depth and self._depth + n > self._max_queue):
                self.overloaded += 1
                raise LogOverloaded(
                    f"the prediction log has {self._depth} rows waiting for {self._db.redacted()} "
                    f"(limit {self._max_queue}); retry in {LogOverloaded.retry_after_s} s. If this "
                    "persists, the database cannot keep up with the request rate"
                )
            self._depth += n
        return item

    async def record(self, rows: list[PredictionRow], failures: Sequence[FailureRow] = ()) -> None:
        """Return once ``rows`` (and ``failures``) are committed; :class:`LogOverloaded` at once if the
        queue is full, :class:`LogUnavailable` if their commit failed."""
        if not rows and not failures:
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._on_loop and self._loop is not loop:
            self._adopt_loop(loop)
        if self._on_loop and self._loop is loop:
            self._loop_pending.append(self._admitted(rows, _LoopWaiter(future), failures))
            if self._loop_flush is None:
                self._loop_flush = loop.call_soon(self._flush_on_loop)
        else:  # PostgreSQL, or a second event loop in this process: the writer thread
            self._enqueue(rows, _AsyncWaiter(loop, future), failures)
        await future

    def _adopt_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The first event loop to record commits its own rows; another takes over once it is closed
        (one loop at a time: the SQLite connection must never be used by two threads at once)."""
        with self._lock:
            owner = self._loop
            if owner is not None and not owner.is_closed():
                return
            self._loop = loop
            self._loop_flush = None  # a handle of the closed loop never runs
            if self._loop_pending:  # left by the closed loop: commit them (nobody awaits the answer)
                self._loop_flush = loop.call_soon(self._flush_on_loop)

    def _flush_on_loop(self) -> None:
        """Commit every row record() queued on this loop since the last commit, in one transaction.

        SQLite's commit runs on the event loop's own thread. Handing it to the writer thread costs
        a GIL hand-over at every statement: the sqlite3 module releases the GIL around each step and
        the writer then waits for the busy event loop to give it back, while holding the write lock
        that other worker processes wait for (measured with two workers: ~800 us per commit of 2-3
        rows, 2,600 rows/s; on the loop ~250 us, 4,200 rows/s). The loop is blocked for the commit
        (its fsync included) but it has nothing else to do for these requests: they wait for it.
        When another process holds the write lock, the loop goes on serving and tries again 0.5 ms
        later, with the rows that arrived meanwhile in the same commit.
        """
        self._loop_flush = None
        loop = self._loop
        if not self._loop_pending or loop is None:
            return
        if self._loop_lock_fd is None:
            self._loop_lock_fd = self._open_lock_file()
        import fcntl

        try:
            fcntl.flock(self._loop_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._loop_flush = loop.call_later(_LOCK_RETRY_S, self._flush_on_loop)
            return
        batch, self._loop_pending = self._loop_pending, []
        try:
            self._commit(batch, on_loop=True)
        except _Busy as exc:  # a writer outside Slipway's lock holds the database: wait, serving meanwhile
            now = monotonic()
            self._loop_busy_since = self._loop_busy_since or now
            if now - self._loop_busy_since < self._lock_timeout_s:
                self._loop_pending[:0] = batch
                self._loop_flush = loop.call_later(_BUSY_RETRY_S, self._flush_on_loop)
            else:
                self._loop_busy_since = None
                self._failed(batch, exc.__cause__ or exc)
            return
        finally:
            fcntl.flock(self._loop_lock_fd, fcntl.LOCK_UN)
        self._loop_busy_since = None

    def record_sync(self, rows: list[PredictionRow], timeout_s: float = 30.0) -> None:
        """:meth:`record` for threads: blocks until the rows are committed (or ``timeout_s`` passes)."""
        if not rows:
            return
        waiter = _SyncWaiter()
        self._enqueue(rows, waiter)
        if not waiter.wait(timeout_s):
            raise LogUnavailable(
                f"no commit from {self._db.redacted()} within {timeout_s:.0f} s; the rows may still be "
                "written, but the prediction must not be answered"
            )
        if waiter.error is not None:
            raise waiter.error

    @property
    def database(self) -> Database:
        """Where the log is (``.redacted()`` for messages)."""
        return self._db

    @property
    def queue_depth(self) -> int:
        """Rows accepted by record() and not yet committed or failed."""
        return self._depth

    def status(self) -> tuple[bool, str]:
        """(healthy, reason): unhealthy after a failed commit until a commit succeeds."""
        return self._healthy, self._reason

    # ---------------------------------------------------------------- writer thread

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            n = first.size
            deadline = monotonic() + self._max_wait_s
            while n < self._max_batch:
                remaining = deadline - monotonic()
                try:
                    # After the wait window, still take whatever is already queued: it costs no latency.
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                n += item.size
            self._commit(batch)
        self._drop_writer("_conn", "_lock_fd")

    def _commit(self, batch: list[_Pending], on_loop: bool = False) -> None:
        started = perf_counter()
        try:
            self._insert(
                [p for item in batch for p in item.params],
                [f for item in batch for f in item.failures],
                on_loop=on_loop,
            )
        except _Busy:
            raise  # nothing was written: the caller tries again
        except Exception as exc:  # every failure is reported to the waiters below
            if isinstance(exc, self._integrity_error) and len(batch) > 1:
                # A duplicate request id must fail its own request, not the strangers sharing its commit.
                self._commit_one_by_one(batch, on_loop)
            elif isinstance(exc, self._integrity_error):
                self._resolve(batch, self._duplicate_error())
            else:
                self._failed(batch, exc)
            return
        self.commit_seconds.append(perf_counter() - started)
        self._succeeded(batch)

    def _commit_one_by_one(self, batch: list[_Pending], on_loop: bool) -> None:
        for i, item in enumerate(batch):
            try:
                self._insert(item.params, item.failures, on_loop=on_loop)
            except Exception as exc:  # reported to the waiters
                if isinstance(exc, self._integrity_error):
                    self._resolve([item], self._duplicate_error())
                    continue
                self._failed(batch[i:], exc)
                return
            self._succeeded([item])

    def _insert(self, params: list[tuple], failures: Sequence[tuple] = (), *, on_loop: bool = False) -> None:
        """One transaction: all of ``params`` and ``failures`` or none. Drops the connection after a database error,
        so the next batch reconnects (a PostgreSQL restart costs one failed batch, not the service).

        ``on_loop``: the event loop's SQLite connection, whose caller already holds the write lock."""
        attr = "_loop_conn" if on_loop else "_conn"
        conn = getattr(self, attr)
        if conn is None:
            conn = self._db.connect()
            if on_loop:  # never sleep in SQLite's busy handler on the event loop: _Busy, and retry
                conn.execute("PRAGMA busy_timeout=0")
            setattr(self, attr, conn)
        try:
            if self._db.dialect == "sqlite":
                # Several worker processes share the file. SQLite's own busy handler sleeps with a
                # backoff up to 100 ms while another process commits (p99 of ~700 ms with two
                # workers); an flock queues the writers in the kernel and wakes the next at once.
                with nullcontext() if on_loop else self._write_lock():
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                    except self._db_errors as exc:
                        if on_loop and getattr(exc, "sqlite_errorcode", None) in _SQLITE_BUSY:
                            raise _Busy() from exc
                        raise
                    _insert_rows(conn, self._insert_sql, params)
                    _insert_rows(conn, self._failure_sql, failures)
                    conn.execute("COMMIT")
            else:
                from psycopg2.extras import execute_values

                with conn.cursor() as cur:
                    if params:
                        execute_values(cur, self._insert_sql, params, page_size=len(params))
                    if failures:
                        execute_values(cur, self._failure_sql, failures, page_size=len(failures))
                conn.commit()
        except Exception as exc:
            rollback_quietly(self._db, conn)
            if not isinstance(exc, self._integrity_error | _Busy):
                _close_quietly(conn)
                setattr(self, attr, None)
            raise

    def _open_lock_file(self) -> int:
        """A new open file description of ``<database>.write-lock``: flock excludes between
        descriptions, so each writer (the thread, the event loop) opens its own."""
        path = self._db.url.split("sqlite:///", 1)[1] + ".write-lock"
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def _write_lock(self, fd: int | None = None):
        """An exclusive lock on ``<database>.write-lock`` across processes (SQLite only); the writer
        thread's own descriptor unless ``fd`` is given."""
        import fcntl

        if fd is None:
            if self._lock_fd is None:
                self._lock_fd = self._open_lock_file()
            fd = self._lock_fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _duplicate_error(self) -> LogUnavailable:
        return LogUnavailable(
            "these rows were not logged: a row with the same request_id and variant is already in the "
            "prediction log; every answered row needs a fresh request id (new_request_id)"
        )

    def _succeeded(self, items: list[_Pending]) -> None:
        n = sum(item.size for item in items)
        self.rows_written += n
        self.commits += 1
        if not self._healthy:
            log.info("prediction log: commits to %s succeed again", self._db.redacted())
        self._healthy, self._reason = True, "ok"
        self._resolve(items, None)

    def _failed(self, items: list[_Pending], exc: BaseException) -> None:
        reason = (
            f"commit to the prediction log at {self._db.redacted()} failed ({_first_line(exc)}); "
            "predictions are refused until a commit succeeds: check that the database is up and reachable"
        )
        self.commit_failures += 1
        if self._healthy:
            log.warning("prediction log: %s", reason)
        self._healthy, self._reason = False, reason
        self._resolve(items, LogUnavailable(reason))

    def _resolve(self, items: list[_Pending], error: LogUnavailable | None) -> None:
        # Depth first: a caller that sees its answer must also see the queue without its rows.
        n = sum(item.size for item in items)
        with self._lock:
            self._depth -= n
        for item in items:
            # One exception object per waiter: a shared one would collect every raiser's traceback.
            item.waiter.resolve(None if error is None else LogUnavailable(str(error)))

    # ---------------------------------------------------------------- readers

    @contextmanager
    def _reader(self) -> Iterator[Any]:
        """A pooled autocommit connection; a database error discards it and becomes LogUnavailable."""
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self._db.connect()
                if self._db.dialect == "postgresql":
                    conn.autocommit = True  # each statement is its own transaction; no idle snapshots
            yield conn
        except self._db_errors as exc:
            if conn is not None:
                _close_quietly(conn)
            raise LogUnavailable(
                f"the prediction log at {self._db.redacted()} cannot be read ({_first_line(exc)}); check "
                "that the database is up and reachable"
            ) from exc
        except BaseException:
            if conn is not None:
                _close_quietly(conn)
            raise
        with self._pool_lock:
            if len(self._idle) < _MAX_IDLE_READERS and not self._closing:
                self._idle.append(conn)
                return
        _close_quietly(conn)

    def _query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._reader() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql, params)
                return cur.fetchall()
            finally:
                cur.close()

    def feedback(
        self,
        request_id: str,
        label: float,
        *,
        pipeline: str | None = None,
        at: datetime | None = None,
        key_id: str | None = None,
    ) -> str:
        """Attach a write-once label to a logged request (see :func:`labels.record_label`)."""
        return labels.record_label(
            self._reader, self._db.param, request_id, label, pipeline=pipeline, at=at, key_id=key_id
        )

    def labels_since(self, pipeline: str, key_id: str, since: datetime) -> int:
        """Labels ``key_id`` recorded for ``pipeline`` since ``since`` (the feedback cap)."""
        return labels.labels_since(self._query, self._db.param, pipeline, key_id, iso_utc(since, "since"))

    def get(self, request_id: str) -> list[dict]:
        """The logged rows of a request, each with its label (see :func:`reads.logged`)."""
        return reads.logged(self._query, self._db.param, request_id)

    def count(self, pipeline: str | None = None) -> int:
        """Logged rows (served and shadow), of one pipeline or all."""
        return reads.count(self._query, self._db.param, pipeline)

    def request_ids(self, pipeline: str | None = None) -> set[str]:
        """Every logged request id, of one pipeline or all (tests and audits; not for large tables)."""
        return reads.request_ids(self._query, self._db.param, pipeline)
