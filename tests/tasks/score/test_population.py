"""A population scored in chunks: the service's graph and checks, rejects with reasons, the same bytes
on a re-run, scored rows recorded in the prediction log and delivered to PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from include.model_files import load_onnx, read_model
from include.tasks.score.population import (
    PopulationError,
    entity_hasher,
    find_scored,
    manifest,
    read_chunks,
    request_id,
    score_population,
)
from include.tasks.train.ingest import _hash

KEY = b"population-test-key"


@pytest.fixture
def telco_onnx(tmp_path, telco_spec, telco_trained):
    from include.tasks.train.onnx_export import convert, optimise

    folder = tmp_path / "onnx"
    folder.mkdir()
    data = optimise(convert(telco_spec, read_model(telco_trained["model_uri"])))
    (folder / "model.onnx").write_bytes(data)
    model = load_onnx("telco_churn", 3, folder, hashlib.sha256(data).hexdigest(), 0.42)
    return model, read_model(telco_trained["model_uri"])


def _population(wa_churn, telco_spec, path: Path, rows: int = 2500) -> pd.DataFrame:
    """The raw landed columns of ``rows`` customers, binary columns as 0/1 (as a landed batch holds them)."""
    from tests.support.snapshots import conformed

    frame = conformed(wa_churn.iloc[:rows], telco_spec, "2025-12")
    frame["customer_id"] = wa_churn["customer_id"].iloc[:rows].to_numpy()
    frame = frame[["customer_id", *telco_spec.features.all]]
    frame.to_csv(path, index=False)
    return frame


def test_entity_hasher_is_the_keyed_hash_ingest_and_the_service_use():
    h = entity_hasher(KEY)
    long_key = entity_hasher(b"k" * 100)  # longer than SHA-256's block: hashed first, as RFC 2104 says
    for text in ("CUST-00001", "", "é" * 50):
        assert h(text) == _hash(text, KEY) == hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()
        assert long_key(text) == hmac.new(b"k" * 100, text.encode(), hashlib.sha256).hexdigest()


def test_scores_match_scikit_learn_and_the_bad_rows_go_to_the_rejects_with_their_reason(
    tmp_path, telco_spec, wa_churn, telco_onnx
):
    model, sklearn_model = telco_onnx
    frame = _population(wa_churn, telco_spec, tmp_path / "in.csv")
    raw = pd.read_csv(tmp_path / "in.csv", dtype=str, keep_default_na=False)
    raw.loc[7, "tenure"] = "twelve"
    raw.loc[100, "contract"] = ""
    raw.loc[1500, "payment_method"] = "x" * 201
    raw.loc[2001, "partner"] = "2"
    raw.loc[2002, "customer_id"] = ""
    raw.to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    logged: list[tuple] = []
    res = score_population(
        telco_spec, model, tmp_path / "bad.csv", "csv", out, "2025-12", KEY, 1000, "file:///in", logged.extend
    )
    assert (res.rows, res.scored, res.rejected) == (2500, 2495, 5)
    rejects = pq.read_table(res.rejects_path).to_pandas()
    assert dict(zip(rejects["row"], rejects["reason"], strict=True)) == {
        7: "tenure: not a number",
        100: "contract: must be a string, got a blank",
        1500: "payment_method: longer than 200 characters",
        2001: "partner: must be 0 or 1",
        2002: "customer_id: not an entity key of 1 to 200 characters",
    }
    assert rejects.set_index("row").loc[7, "entity_key"] == _hash(raw.loc[7, "customer_id"], KEY)
    assert "twelve" not in res.rejects_path.read_bytes().decode(errors="replace")  # never a raw value
    scores = pq.read_table(res.scores_path).to_pandas()
    assert len(scores) == 2495 and scores["row"].is_monotonic_increasing
    assert 7 not in set(scores["row"]) and pq.ParquetFile(res.scores_path).num_row_groups == 3
    ok = frame.drop(index=[7, 100, 1500, 2001, 2002])
    expected = sklearn_model.predict_proba(
        ok[telco_spec.features.all].astype(
            {c: "float64" for c in [*telco_spec.features.numeric, *telco_spec.features.binary]}
        )
    )[:, 1]
    np.testing.assert_allclose(scores["probability"], expected, atol=1e-5)
    assert (scores["decision"] == (scores["probability"] >= 0.42)).all()
    assert scores["entity_key"].tolist() == [_hash(c, KEY) for c in ok["customer_id"]]
    assert set(scores["month"]) == {"2025-12"} and set(scores["model_version"]) == {3}
    assert set(scores["data_version"]) == {hashlib.sha256((tmp_path / "bad.csv").read_bytes()).hexdigest()}
    # Every scored row went to the log (log_share 1), under its deterministic request id, inputs as served.
    assert len(logged) == 2495
    rid, key, inputs, probability, decision, probs = logged[0]
    assert rid == request_id("telco_churn", "2025-12", 3, key) == f"telco_churn/2025-12/v3/{key}"
    assert set(json.loads(inputs)) == set(telco_spec.features.all) and probs is None
    assert (
        probability == pytest.approx(scores["probability"].iloc[0]) and decision == scores["decision"].iloc[0]
    )


def test_a_rerun_writes_the_same_bytes_and_a_parquet_population_scores_alike(
    tmp_path, telco_spec, wa_churn, telco_onnx
):
    model, _ = telco_onnx
    frame = _population(wa_churn, telco_spec, tmp_path / "in.csv", rows=1200)
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    digests, tables = [], []
    for i, (src, fmt) in enumerate([("in.csv", "csv"), ("in.csv", "csv"), ("in.parquet", "parquet")]):
        out = tmp_path / f"out{i}"
        out.mkdir()
        res = score_population(telco_spec, model, tmp_path / src, fmt, out, "2025-11", KEY, 1000)
        digests.append(hashlib.sha256(res.scores_path.read_bytes()).hexdigest())
        body = manifest(telco_spec, model, "2025-11", f"file:///{src}", res, {})
        assert json.loads(body)["scores_sha256"] == digests[-1]
        tables.append(pq.read_table(res.scores_path).to_pandas())
    assert digests[0] == digests[1]
    cols = ["row", "entity_key", "probability", "decision"]
    pd.testing.assert_frame_equal(tables[0][cols], tables[2][cols], check_exact=False, atol=1e-6)


def test_a_population_without_a_declared_column_is_refused_naming_it(
    tmp_path, telco_spec, wa_churn, telco_onnx
):
    model, _ = telco_onnx
    frame = _population(wa_churn, telco_spec, tmp_path / "in.csv", rows=50)
    frame.drop(columns=["contract"]).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(PopulationError, match=r"lacks the columns \['contract'\]"):
        list(read_chunks(tmp_path / "in.csv", "csv", [*telco_spec.features.all], 1000))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PopulationError, match="contract"):
        score_population(telco_spec, model, tmp_path / "in.csv", "csv", out, "2025-11", KEY, 1000)


def test_find_scored_reads_one_entity_of_a_published_month(tmp_path, telco_spec, wa_churn, telco_onnx):
    from include import storage

    model, _ = telco_onnx
    frame = _population(wa_churn, telco_spec, tmp_path / "in.csv", rows=300)
    out = tmp_path / "out"
    out.mkdir()
    res = score_population(telco_spec, model, tmp_path / "in.csv", "csv", out, "2025-12", KEY, 1000)
    lake = storage.path_to_uri(tmp_path / "lake")
    folder = f"{lake}/telco_churn/scores/month=2025-12/version=3"
    storage.write_file(f"{folder}/scores.parquet", res.scores_path)
    storage.write_bytes(
        f"{folder}/manifest.json", manifest(telco_spec, model, "2025-12", "file:///in.csv", res, {})
    )
    hashed = _hash(frame["customer_id"].iloc[42], KEY)
    (row,) = find_scored(lake, "telco_churn", "2025-12", hashed)
    assert (row["row"], row["model_version"], row["input"]) == (42, 3, "file:///in.csv")
    assert row["request_id"] == f"telco_churn/2025-12/v3/{hashed}"
    assert find_scored(lake, "telco_churn", "2025-11", hashed) == []


@pytest.mark.parametrize("pipeline", ["job_runtime", "salary_benchmark"])
def test_a_multiclass_and_a_regression_population_are_scored_and_decided_as_their_task_says(
    pipeline, tmp_path, project_root
):
    from include.demo.data import DATASETS
    from include.problem import decide, scores
    from include.spec import load_spec
    from include.tasks.train.fit import train_model
    from include.tasks.train.onnx_export import convert, optimise
    from tests.support.snapshots import make_snapshot

    spec = load_spec(project_root / "include" / "pipelines" / f"{pipeline}.yaml")
    data = DATASETS[pipeline]().head(1500)
    out = train_model(spec, make_snapshot(data, spec, tmp_path / "snap.parquet"), f"file://{tmp_path}/run")
    sk = read_model(out["model_uri"])
    folder = tmp_path / "onnx"
    folder.mkdir()
    graph = optimise(convert(spec, sk))
    (folder / "model.onnx").write_bytes(graph)
    rule = {"value_matrix": [[1, 0, -1, -2], [-1, 1, 0, -1], [-4, -2, 1, 0], [-8, -4, -1, 1]]}
    if spec.task == "regression":
        rule = {"offset": 2.5}
    model = load_onnx(
        pipeline,
        2,
        folder,
        hashlib.sha256(graph).hexdigest(),
        float("nan"),
        spec.task,
        rule,
        tuple(spec.target.classes or ()),
        (-10.0, 12.0) if spec.task == "regression" else None,
    )
    key = spec.entity_column
    population = data[[key, *spec.features.all]]
    population.to_csv(tmp_path / "in.csv", index=False)
    res_dir = tmp_path / "res"
    res_dir.mkdir()
    res = score_population(spec, model, tmp_path / "in.csv", "csv", res_dir, "2025-12", KEY, 1000)
    got = pq.read_table(res.scores_path).to_pandas()
    assert res.rejected == 0 and len(got) == len(population)
    X = population[spec.features.all].astype({c: "float64" for c in spec.features.numeric})
    expected = scores(sk, X, spec)
    decided = decide(spec, expected, rule)
    if spec.task == "multiclass":
        probs = got[[f"probability_{c}" for c in spec.target.classes]].to_numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-4)
        assert (got["class"].to_numpy() == np.asarray(spec.target.classes)[decided]).mean() > 0.995
        # the decided class's probability (not always the largest: the value matrix decides)
        np.testing.assert_allclose(got["probability"], probs[np.arange(len(probs)), model.decide(probs)])
    else:
        np.testing.assert_allclose(got["prediction"], expected, rtol=1e-4)
        np.testing.assert_allclose(got["decision"], got["prediction"] + 2.5)
        np.testing.assert_allclose(
            got[["low", "high"]].to_numpy() - got[["prediction"]].to_numpy(), [[-10, 12]] * len(got)
        )
