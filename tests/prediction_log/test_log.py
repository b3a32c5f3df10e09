"""The prediction log on real databases: group commit, feedback rules, overload, outages, SIGKILL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from include.prediction_log.errors import ConflictingLabel, LogOverloaded, LogUnavailable, UnknownRequest
from include.prediction_log.rows import PredictionRow, new_request_id
from include.prediction_log.schema import SCHEMA_VERSION
from include.prediction_log.writer import PredictionLog
from tests.support.pg import pg_admin, pg_terminate_backends, pg_url
from tests.support.processes import ROOT

PROJECT_ROOT = ROOT
PG_PASSWORD = "not-a-real-secret"  # put in a URL: trust auth ignores it; it must never be echoed


def make_row(request_id: str | None = None, *, variant: str = "champion", pipeline: str = "telco_churn"):
    return PredictionRow(
        request_id=request_id or uuid.uuid4().hex,
        pipeline=pipeline,
        entity_key="3f2a9c",
        model_version=3,
        variant=variant,
        served=variant == "champion",
        inputs={"tenure": 12, "contract": "Month-to-month", "monthly_charges": 70.35},
        probability=0.62,
        decision=1,
        latency_ms=1.7,
        created_at=datetime.now(UTC),
    )


def test_request_ids_are_uuid7_in_time_order():
    import time

    before = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert len(rid) == 32 and parsed.hex == rid
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= int(rid[:12], 16) <= after  # the first 48 bits: Unix milliseconds
    assert [rid[:12] for rid in ids] == sorted(rid[:12] for rid in ids)


@contextmanager
def sqlite_log_and_blocker(tmp_path, **kwargs):
    """A started SQLite log and a second connection to its file, to hold the database's lock."""
    path = tmp_path / "serving.db"
    log = PredictionLog(f"sqlite:///{path}", **kwargs)
    log.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        yield log, blocker
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
        log.close()


@pytest.fixture
def plog(log_url):
    log = PredictionLog(log_url)
    log.start()
    yield log
    log.close()


def test_concurrent_records_share_commits_and_all_land(plog):
    async def client(ids: list[str]) -> None:
        for _ in range(10):
            row = make_row()
            await plog.record([row])
            ids.append(row.request_id)

    ids: list[str] = []

    async def main() -> None:
        await asyncio.gather(*(client(ids) for _ in range(50)))

    asyncio.run(main())
    assert len(ids) == 500
    assert plog.request_ids() == set(ids)
    assert plog.count("telco_churn") == 500
    assert plog.rows_written == 500
    assert plog.commits < 500, "each row had its own commit: no group commit happened"
    assert plog.queue_depth == 0
    assert plog.status() == (True, "ok")


def test_served_and_shadow_rows_of_a_request_commit_together_with_their_label(plog):
    rid = uuid.uuid4().hex
    plog.record_sync([make_row(rid), make_row(rid, variant="challenger")])
    assert plog.feedback(rid, 0) == "recorded"
    rows = plog.get(rid)
    assert [(r["variant"], r["served"], r["label"]) for r in rows] == [
        ("champion", True, 0),
        ("challenger", False, 0),
    ]
    assert rows[0]["inputs"] == {"tenure": 12, "contract": "Month-to-month", "monthly_charges": 70.35}
    assert rows[0]["created_at"].endswith("+00:00")
    assert plog.get(uuid.uuid4().hex) == []


def test_the_same_label_twice_is_recorded_once(plog):
    rid = uuid.uuid4().hex
    plog.record_sync([make_row(rid)])
    assert plog.feedback(rid, 1, pipeline="telco_churn") == "recorded"
    assert plog.feedback(rid, 1) == "unchanged"
    assert plog.get(rid)[0]["label"] == 1


def test_a_conflicting_label_is_refused_and_the_first_one_kept(plog):
    rid = uuid.uuid4().hex
    plog.record_sync([make_row(rid)])
    plog.feedback(rid, 1)
    with pytest.raises(ConflictingLabel, match="write-once"):
        plog.feedback(rid, 0)
    assert plog.get(rid)[0]["label"] == 1


def test_feedback_for_an_unknown_request_is_refused(plog):
    rid = uuid.uuid4().hex
    plog.record_sync([make_row(rid)])
    with pytest.raises(UnknownRequest):
        plog.feedback(uuid.uuid4().hex, 1)
    with pytest.raises(UnknownRequest):  # logged, but for another pipeline
        plog.feedback(rid, 1, pipeline="credit_default")
    # What a label may be is the task's (the service checks it); the log refuses only a non-number.
    for bad in (float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="label must be a finite number"):
            plog.feedback(rid, bad)
    assert plog.get(rid)[0]["label"] is None


def test_a_label_a_year_late_is_accepted(plog):
    rid = uuid.uuid4().hex
    plog.record_sync([make_row(rid)])
    later = datetime.now(UTC) + timedelta(days=365)
    assert plog.feedback(rid, 0, at=later) == "recorded"
    (row,) = plog.get(rid)
    assert row["label"] == 0
    assert row["label_received_at"] == later.isoformat(timespec="microseconds")


def test_feedback_race_between_two_logs_agrees_on_one_label(log_url):
    """Two service processes (two logs, two pools) labelling the same request at once."""
    logs = [PredictionLog(log_url), PredictionLog(log_url)]
    for log in logs:
        log.start()
    try:
        for _ in range(5):
            rid = uuid.uuid4().hex
            logs[0].record_sync([make_row(rid)])
            results: list[tuple[int, str]] = []
            barrier = threading.Barrier(4)

            def label(log: PredictionLog, value: int, rid=rid, results=results, barrier=barrier) -> None:
                barrier.wait()
                try:
                    results.append((value, log.feedback(rid, value)))
                except ConflictingLabel:
                    results.append((value, "conflict"))

            threads = [threading.Thread(target=label, args=(logs[i % 2], i % 2)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            # Exactly one caller won; the other with the same label saw "unchanged", the two with the
            # other label saw the conflict, and the stored label is the winner's.
            assert sorted(outcome for _, outcome in results) == [
                "conflict",
                "conflict",
                "recorded",
                "unchanged",
            ]
            (winner,) = {value for value, outcome in results if outcome in ("recorded", "unchanged")}
            assert logs[1].get(rid)[0]["label"] == winner
    finally:
        for log in logs:
            log.close()


def test_bad_rows_fail_their_own_request_before_queueing(plog):
    naive = dataclasses.replace(make_row(), created_at=datetime.now())
    with pytest.raises(ValueError, match="timezone-aware"):
        plog.record_sync([naive])
    assert plog.queue_depth == 0
    assert plog.count() == 0


def test_a_duplicate_request_id_fails_alone_not_the_requests_sharing_its_commit(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'serving.db'}", max_wait_ms=50)
    log.start()
    try:
        dup = uuid.uuid4().hex
        log.record_sync([make_row(dup)])

        async def main():
            return await asyncio.gather(
                *(log.record([make_row()]) for _ in range(5)),
                log.record([make_row(dup)]),
                return_exceptions=True,
            )

        results = asyncio.run(main())
        assert results[:5] == [None] * 5
        assert isinstance(results[5], LogUnavailable)
        assert log.count() == 6
        assert log.status() == (True, "ok")
    finally:
        log.close()


def test_overload_refuses_at_once_and_bounds_the_queue(tmp_path):
    with sqlite_log_and_blocker(tmp_path, max_queue=5) as (log, blocker):
        blocker.execute("BEGIN EXCLUSIVE")  # the log's commits wait (retrying) until this lock goes

        async def main():
            rows = [make_row() for _ in range(20)]
            tasks = [asyncio.ensure_future(log.record([row])) for row in rows]
            await asyncio.sleep(0)  # every task runs up to its await: admitted or refused
            for _ in range(100):
                if sum(t.done() for t in tasks) >= 15:
                    break
                await asyncio.sleep(0.01)
            refused = [t for t in tasks if t.done()]
            depth_while_blocked = log.queue_depth
            assert all(isinstance(t.exception(), LogOverloaded) for t in refused)
            with pytest.raises(LogOverloaded):  # still full while the database is blocked
                await log.record([make_row()])
            blocker.execute("COMMIT")
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return rows, results, len(refused), depth_while_blocked

        rows, results, n_refused, depth_while_blocked = asyncio.run(main())
        assert n_refused == 15
        assert depth_while_blocked == 5
        assert log.overloaded == 16
        answered = {row.request_id for row, res in zip(rows, results, strict=True) if res is None}
        refused = {row.request_id for row, res in zip(rows, results, strict=True) if res is not None}
        assert len(answered) == 5
        assert log.request_ids() == answered
        assert not refused & log.request_ids()
        assert log.queue_depth == 0


def test_sqlite_commits_on_the_loop_and_a_foreign_lock_does_not_block_it(tmp_path):
    """record()'s SQLite commit runs on the event loop; while a writer outside Slipway holds the
    database, the loop keeps running, and the rows commit once the lock is released."""
    with sqlite_log_and_blocker(tmp_path) as (log, blocker):

        async def main():
            commit_threads = []
            real_commit = log._commit
            log._commit = lambda batch, on_loop=False: (  # record which thread commits
                commit_threads.append(threading.get_ident()),
                real_commit(batch, on_loop),
            )[1]
            await log.record([make_row()])  # no lock held: committed on this thread
            blocker.execute("BEGIN IMMEDIATE")
            rows = [make_row() for _ in range(5)]
            task = asyncio.gather(*(log.record([row]) for row in rows))
            ticks = 0
            for _ in range(30):  # 30 x 10 ms: the loop is not held by the waiting commit
                await asyncio.sleep(0.01)
                ticks += 1
            assert not task.done() and log.queue_depth == 5
            blocker.execute("COMMIT")
            await asyncio.wait_for(task, 5)
            return rows, ticks, commit_threads

        rows, ticks, commit_threads = asyncio.run(main())
        assert ticks == 30
        assert set(commit_threads) == {threading.get_ident()}  # the loop's thread, not the writer's
        assert {r.request_id for r in rows} <= log.request_ids()
        assert log.queue_depth == 0 and log.status() == (True, "ok")


def test_a_foreign_lock_held_past_lock_timeout_fails_the_rows_then_the_log_recovers(tmp_path):
    with sqlite_log_and_blocker(tmp_path, lock_timeout_s=0.3) as (log, blocker):

        async def main():
            blocker.execute("BEGIN IMMEDIATE")
            stuck = make_row()
            with pytest.raises(LogUnavailable, match="database is locked"):
                await asyncio.wait_for(log.record([stuck]), 5)
            unhealthy = log.status()
            blocker.execute("COMMIT")
            later = make_row()
            await asyncio.wait_for(log.record([later]), 5)
            return stuck, later, unhealthy

        stuck, later, unhealthy = asyncio.run(main())
        assert unhealthy[0] is False and "predictions are refused" in unhealthy[1]
        assert log.status() == (True, "ok")
        assert log.request_ids() == {later.request_id}  # the refused row was not written


def test_record_from_several_event_loops_and_threads(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'serving.db'}")
    log.start()
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        async def main():
            for _ in range(20):
                row = make_row()
                await log.record([row])
                with lock:
                    ids.append(row.request_id)

        asyncio.run(main())
        for _ in range(20):
            row = make_row()
            log.record_sync([row])
            with lock:
                ids.append(row.request_id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    log.close()
    assert len(ids) == 160
    reopened = PredictionLog(f"sqlite:///{tmp_path / 'serving.db'}")
    reopened.start()
    try:
        assert reopened.request_ids() == set(ids)
    finally:
        reopened.close()
    with pytest.raises(LogUnavailable, match="not running"):
        log.record_sync([make_row()])


def test_close_commits_what_is_queued(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'serving.db'}", max_wait_ms=200)
    log.start()
    waiters = []
    rows = [make_row() for _ in range(30)]
    errors: list[BaseException] = []

    def send(row):
        try:
            log.record_sync([row])
        except BaseException as exc:
            errors.append(exc)

    for row in rows:
        t = threading.Thread(target=send, args=(row,))
        t.start()
        waiters.append(t)
    for _ in range(500):  # every row accepted (queued or written) before close
        if log.queue_depth + log.rows_written == len(rows):
            break
        threading.Event().wait(0.01)
    log.close()
    for t in waiters:
        t.join(10)
    assert errors == []
    conn = sqlite3.connect(tmp_path / "serving.db")
    (count,) = conn.execute("SELECT COUNT(*) FROM slipway_predictions").fetchone()
    conn.close()
    assert count == len(rows)


@pytest.mark.postgres
def test_schema_creation_is_safe_when_several_processes_start_at_once(pg_db):
    logs = [PredictionLog(pg_db.url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(logs))

    def start(log: PredictionLog) -> None:
        barrier.wait()
        try:
            log.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        with _pg_conn(pg_db.name) as conn, conn.cursor() as cur:
            cur.execute("SELECT name, version FROM slipway_schema")
            assert cur.fetchall() == [("prediction_log", SCHEMA_VERSION)]
    finally:
        for log in logs:
            log.close()


def _pg_conn(name: str):
    import psycopg2

    return psycopg2.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={name}", connect_timeout=5)


@pytest.mark.postgres
def test_database_outage_fails_records_then_recovers(pg_db):
    log = PredictionLog(pg_url(pg_db.name, password=PG_PASSWORD))
    log.start()
    admin = pg_admin()
    try:
        first = make_row()
        log.record_sync([first])
        assert log.status() == (True, "ok")

        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{pg_db.name}" ALLOW_CONNECTIONS false')
            pg_terminate_backends(cur, pg_db.name)
        lost = [make_row(), make_row()]
        for row in lost:  # the first on the dead connection, the second on a refused reconnect
            with pytest.raises(LogUnavailable) as failure:
                log.record_sync([row])
        healthy, reason = log.status()
        assert healthy is False
        assert pg_db.name in reason
        assert PG_PASSWORD not in reason
        assert PG_PASSWORD not in str(failure.value)
        assert log.commit_failures == 2
        assert log.queue_depth == 0

        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{pg_db.name}" ALLOW_CONNECTIONS true')
        back = make_row()
        asyncio.run(log.record([back]))
        assert log.status() == (True, "ok")
        assert log.request_ids() == {first.request_id, back.request_id}
    finally:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{pg_db.name}" ALLOW_CONNECTIONS true')
        admin.close()
        log.close()


_KILL_CHILD = """
import sys, threading, uuid
from datetime import UTC, datetime
from include.prediction_log.writer import PredictionLog
from include.prediction_log.rows import PredictionRow

log = PredictionLog(sys.argv[1])
log.start()
out = threading.Lock()

def loop():
    while True:
        rid = uuid.uuid4().hex
        log.record_sync([PredictionRow(rid, "telco_churn", None, 1, "champion", True, {"x": 1}, 0.5, 1, 1.0,
                                       datetime.now(UTC))])
        with out:
            sys.stdout.write(rid + "\\n")
            sys.stdout.flush()

for _ in range(8):
    threading.Thread(target=loop, daemon=True).start()
threading.Event().wait()
"""


def test_every_answered_row_survives_sigkill(tmp_path):
    url = f"sqlite:///{tmp_path / 'serving.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD, url],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, proc.kill)  # a child that never prints must not hang the suite
    watchdog.start()
    try:
        answered = []
        while len(answered) < 300:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"the child stopped after {len(answered)} rows: {proc.stderr.read()[-2000:]}")
            answered.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        answered += proc.stdout.readlines()  # printed before the kill, still in the pipe
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    ids = {line.strip() for line in answered if line.endswith("\n")}
    assert len(ids) >= 300
    log = PredictionLog(url)
    log.start()
    try:
        missing = ids - log.request_ids()
        assert not missing, f"{len(missing)} answered rows were lost"
    finally:
        log.close()


def test_missing_table_is_told_apart_from_other_errors(log_url):
    """Readers treat "no table yet" as "nothing logged yet"; any other error must not look like it."""
    from include.database import database, missing_table

    db = database(log_url)
    with db.reading() as conn:
        cur = conn.cursor()
        with pytest.raises(Exception) as no_table:
            cur.execute("SELECT * FROM slipway_not_created_yet")
    with db.reading() as conn:
        cur = conn.cursor()
        with pytest.raises(Exception) as bad_column:
            cur.execute("CREATE TABLE slipway_probe (a INTEGER)")
            cur.execute("SELECT b FROM slipway_probe")
    assert missing_table(no_table.value, "slipway_not_created_yet")
    assert missing_table(no_table.value, "slipway_")
    assert not missing_table(no_table.value, "slipway_monitor")  # another table's absence
    assert not missing_table(bad_column.value, "slipway_")
    assert not missing_table(ConnectionError("connection refused to slipway_ db"), "slipway_")


_V1_TABLES = [
    """CREATE TABLE slipway_predictions (request_id TEXT NOT NULL, variant TEXT NOT NULL, pipeline TEXT NOT NULL,
    entity_key TEXT, model_version INTEGER NOT NULL, served INTEGER NOT NULL, inputs TEXT NOT NULL,
    probability REAL NOT NULL, decision INTEGER NOT NULL, latency_ms REAL NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (request_id, variant))""",
    """CREATE TABLE slipway_failures (request_id TEXT NOT NULL, variant TEXT NOT NULL, pipeline TEXT NOT NULL,
    model_version INTEGER NOT NULL, served INTEGER NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (request_id, variant))""",
    """CREATE TABLE slipway_feedback (request_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, label INTEGER NOT NULL,
    received_at TEXT NOT NULL)""",
    "CREATE TABLE slipway_schema (name TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    "INSERT INTO slipway_schema VALUES ('prediction_log', 1)",
    "INSERT INTO slipway_predictions VALUES ('old1', 'champion', 'telco_churn', NULL, 1, 1, '{}', 0.5, 1, 1.0, "
    "'2025-01-01T00:00:00.000000+00:00')",
    "INSERT INTO slipway_feedback VALUES ('old1', 'telco_churn', 1, '2025-01-02T00:00:00.000000+00:00')",
]


def test_a_version_1_log_is_migrated_in_place_to_every_task_kind_and_every_new_row_records_its_key(log_url):
    from include.database import database

    db = database(log_url)
    with db.writing() as conn:
        cur = conn.cursor()
        for sql in _V1_TABLES:
            cur.execute(sql.replace("REAL", "DOUBLE PRECISION") if db.dialect == "postgresql" else sql)
    log = PredictionLog(log_url)
    log.start()
    try:
        log.record_sync([dataclasses.replace(make_row("new1"), key_id="0123456789ab")])
        assert log.feedback("new1", 0, key_id="ba9876543210") == "recorded"
        old, new = log.get("old1")[0], log.get("new1")[0]
        assert (old["key_id"], old["label"], old["label_key_id"]) == (None, 1, None)  # kept as it was
        assert (new["key_id"], new["label_key_id"]) == ("0123456789ab", "ba9876543210")
        with db.reading() as conn:
            cur = conn.cursor()
            cur.execute("SELECT version FROM slipway_schema")
            assert cur.fetchall() == [(SCHEMA_VERSION,)] and SCHEMA_VERSION == 5
            cur.execute("SELECT COUNT(*) FROM slipway_batch_predictions")  # version 4: batch-scored rows
            assert cur.fetchone() == (0,)
            cur.execute("SELECT COUNT(*) FROM slipway_forgotten")  # version 5: retention and erasure
            assert cur.fetchone() == (0,)
        # Version 3: a regression's amount as decision and label, a multiclass row's class probabilities.
        amount = dataclasses.replace(make_row("new2"), probability=112.25, decision=118.5)
        classes = dataclasses.replace(make_row("new3"), probability=0.7, decision=2, scores=(0.1, 0.2, 0.7))
        log.record_sync([amount, classes])
        assert log.feedback("new2", 131.5) == "recorded" and log.feedback("new3", 2) == "recorded"
        got, three = log.get("new2")[0], log.get("new3")[0]
        assert (got["probability"], got["decision"], got["label"]) == (112.25, 118.5, 131.5)
        assert json.loads(three["scores"]) == [0.1, 0.2, 0.7] and three["decision"] == 2
        assert old["decision"] == 1 and old["probability"] == 0.5
    finally:
        log.close()
