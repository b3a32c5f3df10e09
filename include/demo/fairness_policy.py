"""The fairness policy, month after month: ``python -m include.demo.fairness_policy`` (``make policy``).

Thresholds are policy, not numbers tuned to pass one run. This replays the demo the way the
training DAG sees it, one monthly snapshot at a time (every batch up to the month), with the
product's own tasks: ingest, snapshot, train (entity-hash split), evaluate (business threshold) and
the fairness gate of the pipeline's spec. It prints one row per month with each fairness metric,
and which checks fail. The README records the table and the reasoning for the thresholds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def evaluate_policy(spec, months: list[str], workdir: Path) -> list[dict]:
    """One row per month: rows trained on, the decision threshold and the fairness gate's results."""
    from include import storage
    from include.demo.data import seed_landing
    from include.tasks.train.data_version import build_snapshot
    from include.tasks.train.evaluate import evaluate_model
    from include.tasks.train.fairness import assess_fairness
    from include.tasks.train.fit import train_model
    from include.tasks.train.ingest import ingest_batches

    landing = storage.path_to_uri(workdir / "landing")
    lake = storage.path_to_uri(workdir / "lake")
    seed_landing(landing, spec.name, start=months[0], months=len(months))
    rows = []
    for month in months:
        ingested = ingest_batches(spec, month, landing, lake, b"policy-replay-key")
        snapshot = build_snapshot(
            ingested["batch_uris"], storage.join(lake, "snap", month, "snapshot.parquet")
        )
        trained = train_model(spec, snapshot["snapshot_uri"], storage.join(lake, "runs", month))
        evaluated = evaluate_model(
            spec, trained["model_uri"], trained["splits"]["test"], trained["splits"]["validation"]
        )
        with tempfile.TemporaryDirectory(prefix="slipway-policy-") as tmp:
            fair = assess_fairness(
                spec,
                trained["model_uri"],
                trained["splits"]["test"],
                evaluated["rule"],
                tmp,
                train_uri=trained["splits"]["train"],
            )
        rows.append(
            {
                "month": month,
                "rows": snapshot["rows"],
                "threshold": evaluated["threshold"],
                "roc_auc": evaluated["metrics"]["roc_auc"],
                "results": fair["gates"],
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The table: one row per month, one column per fairness check, failed values marked."""
    metrics = [r["metric"] for r in rows[0]["results"]] if rows else []
    short = [
        m.replace("_difference", "")
        .replace("_ratio", "")
        .replace("demographic_parity", "DP")
        .replace("disparate_impact", "DI")
        .replace("equal_opportunity", "EOD")
        .replace("equalized_odds", "EqOdds")
        .replace("predictive_parity", "PPD")
        for m in metrics
    ]
    lines = [
        "| month | rows | threshold | ROC AUC | " + " | ".join(short) + " | failed |",
        "|---|---|---|---|" + "---|" * len(short) + "---|",
    ]
    for row in rows:
        by = {r["metric"]: r for r in row["results"]}
        cells = []
        for m in metrics:
            r = by[m]
            value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
            cells.append(f"**{value}**" if r["status"] == "failed" else value)
        failed = sum(r["status"] == "failed" for r in row["results"])
        lines.append(
            f"| {row['month']} | {row['rows']} | {row['threshold']:.2f} | {row['roc_auc']:.3f} | "
            + " | ".join(cells)
            + f" | {failed} |"
        )
    return "\n".join(lines)


def seed_table(spec, months: list[str], seeds: int, workdir: Path) -> str:
    """How often each month passes when only the split's seed changes: the evidence's own noise.

    Each seed is another draw of which customers are held out (``split.random_state``); a policy
    that a month passes for one draw and fails for another is deciding on noise at that size.
    """
    from collections import Counter

    passes: Counter = Counter()
    failed: dict[str, Counter] = {m: Counter() for m in months}
    for k in range(seeds):
        split = spec.split.model_copy(update={"random_state": spec.split.random_state + 1 + k})
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            for row in evaluate_policy(spec.model_copy(update={"split": split}), months, Path(tmp)):
                bad = [r["metric"] for r in row["results"] if r["status"] == "failed"]
                passes[row["month"]] += not bad
                failed[row["month"]].update(bad)
    lines = [f"| month | passes (of {seeds} split seeds) | failed checks (times) |", "|---|---|---|"]
    for m in months:
        checks = ", ".join(f"{c} ({n})" for c, n in failed[m].most_common()) or "-"
        lines.append(f"| {m} | {passes[m]} | {checks} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the policy table for the demo pipeline; exit 1 if any month fails the policy."""
    from include.demo.data import month_labels
    from include.spec import load_pipeline

    parser = argparse.ArgumentParser(prog="python -m include.demo.fairness_policy", description=__doc__)
    parser.add_argument("--pipeline", default="telco_churn")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument(
        "--seeds", type=int, default=0, help="also replay with N other split seeds and count the passes"
    )
    args = parser.parse_args(argv)
    spec = load_pipeline(args.pipeline)
    months = month_labels("2025-01", args.months)
    with tempfile.TemporaryDirectory(prefix="slipway-policy-") as tmp:
        rows = evaluate_policy(spec, months, Path(tmp))
        print(markdown(rows))
        if args.seeds:
            print()
            print(seed_table(spec, months, args.seeds, Path(tmp)))
    failing = [r["month"] for r in rows if any(x["status"] == "failed" for x in r["results"])]
    print(
        f"\n{len(rows) - len(failing)} of {len(rows)} monthly models pass the fairness policy"
        + (f"; failing: {', '.join(failing)}" if failing else "")
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
