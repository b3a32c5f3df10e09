"""Notifications that reach a person: one destination per pipeline, the spec's alert connection.

:func:`deliver` sends a subject, a body and a JSON payload through the Airflow connection
``monitoring.alert_connection`` with Airflow's own notifiers (type http: ``HttpNotifier`` posts the
JSON to the webhook; type smtp: ``SmtpNotifier`` e-mails the extra's ``to``); without that connection
the message is a warning in the log, never dropped. The monitor's ``send_alert`` uses it, and so does
:class:`PipelineNotifier`, Airflow's notifier mechanism for what happens to runs:

* ``failed``: a DAG run of the pipeline failed (every family's ``on_failure_callback``; it runs in the
  dag processor), with the task that failed, the reason and the link to the run;
* ``approval``: a promotion waits for a person (the approval's ``notifiers``), with the link to the
  Required Action and its deadline;
* ``rollback``: a champion was restored by hand (the rollback task's ``on_success_callback``).

A canary or shadow that breaches is rolled back by ``conclude_rollout``, which fails the run: the
``failed`` message carries the run's outcome line ("rolled back: ..."). A notification that cannot be
sent is a warning with the whole message in the log: it never fails the task it reports on.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseNotifier

log = logging.getLogger("slipway")

EVENTS = ("failed", "approval", "rollback")


def deliver(conn_id: str, subject: str, body: str, payload: dict, context: Any) -> str:
    """Send through the Airflow connection ``conn_id``; return the channel (http, smtp, or log)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log.warning(
            "ALERT (no Airflow connection %r, so it is only logged here; add one of type http or smtp to "
            "be notified):\n%s\n%s",
            conn_id,
            subject,
            body,
        )
        return "log"
    message = json.loads(json.dumps({"subject": subject, "text": body, **payload}, default=str))
    if conn.conn_type in ("http", "https"):
        from airflow.providers.http.notifications.http import HttpNotifier

        HttpNotifier(http_conn_id=conn_id, json=message).notify(context)
        return "http"
    if conn.conn_type in ("smtp", "email"):
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        to = conn.extra_dejson.get("to")
        if not to:
            raise ValueError(f"the smtp connection {conn_id!r} has no 'to' in its extra: add the recipients")
        SmtpNotifier(smtp_conn_id=conn_id, to=to, subject=subject, html_content=f"<pre>{body}</pre>").notify(
            context
        )
        return "smtp"
    raise ValueError(
        f"the alert connection {conn_id!r} has type {conn.conn_type!r}; use http (a webhook) or smtp (e-mail)"
    )


def ui_url(path: str) -> str:
    """A page of the Airflow UI: ``[api] base_url`` (the address people open) plus ``path``."""
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")
    return f"{base}/{path.lstrip('/')}"


def _run_path(dag_id: str, run_id: str) -> str:
    return f"dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


def message(pipeline: str, event: str, context: Any) -> tuple[str, str, dict]:
    """Subject, body and payload of ``event`` for a person, from the callback's context."""
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or str(context.get("dag_id", ""))
    run_id = str(context.get("run_id") or getattr(context.get("dag_run"), "run_id", "") or "")
    ti = context.get("ti")
    task_id = getattr(ti, "task_id", None)
    payload: dict = {"pipeline": pipeline, "event": event, "dag_id": dag_id, "run_id": run_id}
    if event == "approval":
        selected = (ti.xcom_pull(task_ids="select_candidate") if ti is not None else None) or {}
        version = selected.get("version")
        link = ui_url(f"{_run_path(dag_id, run_id)}/tasks/{quote(task_id or 'approve_promotion')}")
        task = context.get("task")
        timeout = getattr(task, "response_timeout", None)
        payload |= {"version": version, "url": link}
        subject = f"[slipway] {pipeline}: version {version} waits for your approval"
        body = (
            f"The rollout of {pipeline} version {version} has its evidence ready and waits for a person's "
            f"decision (Required Actions): {link}"
            + (f"\nWithout an answer within {timeout}, it is rejected and rolled back." if timeout else "")
        )
        return subject, body, payload
    if event == "rollback":
        result = (ti.xcom_pull(task_ids=task_id) if ti is not None and task_id else None) or {}
        ev = result.get("event") or {}
        payload |= {
            "version": ev.get("version"),
            "from_version": ev.get("from_version"),
            "reason": ev.get("reason"),
        }
        subject = f"[slipway] {pipeline}: champion restored to version {ev.get('version')}"
        body = (
            f"{pipeline}'s champion went back from version {ev.get('from_version')} to version "
            f"{ev.get('version')}: {ev.get('reason')}. Run: {ui_url(_run_path(dag_id, run_id))}"
        )
        return subject, body, payload
    link = ui_url(_run_path(dag_id, run_id))
    outcome = _outcome(pipeline, dag_id, run_id)
    payload |= {"task_id": task_id, "reason": context.get("reason"), "url": link, "outcome": outcome}
    subject = f"[slipway] {dag_id}: run failed" + (f" at {task_id}" if task_id else "")
    body = "\n".join(
        line
        for line in (
            f"{dag_id} run {run_id} failed" + (f" (task {task_id})" if task_id else "") + ".",
            f"What it found: {outcome}" if outcome else "",
            f"The task's log and the run: {link}",
        )
        if line
    )
    return subject, body, payload


def _outcome(pipeline: str, dag_id: str, run_id: str) -> str | None:
    """The run's one line (its MLflow record's ``slipway.outcome``), when MLflow answers at once: one
    try of 5 s at most, so an unreachable MLflow delays the message by seconds, never minutes."""
    import os

    bounded = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    saved = {k: os.environ.get(k) for k in bounded}
    os.environ.update(bounded)
    try:
        from include.lineage import OUTCOME_TAG, find_parent

        parent = find_parent(pipeline, dag_id, run_id)
        return parent.data.tags.get(OUTCOME_TAG) if parent is not None else None
    except Exception as exc:  # noqa: BLE001 - the message goes out without it
        log.info("no outcome line for %s/%s: %s", dag_id, run_id, str(exc).splitlines()[0][:200])
        return None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dag_callbacks(pipeline: str) -> dict:
    """The DAG-level callbacks of every generated DAG: a failed run reaches a person."""
    return {"on_failure_callback": PipelineNotifier(pipeline, "failed")}


class PipelineNotifier(BaseNotifier):
    """Airflow's notifier for one pipeline's ``event`` (see the module docstring), sent to its spec's
    alert connection."""

    def __init__(self, pipeline: str, event: str):
        super().__init__()
        if event not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, got {event!r}")
        self.pipeline = pipeline
        self.event = event

    def notify(self, context: Any) -> None:
        from include.spec import load_pipeline

        subject, body, payload = message(self.pipeline, self.event, context)
        _record(self.pipeline, self.event, payload)
        conn_id = load_pipeline(self.pipeline).monitoring.alert_connection
        try:
            channel = deliver(conn_id, subject, body, payload, context)
        except Exception as exc:  # noqa: BLE001 - a notification must never fail what it reports on
            # Airflow re-raises a notifier's error: that would fail the approval it announces, or hide
            # the failure it reports. The message stays in this log instead.
            log.warning(
                "could not send the %s notification through %r (%s); it is only logged here:\n%s\n%s",
                self.event,
                conn_id,
                str(exc).splitlines()[0][:300],
                subject,
                body,
            )
            return
        log.info("%s notification sent through %s: %s", self.event, channel, subject)


def _record(pipeline: str, event: str, payload: dict) -> None:
    """The event in ``slipway_events``, which Prometheus's alerting rules read through the service; a
    database that cannot take it is a warning: the message still goes out."""
    from include.prediction_log import events

    detail = str(payload.get("reason") or payload.get("outcome") or payload.get("version") or "")
    try:
        events.record(None, pipeline, event, payload["dag_id"], payload["run_id"], detail)
    except Exception as exc:  # noqa: BLE001 - the notification still goes out
        log.warning("the %s event was not recorded for Prometheus: %s", event, str(exc).splitlines()[0][:300])
