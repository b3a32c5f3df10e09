"""The one shape every gate result has, and the failure every gate raises.

A gate result is ``{gate, metric, comparison, threshold, value, passed, evidence_uri}``; the
blessing of a candidate is the list of all of them. ``comparison`` is ``>=`` (a floor) or ``<=``
(a ceiling); ``applies`` false records a check that does not apply (e.g. quantisation of a tree
model) without failing.
"""

from __future__ import annotations

import math


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
    """One gate result. A missing or NaN value never passes."""
    if comparison not in (">=", "<="):
        raise ValueError(f"comparison must be '>=' or '<=', got {comparison!r}")
    ok = value is not None and not math.isnan(value)
    if ok:
        ok = value >= threshold if comparison == ">=" else value <= threshold
    out = {
        "gate": gate,
        "metric": metric,
        "comparison": comparison,
        "threshold": threshold,
        "value": None if value is None else round(float(value), 6),
        "passed": bool(ok),
        "evidence_uri": evidence_uri,
    }
    if note:
        out["note"] = note
    return out


def with_evidence(results: list[dict], evidence_uri: str) -> list[dict]:
    """The same results pointing at ``evidence_uri``."""
    return [{**r, "evidence_uri": evidence_uri} for r in results]


def raise_for_gate(results: list[dict]) -> None:
    """Raise :class:`GateFailed` naming every failed check."""
    failed = [r for r in results if not r["passed"]]
    if failed:
        lines = [
            f"  - {r['gate']}: {r['metric']} = "
            + ("n/a" if r["value"] is None else f"{r['value']:.4f}")
            + f", required {r['comparison']} {r['threshold']}"
            + (f" ({r['note']})" if r.get("note") else "")
            for r in failed
        ]
        raise GateFailed(
            f"{len(failed)} gate check(s) failed:\n"
            + "\n".join(lines)
            + "\nThe candidate is not registered and no alias moved. Improve the model or revisit the "
            "thresholds in the pipeline spec.",
            results,
        )
