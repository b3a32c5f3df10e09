"""Champion comparison: candidate and current champion scored on the same current test set.

The comparison fails closed: "no champion" is concluded only when the registry says the model or
its alias does not exist. Any other registry failure raises :class:`RegistryUnavailable` (retried
by Airflow), never a silent "no champion" that would hold the candidate to the floors only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from include.frames import feature_frame, labels, read_parquet
from include.model_files import (
    SHA256_HEX,
    ModelFileError,
    ModelIntegrityError,
    load_model,
    read_model,
    verify_sha256,
)
from include.spec import PipelineSpec
from include.tasks.business import value_per_1000
from include.tasks.gates import check, not_applicable
from include.tasks.train.evaluate import compute_metrics

SKLEARN_SHA256_TAG = "slipway.sklearn_sha256"


class RegistryUnavailable(RuntimeError):
    """The model registry could not be asked (unreachable, error, denied); transient, so retried."""


def _unavailable(what: str, exc: BaseException) -> RegistryUnavailable:
    return RegistryUnavailable(
        f"the MLflow model registry could not be reached to {what} ({type(exc).__name__}: {exc}); "
        "the comparison fails closed and the task will be retried. If it keeps failing, check "
        "MLFLOW_TRACKING_URI, that the tracking server is up, and its credentials"
    )


def _does_not_exist(exc: BaseException) -> bool:
    # SQL and REST stores both set error_code to the ErrorCode name (RestException from the JSON).
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def load_champion(name: str, alias: str = "champion", tracking_uri: str | None = None) -> dict | None:
    """The model version behind ``alias`` with its scikit-learn model, or None when there is none.

    None only when the registered model or the alias does not exist; any other registry failure
    raises :class:`RegistryUnavailable`. The downloaded ``model.skops`` must match the version's
    ``slipway.sklearn_sha256`` tag (else :class:`ModelIntegrityError`) and is loaded with skops
    under the type allowlist (see ``load_model``), never as a pickle.
    """
    import mlflow

    where = f"look up {name}@{alias}"
    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        model = client.get_registered_model(name)
    except Exception as exc:
        if _does_not_exist(exc):
            return None
        raise _unavailable(where, exc) from exc
    # The SQL store reports a missing alias as INVALID_PARAMETER_VALUE, not RESOURCE_DOES_NOT_EXIST;
    # reading the model's aliases tells "no such alias" apart from a bad request in every store.
    if alias not in model.aliases:
        return None
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except Exception as exc:
        if _does_not_exist(exc):
            return None
        raise _unavailable(where, exc) from exc
    label = f"{name}@{alias} (version {mv.version})"
    expected = (mv.tags or {}).get(SKLEARN_SHA256_TAG)
    if not expected or not SHA256_HEX.match(expected):
        raise ModelIntegrityError(
            f"{label} has no valid {SKLEARN_SHA256_TAG!r} tag (got {expected!r}), so its skops model "
            "cannot be proven to be the one that was trained and blessed; re-register it (re-run the "
            "training DAG) with this version of Slipway, or move the alias to a version that has the tag"
        )
    if not mv.run_id:
        raise ModelFileError(
            f"{label} names no MLflow run, so its skops model cannot be found; re-register it"
        )
    with tempfile.TemporaryDirectory(prefix="slipway-champion-") as tmp:
        try:
            root = Path(client.download_artifacts(mv.run_id, "sklearn", tmp))
        except Exception as exc:
            raise _unavailable(f"download the skops model of {label} from run {mv.run_id}", exc) from exc
        files = sorted(root.rglob("model.skops")) if root.is_dir() else []
        if not files:
            raise ModelFileError(
                f"{label} has no skops model under 'sklearn/' in run {mv.run_id}; "
                "re-register it with this version of Slipway"
            )
        data = files[0].read_bytes()
    verify_sha256(
        data,
        expected,
        f"{label} sklearn/model.skops",
        "the registered artifact changed after registration; restore it, or roll the alias back to a "
        "verified version",
    )
    return {
        "version": int(mv.version),
        "model": load_model(data),
        "sha256": expected,
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
    """Metrics and business value of both models on the candidate's test split, and the champion gate.

    With no champion the gate is ``not_applicable`` (nothing was compared), never ``passed``.
    """
    test = read_parquet(test_uri)
    X, y = feature_frame(test, spec), labels(test, spec)
    cand = read_model(candidate_model_uri).predict_proba(X)[:, 1]
    out: dict[str, Any] = {
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
            not_applicable(
                "champion",
                "champion_present",
                "no champion yet: the candidate is held to the absolute floors only",
                evidence_uri,
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
