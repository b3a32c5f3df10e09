"""The blessing: every gate's results for one candidate, in one record.

A candidate is blessed when the record is *complete* (every gate the spec turns on has reported)
and no check failed. A gate whose checks were all ``not_applicable`` (no champion yet, a gate the
spec declares not applicable, with its reason) is shown as such, never as passed. Only a blessed
candidate may get an alias.
"""

from __future__ import annotations

from include.spec import PipelineSpec
from include.tasks.gates import FAILED, PASSED, GateFailed, check, failure_message, failures, status_of

ORDER = [
    "data_validation",
    "evaluation",
    "champion",
    "business",
    "fairness",
    "explainability",
    "robustness",
    "onnx",
]


def required_gates(spec: PipelineSpec) -> list[str]:
    """The gates this spec requires, in pipeline order."""
    on = set(spec.gates.enabled()) | {"data_validation"}
    return [g for g in ORDER if g in on]


def validation_result(validated: dict, evidence_uri: str | None = None) -> dict:
    """The data-validation gate as a blessing entry (the suite already passed or the run stopped)."""
    failed = int(validated.get("evaluated", 0)) - int(
        validated.get("successful", validated.get("evaluated", 0))
    )
    return check("data_validation", "failed_expectations", failed, 0, "<=", evidence_uri)


def make_blessing(spec: PipelineSpec, results: list[dict]) -> dict:
    """The blessing record of a candidate."""
    required = required_gates(spec)
    present = {r["gate"] for r in results}
    missing = [g for g in required if g not in present]
    failed = failures(results)
    by_gate = {g: status_of([r for r in results if r["gate"] == g]) for g in required if g in present}
    return {
        "pipeline": spec.name,
        "required": required,
        "missing": missing,
        "complete": not missing,
        "state": PASSED if not missing and not failed else FAILED,
        "by_gate": by_gate,
        "failed": failed,
        "results": results,
    }


def blessing_tags(b: dict) -> dict[str, str]:
    """Model-version tags summarising a blessing."""
    tags = {"slipway.blessing": b["state"]}
    tags.update({f"slipway.blessing.{g}": state for g, state in b["by_gate"].items()})
    return tags


def raise_unless_blessed(b: dict) -> None:
    """Refuse to move an alias to a candidate whose blessing is incomplete or failed."""
    if b["missing"]:
        raise GateFailed(
            f"blessing incomplete: no result from gate(s) {b['missing']}; an alias needs every gate the "
            "spec turns on",
            b["results"],
        )
    if b["failed"]:
        advice = (
            "Each gate task's MLflow run holds the evidence; improve the model or revisit the "
            "thresholds in the pipeline spec."
        )
        raise GateFailed("blessing failed: " + failure_message(b["failed"], advice), b["results"])
