"""Blocks of the monitoring family (``dags/monitor.py``): each interval of served traffic watched.

``check_drift`` and ``check_performance`` (side by side) → ``judge_interval`` (records the interval
in ``slipway_monitor``, decides with the cool-down) → ``send_alert`` and ``trigger_retraining``
(each skipped when there is nothing to send). The logic lives in :mod:`include.tasks.monitor.drift` and
:mod:`include.tasks.monitor.performance`; these bodies read the context, call it, and record what it found in
the task's MLflow run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from include.blocks.adapter import Step, block
from include.times import utc_minute
from include.tracking import mlflow_client
from include.uri import join

log = logging.getLogger("slipway")


def _interval(step: Step) -> tuple[str, str]:
    """The window checked: the data interval, or for a run triggered with ``minutes`` the minutes
    before the moment it was triggered (an operator's "check the last half hour now")."""
    from datetime import timedelta

    from include.prediction_log.rows import iso_utc

    ctx = step.context
    minutes = (ctx.get("params") or {}).get("minutes")
    start, end = ctx.get("data_interval_start"), ctx.get("data_interval_end")
    if minutes:
        end = ctx["dag_run"].run_after
        start = end - timedelta(minutes=float(minutes))
    elif start is None or end is None:  # no interval (a run without a timetable's): the hour before it
        end = ctx["dag_run"].run_after
        start = end - timedelta(hours=1)
    return iso_utc(start), iso_utc(end)


def _skip(reason: str):
    from airflow.sdk.exceptions import AirflowSkipException

    log.info("%s", reason)
    return AirflowSkipException(reason)


def reference(step: Step, client, version: int):
    """The version's reference, built once from its training snapshot and stored in the lake beside
    its other evidence (``<lake>/<pipeline>/monitoring/reference/version=N/``): ``profile.json`` (the
    bins the hourly check counts against) and ``sample.parquet`` (a bounded sample of its training
    rows, what Evidently's report compares the interval with). Returns ``(profile, folder uri)``."""
    from include import storage
    from include.tasks.monitor.drift import Profile

    folder = join(step.settings.lake_uri, step.pipeline, "monitoring", "reference", f"version={version}")
    profile_uri, sample_uri = join(folder, "profile.json"), join(folder, "sample.parquet")
    if not (storage.exists(profile_uri) and storage.exists(sample_uri)):
        _build_reference(step, client, version, profile_uri, sample_uri)
    return Profile.from_json(storage.read_bytes(profile_uri)), folder


def _build_reference(step: Step, client, version: int, profile_uri: str, sample_uri: str) -> None:
    import io

    from include import storage
    from include.frames import feature_frame
    from include.model_files import onnx_inputs
    from include.registry import load_version
    from include.spec import SPLIT_COLUMN
    from include.tasks.monitor.drift import build_profile, feature_kinds, read_snapshot

    snapshot_uri = client.get_model_version(step.pipeline, str(version)).tags["slipway.snapshot_uri"]
    snapshot = read_snapshot(snapshot_uri)
    test = snapshot[snapshot[SPLIT_COLUMN] == "test"] if SPLIT_COLUMN in snapshot else snapshot
    with tempfile.TemporaryDirectory(prefix="slipway-profile-") as tmp:
        model = load_version(client, step.pipeline, version, Path(tmp))
        # The statistic the log keeps per served row (see OnnxModel.logged_score), on the test split.
        scores = model.logged_score(model.predict(onnx_inputs(step.spec, feature_frame(test, step.spec))))
    train = snapshot[snapshot[SPLIT_COLUMN] == "train"] if SPLIT_COLUMN in snapshot else snapshot
    rows = min(len(train), step.spec.monitoring.drift.report_sample_rows)
    sample = io.BytesIO()
    train.sample(n=rows, random_state=0)[list(feature_kinds(step.spec))].to_parquet(sample, index=False)
    storage.write_bytes(sample_uri, sample.getvalue())
    storage.write_bytes(profile_uri, build_profile(step.spec, version, snapshot, scores).to_json())
    log.info("reference of version %d built from %s: %s", version, snapshot_uri, profile_uri)


def _report(step: Step, reference_uri: str, sample: list[dict]) -> dict:
    """Evidently's drift report on the sample of the interval against the reference's stored sample."""
    from include.tasks.monitor.drift import evidently_report, feature_kinds, read_snapshot, report_frames

    ref, cur = report_frames(
        feature_kinds(step.spec), read_snapshot(join(reference_uri, "sample.parquet")), sample
    )
    with tempfile.TemporaryDirectory(prefix="slipway-drift-") as tmp:
        summary = evidently_report(
            ref,
            cur,
            str(Path(tmp) / "report.html"),
            str(Path(tmp) / "report.json"),
            step.spec.monitoring.drift.max_feature_psi,
        )
        step.mlflow.log_artifacts(tmp, artifact_path="drift")
    return {
        "uri": step.evidence("drift/report.html"),
        "json_uri": step.evidence("drift/report.json"),
        **summary,
    }


@block
def check_drift(step: Step) -> dict:
    """Per-feature and prediction drift of the interval's served rows against the champion's reference."""
    from include.prediction_log.reads import served_inputs
    from include.registry import aliases
    from include.tasks.monitor.drift import count_window, drift_checks

    name, cfg = step.pipeline, step.spec.monitoring.drift
    since, until = _interval(step)
    client = mlflow_client()
    champion = aliases(client, name).get("champion")
    if champion is None:
        log.info("%s has no champion yet: nothing is served, nothing to watch", name)
        return {"since": since, "until": until, "champion": None, "rows": 0, "results": []}
    profile, reference_uri = reference(step, client, champion)
    counts, sample = count_window(served_inputs(None, name, since, until), profile, cfg.report_sample_rows)
    results = drift_checks(cfg, counts) if counts.rows else []
    metrics = {"drift.served_rows": counts.rows, "drift.champion_rows": counts.scored}
    metrics.update({f"drift.psi.{k}": v for k, v in counts.feature_psi().items()} if counts.rows else {})
    if counts.score_psi() is not None:
        metrics["drift.psi.prediction"] = counts.score_psi()
    step.mlflow.log_metrics(metrics)
    report = None
    if counts.rows >= cfg.min_rows:
        report = _report(step, reference_uri, sample)
        client.set_model_version_tag(name, str(champion), "slipway.monitor.report_uri", report["uri"])
    if not counts.rows:
        log.info("no traffic for %s between %s and %s: nothing to judge", name, since, until)
    else:
        failed = [r for r in results if r["status"] == "failed"]
        log.info(
            "%s, %s to %s: %d served rows (%d by champion version %d), %d drifted check(s)%s; report %s",
            name,
            since,
            until,
            counts.rows,
            counts.scored,
            champion,
            len(failed),
            "".join(f"\n  {r['metric']} = {r['value']:.4f} > {r['threshold']}" for r in failed),
            report and report["uri"],
        )
    return {
        "since": since,
        "until": until,
        "champion": champion,
        "rows": counts.rows,
        "results": results,
        "reference_uri": reference_uri,
        "report": report,
    }


@block
def check_performance(step: Step) -> dict:
    """Live ROC AUC and business value on the predictions whose labels had time to arrive."""
    from datetime import datetime, timedelta

    from include.prediction_log.rows import iso_utc
    from include.registry import aliases
    from include.tasks.monitor.performance import performance_checks, read_labelled

    name, cfg = step.pipeline, step.spec.monitoring.performance
    _, end = _interval(step)
    until_dt = datetime.fromisoformat(end) - timedelta(hours=cfg.label_delay_hours)
    since, until = iso_utc(until_dt - timedelta(hours=cfg.window_hours)), iso_utc(until_dt)
    client = mlflow_client()
    champion = aliases(client, name).get("champion")
    if champion is None:
        return {"since": since, "until": until, "champion": None, "labelled": 0, "results": []}
    labelled = read_labelled(None, name, champion, since, until)
    tags = dict(client.get_model_version(name, str(champion)).tags)
    results = performance_checks(cfg, step.spec, labelled, tags)
    step.mlflow.log_metrics(
        {"performance.labelled": len(labelled.label)}
        | {f"performance.{r['metric']}": r["value"] for r in results if r["value"] is not None}
    )
    log.info(
        "%s: %d labelled predictions of version %d made %s to %s: %s",
        name,
        len(labelled.label),
        champion,
        since,
        until,
        "; ".join(f"{r['metric']} {r['status']} ({r.get('value') or r.get('note')})" for r in results),
    )
    return {
        "since": since,
        "until": until,
        "champion": champion,
        "labelled": len(labelled.label),
        "results": results,
    }


def _metric(name: str) -> str:
    """An MLflow metric name for a result's metric (``null_rate[tenure]`` -> ``null_rate.tenure``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", ".", name).strip(".")


def _record_results(step: Step, check: str, results: list[dict], extra: dict | None = None) -> None:
    """A check's results on its task's MLflow run: a metric per measured value, the JSON of them all,
    and its state as a tag (``slipway.monitor.<check>``)."""
    from include.tasks.monitor.decision import check_status

    step.mlflow.log_metrics(
        {f"{check}.{_metric(r['metric'])}": float(r["value"]) for r in results if r["value"] is not None}
    )
    step.mlflow.log_dict({"check": check, "results": results, **(extra or {})}, f"monitor/{check}.json")
    step.mlflow.set_tag(f"slipway.monitor.{check}", check_status(results))
    for r in results:
        log.log(
            logging.WARNING if r["status"] == "failed" else logging.INFO,
            "%s %s: %s %s (threshold %s %s)%s",
            check,
            r["metric"],
            r["status"],
            r["value"],
            r["comparison"],
            r["threshold"],
            f"; {r['note']}" if r.get("note") else "",
        )


def _blessing(client, pipeline: str, version: int) -> dict | None:
    """The version's blessing (every training gate's results), from its registered run."""
    import mlflow

    from include.tracking import trusted_artifact_uri

    uri = client.get_model_version(pipeline, str(version)).tags.get("slipway.blessing_uri")
    return mlflow.artifacts.load_dict(trusted_artifact_uri(uri)) if uri else None


def _performance_window(step: Step) -> tuple[str, str]:
    """The window of predictions whose labels had time to arrive (``monitoring.performance``)."""
    from datetime import datetime, timedelta

    from include.prediction_log.rows import iso_utc

    cfg = step.spec.monitoring.performance
    _, end = _interval(step)
    until_dt = datetime.fromisoformat(end) - timedelta(hours=cfg.label_delay_hours)
    return iso_utc(until_dt - timedelta(hours=cfg.window_hours)), iso_utc(until_dt)


@block
def check_fairness(step: Step) -> dict:
    """fairlearn gaps of the champion's live labelled decisions per sensitive group, against training."""
    from include.registry import aliases
    from include.tasks.monitor.fairness import live_fairness, read_sensitive, training_values
    from include.tasks.monitor.performance import read_labelled

    name, spec = step.pipeline, step.spec
    since, until = _performance_window(step)
    client = mlflow_client()
    champion = aliases(client, name).get("champion")
    if champion is None:
        return {"since": since, "until": until, "champion": None, "results": []}
    labelled = read_labelled(None, name, champion, since, until)
    cfg = spec.monitoring.fairness
    needs_lake = cfg.enabled and spec.sensitive_attributes and spec.entity_column is not None
    sensitive = read_sensitive(step.settings.lake_uri, spec) if needs_lake else None
    trained = training_values(_blessing(client, name, champion)) if needs_lake else {}
    out = live_fairness(spec, labelled, sensitive, trained)
    step.mlflow.log_metrics(
        {
            "fairness.labelled": out["rows"],
            "fairness.matched": out["matched"],
            "fairness.unmatched": out["unmatched"],
        }
    )
    _record_results(
        step,
        "fairness",
        out["results"],
        {"report": out["report"], "training": trained, "since": since, "until": until},
    )
    return {
        "since": since,
        "until": until,
        "champion": champion,
        "rows": out["rows"],
        "matched": out["matched"],
        "unmatched": out["unmatched"],
        "results": out["results"],
    }


def _training_importance(client, pipeline: str, version: int) -> dict[str, float] | None:
    """The explainability gate's SHAP global importance of ``version`` (None when the gate did not run)."""
    import mlflow

    from include.tracking import trusted_artifact_uri

    blessing = _blessing(client, pipeline, version) or {}
    uris = {
        r["evidence_uri"]
        for r in blessing.get("results", [])
        if r.get("gate") == "explainability" and r.get("evidence_uri")
    }
    for uri in sorted(uris):
        record = mlflow.artifacts.load_dict(trusted_artifact_uri(uri))
        if record.get("global_importance"):
            return {k: float(v) for k, v in record["global_importance"].items()}
    return None


@block
def check_attributions(step: Step) -> dict:
    """SHAP ranking of a sample of the interval's served rows against the version's training ranking."""
    from include.frames import feature_frame
    from include.prediction_log.reads import served_inputs
    from include.registry import aliases, load_explainable
    from include.tasks.monitor.attribution import attribution_checks, live_importance, sample_frame
    from include.tasks.monitor.drift import count_window

    name, spec, cfg = step.pipeline, step.spec, step.spec.monitoring.attribution
    since, until = _interval(step)
    client = mlflow_client()
    champion = aliases(client, name).get("champion")
    if champion is None:
        return {"since": since, "until": until, "champion": None, "rows": 0, "results": []}
    rows, training, live = 0, None, None
    if cfg.enabled:
        profile, _ = reference(step, client, champion)
        counts, sample = count_window(served_inputs(None, name, since, until), profile, cfg.sample_rows)
        rows = counts.rows
        if rows >= cfg.min_rows:
            training = _training_importance(client, name, champion)
        if training:
            # As the service's /explain loads it: the model checked against its registered digest,
            # and a seeded background of the version's training rows.
            model, background = load_explainable(client, name, champion)
            live = live_importance(
                model,
                feature_frame(background, spec),
                sample_frame(sample, spec),
                list(spec.target.classes or []) or None,
            )
    results = attribution_checks(cfg, training, live, rows)
    _record_results(step, "attribution", results, {"training": training, "live": live, "rows": rows})
    return {"since": since, "until": until, "champion": champion, "rows": rows, "results": results}


@block
def check_data_quality(step: Step) -> dict:
    """Null, out-of-range and unseen-category shares of the served inputs, against the training profile."""
    from include.prediction_log.reads import served_inputs
    from include.registry import aliases
    from include.tasks.monitor.quality import count_quality, quality_checks, suite_ranges

    name, spec, cfg = step.pipeline, step.spec, step.spec.monitoring.data_quality
    since, until = _interval(step)
    client = mlflow_client()
    champion = aliases(client, name).get("champion")
    if champion is None:
        return {"since": since, "until": until, "champion": None, "rows": 0, "results": []}
    if not cfg.enabled:
        results, rows = quality_checks(cfg, None), 0
    else:
        profile, _ = reference(step, client, champion)
        suite = suite_ranges(step.settings.expectations_dir / spec.suite_file)
        counts = count_quality(served_inputs(None, name, since, until), profile, suite)
        results, rows = quality_checks(cfg, counts), counts.rows
    _record_results(step, "data_quality", results, {"rows": rows})
    return {"since": since, "until": until, "champion": champion, "rows": rows, "results": results}


@block
def judge_interval(
    step: Step,
    drift: dict,
    performance: dict,
    fairness: dict | None = None,
    attribution: dict | None = None,
    data_quality: dict | None = None,
) -> dict:
    """Record the interval in ``slipway_monitor``; decide alert and retraining under the cool-down."""
    from datetime import datetime

    from include.prediction_log.monitor_checks import Check, earlier, record
    from include.settings import get_settings
    from include.tasks.monitor.decision import decide, evidence, newest_landed_month

    name, cfg = step.pipeline, step.spec.monitoring
    since, until = drift["since"], drift["until"]
    history = earlier(None, name, until)
    checks = {
        k: (v or {}).get("results", [])
        for k, v in (("fairness", fairness), ("attribution", attribution), ("data_quality", data_quality))
    }
    d = decide(
        cfg,
        datetime.fromisoformat(until),
        drift["rows"],
        drift["results"],
        performance["results"],
        history,
        checks,
    )
    ev = {"since": since, "until": until, "champion": drift["champion"], "rows": drift["rows"]}
    ev |= evidence(drift["results"], performance["results"], checks=checks)
    if fairness and fairness.get("unmatched"):
        ev["checks"]["fairness"]["unmatched_rows"] = fairness["unmatched"]
    ev["measure"] = (
        f"the check: PSI > {cfg.drift.max_feature_psi:g} per feature (prediction: "
        f"> {cfg.drift.max_prediction_psi:g}), every served row of the interval in the reference's bins"
    )
    if drift.get("report"):
        ev["report_uri"] = drift["report"]["uri"]
        ev["report"] = {k: drift["report"].get(k) for k in ("drifted", "drifted_columns", "measure")}
    if d.held_by:
        ev["held_by"] = d.held_by
    if d.blocked:
        ev["blocked"] = d.blocked
    month = None
    if d.trigger:
        month = newest_landed_month(get_settings().landing_uri, name)
        if month is None:
            log.warning("no batch has landed for %s: the retrain would have nothing to train on", name)
    record(
        None,
        Check(
            name,
            since,
            until,
            drift["champion"],
            drift["rows"],
            d.status,
            d.drift_breach,
            d.performance_breach,
            d.trigger if month else None,
            d.alert,
            ev,
        ),
    )
    step.mlflow.set_tags(
        {
            "slipway.monitor.status": d.status,
            "slipway.monitor.trigger": d.trigger or "",
            "slipway.monitor.held_by": d.held_by or "",
            "slipway.monitor.breaches": ",".join(d.breaches),
            "slipway.monitor.evidence": json.dumps(ev, sort_keys=True, default=str)[:5000],
        }
    )
    if drift["champion"] is not None:
        mlflow_client().set_model_version_tag(
            name,
            str(drift["champion"]),
            "slipway.monitor.latest",
            json.dumps({"until": until, "status": d.status, "drifted": ev["drifted_count"]}),
        )
    if d.status == "no_traffic":
        log.info("%s: no traffic between %s and %s", name, since, until)
    elif d.held_by:
        log.warning(
            "%s: %s breach between %s and %s; retraining was already triggered for the interval ending %s "
            "(cool-down %s h): recorded, nothing triggered",
            name,
            "drift" if d.drift_breach else (d.breaches[0] if d.breaches else "performance"),
            since,
            until,
            d.held_by,
            cfg.cooldown_hours,
        )
    judged = {
        "status": d.status,
        "alert": d.alert,
        "trigger": d.trigger if month else None,
        "month": month,
        "sustained": d.sustained,
        "held_by": d.held_by,
        "breaches": list(d.breaches),
        "cause": d.trigger,  # what would start a retrain (None when nothing would, or held by the cool-down)
        "evidence": ev,
    }
    # The DAG run's one line: shown as its note in the Airflow UI (the lineage listener copies it).
    step.set_outcome(outcome_line(judged))
    return judged


def _feature(metric: str) -> str:
    return metric.removeprefix("psi[").removesuffix("]")


_LABELS = {"fairness": "live fairness", "attribution": "attribution drift", "data_quality": "data quality"}


def _check_lines(judged: dict) -> list[tuple[str, dict]]:
    """``(check, failed item)`` of each breached check beside drift and performance."""
    checks = judged["evidence"].get("checks") or {}
    return [(n, i) for n in judged.get("breaches", []) for i in checks.get(n, {}).get("failed", [])]


def _why_not(judged: dict) -> str:
    """Why a breach did not trigger retraining, in words (the cool-down; nothing to train on; ...)."""
    ev = judged["evidence"]
    if judged["held_by"]:
        return f"held by the cool-down (triggered for the interval ending {utc_minute(judged['held_by'])})"
    if ev.get("blocked"):
        return ev["blocked"]
    if judged.get("cause"):  # a retrain was due, but nothing to train on
        return "no batch has landed to train on"
    if judged.get("breaches"):
        alert_only = ", ".join(_LABELS[n] for n in judged["breaches"])
        tail = "; the performance drop is not sustained yet" if ev.get("performance") else ""
        return f"{alert_only} set to trigger: alert (monitoring.<check>.trigger){tail}"
    if ev.get("performance") and not ev.get("drifted"):
        return "the performance drop is not sustained yet"
    return "no batch has landed to train on"


def outcome_line(judged: dict) -> str:
    """What one monitor interval found and did, in one line (the DAG run's note)."""
    ev = judged["evidence"]
    if judged["status"] == "no_traffic":
        return f"no traffic between {utc_minute(ev['since'])} and {utc_minute(ev['until'])}: nothing to judge"
    if judged["status"] != "breach":
        return f"ok: {ev['rows']} served rows of version {ev['champion']}, no drift, no performance drop"
    what = []
    if ev.get("drifted"):
        worst = ", ".join(f"{_feature(i['metric'])} (PSI {i['value']:.2f})" for i in ev["drifted"][:4])
        more = ev["drifted_count"] - min(4, len(ev["drifted"]))
        what.append(f"drift in {worst}" + (f" and {more} more" if more > 0 else ""))
    if ev.get("performance"):
        what.append(
            ", ".join(f"{i['metric']} {i['value']:.3f} < {i['threshold']}" for i in ev["performance"])
        )
    for name in judged.get("breaches", []):
        failed = (ev.get("checks") or {}).get(name, {}).get("failed", [])
        what.append(
            f"{_LABELS[name]}: "
            + ", ".join(f"{i['metric']} {i['value']:.3f} {_outside(i)} {i['threshold']}" for i in failed[:3])
        )
    if judged["trigger"]:
        action = f"retraining triggered on {judged['month']}"
    elif judged["held_by"]:
        action = (
            "retraining held back by the cool-down (already triggered for the interval ending "
            f"{utc_minute(judged['held_by'])})"
        )
    else:
        why = _why_not(judged)
        action = f"retraining not triggered: {'the drop is not sustained yet' if why.startswith('the performance') else why}"
    return f"BREACH on {ev['rows']} rows of version {ev['champion']}: {'; '.join(what)}. {action}"


def _outside(item: dict) -> str:
    """The side of the bound a failed value is on (``>`` a ceiling, ``<`` a floor)."""
    return "<" if item.get("comparison") == ">=" else ">"


def alert_text(pipeline: str, judged: dict) -> tuple[str, str]:
    """Subject and body of an alert, for a person."""
    ev = judged["evidence"]
    what = []
    for item in ev.get("drifted", []):
        what.append(f"- drift: {item['metric']} = {item['value']} (limit {item['threshold']})")
    for item in ev.get("performance", []):
        what.append(f"- live performance: {item['metric']} = {item['value']} (floor {item['threshold']})")
    if ev.get("drifted_count", 0) > len(ev.get("drifted", [])):
        what.append(f"- {ev['drifted_count']} drifted checks in all")
    for name, item in _check_lines(judged):
        bound = "floor" if item.get("comparison") == ">=" else "limit"
        what.append(f"- {_LABELS[name]}: {item['metric']} = {item['value']} ({bound} {item['threshold']})")
    unmatched = ((ev.get("checks") or {}).get("fairness") or {}).get("unmatched_rows")
    if "fairness" in judged.get("breaches", []) and unmatched:
        what.append(
            f"- live fairness: {unmatched} labelled rows had no matching entity in the lake (left out)"
        )
    action = (
        f"Retraining was triggered (month {judged['month']})."
        if judged["trigger"]
        else f"Retraining was not triggered: {_why_not(judged)}."
    )
    kinds = ["drift"] if ev.get("drifted") else ["performance drop"] if ev.get("performance") else []
    kinds += [_LABELS[n] for n in judged.get("breaches", [])]
    subject = f"[slipway] {pipeline}: {' and '.join(kinds)} in served traffic"
    body = "\n".join(
        [
            f"{pipeline}, champion version {ev['champion']}, {ev['rows']} served rows "
            f"{utc_minute(ev['since'])} to {utc_minute(ev['until'])}:",
            *what,
            action,
            f"Drift report: {ev['report_uri']}" if ev.get("report_uri") else "",
        ]
    ).strip()
    return subject, body


@block
def send_alert(step: Step, judged: dict) -> dict:
    """Notify through the spec's alert connection (http: JSON POST; smtp: e-mail); without one, a warning."""
    if not judged["alert"]:
        raise _skip(
            f"nothing to alert ({judged['status']})"
            if judged["status"] != "breach"
            else "breach already alerted within the cool-down"
        )
    from include.blocks.notify import deliver

    conn_id = step.spec.monitoring.alert_connection
    subject, body = alert_text(step.pipeline, judged)
    channel = deliver(
        conn_id, subject, body, {"pipeline": step.pipeline, "event": "monitor", **judged}, step.context
    )
    if channel != "log":
        log.info("alert sent through %s connection %r: %s", channel, conn_id, subject)
    step.mlflow.set_tags(
        {"slipway.alert": "logged" if channel == "log" else channel, "slipway.alert.subject": subject}
    )
    return {"channel": channel, "subject": subject}


@block
def trigger_retraining(step: Step, judged: dict) -> dict:
    """Emit the drift asset event (its payload: cause, window, what breached, month to train on)."""
    if not judged["trigger"]:
        raise _skip(
            "no retraining: "
            + (
                f"held by the cool-down (triggered for the interval ending {judged['held_by']})"
                if judged["held_by"]
                else judged["status"]
            )
        )
    from include import assets

    extra = {"cause": judged["trigger"], "month": judged["month"], **judged["evidence"]}
    step.context["outlet_events"][assets.for_pipeline(step.pipeline).drift].extra = json.loads(
        json.dumps(extra, default=str)
    )
    log.info(
        "retraining of %s triggered by %s (training up to %s): %s",
        step.pipeline,
        judged["trigger"],
        judged["month"],
        json.dumps(judged["evidence"], default=str)[:1000],
    )
    return {"cause": judged["trigger"], "month": judged["month"]}
