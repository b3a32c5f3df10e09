"""Champion comparison: candidate and current champion scored on the same current test set."""

from __future__ import annotations

from pathlib import Path

from include.spec import PipelineSpec
from include.tasks.business import value_per_1000
from include.tasks.evaluate import compute_metrics
from include.tasks.gates import check
from include.tasks.ingest import read_parquet
from include.tasks.train import TrainingError, feature_frame, labels, load_model, read_model


def load_champion(name: str, alias: str = "champion") -> dict | None:
    """The model version behind ``alias`` with its scikit-learn model (skops, type-checked), or None.

    Loads the skops file only, never a pickle, and refuses foreign types (see ``load_model``).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    root = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="sklearn"))
    files = sorted(root.rglob("model.skops"))
    if not files:
        raise TrainingError(
            f"{name}@{alias} (version {mv.version}) has no skops model under 'sklearn/' in run {mv.run_id}; "
            "re-register it with this version of Slipway"
        )
    return {
        "version": int(mv.version),
        "model": load_model(files[0].read_bytes()),
        "threshold": float(mv.tags.get("slipway.decision_threshold", 0.5)),
        "tags": dict(mv.tags),
    }


def compare_with_champion(
    spec: PipelineSpec,
    candidate_model_uri: str,
    test_uri: str,
    candidate_threshold: float,
    champion: dict | None,
    evidence_uri: str | None = None,
) -> dict:
    """Metrics and business value of both models on the candidate's test split, and the champion gate."""
    test = read_parquet(test_uri)
    X, y = feature_frame(test, spec), labels(test, spec)
    cand = read_model(candidate_model_uri).predict_proba(X)[:, 1]
    out = {
        "candidate": {
            **compute_metrics(y, cand, candidate_threshold),
            "threshold": candidate_threshold,
            "value_per_1000": value_per_1000(y, cand, candidate_threshold, spec.business),
        },
        "champion": None,
        "gates": [],
    }
    gate = spec.gates.champion
    if champion is None:
        out["gates"].append(
            check(
                "champion",
                "champion_present",
                0.0,
                0.0,
                ">=",
                evidence_uri,
                note="no champion yet: the candidate is held to the absolute floors only",
            )
        )
        return out
    champ = champion["model"].predict_proba(X)[:, 1]
    out["champion"] = {
        **compute_metrics(y, champ, champion["threshold"]),
        "threshold": champion["threshold"],
        "value_per_1000": value_per_1000(y, champ, champion["threshold"], spec.business),
        "version": champion["version"],
    }
    for metric, max_drop in sorted(gate.max_regression.items()):
        delta = out["candidate"][metric] - out["champion"][metric]
        out["gates"].append(check("champion", f"{metric}_delta", delta, -max_drop, ">=", evidence_uri))
    brier_delta = out["candidate"]["brier"] - out["champion"]["brier"]
    out["gates"].append(
        check("champion", "brier_delta", brier_delta, gate.max_brier_increase, "<=", evidence_uri)
    )
    return out
