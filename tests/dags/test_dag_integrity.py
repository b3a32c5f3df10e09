"""DAG integrity: every file imports, every DAG is well formed, parsing is fast and offline,
and a bad spec shows up as an import error while the other pipelines keep loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.processes import ROOT

DAGS = ROOT / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))


def _bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def bag():
    return _bag()


def test_no_import_errors(bag):
    assert bag.import_errors == {}
    assert "telco_churn__train" in bag.dags
    assert "telco_churn__explore" in bag.dags


def test_every_dag_is_well_formed(bag):
    for dag_id, dag in bag.dags.items():
        pipeline, _, purpose = dag_id.partition("__")
        assert pipeline and purpose, f"{dag_id}: dag_id must be <pipeline>__<purpose>"
        assert dag.tags and "slipway" in dag.tags, f"{dag_id}: needs the 'slipway' tag"
        assert dag.doc_md, f"{dag_id}: needs doc_md"
        assert dag.default_args.get("retries", 0) >= 2, f"{dag_id}: retries must be >= 2"
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id}: set an owner"
            assert t.retries >= 2, f"{dag_id}.{t.task_id}: retries must be >= 2"
            # Try numbers keep counting across clears: the backoff must stay capped.
            from datetime import timedelta

            assert t.max_retry_delay and t.max_retry_delay <= timedelta(minutes=5), f"{dag_id}.{t.task_id}"
            verb = t.task_id.split("_")[0]
            assert verb in {
                "wait",
                "ingest",
                "curate",
                "version",
                "validate",
                "train",
                "evaluate",
                "compare",
                "check",
                "explain",
                "optimise",
                "write",
                "register",
                "bless",
                "profile",
                "select",
                "run",
                "summarise",
                "approve",
                "promote",
                "conclude",
                "score",
                "deliver",
                "restore",
                "judge",
                "send",
                "trigger",
                "retire",
                "purge",
            }, f"{dag_id}.{t.task_id}: task ids start with a verb"


def test_train_dag_shape(bag):
    dag = bag.dags["telco_churn__train"]
    ids = {t.task_id for t in dag.tasks}
    assert ids == {
        "wait_for_batch",
        "ingest_batch",
        "curate_feedback",
        "version_snapshot",
        "validate_snapshot",
        "train_model",
        "evaluate_model",
        "compare_champion",
        "check_fairness",
        "explain_model",
        "check_robustness",
        "optimise_onnx",
        "bless_candidate",
        "write_model_card",
        "register_model",
    }
    # The gates run side by side after evaluation, and one step judges them all.
    gates = {"compare_champion", "check_fairness", "explain_model", "check_robustness", "optimise_onnx"}
    for gate in gates:
        assert dag.get_task(gate).upstream_task_ids == {"evaluate_model"}
        assert dag.get_task(gate).task_group.group_id == "gates"  # one group in the graph
    assert dag.get_task("bless_candidate").upstream_task_ids == gates | {"evaluate_model"}
    # The graph is the chain an operator reads, not every data dependency (15 tasks, 20 edges).
    chain = ["version_snapshot", "validate_snapshot", "train_model", "evaluate_model"]
    for before, after in zip(chain, chain[1:], strict=False):
        assert dag.get_task(after).upstream_task_ids == {before}
    assert dag.get_task("write_model_card").upstream_task_ids == {"bless_candidate"}
    assert dag.get_task("register_model").upstream_task_ids == {"write_model_card"}
    assert sum(len(t.downstream_task_ids) for t in dag.tasks) == 20
    # Feedback is curated against the landed batches and goes into the snapshot with them.
    assert dag.get_task("curate_feedback").upstream_task_ids == {"ingest_batch"}
    assert dag.get_task("version_snapshot").upstream_task_ids == {"ingest_batch", "curate_feedback"}
    register = dag.get_task("register_model")
    # Registration depends (transitively) on every other task, with the all_success rule.
    assert register.trigger_rule == "all_success"
    assert ids - {"register_model"} <= {t.task_id for t in register.get_flat_relatives(upstream=True)}
    assert [o.name for o in register.outlets] == ["telco_churn__candidate"]
    assert register.max_active_tis_per_dag == 1  # registrations of one pipeline never race
    assert dag.max_active_runs == 3  # a past month can run while the current one waits for its batch
    assert dag.get_task("wait_for_batch").deferrable


_PARSE_PROBE = r"""
import json, runpy, socket, sys, time
import airflow.sdk  # the DAG processor has Airflow imported already; time the file itself

def _no_network(*a, **k):
    raise RuntimeError("network access at DAG parse time")

socket.socket.connect = _no_network
socket.create_connection = _no_network
out = {}
for path in sys.argv[1:]:
    t = time.perf_counter()
    ns = runpy.run_path(path)
    out[path] = time.perf_counter() - t
heavy = sorted(m for m in ("pandas", "sklearn", "mlflow", "great_expectations", "evidently", "shap",
                           "fairlearn", "onnxruntime", "skl2onnx", "dvc") if m in sys.modules)
print(json.dumps({"times": out, "heavy": heavy}))
"""


def test_each_dag_file_parses_fast_offline_and_without_a_database(tmp_path):
    env = {k: v for k, v in os.environ.items()}
    # Any attempt to use the metadata DB would fail against this URL.
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql+psycopg2://nobody@127.0.0.1:1/nodb"
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:1"
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_PROBE, *map(str, DAG_FILES)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"heavy libraries imported at parse time: {report['heavy']}"
    for path, seconds in report["times"].items():
        assert seconds < 1.0, f"{path} took {seconds:.2f} s to parse"


def _spec_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pipelines"
    d.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "telco_churn.yaml", d)
    return d


def test_bad_spec_is_an_import_error_and_other_pipelines_still_load(tmp_path, monkeypatch):
    d = _spec_dir(tmp_path)
    raw = yaml.safe_load((d / "telco_churn.yaml").read_text())
    raw["name"] = "broken_one"
    raw["gates"]["evaluation"]["min_roc_auc"] = 3
    (d / "broken_one.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("SLIPWAY_PIPELINES_DIR", str(d))
    bag = _bag()
    assert "telco_churn__train" in bag.dags
    assert not any(k.startswith("broken_one") for k in bag.dags)
    [(path, message)] = bag.import_errors.items()
    assert path.endswith("spec_errors.py")
    assert "spec broken_one.yaml: gates.evaluation.min_roc_auc" in message
    assert "less than or equal to 1" in message


def test_second_pipeline_from_a_spec_alone(tmp_path, monkeypatch):
    d = _spec_dir(tmp_path)
    shutil.copy(ROOT / "tests" / "fixtures" / "pipelines" / "credit_default.yaml", d)
    monkeypatch.setenv("SLIPWAY_PIPELINES_DIR", str(d))
    bag = _bag()
    assert bag.import_errors == {}
    dag = bag.dags["credit_default__train"]
    assert dag.default_args["owner"] == "risk-analytics"
    assert len(dag.tasks) == 15


def test_lint_airflow_rules():
    ruff = Path(sys.executable).with_name("ruff")
    proc = subprocess.run(
        [str(ruff), "check", "--select", "AIR", "dags", "plugins", "include"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    json.dumps(proc.stdout)


def test_train_dag_docs_list_every_task_the_month_rule_and_link_mlflow(monkeypatch):
    monkeypatch.setenv("SLIPWAY_MLFLOW_UI_URL", "http://mlflow.internal:5000")
    dag = _bag().dags["telco_churn__train"]
    for task in dag.tasks:
        assert f"`{task.task_id}`" in dag.doc_md, task.task_id
    assert "Which month a run processes" in dag.doc_md and "fill in **month**" in dag.doc_md
    assert "(http://mlflow.internal:5000/#/models/telco_churn)" in dag.doc_md  # by name: valid at parse time
    assert "re-run the month" in dag.doc_md
    from include.months import MONTH_PATTERN

    assert dag.params["month"] is None  # empty by default: the data interval decides
    assert dag.params.get_param("month").schema["pattern"] == MONTH_PATTERN


def test_rollout_and_rollback_dag_shape(bag):
    from datetime import timedelta

    from include.spec import load_pipeline

    dag = bag.dags["telco_churn__rollout"]
    chain = [
        "select_candidate",
        "validate_infra",
        "run_shadow",
        "run_canary",
        "summarise_evidence",
        "approve_promotion",
        "promote_candidate",
        "conclude_rollout",
    ]
    assert {t.task_id for t in dag.tasks} == set(chain)
    for before, after in zip(chain, chain[1:], strict=False):
        assert before in dag.get_task(after).upstream_task_ids, f"{before} -> {after}"
    # Scheduled by the candidate asset; one rollout at a time (one challenger slot).
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["telco_churn__candidate"]
    assert dag.max_active_runs == 1
    approval = dag.get_task("approve_promotion")
    assert approval.defaults == ["Reject"]
    assert approval.response_timeout == timedelta(
        hours=load_pipeline("telco_churn").rollout.approval.timeout_hours
    )
    assert [o.name for o in dag.get_task("promote_candidate").outlets] == ["telco_churn__champion"]
    # Whatever happened upstream, the conclusion runs: a candidate not promoted is rolled back there.
    assert dag.get_task("conclude_rollout").trigger_rule == "all_done"
    assert dag.get_task("conclude_rollout").upstream_task_ids == {"promote_candidate"}

    rollback = bag.dags["telco_churn__rollback"]
    assert type(rollback.timetable).__name__ == "NullTimetable"  # manual trigger only
    [task] = rollback.tasks
    assert task.task_id == "restore_previous_champion"
    assert [o.name for o in task.outlets] == ["telco_churn__champion"]


def test_monitor_dag_shape_and_training_on_cron_or_drift(bag):
    from include.spec import load_pipeline

    spec = load_pipeline("telco_churn")
    dag = bag.dags["telco_churn__monitor"]
    assert {t.task_id for t in dag.tasks} == {
        "check_drift",
        "check_performance",
        "check_fairness",
        "check_attributions",
        "check_data_quality",
        "judge_interval",
        "send_alert",
        "trigger_retraining",
    }
    assert dag.get_task("judge_interval").upstream_task_ids == {
        "check_drift",
        "check_performance",
        "check_fairness",
        "check_attributions",
        "check_data_quality",
    }
    assert dag.get_task("send_alert").upstream_task_ids == {"judge_interval"}
    assert [o.name for o in dag.get_task("trigger_retraining").outlets] == ["telco_churn__drift"]
    assert dag.max_active_runs == 1 and not dag.catchup  # intervals judged in order (the cool-down)
    assert spec.monitoring.schedule == "@hourly" and dag.timetable.expression == "0 * * * *"
    # The training DAG runs on its cron OR the drift asset.
    train = bag.dags["telco_churn__train"]
    assert type(train.timetable).__name__ == "AssetOrTimeSchedule"
    assert [a.name for a in train.timetable.asset_condition.objects] == ["telco_churn__drift"]
    assert train.timetable.timetable.expression == spec.schedule.cron == "0 0 1 * *"
    assert "drift" in train.doc_md and "slipway.trigger" in train.doc_md
    # Retries come from the spec (the live stack shortens them; these are the shipped defaults).
    assert train.default_args["retries"] == spec.retries.count == 2


def test_retire_dag_shape(bag):
    dag = bag.dags["telco_churn__retire"]
    assert sorted(t.task_id for t in dag.tasks) == ["purge_expired", "retire_versions"]
    assert "retention" in dag.doc_md and "purge_expired" in dag.doc_md
    assert dag.timetable.expression == "0 0 * * *" and not dag.catchup and dag.max_active_runs == 1
    assert "Never retired" in dag.doc_md
