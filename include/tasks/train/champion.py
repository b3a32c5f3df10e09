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
from include.tasks.business import decision_value_per_1000
from include.tasks.gates import check, not_applicable
from include.tasks.metrics import task_metrics

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
    candidate_rule: dict,
    champion: dict | None,
    evidence_uri: str | None = None,
) -> dict:
    """The task's metrics and business value of both models on the candidate's test split, and the
    champion gate: ``gates.champion.max_regression`` per metric of the task (an absolute drop; for
    MAE and RMSE a relative increase) and, for a binary task, the Brier score's increase.

    Each model decides by its own rule (the champion's as blessed, tag ``slipway.decision``). With
    no champion the gate is ``not_applicable`` (nothing was compared), never ``passed``.
    """
    from include.problem import rule_from_tags, scores
    from include.spec import CHAMPION_METRICS

    test = read_parquet(test_uri)
    X, y = feature_frame(test, spec), labels(test, spec)
    cand = scores(read_model(candidate_model_uri), X, spec)
    out: dict[str, Any] = {
        "task": spec.task,
        "candidate": {
            **task_metrics(spec, y, cand, candidate_rule),
            "rule": candidate_rule,
            "value_per_1000": decision_value_per_1000(spec, y, cand, candidate_rule),
        },
        "champion": None,
        "gates": [],
    }
    if spec.task == "binary":
        out["candidate"]["threshold"] = candidate_rule["threshold"]
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
    champ_rule = rule_from_tags(
        spec, champion.get("tags") or {"slipway.decision_threshold": champion["threshold"]}
    )
    champ = scores(champion["model"], X, spec)
    out["champion"] = {
        **task_metrics(spec, y, champ, champ_rule),
        "rule": champ_rule,
        "value_per_1000": decision_value_per_1000(spec, y, champ, champ_rule),
        "version": champion["version"],
    }
    if spec.task == "binary":
        out["champion"]["threshold"] = champ_rule["threshold"]
    higher_better = CHAMPION_METRICS[spec.task]
    for metric, allowed in sorted(gate.bounds(spec.task).items()):
        new, old = out["candidate"][metric], out["champion"][metric]
        if metric in ("mae", "rmse"):  # target units: bounded as a relative increase
            rel = (new - old) / old if old > 0 else (0.0 if new == old else float("inf"))
            out["gates"].append(check("champion", f"{metric}_increase", rel, allowed, "<=", evidence_uri))
        elif higher_better[metric]:
            out["gates"].append(check("champion", f"{metric}_delta", new - old, -allowed, ">=", evidence_uri))
        else:
            out["gates"].append(check("champion", f"{metric}_delta", new - old, allowed, "<=", evidence_uri))
    if spec.task == "binary":
        brier_delta = out["candidate"]["brier"] - out["champion"]["brier"]
        out["gates"].append(
            check("champion", "brier_delta", brier_delta, gate.max_brier_increase, "<=", evidence_uri)
        )
    return out
