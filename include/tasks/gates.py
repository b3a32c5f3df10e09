"""The one shape every gate result has, and the failure every gate raises.

A gate result is ``{gate, metric, comparison, threshold, value, status, evidence_uri}`` (plus an
optional ``note``); the blessing of a candidate is the list of all of them. ``status`` is one of
three states:

* ``passed``: the value was measured and is within the threshold;
* ``failed``: the value is outside the threshold, or could not be measured (missing, NaN);
* ``not_applicable``: there was nothing to check, and ``note`` says why (no champion yet, a
  quantisation that does not apply to tree models, a gate the spec declares not applicable).

A check that checked nothing is never ``passed``: an auditor reading the blessing must be able to
tell a measured pass from an empty one. ``comparison`` is ``>=`` (a floor) or ``<=`` (a ceiling).
"""

from __future__ import annotations

import math

PASSED, FAILED, NOT_APPLICABLE = "passed", "failed", "not_applicable"
STATUSES = (PASSED, FAILED, NOT_APPLICABLE)


class GateFailed(RuntimeError):
    """A gate did not pass; the message is the reason shown in the Airflow UI."""

    def __init__(self, message: str, results: list[dict]):
        super().__init__(message)
        self.results = results


def check(
    gate: str,
    metric: str,
    value: float | None,
    threshold: float,
    comparison: str,
    evidence_uri: str | None = None,
    note: str | None = None,
) -> dict:
    """One measured gate result: ``passed`` or ``failed``. A missing or NaN value never passes."""
    if comparison not in (">=", "<="):
        raise ValueError(f"comparison must be '>=' or '<=', got {comparison!r}")
    ok = False
    if value is not None and not math.isnan(value):
        ok = value >= threshold if comparison == ">=" else value <= threshold
    out = {
        "gate": gate,
        "metric": metric,
        "comparison": comparison,
        "threshold": threshold,
        # A count stays an integer (JSON 8, read as "8", not 8.0000).
        "value": None if value is None else value if type(value) is int else round(float(value), 6),
        "status": PASSED if ok else FAILED,
        "evidence_uri": evidence_uri,
    }
    if note:
        out["note"] = note
    return out


def not_applicable(gate: str, metric: str, reason: str, evidence_uri: str | None = None) -> dict:
    """A check with nothing to measure, and why (never counted as passed)."""
    if not reason or not reason.strip():
        raise ValueError("a not-applicable gate result needs a reason")
    return {
        "gate": gate,
        "metric": metric,
        "comparison": None,
        "threshold": None,
        "value": None,
        "status": NOT_APPLICABLE,
        "evidence_uri": evidence_uri,
        "note": reason.strip(),
    }


def status_of(results: list[dict]) -> str:
    """The state of a group of results: failed if any failed, passed if any passed, else not_applicable."""
    states = {r["status"] for r in results}
    unknown = states - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown gate status {sorted(unknown)}; expected one of {STATUSES}")
    if FAILED in states:
        return FAILED
    if PASSED in states:
        return PASSED
    return NOT_APPLICABLE


def failures(results: list[dict]) -> list[dict]:
    """The results that failed."""
    return [r for r in results if r["status"] == FAILED]


def with_evidence(results: list[dict], evidence_uri: str) -> list[dict]:
    """The same results pointing at ``evidence_uri``."""
    return [{**r, "evidence_uri": evidence_uri} for r in results]


_COUNTS = ("requests", "rows", "count", "entities", "labels")


def _value(metric: str, value) -> str:
    """A count as an integer (``requests = 71``, not 71.0000); any other value to four decimals."""
    number = float(value)
    if (isinstance(value, int) or metric.endswith(_COUNTS)) and number.is_integer():
        return str(int(number))
    return f"{number:.4f}"


def describe(r: dict) -> str:
    """One line for an operator: ``gate: metric = value, required >= threshold (note)``."""
    if r["status"] == NOT_APPLICABLE:
        return f"{r['gate']}: {r['metric']} not applicable ({r.get('note', '')})"
    value = "n/a" if r["value"] is None else _value(r["metric"], r["value"])
    line = f"{r['gate']}: {r['metric']} = {value}, required {r['comparison']} {r['threshold']}"
    line += f" ({r['note']})" if r.get("note") else ""
    # A pass that is not clean (an estimate past the margin, not significantly): said, not hidden.
    return line + (f" **LOOK: {r['warning']}**" if r.get("warning") else "")


def failure_message(
    failed: list[dict], advice: str, consequence: str = "The candidate is not registered and no alias moved."
) -> str:
    """What an operator reads when checks failed: each one with value and threshold, then what to do."""
    return (
        f"{len(failed)} gate check(s) failed:\n"
        + "\n".join(f"  - {describe(r)}" for r in failed)
        + f"\n{consequence} {advice}"
    )


def raise_for_gate(results: list[dict]) -> None:
    """Raise :class:`GateFailed` naming every failed check."""
    failed = failures(results)
    if failed:
        raise GateFailed(
            failure_message(failed, "Improve the model or revisit the thresholds in the pipeline spec."),
            results,
        )
