"""What ``slipway lineage``, ``status``, ``history`` and ``run`` print: records read from MLflow and the
registry, and their text."""

from __future__ import annotations

import json
from typing import Any

from include.times import utc_minute
from include.tracking import mlflow_client


def say(msg: str) -> None:
    print(f"[slipway] {msg}", flush=True)


# ---------------------------------------------------------------- lineage / status


def resolve_version(client, ref: str):
    """``name@alias`` or ``name/version`` (or ``name`` for the candidate) to a ModelVersion."""
    from mlflow.exceptions import MlflowException

    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        if "/" in ref:
            name, version = ref.split("/", 1)
            return client.get_model_version(name, version)
        return client.get_model_version_by_alias(ref, "candidate")
    except MlflowException as exc:
        raise SystemExit(
            f"no model version for {ref!r} ({exc.message.splitlines()[0]}); "
            "see `slipway status` for the registered models and their aliases"
        ) from None


def lineage_record(ref: str) -> dict:
    """Everything known about how a model version came to be, as a dict."""
    client = mlflow_client()
    mv = resolve_version(client, ref)
    tags = mv.tags
    exp = client.get_experiment_by_name(mv.name)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`slipway.dag_id` = '{tags['slipway.dag_id']}' and "
        f"tags.`slipway.run_id` = '{tags['slipway.run_id']}'",
        max_results=500,
    )
    parent = next((r for r in runs if r.data.tags.get("slipway.level") == "dag_run"), None)
    tasks = []
    for r in sorted(
        (r for r in runs if r.data.tags.get("slipway.level") == "task"), key=lambda r: r.info.start_time
    ):
        end = r.info.end_time or r.info.start_time
        tasks.append(
            {
                "task_id": r.data.tags.get("slipway.task_id"),
                "try_number": int(r.data.tags.get("slipway.try_number", 1)),
                "state": r.data.tags.get("slipway.state", r.info.status.lower()),
                "duration_s": round((end - r.info.start_time) / 1000, 2),
                "mlflow_run_id": r.info.run_id,
                "error": r.data.tags.get("slipway.error"),
            }
        )
    feedback = None
    curated = next((r for r in runs if r.data.tags.get("slipway.task_id") == "curate_feedback"), None)
    if curated is not None or (parent and "slipway.feedback" in parent.data.tags):
        written = json.loads((curated.data.tags.get("slipway.data.written") if curated else None) or "[]")
        batch = next((ref for ref in written if ref.get("name") == "feedback"), None)
        feedback = {
            "summary": parent.data.tags.get("slipway.feedback") if parent else None,
            "batch": batch["uri"] if batch else None,
            "sha256": batch["digest"] if batch else None,
        }
    validation = None
    vrun = tags.get("slipway.validation_run_id")
    if vrun:
        v = client.get_run(vrun)
        validation = {
            "result": v.data.tags.get("slipway.validation"),
            "expectations_evaluated": int(v.data.metrics.get("expectations_evaluated", 0)),
            "expectations_failed": int(v.data.metrics.get("expectations_failed", 0)),
            "artifacts": f"runs:/{vrun}/validation",
        }
    return {
        "model": {
            "name": mv.name,
            "version": int(mv.version),
            "aliases": list(mv.aliases),
            "source": mv.source,
        },
        "dag_run": {
            "dag_id": tags.get("slipway.dag_id"),
            "run_id": tags.get("slipway.run_id"),
            "state": parent.data.tags.get("slipway.state", parent.info.status.lower()) if parent else None,
            "data_interval": [
                parent.data.tags.get("slipway.interval_start") if parent else None,
                parent.data.tags.get("slipway.interval_end") if parent else None,
            ],
            "mlflow_run_id": parent.info.run_id if parent else None,
            # The month the run trained up to: what a run without a data interval (one an asset
            # event or a person started) processed.
            "month": tags.get("slipway.month") or (parent.data.tags.get("slipway.month") if parent else None),
            "trigger": parent.data.tags.get("slipway.trigger") if parent else None,
            "trigger_evidence": json.loads(parent.data.tags["slipway.trigger.evidence"])
            if parent and "slipway.trigger.evidence" in parent.data.tags
            else None,
        },
        "tasks": tasks,
        "data_version": {"dvc_md5": tags.get("slipway.data_version"), "uri": tags.get("slipway.dvc_uri")},
        "feedback": feedback,
        "validation": validation,
        "metrics": {
            k.removeprefix("slipway.metric."): float(v)
            for k, v in tags.items()
            if k.startswith("slipway.metric.")
        },
        "gates": json.loads(tags.get("slipway.gates", "{}")),
        "gate_results": _blessing_results(tags.get("slipway.blessing_uri")),
        "blessing": {
            "state": tags.get("slipway.blessing"),
            "by_gate": {
                k.removeprefix("slipway.blessing."): v
                for k, v in tags.items()
                if k.startswith("slipway.blessing.") and k != "slipway.blessing_uri"
            },
            "uri": tags.get("slipway.blessing_uri"),
        },
        "task": tags.get("slipway.task", "binary"),
        "decision": json.loads(tags["slipway.decision"]) if "slipway.decision" in tags else None,
        "decision_threshold": float(tags["slipway.decision_threshold"])
        if "slipway.decision_threshold" in tags
        else None,
        "value_per_1000": float(tags["slipway.value_per_1000"]) if "slipway.value_per_1000" in tags else None,
        "model_card": tags.get("slipway.model_card_uri"),
        "artifacts": {"onnx": tags.get("slipway.onnx_uri"), "sklearn_skops": tags.get("slipway.sklearn_uri")},
        "code_version": tags.get("slipway.code_version"),
        "rollout": _rollout_record(client, mv),
        "retired": json.loads(tags["slipway.retired"]) if "slipway.retired" in tags else None,
        "scored": {  # months batch runs scored with it (<pipeline>__score)
            k.removeprefix("slipway.scored."): json.loads(v)
            for k, v in sorted(tags.items())
            if k.startswith("slipway.scored.")
        },
        "monitor": {
            "latest": json.loads(tags["slipway.monitor.latest"])
            if "slipway.monitor.latest" in tags
            else None,
            "report": tags.get("slipway.monitor.report_uri"),
        },
    }


def _rollout_record(client, mv) -> dict:
    """The version's rollout: each phase's evidence, the approval, and its history of events."""
    from include.registry import version_events

    tags = dict(mv.tags or {})
    return {
        "events": version_events(client, mv),
        "approval": json.loads(tags["slipway.approval"]) if "slipway.approval" in tags else None,
        "evidence": {
            k.removeprefix("slipway.rollout.").removesuffix("_uri"): v
            for k, v in tags.items()
            if k.startswith("slipway.rollout.") and k.endswith("_uri")
        },
        "served_after_rollback": tags.get("slipway.rollout.served_after_rollback"),
    }


def event_line(e: dict) -> str:
    extra = [
        f"{k} {e[k]}" for k in ("from_version", "to_version", "weight", "by") if e.get(k) not in (None, "")
    ]
    reason = f": {e['reason']}" if e.get("reason") else ""
    where = f"  [{e['dag_run']}]" if e.get("dag_run") else ""
    return (
        f"{utc_minute(e['at'])}  version {e['version']} {e['event']}"
        + (f" ({', '.join(extra)})" if extra else "")
        + reason
        + where
    )


def _trigger_line(evidence: dict) -> str:
    """A triggering event's payload in one line: the monitor's window and what breached."""
    parts = []
    if evidence.get("since") and evidence.get("until"):
        parts.append(f"window {utc_minute(evidence['since'])} -> {utc_minute(evidence['until'])}")
    for item in [*evidence.get("drifted", []), *evidence.get("performance", [])][:5]:
        parts.append(f"{item['metric']} {item['value']} (limit {item['threshold']})")
    if evidence.get("drifted_count", 0) > 5:
        parts.append(f"{evidence['drifted_count']} drifted in all")
    if evidence.get("version") and not parts:
        parts.append(f"version {evidence['version']}")
    return "; ".join(parts)


def _blessing_results(uri: str | None) -> list[dict]:
    """Every gate result (value, threshold, state, note) from the version's blessing record."""
    if not uri:
        return []
    import mlflow

    from include.tracking import trusted_artifact_uri

    return mlflow.artifacts.load_dict(trusted_artifact_uri(uri)).get("results", [])


def print_gates(results: list[dict]) -> None:
    """One line a gate check: state, value against threshold, and the note."""
    for r in results:
        if r["status"] == "not_applicable":
            shown = f"not applicable: {r.get('note', '')}"
        else:
            value = "n/a" if r["value"] is None else f"{r['value']:.4g}"
            shown = f"{value} (required {r['comparison']} {r['threshold']:.4g})"
        print(f"  {r['status']:<15} {r['gate'] + '.' + r['metric']:<55} {shown}")


def print_lineage(rec: dict) -> None:
    """Human-readable lineage."""
    m, d = rec["model"], rec["dag_run"]
    aliases = ", ".join(m["aliases"]) or "no alias"
    print(f"model      {m['name']} version {m['version']} ({aliases})")
    print(f"source     {m['source']}")
    print(f"dag run    {d['dag_id']} / {d['run_id']}  state={d['state']}")
    start, end = d["data_interval"]
    if start or end:
        print(f"interval   {start} -> {end}  (month {d.get('month') or '?'})")
    else:  # an asset-triggered or manual run: no data interval, the month it was given
        print(
            f"interval   none: started by {d.get('trigger') or 'a person'}, on the month {d.get('month') or '?'}"
        )
    if d.get("trigger"):
        print(
            f"trigger    {d['trigger']}"
            + (f"  {_trigger_line(d['trigger_evidence'])}" if d.get("trigger_evidence") else "")
        )
    print(f"data       DVC md5 {rec['data_version']['dvc_md5']}  {rec['data_version']['uri']}")
    fb = rec.get("feedback")
    if fb:
        where = f"  {fb['batch']} (sha256 {fb['sha256'][:16]})" if fb.get("batch") else ""
        print(f"feedback   {fb.get('summary') or 'none'}{where}")
    v = rec["validation"] or {}
    print(
        f"validation {v.get('result')}: {v.get('expectations_evaluated')} expectations, "
        f"{v.get('expectations_failed')} failed  ({v.get('artifacts')})"
    )
    print(f"code       {rec['code_version']}")
    print("metrics    " + "  ".join(f"{k}={val:.4f}" for k, val in sorted(rec["metrics"].items())))
    if rec.get("decision_threshold") is not None:
        print(
            f"business   threshold {rec['decision_threshold']:.2f}, expected value per 1,000: {rec['value_per_1000']:.2f}"
        )
    elif rec.get("decision") is not None and rec.get("value_per_1000") is not None:
        print(
            f"business   {rec['task']} decision {rec['decision']}, expected value per 1,000: {rec['value_per_1000']:.2f}"
        )
    b = rec.get("blessing") or {}
    if b.get("state"):
        gates = ", ".join(f"{g} {s}" for g, s in b["by_gate"].items())
        print(f"blessing   {b['state']}: {gates}  ({b['uri']})")
    if rec.get("gate_results"):
        print("gates:")
        print_gates(rec["gate_results"])
    if rec.get("model_card"):
        print(f"card       {rec['model_card']}")
    if (rec.get("artifacts") or {}).get("onnx"):
        print(
            f"artifacts  ONNX {rec['artifacts']['onnx']}  scikit-learn (skops) {rec['artifacts']['sklearn_skops']}"
        )
    if rec.get("retired"):
        t = rec["retired"]
        print(f"RETIRED    {t.get('at')}: {t.get('reason')} ({t.get('dag_run', '')}); kept for audit")
    for month, sc in (rec.get("scored") or {}).items():
        print(
            f"scored     {month}: {sc.get('scored')} rows ({sc.get('rejected')} rejected) of {sc.get('input')} "
            f"-> {sc.get('uri')}"
        )
    m = rec.get("monitor") or {}
    if m.get("latest"):
        latest = m["latest"]
        print(
            f"monitor    {latest.get('status')} in the interval ending {latest.get('until')}"
            + (f", {latest['drifted']} drifted check(s)" if latest.get("drifted") else "")
            + (f"; report {m['report']}" if m.get("report") else "")
        )
    r = rec.get("rollout") or {}
    if r.get("events") or r.get("evidence"):
        print("rollout:")
        for phase, uri in sorted((r.get("evidence") or {}).items()):
            print(f"  evidence {phase:<17} {uri}")
        if r.get("approval"):
            a = r["approval"]
            print(f"  approval {a.get('decision')} by {a.get('by')} at {a.get('at')}")
        for e in r.get("events", []):
            print("  " + event_line(e))
    print("tasks:")
    for t in rec["tasks"]:
        print(
            f"  {t['task_id']:<20} {t['state']:<9} try {t['try_number']}  {t['duration_s']:>7.2f} s  run {t['mlflow_run_id']}"
        )


def status_record() -> dict:
    """Pipelines (valid and invalid specs), registered versions and aliases."""
    from mlflow.exceptions import MlflowException

    from include.settings import get_settings
    from include.spec import discover

    specs, errors = discover()
    s = get_settings()
    client = mlflow_client()
    out: dict[str, Any] = {
        "locations": {
            "landing_zone": s.landing_uri,
            "lake": s.lake_uri,
            "dvc_remote": s.dvc_remote_uri,
            "mlflow": _redact(s.mlflow_tracking_uri),
        },
        "mlflow_error": None,
        "pipelines": [],
        "invalid_specs": errors,
    }
    for spec in specs:
        entry: dict[str, Any] = {
            "name": spec.name,
            "dags": [spec.dag_id("train")],
            "versions": [],
            "aliases": {},
        }
        if out["mlflow_error"]:
            out["pipelines"].append(entry)
            continue
        try:
            model = client.get_registered_model(spec.name)
            entry["aliases"] = {a: int(v) for a, v in model.aliases.items()}
            for mv in client.search_model_versions(f"name = '{spec.name}'", max_results=50):
                entry["versions"].append(
                    {
                        "version": int(mv.version),
                        "aliases": sorted(a for a, v in entry["aliases"].items() if v == int(mv.version)),
                        "data_version": mv.tags.get("slipway.data_version"),
                        "roc_auc": mv.tags.get("slipway.metric.roc_auc"),
                    }
                )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # anything else: the registry is not answering
                out["mlflow_error"] = _mlflow_error(exc)
        except Exception as exc:  # connection refused, DNS, timeouts: MLflow is unreachable
            out["mlflow_error"] = _mlflow_error(exc)
        entry["versions"].sort(key=lambda v: v["version"], reverse=True)
        out["pipelines"].append(entry)
    return out


def _redact(url: str) -> str:
    """A URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _mlflow_error(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {first[:300]}"


def print_status(rec: dict) -> None:
    """Human-readable status."""
    for what, where in rec.get("locations", {}).items():
        print(f"{what:<13} {where}")
    if rec.get("mlflow_error"):
        print(
            f"MLflow at {rec['locations']['mlflow']} is unreachable ({rec['mlflow_error']}); "
            "registered versions and aliases are unknown, not empty. Start MLflow or check MLFLOW_TRACKING_URI."
        )
    print()
    for p in rec["pipelines"]:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(p["aliases"].items())) or "none"
        print(f"{p['name']}: dags {', '.join(p['dags'])}; aliases {aliases}")
        for v in p["versions"][:10]:
            print(
                f"  v{v['version']:<4} {','.join(v['aliases']) or '-':<12} data {v['data_version']}  "
                f"roc_auc {v['roc_auc']}"
            )
        if not p["versions"] and not rec.get("mlflow_error"):
            print("  no registered versions yet")
    for path, err in rec["invalid_specs"].items():
        print(f"INVALID {path}:\n  {err}")


# ---------------------------------------------------------------- commands


def _registered_version(pipeline: str, dag_id: str, run_id: str) -> int | None:
    """The model version the DAG run's ``register_model`` registered or reused (latest try), if any."""
    client = mlflow_client()
    exp = client.get_experiment_by_name(pipeline)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`slipway.dag_id` = '{dag_id}' and tags.`slipway.run_id` = '{run_id}' "
        "and tags.`slipway.task_id` = 'register_model' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    version = runs[0].data.tags.get("slipway.registered_version") if runs else None
    return int(version) if version else None


def _run_blessing(pipeline: str, dag_id: str, run_id: str) -> dict | None:
    """The blessing recorded on a DAG run's parent run (also when the candidate was refused)."""
    import mlflow

    from include.lineage import find_parent

    parent = find_parent(pipeline, dag_id, run_id)
    if parent is None or "slipway.blessing" not in parent.data.tags:
        return None
    return mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/blessing.json")


def summarise_run(pipeline: str, dag_id: str, run_id: str) -> None:
    """The end of `slipway run` and `slipway demo`: the version and its lineage, or why there is none."""
    version = _registered_version(pipeline, dag_id, run_id)
    print()
    print("=" * 78)
    if version is not None:
        rec = lineage_record(f"{pipeline}/{version}")
        aliases = ", ".join(f"'{a}'" for a in rec["model"]["aliases"]) or "no alias"
        print(f"{pipeline} version {version} ({aliases})")
        if rec["dag_run"]["run_id"] != run_id:
            print(
                f"already registered by {rec['dag_run']['run_id']} for the same data and model: "
                "this run reused it (its lineage follows)"
            )
        print("=" * 78)
        print_lineage(rec)
        return
    blessing = _run_blessing(pipeline, dag_id, run_id)
    if blessing is None:
        print(f"No model version from {dag_id} / {run_id}: the run stopped before the gates (see above).")
        print("=" * 78)
        return
    print(f"No model version from {dag_id} / {run_id}: the candidate's blessing {blessing['state']}.")
    print("=" * 78)
    if blessing.get("missing"):
        print(f"missing gates: {', '.join(blessing['missing'])}")
    print("gates:")
    print_gates(blessing["results"])
