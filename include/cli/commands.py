"""The ``slipway`` command: seed the demo, run and inspect pipelines, trace a model's lineage."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from include.cli.reports import (
    event_line,
    lineage_record,
    print_lineage,
    print_status,
    say,
    status_record,
    summarise_run,
)
from include.deploy.dag_run import migrate_airflow_db, run_dag, use_airflow_env
from include.times import utc_minute
from include.tracking import mlflow_client


def cmd_seed(args) -> None:
    from include.demo.data import seed_landing
    from include.settings import get_settings

    landing = get_settings().landing_uri
    uris = seed_landing(landing, args.pipeline, start=args.start, months=args.months)
    say(f"landed {len(uris)} monthly batches of {args.pipeline} in {landing}")


def cmd_run(args) -> None:
    from include.spec import load_pipeline

    spec = load_pipeline(args.pipeline)
    migrate_airflow_db()
    t1 = time.monotonic()
    # The month is the trigger form's too: a DAG without a monthly timetable (score) reads it there.
    conf = {"month": args.month} if args.month else None
    dr = run_dag(spec.dag_id(args.purpose), args.month, quiet=not args.verbose, conf=conf)
    say(f"{spec.dag_id(args.purpose)} run {dr.run_id}: {dr.state} in {time.monotonic() - t1:.1f} s")
    if args.purpose == "train":
        summarise_run(spec.name, spec.dag_id(args.purpose), dr.run_id)
    else:  # what the run found or did, as its MLflow record and the UI's note say it
        from include.lineage import OUTCOME_TAG, find_parent

        parent = find_parent(spec.name, spec.dag_id(args.purpose), dr.run_id)
        outcome = parent.data.tags.get(OUTCOME_TAG) if parent is not None else None
        if outcome:
            say(outcome)
    if str(dr.state) != "success":
        raise SystemExit(1)


def cmd_demo(args) -> None:
    from include.demo.lifecycle import main

    main()


def _scored_lineage(args) -> None:
    """``slipway lineage --scored PIPELINE/MONTH/ENTITY``: the batch-scored row, its version and data."""
    from include.settings import get_settings, pii_key
    from include.tasks.score.population import entity_hasher, find_scored

    try:
        pipeline, month, entity = args.scored.split("/", 2)
    except ValueError:
        raise SystemExit(
            "--scored takes PIPELINE/MONTH/ENTITY, e.g. telco_churn/2025-12/CUST-00042"
        ) from None
    settings = get_settings()
    hashed = entity_hasher(pii_key(settings))(entity)
    rows = find_scored(settings.lake_uri, pipeline, month, hashed)
    if not rows:
        raise SystemExit(
            f"no scored row of entity {entity!r} (keyed hash {hashed[:12]}…) in {pipeline}'s scores of {month}; "
            "check the month (slipway lineage prints the months a version scored) and the entity id"
        )
    newest = rows[-1]
    rec = {"scored_rows": rows, **lineage_record(f"{pipeline}/{newest['model_version']}")}
    if args.json:
        print(json.dumps(rec, indent=2, default=str))
        return
    for r in rows:
        answer = (
            f"class {r['class']} ({r['probability']:.4f})"
            if "class" in r
            else f"probability {r['probability']:.4f}, decision {r['decision']}"
            if "probability" in r
            else f"prediction {r['prediction']:g}, decision {r['decision']:g}"
        )
        print(
            f"scored     {pipeline} {month}, entity {hashed[:16]}…: version {r['model_version']} answered {answer}\n"
            f"           row {r['row']} of {r['input']} (sha256 {r['data_version'][:12]}…), graph sha256 "
            f"{(r['onnx_sha256'] or '')[:12]}…\n"
            f"           in {r['scores_uri']}; request id {r['request_id']} (feedback labels it by this)"
        )
    print_lineage(rec)


def cmd_forget(args) -> None:
    """``slipway forget PIPELINE ENTITY``: erase one entity from the log, the lake's scores and the
    delivery tables, and keep it out of every future training snapshot. Prints counts, never the id."""
    from include.prediction_log.retention import forget
    from include.settings import get_settings, pii_key
    from include.spec import discover, load_pipeline, spec_path
    from include.tasks.retire.erasure import erase_delivered, erase_scored
    from include.tasks.score.population import entity_hasher

    entity = args.entity
    if not entity or not entity.strip():
        raise SystemExit(
            "slipway forget: the entity id is empty; give it as the population and the service's requests "
            "hold it, e.g. slipway forget telco_churn CUST-00042 (nothing was changed)"
        )
    if not spec_path(args.pipeline).is_file():
        known = ", ".join(sorted(s.name for s in discover()[0])) or "none"
        raise SystemExit(
            f"slipway forget: no pipeline {args.pipeline!r} (no spec at {spec_path(args.pipeline)}); the "
            f"pipelines are: {known}. Check the name (nothing was changed)"
        )
    spec = load_pipeline(args.pipeline)
    if spec.entity_column is None:
        raise SystemExit(
            f"slipway forget: {spec.name} hashes no identifier (identifiers: <column>: hash in its spec), so "
            "none of its rows carries an entity key to forget (nothing was changed)"
        )
    use_airflow_env()  # Airflow's environment, as `slipway run`: the delivery tables' connections
    settings = get_settings()
    hashed = entity_hasher(pii_key(settings))(entity)
    # The log first: it records the keyed hash that keeps the entity out of future snapshots, so a
    # failure further on leaves it forgotten there, and a re-run (harmless) finishes the rest.
    log_counts = forget(None, spec.name, hashed)
    lake = erase_scored(settings.lake_uri, spec.name, hashed)
    delivered: dict[str, int] = {}
    for target in spec.scoring.deliver:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        conn = PostgresHook(postgres_conn_id=target.connection).get_conn()
        try:
            delivered[target.table] = erase_delivered(conn, target.table, hashed)
        finally:
            conn.close()
    print(f"forgot an entity of {spec.name} (keyed hash {hashed[:12]}…):")
    print(
        f"  prediction log: {log_counts['predictions']} served row(s), {log_counts['batch_predictions']} "
        f"batch-scored row(s), {log_counts['failures']} failure(s), {log_counts['feedback']} label(s) deleted"
    )
    print(
        f"  lake scores: {lake['rows']} row(s) erased from {lake['files']} file(s) under {settings.lake_uri}"
    )
    for table, n in delivered.items():
        print(f"  delivery table {table}: {n} row(s) deleted")
    print(
        "  future training snapshots leave it out (its keyed hash is kept in slipway_forgotten); past "
        "snapshots, landed batches and MLflow artifacts keep it (see docs/operating.md)"
    )


def cmd_lineage(args) -> None:
    if args.scored:
        if args.ref or args.request:
            raise SystemExit("--scored traces a batch-scored row on its own: drop the model reference")
        _scored_lineage(args)
        return
    if bool(args.ref) == bool(args.request):
        raise SystemExit("give a model reference (NAME@ALIAS or NAME/VERSION) or --request ID, not both")
    prediction = None
    ref = args.ref
    if args.request:
        from include.prediction_log.writer import PredictionLog

        plog = PredictionLog()
        rows = plog.get(args.request)
        if not rows:
            raise SystemExit(
                f"no prediction {args.request!r} in the prediction log ({plog.database.redacted()}); "
                "check the request id and SLIPWAY_SERVING_DB"
            )
        prediction = next((r for r in rows if r["served"]), rows[0])
        prediction["shadow"] = [r for r in rows if r is not prediction]
        ref = f"{prediction['pipeline']}/{prediction['model_version']}"
    rec = lineage_record(ref)
    if prediction is not None:
        rec = {"prediction": prediction, **rec}
    if args.json:
        print(json.dumps(rec, indent=2, default=str))
        return
    if prediction is not None:
        p = prediction
        label = (
            "no label yet"
            if p.get("label") is None
            else f"label {p['label']} ({p.get('label_received_at')}, key {p.get('label_key_id') or 'unknown'})"
        )
        print(
            f"request    {p['request_id']} at {p['created_at']} (key {p.get('key_id') or 'unknown'}): "
            f"{p['variant']} answered score {p['probability']:.4f}, decision {p['decision']:g}; {label}"
        )
        for shadow in p["shadow"]:
            print(
                f"shadow     {shadow['variant']} version {shadow['model_version']} scored {shadow['probability']:.4f}"
            )
    print_lineage(rec)


def cmd_history(args) -> None:
    from include.registry import aliases, champion_timeline, history

    client = mlflow_client()
    events = history(client, args.pipeline)
    if not events and not aliases(client, args.pipeline):
        raise SystemExit(
            f"{args.pipeline} has no recorded promotions or rollouts (is it registered? `slipway status`)"
        )
    spans = champion_timeline(events)
    if args.json:
        print(
            json.dumps(
                {"aliases": aliases(client, args.pipeline), "champions": spans, "events": events}, indent=2
            )
        )
        return
    print(f"{args.pipeline}: aliases now {aliases(client, args.pipeline)}")
    print("champion:")
    for span in spans:
        until = utc_minute(span["until"]) or "now"
        print(f"  version {span['version']:<4} {utc_minute(span['since'])} -> {until}: {span['why']}")
        if span.get("ended_by"):
            print(f"               ended by {span['ended_by']}")
    print("events:")
    for e in events:
        print("  " + event_line(e))


def cmd_status(args) -> None:
    # An operator's question, not a pipeline step: a down MLflow is reported in seconds, not after
    # MLflow's default minutes of HTTP retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    rec = status_record()
    if args.json:
        print(json.dumps(rec, indent=2, default=str))
    else:
        print_status(rec)


def _suite_for_spec_file(spec_file, suite_file: str):
    """The suite a spec file is checked against: the configured folder for a spec in the configured
    pipelines folder (what the DAGs use), else ``expectations/`` beside the spec's folder if it has it."""
    from pathlib import Path

    from include.settings import get_settings

    settings = get_settings()
    folder = Path(spec_file).resolve().parent
    sibling = folder.parent / "expectations" / suite_file
    if folder != settings.pipelines_dir.resolve() and sibling.is_file():
        return sibling
    return settings.expectations_dir / suite_file


def cmd_check_spec(args) -> None:
    """Validate each spec file, and cross-check its expectation suite against the columns ingest writes."""
    from include.spec import SpecError, load_spec
    from include.tasks.train.suite_check import check_suite_columns

    failed = False
    for path in args.paths:
        try:
            spec = load_spec(path)
        except (SpecError, OSError) as exc:
            failed = True
            print(str(exc), file=sys.stderr)
            continue
        suite = _suite_for_spec_file(path, spec.suite_file)
        problems = check_suite_columns(spec, suite)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            failed = True
            continue
        print(
            f"{path}: ok ({spec.name}, {len(spec.features.all)} features, {spec.estimator.kind}; "
            f"suite {suite} agrees with the columns ingest writes)"
        )
    if failed:
        raise SystemExit(1)


def cmd_sweep(args) -> None:
    from include.lineage import sweep_ended_runs

    use_airflow_env()
    closed = sweep_ended_runs(args.days)
    for name in closed:
        say(f"closed the lineage of {name}")
    say(f"swept DAG runs that ended in the last {args.days} days: {len(closed)} needed closing")


def cmd_env(args) -> None:
    from include.settings import airflow_environment, get_settings

    s = get_settings()
    print(f"# landing zone (each batch lands as <pipeline>/<source.batch_name of its spec>): {s.landing_uri}")
    print(f"# lake (ingested batches, snapshots, run outputs): {s.lake_uri}")
    print(f"# DVC remote: {s.dvc_remote_uri}")
    for k, v in airflow_environment().items():
        print(f"export {k}={json.dumps(v)}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``slipway`` console command."""
    parser = argparse.ArgumentParser(prog="slipway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo",
        help="the lifecycle on the embedded stack: train, roll out with traffic, approve, promote (see include/demo/lifecycle.py)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("seed", help="drop a shipped pipeline's monthly batches into the landing zone")
    p.add_argument(
        "pipeline",
        nargs="?",
        default="telco_churn",
        choices=["telco_churn", "job_runtime", "salary_benchmark"],
        help="whose batches (default telco_churn)",
    )
    p.add_argument("--start", default="2025-01")
    p.add_argument("--months", type=int, default=12)
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("run", help="run one DAG run of a pipeline now (dag.test) for a month's data interval")
    p.add_argument("pipeline")
    p.add_argument("--purpose", default="train")
    p.add_argument("--month", help="YYYY-MM of the data interval (default: the current one)")
    p.add_argument("--verbose", action="store_true", help="print every task's log instead of only the errors")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "lineage",
        help="how a model version came to be: NAME@ALIAS, NAME/VERSION, --request ID of a prediction, or "
        "--scored PIPELINE/MONTH/ENTITY of a batch-scored row",
    )
    p.add_argument("ref", nargs="?")
    p.add_argument(
        "--request", help="a prediction's request id: its model version and that version's lineage"
    )
    p.add_argument(
        "--scored",
        metavar="PIPELINE/MONTH/ENTITY",
        help="a batch-scored row (the entity id as the population holds it): the version that scored it, "
        "the input file, and that version's lineage",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser(
        "forget",
        help="erase one entity (by its id, hashed here) from the prediction log, the lake's scores and the "
        "delivery tables, and keep it out of future training snapshots",
    )
    p.add_argument("pipeline")
    p.add_argument("entity", help="the entity id as the population and the requests hold it (never printed)")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("history", help="which version was champion when, and why it changed")
    p.add_argument("pipeline")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("status", help="pipelines, registered versions and aliases")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("check-spec", help="validate pipeline spec files")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=cmd_check_spec)

    p = sub.add_parser("env", help="print the environment of the embedded stack as shell exports")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser(
        "sweep",
        help="close MLflow lineage that finished DAG runs left open (e.g. MLflow was down at their end)",
    )
    p.add_argument("--days", type=int, default=14, help="look at DAG runs that ended in the last N days")
    p.set_defaults(func=cmd_sweep)

    from include.serving.cli import add_commands

    add_commands(sub)

    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in summaries
    args.func(args)
