"""`slipway forget` as an operator runs it on the embedded layout: the entity leaves the prediction log,
the lake's scores (the manifest notes the erasure) and the delivery table; counts printed, the id never;
bad input changes nothing and says what to fix."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from include.database import database
from include.prediction_log.rows import iso_utc
from include.prediction_log.schema import create_schema
from include.settings import PROJECT_ROOT
from include.tasks.score.population import entity_hasher
from tests.support.lake_scores import write_scored_month
from tests.support.processes import TEST_PII_KEY, clean_env, slipway

pytestmark = [pytest.mark.postgres]

RAW = "CUST-4242-ZZ"
HASHED = entity_hasher(TEST_PII_KEY.encode())(RAW)
OTHERS = [entity_hasher(TEST_PII_KEY.encode())(f"CUST-{i:04d}") for i in range(5)]


@pytest.fixture
def layout(tmp_path, pg_db):
    import psycopg2

    home = tmp_path / "state"
    pipes = tmp_path / "pipelines"
    pipes.mkdir()
    spec = (PROJECT_ROOT / "include" / "pipelines" / "telco_churn.yaml").read_text()
    (pipes / "telco_churn.yaml").write_text(
        spec + "scoring:\n  deliver: [{connection: warehouse, table: churn_scores}]\n"
    )
    # The log as the embedded service keeps it: the entity's served row, label and batch row, another's.
    db = database(f"sqlite:///{home / 'serving' / 'serving.db'}")
    conn = db.connect()
    create_schema(db, conn)
    conn.close()
    at = iso_utc(datetime.now(UTC))
    with db.writing() as conn:
        for rid, ent in (("r-forget", HASHED), ("r-keep", OTHERS[0])):
            conn.execute(
                "INSERT INTO slipway_predictions (request_id, variant, pipeline, entity_key, model_version, served, "
                "inputs, probability, decision, latency_ms, created_at) VALUES (?, 'champion', 'telco_churn', ?, 3, "
                "1, '{}', 0.5, 1, 1.0, ?)",
                (rid, ent, at),
            )
            conn.execute(
                "INSERT INTO slipway_feedback (request_id, pipeline, label, received_at) VALUES (?, 'telco_churn', 1, ?)",
                (rid, at),
            )
        conn.execute(
            "INSERT INTO slipway_batch_predictions (request_id, pipeline, entity_key, model_version, month, inputs, "
            "probability, decision, created_at, dag_run) VALUES (?, 'telco_churn', ?, 3, '2025-12', '{}', 0.4, 0, ?, 'd')",
            (f"telco_churn/2025-12/v3/{HASHED}", HASHED, at),
        )
    folder = write_scored_month(home / "lake", "telco_churn", "2025-12", 3, [HASHED, *OTHERS, None])
    wh = psycopg2.connect(pg_db.url)
    cur = wh.cursor()
    cur.execute("CREATE TABLE churn_scores (entity_key TEXT, month TEXT, probability DOUBLE PRECISION)")
    for k in [HASHED, *OTHERS]:
        cur.execute("INSERT INTO churn_scores VALUES (%s, '2025-12', 0.5)", (k,))
    wh.commit()
    env = clean_env(
        SLIPWAY_HOME=str(home),
        SLIPWAY_PIPELINES_DIR=str(pipes),
        AIRFLOW_CONN_WAREHOUSE=pg_db.url,
    )
    try:
        yield env, home, folder, db, wh
    finally:
        wh.close()


def _stored(home, db, wh) -> dict:
    """Everything the command may change: the lake's bytes, the log's rows, the delivery table."""
    lake = {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((home / "lake").rglob("*"))
        if p.is_file()
    }
    with db.reading() as conn:
        log = {
            t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}").fetchall()))
            for t in (
                "slipway_predictions",
                "slipway_feedback",
                "slipway_batch_predictions",
                "slipway_forgotten",
            )
        }
    return {"lake": lake, "log": log, "delivered": _delivered(wh)}


def _delivered(wh) -> list[str]:
    cur = wh.cursor()
    cur.execute("SELECT entity_key FROM churn_scores ORDER BY 1")
    rows = [r[0] for r in cur.fetchall()]
    wh.rollback()
    return rows


def test_forget_erases_the_entity_everywhere_and_prints_counts_not_the_id(layout):
    import pyarrow.parquet as pq

    env, home, folder, db, wh = layout
    before = _stored(home, db, wh)
    # Bad input: a clear error naming the problem and the fix, and nothing stored changes.
    bad = slipway(env, "forget", "no_such_pipeline", RAW, check=False, timeout=300)
    assert bad.returncode != 0
    assert "no pipeline 'no_such_pipeline'" in bad.stderr and "telco_churn" in bad.stderr
    assert "nothing was changed" in bad.stderr and RAW not in bad.stdout + bad.stderr
    empty = slipway(env, "forget", "telco_churn", "  ", check=False, timeout=300)
    assert empty.returncode != 0 and "the entity id is empty" in empty.stderr
    assert _stored(home, db, wh) == before

    out = slipway(env, "forget", "telco_churn", RAW, timeout=300)
    text = out.stdout + out.stderr
    assert RAW not in text and HASHED not in text  # at most a prefix of the keyed hash
    assert "1 served row(s), 1 batch-scored row(s), 0 failure(s), 1 label(s) deleted" in out.stdout
    assert "lake scores: 2 row(s) erased from 2 file(s)" in out.stdout  # scores and rejects
    assert "delivery table churn_scores: 1 row(s) deleted" in out.stdout

    scores = pq.read_table(folder / "scores.parquet")
    assert HASHED not in scores.column("entity_key").to_pylist()
    assert scores.column("entity_key").to_pylist() == [*OTHERS, None]  # the rest kept, in order
    assert pq.ParquetFile(folder / "scores.parquet").metadata.num_row_groups == 2  # the chunks kept
    assert pq.read_table(folder / "rejects.parquet").num_rows == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["erased_rows"] == 2
    assert manifest["scores_sha256"] == hashlib.sha256((folder / "scores.parquet").read_bytes()).hexdigest()
    assert manifest["rejects_sha256"] == hashlib.sha256((folder / "rejects.parquet").read_bytes()).hexdigest()
    after = _stored(home, db, wh)
    assert [r for r in after["log"]["slipway_predictions"] if HASHED in r] == []
    assert len(after["log"]["slipway_predictions"]) == 1 and len(after["log"]["slipway_feedback"]) == 1
    assert after["log"]["slipway_batch_predictions"] == []
    assert len(after["log"]["slipway_forgotten"]) == 1 and RAW not in repr(after["log"])
    assert after["delivered"] == sorted(OTHERS)

    # A second forget of the same id is harmless: zero everywhere, nothing rewritten.
    again = slipway(env, "forget", "telco_churn", RAW, timeout=300).stdout
    assert "0 served row(s), 0 batch-scored row(s), 0 failure(s), 0 label(s) deleted" in again
    assert "lake scores: 0 row(s) erased from 0 file(s)" in again and "churn_scores: 0 row(s)" in again
    assert _stored(home, db, wh)["lake"] == after["lake"]
