"""The alerting rules and their route to a person: each rule tested by ``promtool`` on synthetic series,
Alertmanager's routes built from the pipelines' alert connections and checked by ``amtool``, and one
real alert end to end: an event Airflow records, the service's ``/metrics``, Prometheus evaluating the
shipped rules, Alertmanager, a webhook on localhost."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from include.deploy import alerting, production
from tests.support.live import Webhook
from tests.support.processes import ROOT, free_port, wait_until

PROM = ROOT / "include" / "deploy" / "prometheus"


def _tool(name: str) -> str:
    found = shutil.which(name)
    assert found, (
        f"{name} is not installed: run `make system-deps` (Debian's prometheus and prometheus-alertmanager)"
    )
    return found


def test_rules_are_valid_and_each_fires_only_when_it_should():
    """``promtool test rules``: every alert quiet on healthy series, firing with its labels and its
    operator text on the series that should page; and no rule left without a test."""
    check = subprocess.run(
        [_tool("promtool"), "check", "rules", str(PROM / "rules.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [_tool("promtool"), "test", "rules", "rules.test.yml"], cwd=PROM, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    cases = yaml.safe_load((PROM / "rules.test.yml").read_text())["tests"]
    assert {c["name"] for c in cases} == alerts
    for case in cases:  # each: a quiet check and a firing one
        expected = [len(t["exp_alerts"]) for t in case["alert_rule_test"]]
        assert 0 in expected and 1 in expected, case["name"]
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["annotations"]["runbook"] and rule["labels"]["severity"] in ("page", "warning")


def test_a_broken_rule_is_caught(tmp_path):
    """The rule tests can fail: a threshold moved (drift alert only above 1) fails them."""
    (tmp_path / "rules.yml").write_text(
        (PROM / "rules.yml")
        .read_text()
        .replace("slipway_monitor_drift_breach == 1", "slipway_monitor_drift_breach > 1")
    )
    shutil.copy(PROM / "rules.test.yml", tmp_path / "rules.test.yml")
    tested = subprocess.run(
        [_tool("promtool"), "test", "rules", "rules.test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert tested.returncode != 0 and "SlipwayDriftBreach" in tested.stdout + tested.stderr


def test_webhook_url_is_what_airflow_posts_to():
    env = {
        "AIRFLOW_CONN_SLIPWAY_ALERTS": json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": 9999, "schema": "http"}
        ),
        "AIRFLOW_CONN_TEAM_B": json.dumps(
            {"conn_type": "http", "host": "https://hooks.example.com/T0/B1?token=x"}
        ),
        "AIRFLOW_CONN_MAIL": json.dumps(
            {"conn_type": "smtp", "host": "smtp.example.com", "extra": {"to": "a@b"}}
        ),
        "AIRFLOW_CONN_URI_FORM": "http://hooks.example.com:8443/https",
    }
    assert alerting.webhook_url("slipway_alerts", env) == "http://127.0.0.1:9999"
    assert alerting.webhook_url("team_b", env) == "https://hooks.example.com/T0/B1?token=x"
    assert alerting.webhook_url("mail", env) is None  # smtp: Alertmanager has no webhook for it
    assert alerting.webhook_url("missing", env) is None
    assert alerting.webhook_url("uri_form", env) == "https://hooks.example.com:8443"


def test_each_pipeline_routes_to_its_connection_and_amtool_accepts_it(tmp_path):
    text = alerting.config(
        {"telco_churn": "slipway_alerts", "salary_benchmark": "team_b", "job_runtime": "mail"},
        {"slipway_alerts": "http://127.0.0.1:9999", "team_b": "https://hooks.example.com/x", "mail": None},
    )
    doc = yaml.safe_load(text)
    assert doc["route"]["receiver"] == "slipway_alerts"  # the service's own alerts (no pipeline label)
    routes = {r["matchers"][0]: r["receiver"] for r in doc["route"]["routes"]}
    assert routes == {
        'pipeline="telco_churn"': "slipway_alerts",
        'pipeline="salary_benchmark"': "team_b",
        'pipeline="job_runtime"': "mail",
    }
    receivers = {r["name"]: r for r in doc["receivers"]}
    assert receivers["team_b"]["webhook_configs"] == [
        {"url": "https://hooks.example.com/x", "send_resolved": True}
    ]
    assert "webhook_configs" not in receivers["mail"]
    (tmp_path / "am.yml").write_text(text)
    checked = subprocess.run(
        [_tool("amtool"), "check-config", str(tmp_path / "am.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    summary = alerting.routes_summary(
        {"telco_churn": "slipway_alerts", "job_runtime": "mail"},
        {"slipway_alerts": "http://x/?token=s", "mail": None},
    )
    assert "token" not in " ".join(summary) and any("AIRFLOW_CONN_MAIL" in line for line in summary)


def test_compose_sends_the_rules_to_alertmanager_with_the_url_from_a_secret():
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["/etc/prometheus/rules.yml"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    mounts = {
        v["target"]: v["source"] for v in compose["services"]["prometheus"]["volumes"] if isinstance(v, dict)
    }
    assert mounts["/etc/prometheus/rules.yml"] == "./include/deploy/prometheus/rules.yml"
    am = compose["services"]["alertmanager"]
    assert am["image"].startswith("prom/alertmanager:v") and am["secrets"] == ["alert_webhook_url"]
    assert am["ports"] == ["127.0.0.1:9093:9093"]
    assert compose["secrets"]["alert_webhook_url"] == {"environment": "SLIPWAY_ALERT_WEBHOOK_URL"}
    config = yaml.safe_load((ROOT / "include" / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    (receiver,) = config["receivers"]
    assert receiver["webhook_configs"] == [
        {"url_file": "/run/secrets/alert_webhook_url", "send_resolved": True}
    ]
    assert "SLIPWAY_ALERT_WEBHOOK_URL=" in (ROOT / "deploy.env.example").read_text()


def _alerts(hook: Webhook, name: str) -> list[dict]:
    return [
        a for body in hook.received for a in body.get("alerts", []) if a["labels"].get("alertname") == name
    ]


def test_a_failed_run_reaches_the_webhook_through_prometheus_and_alertmanager(service, tmp_path):
    """The real chain: Airflow's failure callback records the event (the function it calls), the
    service exports it, Prometheus (the stack's config, the shipped rules) fires SlipwayDagRunFailed,
    Alertmanager (the config ``make up`` writes) posts it to the pipeline's webhook."""
    from include.prediction_log import events
    from tests.support.service import PIPELINE

    hook_port, prom_port, am_port = free_port(), free_port(), free_port()
    hook = Webhook(hook_port)
    topo = production.Topology(
        home=tmp_path,
        pg="postgresql://unused",
        redis="redis://unused",
        db_prefix="unused",
        ports={"serving": service.port, "prometheus": prom_port, "alertmanager": am_port},
    )
    topo.folder.mkdir()
    (topo.folder / "metrics.key").write_text(service.key("metrics", None))
    (topo.folder / "prometheus.yml").write_text(production.prometheus_config(topo, scrape_interval="1s"))
    conn = json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": hook_port, "schema": "http"})
    url = alerting.webhook_url("slipway_alerts", {"AIRFLOW_CONN_SLIPWAY_ALERTS": conn})
    (topo.folder / "alertmanager.yml").write_text(
        alerting.config(
            {PIPELINE: "slipway_alerts"}, {"slipway_alerts": url}, group_wait="1s", group_interval="1s"
        )
    )
    procs = {}
    logs = {}
    try:
        for name, cmd in {
            "prometheus": [
                _tool("prometheus"),
                f"--config.file={topo.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            "alertmanager": [
                _tool("prometheus-alertmanager"),
                f"--config.file={topo.folder / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'am'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
        }.items():
            logs[name] = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed below
            procs[name] = subprocess.Popen(cmd, stdout=logs[name], stderr=subprocess.STDOUT)

        def query(q: str) -> list:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{prom_port}/api/v1/query?query={urllib.parse.quote(q)}", timeout=5
            ) as resp:
                return json.loads(resp.read())["data"]["result"]

        def tail() -> str:
            return "\n".join(f"--- {n}\n{(tmp_path / f'{n}.log').read_text()[-2000:]}" for n in procs)

        # The service is scraped and its failure count is read (0) before the run fails.
        wait_until(
            lambda: query(f'slipway_dag_run_failures{{pipeline="{PIPELINE}"}}'),
            60,
            "Prometheus to scrape slipway_dag_run_failures from the service",
            retry_on=(OSError,),
            procs=procs,
            log=tail,
        )
        assert not _alerts(hook, "SlipwayDagRunFailed")
        time.sleep(2)  # a second scrape of the count before it moves
        events.record(
            service.db_url,
            PIPELINE,
            events.FAILED,
            f"{PIPELINE}__train",
            "manual__alerting-test",
            "gate failed",
        )
        wait_until(
            lambda: _alerts(hook, "SlipwayDagRunFailed"),
            90,
            "the alert on the webhook",
            procs=procs,
            log=tail,
        )
        (alert,) = _alerts(hook, "SlipwayDagRunFailed")[:1]
        assert alert["status"] == "firing"
        assert alert["labels"]["pipeline"] == PIPELINE and alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["summary"] == f"{PIPELINE}: a DAG run failed"
        assert "Airflow UI" in alert["annotations"]["runbook"]
        # Nothing else fired: a healthy service with a champion is quiet.
        assert {a["labels"]["alertname"] for body in hook.received for a in body["alerts"]} == {
            "SlipwayDagRunFailed"
        }
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(20)
        for f in logs.values():
            f.close()
        hook.close()


def test_make_up_writes_the_alerting_config(tmp_path, monkeypatch):
    """``prepare``'s files for Prometheus and Alertmanager: the rules loaded, the default connection's
    webhook taken from the environment, the config private (it may hold a token)."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLIPWAY_ALERTS",
        json.dumps({"conn_type": "http", "host": "https://hooks.example.com/t0k3n"}),
    )
    text = production.alertmanager_config()
    doc = yaml.safe_load(text)
    receivers = {r["name"]: r for r in doc["receivers"]}
    assert receivers["slipway_alerts"]["webhook_configs"][0]["url"] == "https://hooks.example.com/t0k3n"
    assert {r["matchers"][0] for r in doc["route"]["routes"]} >= {'pipeline="telco_churn"'}
    topo = production.topology()
    cfg = yaml.safe_load(production.prometheus_config(topo))
    assert cfg["rule_files"] == [str(production.RULES)] and Path(cfg["rule_files"][0]).is_file()
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        f"127.0.0.1:{topo.ports['alertmanager']}"
    ]


def test_the_readme_gives_each_alert_its_runbook_line():
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    readme = (ROOT / "README.md").read_text()
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{rule['alert']}` |")), None)
        assert row is not None, f"README's Alerts table has no row for {rule['alert']}"
        assert rule["annotations"]["runbook"] in row, rule["alert"]
