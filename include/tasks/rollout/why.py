"""Why an approver is asked: what started the training, and how the candidate compared with the
champion offline (on the same test split), in lines for the approval's evidence.

Pure functions over records already kept: the training DAG run's MLflow tags (``slipway.trigger``
and its evidence, see :func:`include.lineage.trigger_tags`) and the champion comparison
(``champion/comparison.json`` of the training's ``compare_with_champion`` task).
"""

from __future__ import annotations

import json

from include.times import utc_minute


def trigger_line(dag_run: str, tags: dict[str, str], registered_by: str | None) -> str:
    """``Started by drift: ...`` / ``by the schedule`` / ``by a person (alice)``, for the training run."""
    cause = tags.get("slipway.trigger") or "unknown"
    where = f"the training run `{dag_run}`"
    if cause in ("drift", "performance"):
        try:
            evidence = json.loads(tags.get("slipway.trigger.evidence") or "{}")
        except ValueError:
            evidence = {}
        found = [
            f"{item['metric']} = {item['value']} (limit {item['threshold']})"
            for item in [*evidence.get("drifted", []), *evidence.get("performance", [])][:4]
        ]
        window = ""
        if evidence.get("since") and evidence.get("until"):
            window = f" in the served traffic of {utc_minute(evidence['since'])} to {utc_minute(evidence['until'])}"
        what = "drift" if cause == "drift" else "a drop in live performance"
        return f"{where} was started by the monitor: {what}{window}" + (
            f": {'; '.join(found)}" if found else ""
        )
    if cause == "schedule":
        return f"{where} was started by the schedule (a new month)"
    if cause in ("manual", "backfill"):
        return f"{where} was started by hand ({cause}" + (f", by {registered_by})" if registered_by else ")")
    return f"{where} was started by {cause}"


def offline_lines(comparison: dict | None, results: list[dict], champion_now: int | None) -> list[str]:
    """The candidate against the champion of its training, metric by metric, with the allowed drop."""
    if not comparison or not comparison.get("champion"):
        return ["no champion when it was trained: held to the absolute floors only"]
    cand, champ = comparison["candidate"], comparison["champion"]
    allowed = {
        r["metric"].removesuffix("_delta").removesuffix("_increase"): r
        for r in results
        if r.get("gate") == "champion"
    }
    then = champ.get("version")
    head = f"against version {then}, the champion when it was trained, on the same test split"
    if champion_now is not None and then != champion_now:
        head += f" (the champion is version {champion_now} now)"
    lines = [head + ":"]
    from include.tasks.metrics import SHOWN

    shown = SHOWN.get(comparison.get("task", "binary"), SHOWN["binary"])
    for metric in (*shown, "value_per_1000"):
        if metric not in cand or metric not in champ:
            continue
        a, b = float(cand[metric]), float(champ[metric])
        digits = 2 if metric == "value_per_1000" else 4
        line = f"- {metric}: {a:.{digits}f} vs {b:.{digits}f} ({a - b:+.{digits}f})"
        r = allowed.get(metric)
        if r is not None:
            limit = "no more than" if r["comparison"] == "<=" else "at least"
            line += f", change allowed: {limit} {float(r['threshold']):+.4f}, {r['status']}"
        lines.append(line)
    return lines
