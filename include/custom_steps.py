"""Example custom logic for a hand-written DAG: plain functions over the upstream tasks' results."""

from __future__ import annotations


def profile_churn_by_contract(versioned: dict) -> dict:
    """Churn rate per contract type in the training snapshot, logged to the task's MLflow run."""
    import mlflow

    from include.frames import read_parquet

    df = read_parquet(versioned["snapshot_uri"])
    rates = (df["churn"] == "Yes").groupby(df["contract"]).mean().round(4).to_dict()
    mlflow.log_dict(rates, "profile/churn_rate_by_contract.json")
    return {"churn_rate_by_contract": rates, "rows": int(len(df))}
