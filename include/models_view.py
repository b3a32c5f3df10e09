"""What the "Models" page of the Airflow UI shows (``plugins/slipway_models.py`` serves it).

Per pipeline: every registered version with its aliases, blessing per gate (``not_applicable`` shown
as such, never as a pass), retirement, data version and test ROC AUC; the traffic split the service
follows (challenger, mode, weight); the newest monitor check (drift, performance, no traffic); the
rollout waiting for an approval; links to MLflow and to each version's model card.

Everything is read from the same records the CLI reads (MLflow registry tags, the monitor's table,
Airflow's task instances), so the page never disagrees with ``slipway status`` or ``slipway history``.
No Airflow import here: the plugin passes the pending approvals in.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

from include.tasks.blessing import ORDER as GATES  # the blessing's gates, in its order
from include.tasks.metrics import TITLES, headline
from include.times import utc_minute as _minute  # the one way the page writes a time
from include.tracking import ui_link


def models_record(
    client, pipelines: list[str], pending: dict[str, list[dict]], db_url: str | None = None
) -> dict:
    """``{"pipelines": [...], "error": str | None}``; ``pending``: approvals waiting, per pipeline."""
    from mlflow.exceptions import MlflowException

    from include.prediction_log.monitor_checks import latest
    from include.registry import newest_events, traffic

    out: dict = {"pipelines": [], "error": None}
    for name in pipelines:
        entry: dict = {
            "name": name,
            "versions": [],
            "aliases": {},
            "traffic": None,
            "monitor": None,
            "events": [],
            "pending_approvals": pending.get(name, []),
        }
        try:
            model = client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                out["error"] = f"the MLflow registry did not answer: {str(exc).splitlines()[0][:300]}"
            out["pipelines"].append(entry)
            continue
        except Exception as exc:  # connection refused, timeouts: say so on the page, do not fail it
            out["error"] = f"the MLflow registry is unreachable: {type(exc).__name__}: {str(exc)[:300]}"
            out["pipelines"].append(entry)
            continue
        entry["aliases"] = {a: int(v) for a, v in model.aliases.items()}
        experiment = client.get_experiment_by_name(name)
        entry["experiment_id"] = experiment.experiment_id if experiment is not None else None
        entry["traffic"] = traffic(client, name)
        versions = client.search_model_versions(f"name = '{name}'", max_results=200)
        # The rollout's phase as its own record tells it: the newest events (selected, shadow, canary
        # steps, promoted or rolled back).
        entry["events"] = [
            {k: e.get(k) for k in ("at", "version", "event", "weight", "reason")}
            for e in newest_events(client, versions, 6)
        ]
        for mv in versions:
            tags = mv.tags or {}
            version = int(mv.version)
            entry["versions"].append(
                {
                    "version": version,
                    "aliases": sorted(a for a, v in entry["aliases"].items() if v == version),
                    "blessing": tags.get("slipway.blessing", "unknown"),
                    "gates": {g: tags.get(f"slipway.blessing.{g}", "missing") for g in GATES},
                    "month": tags.get("slipway.month"),
                    "data_version": tags.get("slipway.data_version"),
                    "task": tags.get("slipway.task", "binary"),
                    "headline": tags.get(f"slipway.metric.{headline(tags.get('slipway.task', 'binary'))}"),
                    "retired": tags.get("slipway.retired"),
                    "has_card": bool(tags.get("slipway.model_card_uri")),
                    "approval": _approval(tags),
                    "scored": _scored(tags),
                    "created": mv.creation_timestamp,
                }
            )
        entry["versions"].sort(key=lambda v: v["version"], reverse=True)
        try:
            check = latest(db_url, name)
        except Exception as exc:  # the prediction log's database: shown, never fatal to the page
            entry["monitor"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        else:
            if check is not None:
                entry["monitor"] = {
                    "status": check.status,
                    "interval": [check.interval_start, check.interval_end],
                    "served_rows": check.served_rows,
                    "drift_breach": check.drift_breach,
                    "performance_breach": check.performance_breach,
                    "drifted_checks": check.evidence.get("drifted_count", 0),
                    "drifted": [
                        str(d.get("metric", "")).removeprefix("psi[").removesuffix("]")
                        for d in check.evidence.get("drifted", [])
                    ],
                    "performance": [d.get("metric") for d in check.evidence.get("performance", [])],
                    "report": check.evidence.get("report"),
                    "held_by": check.evidence.get("held_by"),
                    "triggered": check.triggered,
                    "version": check.champion_version,
                    "champion_now": entry["aliases"].get("champion"),
                }
        out["pipelines"].append(entry)
    return out


def _scored(tags: dict) -> list[dict]:
    """The months batch runs scored with the version (tags ``slipway.scored.<month>``), newest first."""
    out = []
    for key, value in tags.items():
        if key.startswith("slipway.scored."):
            try:
                body = json.loads(value)
            except ValueError:
                continue
            out.append(
                {
                    "month": key.removeprefix("slipway.scored."),
                    **{k: body.get(k) for k in ("scored", "rejected", "uri")},
                }
            )
    return sorted(out, key=lambda x: x["month"], reverse=True)


def _approval(tags: dict) -> str:
    """``approved by alice 2026-12-06 14:02`` from the version's ``slipway.approval`` tag (and refusals)."""
    text = ""
    try:
        a = json.loads(tags.get("slipway.approval") or "{}")
    except ValueError:
        a = {}
    if a.get("decision"):
        text = f"{a['decision']} by {a.get('by') or '?'} {_minute(a.get('at'))}".strip()
    try:
        refused = json.loads(tags.get("slipway.approval.refusals") or "[]")
    except ValueError:
        refused = []
    if refused:
        text += f" (refused: {', '.join(str(r.get('by')) for r in refused)})"
    return text.strip()


# ----------------------------------------------------------------------------------------- rendering
_STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#1a202c}
h1{font-size:20px;margin:0 0 12px} h2{font-size:17px;margin:24px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px} th,td{border:1px solid #cbd5e0;padding:3px 7px;font-size:13px}
th{background:#edf2f7;text-align:left} .passed{background:#c6f6d5} .failed{background:#fed7d7}
.not_applicable{background:#e2e8f0;color:#4a5568} .missing,.unknown{background:#fefcbf}
.alias{display:inline-block;background:#bee3f8;border-radius:4px;padding:0 5px;margin-right:3px}
.retired{color:#718096;text-decoration:line-through} .note{color:#4a5568;font-size:13px}
.error{background:#fed7d7;padding:6px;border-radius:4px}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _scored_cell(scored: list[dict]) -> str:
    shown = [
        f"<span title='{_e(s.get('uri'))}'>{_e(s['month'])} ({_e(s.get('scored'))} rows"
        + (f", {_e(s.get('rejected'))} rejected" if s.get("rejected") else "")
        + ")</span>"
        for s in scored[:3]
    ]
    more = f" and {len(scored) - 3} more" if len(scored) > 3 else ""
    return "<br>".join(shown) + more


def _gate_cell(state: str) -> str:
    label = "n/a" if state == "not_applicable" else state
    title = {"not_applicable": "not applicable: nothing to check (never counted as a pass)"}.get(state, state)
    return f'<td class="{_e(state)}" title="{_e(title)}">{_e(label)}</td>'


def _monitor_line(monitor: dict | None) -> str:
    if monitor is None:
        return "no monitor check yet"
    if "error" in monitor:
        return f"monitor record unreadable ({_e(monitor['error'])})"
    start, end = monitor["interval"]
    when = f"{_e(_minute(start))} to {_e(_minute(end))}"
    checked, now = monitor.get("version"), monitor.get("champion_now")
    if checked is not None and now is not None and checked != now:
        # Another version has been promoted since: the last verdict was about the one before.
        return (
            f"no check of version {_e(now)} yet; the last check ({when}) watched version "
            f"{_e(checked)}, champion before it: {_e(_verdict(monitor))}"
        )
    trig = ""
    if monitor.get("triggered"):
        trig = f"; retraining triggered ({_e(monitor['triggered'])})"
    elif monitor.get("held_by"):
        trig = (
            "; retraining held back by the cool-down (already triggered for the interval ending "
            f"{_e(_minute(monitor['held_by']))})"
        )
    return f"{_e(_verdict(monitor))} on {_e(monitor['served_rows'])} served rows, {when}{trig}"


def _verdict(monitor: dict) -> str:
    if monitor["status"] == "no_traffic":
        return "no traffic"
    if not (monitor["drift_breach"] or monitor["performance_breach"]):
        return "ok, no drift"
    what = []
    if monitor["drift_breach"]:
        names = monitor.get("drifted") or []
        n = monitor["drifted_checks"]
        what.append(f"drift in {', '.join(names)}" + (f" ({n} drifted checks)" if n > len(names) else ""))
        report = monitor.get("report") or {}
        if report.get("drifted") is not None:
            what.append(
                f"the Evidently report ({report.get('measure', 'PSI on a sample')}) finds "
                f"{', '.join(report['drifted']) or 'no column'} drifted"
            )
    if monitor["performance_breach"]:
        what.append("performance drop (" + ", ".join(str(m) for m in monitor.get("performance") or []) + ")")
    return "BREACH: " + "; ".join(what)


def render(record: dict, mlflow_ui: str | None) -> str:
    """The page (server-side HTML, every value escaped; links open in the UI's top window)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Models</title>",
        f"<style>{_STYLE}</style></head><body><h1>Models</h1>",
    ]
    if record["error"]:
        parts.append(f"<p class='error'>{_e(record['error'])}</p>")
    if not record["pipelines"]:
        parts.append("<p>No pipeline spec is valid: see the spec errors DAG.</p>")
    for p in record["pipelines"]:
        name = p["name"]
        parts.append(f"<h2 id='{_e(name)}'>{_e(name)}</h2>")
        links = [f"<a target='_top' href='../dags/{quote(name)}__train'>training DAG</a>"]
        links.append(f"<a target='_top' href='../dags/{quote(name)}__rollout'>rollout DAG</a>")
        if mlflow_ui:
            links.append(
                f"<a target='_blank' rel='noopener' href='{_e(ui_link(mlflow_ui, f'models/{quote(name)}'))}'>"
                "registry in MLflow</a>"
            )
            if p.get("experiment_id"):
                links.append(
                    f"<a target='_blank' rel='noopener' href='"
                    f"{_e(ui_link(mlflow_ui, 'experiments/' + quote(str(p['experiment_id']))))}'>runs in MLflow</a>"
                )
        parts.append(f"<p class='note'>{' · '.join(links)}</p>")
        t = p["traffic"]
        if t is None:
            parts.append("<p>No version registered yet.</p>")
            continue
        aliases = ", ".join(
            f"<span class='alias'>{_e(a)}</span>{_e(v)}" for a, v in sorted(p["aliases"].items())
        )
        parts.append(f"<p>Aliases: {aliases or 'none'}</p>")
        if t["mode"] in ("shadow", "canary") and t["version"] is not None:
            split = (
                f"shadow: version {t['version']} scores a mirror of the traffic, its answers are never returned"
                if t["mode"] == "shadow"
                else f"canary: version {t['version']} answers {t['weight']:.0%} of the customers"
            )
        else:
            split = "all traffic to the champion" if "champion" in p["aliases"] else "nothing served yet"
        parts.append(f"<p>Traffic: {_e(split)}</p>")
        parts.append(f"<p>Monitor: {_monitor_line(p['monitor'])}</p>")
        if p.get("events"):
            items = "".join(
                f"<li>{_e(_minute(e['at']))} version {_e(e['version'])} {_e(e['event'])}"
                + (f" {float(e['weight']):.0%}" if e.get("weight") else "")
                + (f" ({_e(e['reason'])})" if e.get("reason") else "")
                + "</li>"
                for e in reversed(p["events"])
            )
            parts.append(f"<p>Rollout, newest first:</p><ul class='note'>{items}</ul>")
        for ask in p["pending_approvals"]:
            parts.append(
                "<p class='error'>Approval waiting: "
                f"<a target='_top' href='../dags/{quote(ask['dag_id'])}/runs/{quote(ask['run_id'], safe='')}"
                f"/tasks/{quote(ask['task_id'])}'>{_e(ask['dag_id'])} {_e(ask['run_id'])}</a></p>"
            )
        head = "".join(f"<th>{_e(g)}</th>" for g in GATES)
        task = p["versions"][0]["task"] if p["versions"] else "binary"
        parts.append(
            "<table><tr><th>version</th><th>aliases</th><th>month</th><th>blessing</th>"
            f"{head}<th>{_e(TITLES[headline(task)])}</th><th>data version</th><th>approval</th>"
            "<th title='months a batch run scored with this version (rows scored, rejected)'>scored</th>"
            "<th>links</th></tr>"
        )
        for v in p["versions"]:
            cls = " class='retired'" if v["retired"] else ""
            links = []
            if v["has_card"]:
                links.append(f"<a href='card/{quote(name)}/{v['version']}'>model card</a>")
            if mlflow_ui:
                page = ui_link(mlflow_ui, f"models/{quote(name)}/versions/{v['version']}")
                links.append(f"<a target='_blank' rel='noopener' href='{_e(page)}'>MLflow</a>")
            aliases = "".join(f"<span class='alias'>{_e(a)}</span>" for a in v["aliases"])
            if v["retired"]:
                aliases += "retired"
            auc = f"{float(v['headline']):.3f}" if v["headline"] else ""
            parts.append(
                f"<tr><td{cls}>{v['version']}</td><td>{aliases}</td><td>{_e(v['month'])}</td>"
                f"{_gate_cell(v['blessing'])}{''.join(_gate_cell(v['gates'][g]) for g in GATES)}"
                f"<td>{_e(auc)}</td><td><code>{_e((v['data_version'] or '')[:12])}</code></td>"
                f"<td>{_e(v.get('approval'))}</td><td>{_scored_cell(v.get('scored') or [])}</td>"
                f"<td>{' · '.join(links)}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<p class='note'>n/a: the gate had nothing to check (for example no champion yet); never a pass.</p>"
    )
    # Follows the links from inside Airflow's sandboxed frame (plugins/slipway_models.py says how).
    parts.append("<script src='links.js'></script></body></html>")
    return "".join(parts)
