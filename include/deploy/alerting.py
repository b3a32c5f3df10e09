"""Alertmanager's routes: each pipeline's alerts to its spec's alert connection (``make up``).

The alerting rules (``include/deploy/prometheus/rules.yml``) label every pipeline's alert with
``pipeline``; Alertmanager sends it to the webhook of that pipeline's ``monitoring.alert_connection``,
the Airflow connection its notifications already use, read from the environment as Airflow reads it
(``AIRFLOW_CONN_<ID>``, JSON or URI). Alerts of the service as a whole (down, the log's commits) go to
the default connection ``slipway_alerts``, else to the first pipeline's. A connection that is not set,
or is not of type http, gets no webhook: its alerts stay visible in Alertmanager's UI, and ``make up``
says so. The config holds the webhooks' URLs (they may carry tokens): it is written mode 0600.

The compose stack has one webhook, the secret ``alert_webhook_url`` (``include/deploy/alertmanager``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_CONNECTION = "slipway_alerts"


def webhook_url(conn_id: str, env: Mapping[str, str] | None = None) -> str | None:
    """The URL Airflow's ``HttpNotifier`` posts to for ``conn_id``, from ``AIRFLOW_CONN_<ID>``; None
    when the variable is not set or the connection is not of type http(s)."""
    env = os.environ if env is None else env
    raw = env.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not raw:
        return None
    from airflow.models.connection import Connection

    conn = (
        Connection.from_json(raw, conn_id=conn_id)
        if raw.lstrip().startswith("{")
        else Connection(conn_id=conn_id, uri=raw)
    )
    if conn.conn_type not in ("http", "https"):
        return None
    # As the http provider's HttpHook builds its base URL (HttpNotifier posts there, no endpoint).
    host = conn.host or ""
    url = host if "://" in host else f"{conn.schema or 'http'}://{host}"
    if conn.port:
        url += f":{conn.port}"
    return url


def config(
    connections: Mapping[str, str],
    urls: Mapping[str, str | None],
    *,
    group_wait: str = "30s",
    group_interval: str = "5m",
    repeat_interval: str = "4h",
) -> str:
    """Alertmanager's YAML: ``connections`` maps pipeline -> its alert connection, ``urls`` maps a
    connection -> its webhook (None: a receiver without one)."""
    import yaml

    ids = sorted(set(connections.values()) | set(urls))
    default = DEFAULT_CONNECTION if DEFAULT_CONNECTION in ids else (ids[0] if ids else DEFAULT_CONNECTION)
    receivers = []
    for conn_id in ids or [default]:
        receiver: dict = {"name": conn_id}
        if urls.get(conn_id):
            receiver["webhook_configs"] = [{"url": urls[conn_id], "send_resolved": True}]
        receivers.append(receiver)
    doc = {
        "route": {
            "receiver": default,
            "group_by": ["alertname", "pipeline"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
            "routes": [
                {"matchers": [f'pipeline="{pipeline}"'], "receiver": conn_id}
                for pipeline, conn_id in sorted(connections.items())
            ],
        },
        "receivers": receivers,
    }
    return (
        "# Written by `make up` from the pipelines' alert connections (include/deploy/alerting.py).\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )


def pipeline_connections() -> dict[str, str]:
    """Each valid pipeline's alert connection (an invalid spec has no DAGs, so no alerts)."""
    from include.spec import discover

    specs, _ = discover()
    return {spec.name: spec.monitoring.alert_connection for spec in specs}


def routes_summary(connections: Mapping[str, str], urls: Mapping[str, str | None]) -> list[str]:
    """One line per connection for ``make up``'s output (never the URL: it may hold a token)."""
    lines = []
    for conn_id in sorted(set(connections.values())):
        who = ", ".join(sorted(p for p, c in connections.items() if c == conn_id))
        if urls.get(conn_id):
            lines.append(f"alerts of {who} -> webhook of the connection {conn_id}")
        else:
            lines.append(
                f"alerts of {who}: the connection {conn_id} is not set as AIRFLOW_CONN_{conn_id.upper()} "
                "(type http) in the environment; they show in Alertmanager's UI only"
            )
    return lines
